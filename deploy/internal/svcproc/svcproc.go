// Package svcproc builds the credmatrix binaries as the images do and runs
// them as processes for the deploy module's tests, so those tests exercise
// exactly what ships: the real binaries, their configuration loading and
// their TLS stacks.
package svcproc

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RepoRoot returns the repository root (the directory holding go.work),
// found from the test's working directory.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("svcproc: no go.work above the test's directory")
		}
		dir = parent
	}
}

// Build builds the packages (paths relative to the repository root, e.g.
// "./services/broker/cmd/broker") statically into a temp dir and returns
// it; each binary is named after its package directory.
func Build(t testing.TB, pkgs ...string) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", append([]string{"build", "-trimpath", "-o", dir + string(os.PathSeparator)}, pkgs...)...)
	cmd.Dir = RepoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %v: %v\n%s", pkgs, err, out)
	}
	return dir
}

// Proc is a running process.
type Proc struct {
	// Exited is closed when the process has exited.
	Exited <-chan struct{}
	mu     sync.Mutex
	log    bytes.Buffer
}

// Log returns what the process wrote to stdout and stderr so far.
func (p *Proc) Log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

type procWriter struct{ p *Proc }

func (w procWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.log.Write(b)
}

// CleanEnv is the test process's environment without CREDMATRIX_*, OTEL_*
// and AWS_* variables, plus extra.
func CleanEnv(extra ...string) []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "CREDMATRIX_") && !strings.HasPrefix(e, "OTEL_") && !strings.HasPrefix(e, "AWS_") {
			env = append(env, e)
		}
	}
	return append(env, extra...)
}

// Start runs path with args and env until the test ends (SIGTERM, then
// SIGKILL after 15 s), and logs its output if the test failed.
func Start(t testing.TB, path string, env []string, args ...string) *Proc {
	t.Helper()
	exited := make(chan struct{})
	p := &Proc{Exited: exited}
	cmd := exec.Command(path, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = procWriter{p}, procWriter{p}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", filepath.Base(path), p.Log())
		}
	})
	return p
}

// WaitServing runs the credmatrix-probe binary with args until it reports
// SERVING; it fails the test if p exits first or a minute passes.
func WaitServing(t testing.TB, probe string, args []string, p *Proc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last []byte
	for {
		out, err := exec.CommandContext(ctx, probe, args...).CombinedOutput()
		if err == nil && bytes.Contains(out, []byte("SERVING")) {
			return
		}
		last = out
		select {
		case <-p.Exited:
			t.Fatalf("service exited before it was SERVING; its log:\n%s", p.Log())
		case <-ctx.Done():
			t.Fatalf("not SERVING before the deadline; last probe output: %s", last)
		case <-tick.C:
		}
	}
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	_, port, _ := net.SplitHostPort(lis.Addr().String())
	return port
}
