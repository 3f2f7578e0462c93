package e2e

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// readmeShellBlock returns the lines of the first ```sh block of the
// README after the heading.
func readmeShellBlock(t *testing.T, heading string) []string {
	t.Helper()
	readme := string(repoFile(t, "README.md"))
	_, after, ok := strings.Cut(readme, heading)
	if !ok {
		t.Fatalf("README has no %q", heading)
	}
	_, block, ok := strings.Cut(after, "```sh\n")
	if !ok {
		t.Fatalf("README: no sh block after %q", heading)
	}
	block, _, _ = strings.Cut(block, "```")
	return strings.Split(strings.TrimSpace(block), "\n")
}

// TestReadmeAuditRecipes runs the README's "Verifying and replaying"
// commands, as written (bin/, .dev/ and ~ mapped to this test's), after
// the hand-run section's session and encryption, and checks each answers —
// the replay examples with something to show.
func TestReadmeAuditRecipes(t *testing.T) {
	stack, _, stateDir := startStack(t)
	c := &cli{t: t, env: envMap(stack.Env())}
	c.env["CREDMATRIX_OIDC_TOKEN"] = strings.TrimSpace(c.devOK("token", "--repository", "acme/app", "--ref", "refs/heads/main"))
	c.ok("", "creds", "--role", "deploy", "--account", "sandbox", "--cache=false")
	c.ok("secret", "encrypt", "--data-class", "confidential", "--region", "eu-west-1", "--context", "app=demo")

	home, work := t.TempDir(), t.TempDir()
	bin := binaries(t).dir
	comment := regexp.MustCompile(`\s+#.*$`)
	lines := readmeShellBlock(t, "### Verifying and replaying the audit log")
	replays := 0
	for _, line := range lines {
		line = comment.ReplaceAllString(line, "")
		line = strings.NewReplacer("bin/", bin+"/", ".dev/", stateDir+"/", "~/", home+"/").Replace(line)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, "/bin/sh", "-c", line)
		cmd.Dir, cmd.Env = work, c.environ()
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("README: %s\n%v\n%s", line, err, out)
		}
		if !strings.Contains(line, "audit replay") {
			continue
		}
		replays++
		for _, empty := range []string{"\n0 session(s)", "\n0 event(s)", "\n0 grant(s)"} {
			if strings.Contains("\n"+string(out), empty) {
				t.Errorf("README example returns nothing: %s\n%s", line, out)
			}
		}
	}
	if replays != 4 {
		t.Fatalf("ran %d replay examples, want the README's 4", replays)
	}
}
