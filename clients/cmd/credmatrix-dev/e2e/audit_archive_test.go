package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credmatrix/credmatrix/clients/auditclient/auditclienttest"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// TestAuditArchivePrune runs the operator's archive cycle through the
// real binaries: 'audit archive --prune' writes, verifies and prunes a
// sealed range; the service then holds the events after it (a tail from
// before fails, naming the archive), 'audit verify|replay --archive'
// check the archive and the live log as one chain and replay the same
// state as before the prune; the same archive is not pruned twice; a
// second archive continues the chain, 'audit prune --archive' prunes it;
// the forensic export of the pruned store file chains with both.
func TestAuditArchivePrune(t *testing.T) {
	stack, _, stateDir := startStack(t)
	env := envMap(stack.Env())
	c := &cli{t: t, env: env, transcript: &syncBuffer{}}
	auditAddr, _, _ := stack.Addrs()
	rpc := auditv1.NewAuditServiceClient(dialAs(t, stack, "broker", auditAddr))
	ctx := context.Background()
	scenario := auditclienttest.Scenario()
	if _, err := rpc.Append(ctx, &auditv1.AppendRequest{Events: scenario[:10]}); err != nil {
		t.Fatal(err)
	}
	end := logSize(t, stack) // a commit batch: a signed checkpoint
	if _, err := rpc.Append(ctx, &auditv1.AppendRequest{Events: scenario[10:]}); err != nil {
		t.Fatal(err)
	}
	replayArgs := []string{"audit", "replay", "sessions", "--at", "2026-11-01T09:50:00Z", "--output", "json"}
	before := c.ok("", replayArgs...)
	if !strings.Contains(before, `"session_id": "s4"`) {
		t.Fatalf("replay before the archive: %s", before)
	}

	dir := t.TempDir()
	a1, a2 := filepath.Join(dir, "a1.bundle"), filepath.Join(dir, "a2.bundle")
	out := c.ok("", "audit", "archive", "--out", a1, "--end", fmt.Sprint(end), "--prune")
	for _, want := range []string{fmt.Sprintf("archived events 0 to %d", end-1), "verified and sealed", fmt.Sprintf("pruned events 0 to %d from the service", end-1), fmt.Sprintf("it now holds events from %d on", end)} {
		if !strings.Contains(out, want) {
			t.Fatalf("archive --prune: want %q in\n%s", want, out)
		}
	}
	// The service serves the events from end on.
	reader := auditv1.NewAuditServiceClient(dialAs(t, stack, "cli", auditAddr))
	cp, err := reader.GetCheckpoint(ctx, &auditv1.GetCheckpointRequest{})
	if err != nil || cp.GetFirstSequence() != uint64(end) {
		t.Fatalf("GetCheckpoint after the prune: first %d, %v", cp.GetFirstSequence(), err)
	}
	stream, err := reader.Subscribe(ctx, &auditv1.SubscribeRequest{FromSequence: 0})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "archive bundle") {
		t.Fatalf("a tail from sequence 0 after the prune = %v, want FailedPrecondition naming the archive", err)
	}
	r := c.run("", "audit", "verify")
	if r.code != exitOK || !strings.Contains(r.stdout, fmt.Sprintf("(sequences %d to", end)) {
		t.Fatalf("verify of the live log after the prune: %+v", r)
	}
	// Archive + live log: one chain, the same replay as before the prune.
	total := int(cp.GetTreeSize())
	out = c.ok("", "audit", "verify", "--archive", a1)
	if !strings.Contains(out, fmt.Sprintf("verified: %d events,", total)) {
		t.Fatalf("verify --archive: want %d events in\n%s", total, out)
	}
	if after := c.ok("", append(replayArgs, "--archive", a1)...); after != before {
		t.Fatalf("replay across the archive boundary differs from before the prune:\nbefore %s\nafter %s", before, after)
	}
	if after := c.ok("", replayArgs...); after == before {
		t.Fatal("replay of the live log alone equals the whole log's: the prune removed nothing")
	}
	// The same archive is not pruned twice; a wrong archive is refused.
	r = c.run("", "audit", "prune", "--archive", a1)
	if r.code == exitOK || !strings.Contains(r.stderr, "first_sequence") {
		t.Fatalf("second prune of the same archive: %+v", r)
	}
	// A second archive continues the chain; 'audit prune' prunes it.
	out = c.ok("", "audit", "archive", "--out", a2)
	if !strings.Contains(out, fmt.Sprintf("archived events %d to", end)) {
		t.Fatalf("second archive: %s", out)
	}
	r = c.run("", "audit", "verify", "--archive", a2)
	if r.code != exitError || !strings.Contains(r.stdout, "events 0 to") {
		t.Fatalf("verify with a gap before the archives: %+v", r)
	}
	out = c.ok("", "audit", "prune", "--archive", a2)
	if !strings.Contains(out, fmt.Sprintf("pruned events %d to", end)) {
		t.Fatalf("prune --archive: %s", out)
	}
	out = c.ok("", "audit", "verify", "--archive", a1, "--archive", a2)
	if !strings.Contains(out, "verified: ") {
		t.Fatalf("verify --archive a1 --archive a2: %s", out)
	}
	if after := c.ok("", append(replayArgs, "--archive", a1, "--archive", a2)...); after != before {
		t.Fatalf("replay across two archives differs from before the prune:\nbefore %s\nafter %s", before, after)
	}
	// The pruned store file, exported by the audit binary, chains too.
	dbBundle := filepath.Join(dir, "db.bundle")
	auditExportDB(t, filepath.Join(stateDir, "audit.db"), env["CREDMATRIX_AUDIT_PUBLIC_KEY_FILE"], dbBundle)
	out = c.ok("", "audit", "verify", "--bundle", dbBundle, "--archive", a1, "--archive", a2)
	if !strings.Contains(out, "verified: ") {
		t.Fatalf("verify of the pruned store's export with the archives: %s", out)
	}
	if after := c.ok("", append(replayArgs, "--bundle", dbBundle, "--archive", a1, "--archive", a2)...); after != before {
		t.Fatalf("offline replay across the archives differs:\nbefore %s\nafter %s", before, after)
	}
}
