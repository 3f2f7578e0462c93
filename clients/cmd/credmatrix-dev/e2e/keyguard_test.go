package e2e

import (
	"strings"
	"testing"
)

// TestKeyguardOperatorCommands drives grants and key rings through the CLI
// against the local stack (whose cli identity is the keyguard
// administrator): a grant opens a region, its revocation closes it again
// at once, rotation adds a version, retirement takes effect.
func TestKeyguardOperatorCommands(t *testing.T) {
	stack, _, _ := startStack(t)
	c := &cli{t: t, env: envMap(stack.Env()), transcript: &syncBuffer{}}
	encUS := []string{"encrypt", "--data-class", "confidential", "--region", "us-east-1", "--context", "table=customers"}

	if r := c.run("x", encUS...); r.code != exitDenied {
		t.Fatalf("encrypt in us-east-1 before the grant: exit %d, want %d (residency)\n%s", r.code, exitDenied, r.stderr)
	}
	id := strings.TrimSpace(c.ok("", "keyguard", "grant", "create", "--principal", "spiffe://credmatrix.dev/cli",
		"--data-class", "confidential", "--operation", "encrypt", "--region", "us-east-1", "--require-context", "table=customers", "--ttl", "1h"))
	if !strings.HasPrefix(id, "g-") {
		t.Fatalf("grant create printed %q", id)
	}
	c.ok("x", encUS...)
	if list := c.ok("", "keyguard", "grant", "list", "--data-class", "confidential"); !strings.Contains(list, id) || !strings.Contains(list, "table=customers") || !strings.Contains(list, "cli-confidential-eu") {
		t.Errorf("grant list:\n%s", list)
	}
	c.ok("", "keyguard", "grant", "revoke", id, "--reason", "test")
	if r := c.run("x", encUS...); r.code != exitDenied {
		t.Fatalf("encrypt right after revocation: exit %d, want %d", r.code, exitDenied)
	}

	old := c.ok("secret", "encrypt", "--data-class", "confidential", "--region", "eu-west-1", "--context", "k=v")
	if out := c.ok("", "keyguard", "rotate", "--data-class", "confidential", "--region", "eu-west-1", "--reason", "test"); !strings.Contains(out, "version 2") {
		t.Fatalf("rotate: %s", out)
	}
	c.ok("", "keyguard", "retire", "--data-class", "confidential", "--region", "eu-west-1", "--below", "2")
	desc := c.ok("", "keyguard", "describe", "--data-class", "confidential", "--region", "eu-west-1")
	for _, want := range []string{"primary v2", "min decrypt v2", "primary", "retired"} {
		if !strings.Contains(desc, want) {
			t.Errorf("describe lacks %q:\n%s", want, desc)
		}
	}
	if r := c.run(old, "decrypt", "--context", "k=v"); r.code == exitOK {
		t.Fatal("decrypt of a retired version succeeded")
	}
	if r := c.run("", "keyguard", "grant", "create", "--principal", "p", "--data-class", "confidential", "--operation", "shred", "--region", "eu-west-1"); r.code != exitUsage {
		t.Errorf("unknown operation: exit %d, want %d", r.code, exitUsage)
	}
}
