package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

// readyFDFlag is the hidden flag that tells a background copy of
// serve-credentials where to report that it serves (or why it cannot).
const readyFDFlag = "ready-fd"

// background holds serve-credentials' --background settings, in the
// foreground process (enabled) and in the background copy (readyFD).
type background struct {
	enabled  bool
	logFile  string
	readyFD  int
	reported bool // the background copy has reported (ready or failed)
}

// readyMessage is what the background copy reports on its ready pipe:
// the exports once it serves, or the error (message and exit code) that
// stopped it before.
type readyMessage struct {
	Env   []string `json:"env,omitempty"`
	Error string   `json:"error,omitempty"`
	Code  int      `json:"code,omitempty"`
}

// ready reports the exports to the waiting foreground process.
func (b *background) ready(env []string) error {
	return b.report(readyMessage{Env: env})
}

// failed reports err to the waiting foreground process (when this is the
// background copy) and returns it.
func (b *background) failed(a *app, err error) error {
	if b.readyFD == 0 {
		return err
	}
	code, msg := classify(err)
	if rerr := b.report(readyMessage{Error: msg, Code: code}); rerr != nil {
		return fmt.Errorf("%w (and reporting it failed: %v)", err, rerr)
	}
	return err
}

func (b *background) report(m readyMessage) error {
	b.reported = true
	f := os.NewFile(uintptr(b.readyFD), "ready")
	if f == nil {
		return fmt.Errorf("--%s %d: not an open file descriptor", readyFDFlag, b.readyFD)
	}
	defer f.Close()
	if err := json.NewEncoder(f).Encode(m); err != nil {
		// Nobody waits for us any more: do not serve for no one.
		return fmt.Errorf("report to the foreground process: %w", err)
	}
	return nil
}

// backgroundArgs is the command line of the background copy: this one
// without --background, with the ready pipe as file descriptor 3.
func backgroundArgs(args []string) []string {
	var out []string
	for i, a := range args {
		if a == "--" {
			out = append(out, args[i:]...)
			break
		}
		if a == "--background" || strings.HasPrefix(a, "--background=") {
			continue
		}
		out = append(out, a)
	}
	return append(out, "--"+readyFDFlag+"=3")
}
