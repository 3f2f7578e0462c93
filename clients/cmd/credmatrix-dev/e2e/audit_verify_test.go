package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/credmatrix/credmatrix/clients/auditclient/auditclienttest"
	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// TestAuditVerifyOnline appends the replay scenario through the broker's
// identity to a running stack, then verifies online, exports, detects a
// rollback against a kept checkpoint, and replays the export.
func TestAuditVerifyOnline(t *testing.T) {
	stack, _, stateDir := startStack(t)
	env := envMap(stack.Env())
	c := &cli{t: t, env: env, transcript: &syncBuffer{}}
	auditAddr, _, _ := stack.Addrs()
	rpc := auditv1.NewAuditServiceClient(dialAs(t, stack, "broker", auditAddr))
	ctx := context.Background()
	scenario := auditclienttest.Scenario()
	// keyguard records its static grants at start: the log does not start
	// empty.
	base := logSize(t, stack)
	if base == 0 {
		t.Fatal("the log holds no static grants")
	}
	if _, err := rpc.Append(ctx, &auditv1.AppendRequest{Events: scenario[:10]}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kept, old := filepath.Join(dir, "kept"), filepath.Join(dir, "old.bundle")

	out := c.ok("", "audit", "verify", "--checkpoint-file", kept)
	if !strings.Contains(out, fmt.Sprintf("verified: %d events", base+10)) {
		t.Fatalf("online verify: %s", out)
	}
	c.ok("", "audit", "export", "--out", old)
	if _, err := rpc.Append(ctx, &auditv1.AppendRequest{Events: scenario[10:]}); err != nil {
		t.Fatal(err)
	}
	out = c.ok("", "audit", "verify", "--checkpoint-file", kept)
	if !strings.Contains(out, fmt.Sprintf("verified: %d events", base+13)) || !strings.Contains(out, "consistent with the kept checkpoint") {
		t.Fatalf("online verify after growth: %s", out)
	}
	// The old export is a rollback relative to the kept checkpoint.
	r := c.run("", "audit", "verify", "--bundle", old, "--checkpoint-file", kept)
	if r.code != exitError || !strings.Contains(r.stdout, fmt.Sprintf("rollback at sequence %d", base+10)) {
		t.Fatalf("verify of an older export against a newer kept checkpoint: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// Forensic export straight from the store file, then offline replay.
	dbBundle := filepath.Join(dir, "db.bundle")
	auditExportDB(t, filepath.Join(stateDir, "audit.db"), env["CREDMATRIX_AUDIT_PUBLIC_KEY_FILE"], dbBundle)
	out = c.ok("", "audit", "replay", "sessions", "--bundle", dbBundle, "--at", "2026-11-01T09:50:00Z", "--output", "json")
	if !strings.Contains(out, `"session_id": "s4"`) || strings.Contains(out, `"session_id": "s1"`) {
		t.Fatalf("replay sessions at 09:50: %s", out)
	}
	// Online replay.
	out = c.ok("", "audit", "replay", "timeline", "--subject", auditclienttest.Alice)
	if diff := cmp.Diff(strings.Count(out, "session-issue"), 4); diff != "" {
		t.Errorf("alice's timeline has %d session-issue rows, want 4:\n%s", strings.Count(out, "session-issue"), out)
	}
}

// logSize is the number of events in the stack's audit log.
func logSize(t *testing.T, stack *devstack.Stack) int {
	t.Helper()
	auditAddr, _, _ := stack.Addrs()
	resp, err := auditv1.NewAuditServiceClient(dialAs(t, stack, "cli", auditAddr)).Query(context.Background(), &auditv1.QueryRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.GetEvents())
}

// auditExportDB runs the audit binary's forensic export on a store file.
func auditExportDB(t *testing.T, db, pub, out string) {
	t.Helper()
	cmd := exec.Command(binaries(t).audit, "export", "--db", db, "--public-key-file", pub, "--out", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("audit export --db: %v\n%s", err, b)
	}
}
