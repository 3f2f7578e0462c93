package devstack

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// InUseError says another stack holds the state directory.
type InUseError struct {
	Dir string
	PID string // of the holder, as it wrote it ("" if unknown)
}

func (e *InUseError) Error() string {
	who := "another credmatrix-dev"
	if e.PID != "" {
		who += " (pid " + e.PID + ")"
	}
	return fmt.Sprintf("devstack: %s is running with state directory %s: stop it first, or use another --state-dir (nothing was changed)", who, e.Dir)
}

// stateLock is the lock a stack holds on its state directory while it
// runs, so a second start cannot regenerate the certificates and keys of
// the running one.
type stateLock struct{ f *os.File }

func lockStateDir(dir string) (*stateLock, error) {
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("devstack: state dir lock: %w", err)
	}
	if err := tryLock(f); err != nil {
		pid := make([]byte, 32)
		n, _ := f.ReadAt(pid, 0)
		f.Close()
		if errors.Is(err, errLocked) {
			return nil, &InUseError{Dir: dir, PID: strings.TrimSpace(string(pid[:n]))}
		}
		return nil, fmt.Errorf("devstack: lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &stateLock{f: f}, nil
}

// release lets the next stack use the directory (nil-safe).
func (l *stateLock) release() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// checkPorts fails when a fixed port of p is taken, before anything is
// written: "port in use" is the usual reason a second stack cannot start.
func checkPorts(p Ports) error {
	for _, e := range []struct{ name, addr string }{
		{"broker", p.Broker}, {"keyguard", p.Keyguard}, {"audit", p.Audit}, {"dev issuer", p.Issuer},
		{"broker public", p.BrokerPublic}, {"keyguard public", p.KeyguardPublic},
		{"broker metrics", p.BrokerMetrics}, {"keyguard metrics", p.KeyguardMetrics}, {"audit metrics", p.AuditMetrics},
	} {
		if _, port, err := net.SplitHostPort(e.addr); err != nil || port == "0" {
			continue // off, or the kernel picks a free one
		}
		l, err := net.Listen("tcp", e.addr)
		if err != nil {
			return fmt.Errorf("devstack: the %s port %s is in use (%v): stop what listens there (another credmatrix-dev?) or use --ephemeral-ports; nothing was changed", e.name, e.addr, err)
		}
		l.Close()
	}
	return nil
}
