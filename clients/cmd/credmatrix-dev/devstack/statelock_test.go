package devstack

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// readTree returns the contents of every file under dir.
func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		files[p] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestSecondStartLeavesRunningStackAlone: a second stack on the same state
// directory fails cleanly before touching it, so the running stack keeps
// its certificates and keys (it used to regenerate the PKI, then panic).
func TestSecondStartLeavesRunningStackAlone(t *testing.T) {
	dir := t.TempDir()
	first, err := Start(context.Background(), Config{StateDir: dir, Ports: EphemeralPorts()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Close() })
	before := readTree(t, filepath.Join(dir, "pki"))
	if len(before) < 5 {
		t.Fatalf("pki holds %d files", len(before))
	}
	second, err := Start(context.Background(), Config{StateDir: dir, Ports: EphemeralPorts()})
	var inUse *InUseError
	if !errors.As(err, &inUse) || second != nil || !strings.Contains(err.Error(), "another credmatrix-dev (pid ") {
		t.Fatalf("second Start = %v, %v; want an *InUseError naming the pid", second, err)
	}
	after := readTree(t, filepath.Join(dir, "pki"))
	for f, b := range before {
		if after[f] != b {
			t.Errorf("%s changed under the running stack", f)
		}
	}
	// Still serving with those certificates; once stopped, the directory
	// is free again.
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	third, err := Start(context.Background(), Config{StateDir: dir, Ports: EphemeralPorts()})
	if err != nil {
		t.Fatalf("start after the first stopped: %v", err)
	}
	third.Close()
}

// TestPortInUseFailsCleanly: a taken port is reported, naming the port and
// the part, before anything is written to a fresh state directory — and
// without a panic.
func TestPortInUseFailsCleanly(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, part := range []string{"broker", "audit metrics", "dev issuer"} {
		t.Run(part, func(t *testing.T) {
			ports := EphemeralPorts()
			switch part {
			case "broker":
				ports.Broker = busy.Addr().String()
			case "audit metrics":
				ports.AuditMetrics = busy.Addr().String()
			case "dev issuer":
				ports.Issuer = busy.Addr().String()
			}
			dir := t.TempDir()
			s, err := Start(context.Background(), Config{StateDir: dir, Ports: ports})
			if err == nil || s != nil || !strings.Contains(err.Error(), "the "+part+" port "+busy.Addr().String()+" is in use") {
				t.Fatalf("Start = %v, %v", s, err)
			}
			if _, err := os.Stat(filepath.Join(dir, "pki")); !os.IsNotExist(err) {
				t.Fatalf("a failed start wrote the PKI (%v)", err)
			}
			// The lock was released: the directory works with free ports.
			s, err = Start(context.Background(), Config{StateDir: dir, Ports: EphemeralPorts()})
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
		})
	}
}

// TestPolicyTemplateRendering: the generated policy has the issuer's URL in
// its values and the template's comments as they are.
func TestPolicyTemplateRendering(t *testing.T) {
	dir := t.TempDir()
	s, err := Start(context.Background(), Config{StateDir: dir, Ports: EphemeralPorts()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b, err := os.ReadFile(filepath.Join(dir, "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	got, src := strings.Split(string(b), "\n"), strings.Split(defaultPolicy, "\n")
	if len(got) != len(src) {
		t.Fatalf("generated policy has %d lines, the template %d", len(got), len(src))
	}
	urls := 0
	for i := range src {
		switch {
		case strings.HasPrefix(strings.TrimSpace(src[i]), "#"):
			if got[i] != src[i] {
				t.Errorf("comment line %d rewritten: %q", i+1, got[i])
			}
		case strings.Contains(src[i], IssuerURLPlaceholder):
			if strings.Contains(got[i], IssuerURLPlaceholder) || !strings.Contains(got[i], s.IssuerURL()) {
				t.Errorf("line %d: %q, want the issuer URL %s", i+1, got[i], s.IssuerURL())
			}
			urls++
		}
	}
	if urls != 1 {
		t.Fatalf("%d issuer URLs filled in, want 1", urls)
	}
}
