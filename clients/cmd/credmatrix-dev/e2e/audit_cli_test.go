package e2e

import (
	"bufio"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
)

// TestAuditQueryNamesAndCounts: accounts by name work in `audit query` as in
// `creds` and `replay`; every query says how many events it found, 0
// included; kinds are printed one way (session-issue) and read in any of
// their spellings.
func TestAuditQueryNamesAndCounts(t *testing.T) {
	stack, _, _ := startStack(t)
	c := &cli{t: t, env: envMap(stack.Env())}
	c.env["CREDMATRIX_OIDC_TOKEN"] = strings.TrimSpace(c.devOK("token"))
	c.ok("", "creds", "--role", "deploy", "--account", "sandbox", "--cache=false")
	c.ok("", "creds", "--role", "deploy", "--account", "111111111111", "--cache=false")
	if r := c.run("", "creds", "--role", "deploy", "--account", "prod", "--cache=false"); r.code != exitDenied {
		t.Fatalf("prod: %+v", r)
	}
	c.ok("x", "encrypt", "--data-class", "internal", "--region", "eu-west-1")

	byName := c.ok("", "audit", "query", "--account", "sandbox")
	byID := c.ok("", "audit", "query", "--account", "111111111111")
	if rows := strings.Count(byName, "session-issue"); rows != 2 || !strings.Contains(byName, "\n2 events (account sandbox is 111111111111)\n") {
		t.Fatalf("query --account sandbox:\n%s", byName)
	}
	if strings.Count(byID, "session-issue") != 2 || !strings.HasSuffix(byID, "\n2 events\n") {
		t.Fatalf("query --account 111111111111:\n%s", byID)
	}
	if got := c.ok("", "audit", "query", "--account", "prod", "--decision", "deny"); strings.Count(got, "session-issue") != 1 {
		t.Fatalf("denials in prod by name:\n%s", got)
	}
	for _, args := range [][]string{
		{"audit", "query", "--account", "no-such-account"},
		{"audit", "query", "--kind", "key-encrypt", "--decision", "deny"},
	} {
		if got := c.ok("", args...); !strings.HasPrefix(got, "0 events") || strings.Contains(got, "SEQ") {
			t.Errorf("credmatrix %s printed %q, want a line saying 0 events", strings.Join(args, " "), got)
		}
	}
	// JSON lines stay clean for programs; the count goes to stderr.
	r := c.run("", "audit", "query", "--kind", "key-encrypt", "--output", "json")
	if r.code != exitOK || strings.Count(r.stdout, "\n") != 1 || r.stderr != "1 event\n" {
		t.Fatalf("json query: %+v", r)
	}
	// One spelling out, every spelling in.
	want := c.ok("", "audit", "query", "--kind", "session-issue")
	for _, k := range []string{"session_issue", "KIND_SESSION_ISSUE", "SESSION-ISSUE"} {
		if got := c.ok("", "audit", "query", "--kind", k); got != want {
			t.Errorf("--kind %s printed\n%s\nwant\n%s", k, got, want)
		}
	}
	if strings.Contains(want, "session_issue") || strings.Count(want, "session-issue") != 3 {
		t.Fatalf("kinds not printed as session-issue:\n%s", want)
	}
	for _, sub := range [][]string{{"audit", "tail", "--follow=false"}, {"audit", "replay", "timeline", "--subject", "spiffe://credmatrix.dev/cli"}} {
		if got := c.ok("", sub...); strings.Contains(got, "key_encrypt") || !strings.Contains(got, "key-encrypt") {
			t.Errorf("credmatrix %s does not print key-encrypt:\n%s", strings.Join(sub, " "), got)
		}
	}
}

// TestAuditTailFollows: `audit tail` says that it follows, keeps following
// (new events appear), and keeps its columns for the rows that come later.
func TestAuditTailFollows(t *testing.T) {
	stack, _, _ := startStack(t)
	c := &cli{t: t, env: envMap(stack.Env())}
	c.env["CREDMATRIX_OIDC_TOKEN"] = strings.TrimSpace(c.devOK("token"))
	c.ok("", "creds", "--role", "deploy", "--account", "sandbox", "--cache=false")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tail := exec.CommandContext(ctx, credmatrixBinary(t), "audit", "tail", "--from", "0")
	tail.Env = c.environ()
	stdout, err := tail.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := tail.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = tail.Wait() }()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	notice := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		if sc.Scan() {
			notice <- sc.Text()
		}
	}()
	next := func(what string) string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("tail ended before %s", what)
			}
			return l
		case <-time.After(30 * time.Second):
			t.Fatalf("no %s from audit tail within 30s", what)
		}
		return ""
	}
	header := next("header")
	var rows []string
	for range logSize(t, stack) {
		rows = append(rows, next("a row of the log so far"))
	}
	select {
	case n := <-notice:
		if !strings.Contains(n, "following new events from sequence ") || !strings.Contains(n, "Ctrl-C") {
			t.Fatalf("tail's notice: %q", n)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("audit tail did not say that it follows")
	}
	// New events while it follows: a denial (longer cells) and a key event.
	if r := c.run("", "creds", "--role", "deploy", "--account", "payments-eu", "--cache=false"); r.code != exitDenied {
		t.Fatalf("payments-eu: %+v", r)
	}
	c.ok("x", "encrypt", "--data-class", "internal", "--region", "eu-west-1")
	rows = append(rows, next("the denial's row"), next("the encryption's row"))
	for _, col := range []string{"KIND", "DECISION", "PRINCIPAL"} {
		at := strings.Index(header, col)
		for i, r := range rows {
			if at <= 0 || len(r) <= at || r[at-1] != ' ' || r[at] == ' ' {
				t.Errorf("row %d is not aligned with column %s at %d:\n%s\n%s", i, col, at, header, r)
			}
		}
	}
	n := len(rows)
	if !strings.Contains(rows[n-2], "session-issue") || !strings.Contains(rows[n-2], "deny") || !strings.Contains(rows[n-1], "key-encrypt") {
		t.Fatalf("followed rows:\n%s", strings.Join(rows, "\n"))
	}
}

// TestReplayGrantsIncludesStatic: the two static grants of the dev
// key-ring file are in force and in use; `audit replay grants --at now`
// must list them (it used to say 0), and again, unchanged, after a restart
// records them a second time.
func TestReplayGrantsIncludesStatic(t *testing.T) {
	dir := t.TempDir()
	start := func() (*devstack.Stack, *cli) {
		stack, err := devstack.Start(context.Background(), devstack.Config{StateDir: dir, Ports: devstack.EphemeralPorts()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stack.Close() })
		return stack, &cli{t: t, env: envMap(stack.Env())}
	}
	stack, c := start()
	c.ok("x", "encrypt", "--data-class", "confidential", "--region", "eu-west-1")
	c.ok("x", "encrypt", "--data-class", "internal", "--region", "us-east-1")
	check := func(when string) string {
		t.Helper()
		out := c.ok("", "audit", "replay", "grants", "--at", "now")
		for _, want := range []string{"cli-confidential-eu", "cli-internal", "key-ring file", "2 grant(s) in force"} {
			if !strings.Contains(out, want) {
				t.Fatalf("%s: replay grants lacks %q:\n%s", when, want, out)
			}
		}
		return out[:strings.LastIndex(out, " at ")]
	}
	first := check("first start")
	if err := stack.Close(); err != nil {
		t.Fatal(err)
	}
	_, c = start()
	if again := check("after a restart"); again != first {
		t.Fatalf("a restart changed the static grants:\nbefore:\n%s\nafter:\n%s", first, again)
	}
}
