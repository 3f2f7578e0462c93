package e2e

import (
	"bufio"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
)

// devProcess is a running credmatrix-dev binary.
type devProcess struct {
	cmd    *exec.Cmd
	env    map[string]string // its env file
	output *syncBuffer
}

// startDev runs `credmatrix-dev --ephemeral-ports --state-dir dir` with env
// and waits until it says the stack is up; the test stops it (SIGTERM).
func startDev(t *testing.T, dir string, env []string) *devProcess {
	t.Helper()
	p := &devProcess{output: &syncBuffer{}}
	p.cmd = exec.Command(binaries(t).dev, "--ephemeral-ports", "--state-dir", dir)
	p.cmd.Env = env
	p.cmd.Stderr = p.output
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	up := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.output.Write([]byte(sc.Text() + "\n"))
			if strings.Contains(sc.Text(), "stack is up") {
				up <- true
			}
		}
		up <- false
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		_ = p.cmd.Wait()
	})
	select {
	case ok := <-up:
		if !ok {
			t.Fatalf("credmatrix-dev exited before the stack was up:\n%s", p.output.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("credmatrix-dev did not start:\n%s", p.output.String())
	}
	b, err := os.ReadFile(filepath.Join(dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	p.env = map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(strings.TrimPrefix(l, "export "), "="); ok && !strings.HasPrefix(l, "#") {
			p.env[k] = strings.Trim(v, `"`)
		}
	}
	return p
}

// TestDevStartErrorsAreClean: a second credmatrix-dev on a running stack's
// state directory, or with a port taken, exits 1 with a message that says
// what to do — no panic — and leaves the running stack's PKI alone.
func TestDevStartErrorsAreClean(t *testing.T) {
	dir := t.TempDir()
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
	startDev(t, dir, env)
	before := map[string][]byte{}
	pkiFiles, _ := filepath.Glob(filepath.Join(dir, "pki", "*"))
	for _, f := range pkiFiles {
		before[f], _ = os.ReadFile(f)
	}
	c := &cli{t: t, env: map[string]string{"HOME": dir}}
	r := c.runBin(binaries(t).dev, "", "--ephemeral-ports", "--state-dir", dir)
	if r.code != exitError || !strings.Contains(r.stderr, "another credmatrix-dev (pid ") || strings.Contains(r.stderr, "panic") {
		t.Fatalf("second credmatrix-dev on the same state dir: %+v", r)
	}
	for f, b := range before {
		if now, _ := os.ReadFile(f); string(now) != string(b) {
			t.Errorf("%s changed under the running stack", f)
		}
	}

	// The default ports, one of them taken (by this test, or by a stack
	// someone else runs on this machine: the same failure either way).
	if l, err := net.Listen("tcp", "127.0.0.1:7404"); err == nil {
		defer l.Close()
	}
	fresh := t.TempDir()
	r = c.runBin(binaries(t).dev, "", "--state-dir", fresh)
	if r.code != exitError || !strings.Contains(r.stderr, "is in use") || !strings.Contains(r.stderr, "--ephemeral-ports") || strings.Contains(r.stderr, "panic") {
		t.Fatalf("credmatrix-dev with a port taken: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(fresh, "pki")); !os.IsNotExist(err) {
		t.Fatalf("a failed start wrote the PKI (%v)", err)
	}
}

// TestDevPolicyLintAsDocumented runs the command the dev policy's comment
// gives, on the file credmatrix-dev generated.
func TestDevPolicyLintAsDocumented(t *testing.T) {
	stack, _, dir := startStack(t)
	_ = stack
	src := string(repoFile(t, "clients/cmd/credmatrix-dev/devstack/policy.yaml"))
	var cmdline string
	for _, l := range strings.Split(src, "\n") {
		if s := strings.TrimSpace(strings.TrimPrefix(l, "#")); strings.HasPrefix(s, "credmatrix policy lint") {
			cmdline = s
		}
	}
	args := strings.Fields(cmdline)
	if len(args) < 4 || args[len(args)-1] != ".dev/policy.yaml" {
		t.Fatalf("the policy's comment gives no lint command for .dev/policy.yaml: %q", cmdline)
	}
	args[len(args)-1] = filepath.Join(dir, "policy.yaml")
	r := (&cli{t: t, env: map[string]string{}}).run("", args[1:]...)
	if r.code != exitOK || !strings.Contains(r.stdout, "ok") {
		t.Fatalf("%s: %+v", cmdline, r)
	}
}

// TestDevStackServiceNames: under credmatrix-dev (make run) each service's
// spans carry its own service.name, as the separate binaries' do.
func TestDevStackServiceNames(t *testing.T) {
	recv := &otlpReceiver{}
	collector := httptest.NewServer(recv)
	t.Cleanup(collector.Close)
	dir := t.TempDir()
	dev := startDev(t, dir, []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + dir,
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + collector.URL, "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf", "OTEL_BSP_SCHEDULE_DELAY=100",
	})
	c := &cli{t: t, env: dev.env}
	c.env["CREDMATRIX_OIDC_TOKEN"] = strings.TrimSpace(c.devOK("token"))
	c.ok("", "creds", "--role", "deploy", "--account", "sandbox", "--cache=false")
	c.ok("x", "encrypt", "--data-class", "internal", "--region", "eu-west-1")

	want := map[string]string{
		"credmatrix.broker.v1.BrokerService/IssueSession": "credmatrix-broker",
		"broker.evaluate_policy":                          "credmatrix-broker",
		"broker.audit_append":                             "credmatrix-broker",
		"credmatrix.keyguard.v1.KeyguardService/Encrypt":  "credmatrix-keyguard",
		"keyguard.audit_append":                           "credmatrix-keyguard",
		"credmatrix.audit.v1.AuditService/Append":         "credmatrix-audit",
		"audit.commit":                                    "credmatrix-audit",
	}
	spans := recv.waitFor(t, "the spans of every service", func(spans []recSpan) bool {
		seen := map[string]bool{}
		for _, s := range spans {
			if want[s.span.GetName()] == s.service {
				seen[s.span.GetName()] = true
			}
		}
		return len(seen) == len(want)
	})
	// The broker's and keyguard's calls to audit are theirs; no span of a
	// service is left under the process's own name.
	for _, s := range spans {
		name, svc := s.span.GetName(), s.service
		switch {
		case svc == "credmatrix-dev" && (strings.HasPrefix(name, "credmatrix.") || strings.Contains(name, ".audit_append") || name == "audit.commit"):
			t.Errorf("span %s is still reported by credmatrix-dev", name)
		case name == "credmatrix.audit.v1.AuditService/Append" && s.span.GetKind() == tracev1.Span_SPAN_KIND_CLIENT && svc != "credmatrix-broker" && svc != "credmatrix-keyguard":
			t.Errorf("the client span of an audit append is reported by %s", svc)
		case strings.HasPrefix(name, "credmatrix.") && s.span.GetKind() == tracev1.Span_SPAN_KIND_SERVER && want[name] != "" && want[name] != svc:
			t.Errorf("server span %s reported by %s, want %s", name, svc, want[name])
		}
		for _, kv := range s.span.GetAttributes() {
			if kv.GetKey() == "credmatrix.dev.service" {
				t.Errorf("span %s exports the internal attribute %s", name, kv.GetKey())
			}
		}
	}
}
