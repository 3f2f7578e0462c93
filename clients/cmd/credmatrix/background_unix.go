//go:build unix

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
)

// startInBackground starts a copy of this serve-credentials command in a
// session of its own (so it outlives this process and the terminal), its
// standard output and input on /dev/null and its log in logFile — it holds
// none of the caller's pipes, so `creds=$(credmatrix serve-credentials
// --background)` returns. It waits until the copy reports on a pipe: the
// exports once it serves (printed, exit 0), or the error that stopped it
// (nothing on standard output, its exit code).
func (a *app) startInBackground(ctx context.Context, logFile string) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the credmatrix executable: %w", err)
	}
	if logFile == "" {
		logFile = filepath.Join(os.TempDir(), "credmatrix-serve-credentials-"+strconv.Itoa(os.Getpid())+".log")
	}
	log, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return usagef("--log-file: %v", err)
	}
	defer log.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	child := exec.Command(exe, backgroundArgs(a.args)...)
	child.Stdin, child.Stdout, child.Stderr = nil, nil, log
	child.ExtraFiles = []*os.File{w}
	child.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := child.Start(); err != nil {
		w.Close()
		return fmt.Errorf("start the background copy: %w", err)
	}
	w.Close()

	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(r, 1<<20))
		got <- b
	}()
	var b []byte
	select {
	case b = <-got:
	case <-ctx.Done():
		_ = child.Process.Kill()
		_ = child.Wait()
		return ctx.Err()
	}
	var m readyMessage
	if len(b) == 0 || json.Unmarshal(b, &m) != nil || (m.Error == "" && len(m.Env) == 0) {
		werr := child.Wait()
		return fmt.Errorf("the background copy stopped before serving (%v); see its log %s", werr, logFile)
	}
	if m.Error != "" {
		_ = child.Wait()
		fmt.Fprintf(a.err, "credmatrix: %s\n", m.Error)
		code := m.Code
		if code == exitOK {
			code = exitError
		}
		return childExit{code: code}
	}
	for _, kv := range m.Env {
		k, v, _ := cutEnv(kv)
		fmt.Fprintf(a.out, "export %s=%s\n", k, shellQuote(v))
	}
	pid := child.Process.Pid
	fmt.Fprintf(a.out, "export CREDMATRIX_SERVE_PID=%d\n", pid)
	fmt.Fprintf(a.err, "credmatrix: serving credentials in the background (pid %d, log %s); stop it with: kill %d\n", pid, logFile, pid)
	if err := child.Process.Release(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}
