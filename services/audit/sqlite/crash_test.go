package sqlite_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/sqlite"
	"github.com/credmatrix/credmatrix/services/audit/tiles"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

const crashDirEnv = "CREDMATRIX_TEST_CRASH_DIR"

// crashKey is the checkpoint key of the crash test (the child and the
// parent sign and verify with it).
func crashSigner(t *testing.T, dir string) *checkpoint.Signer {
	t.Helper()
	path := filepath.Join(dir, "key")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		skey, _, err := checkpoint.GenerateKey("crash.test/audit")
		if err != nil {
			t.Fatal(err)
		}
		b = []byte(skey)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s, err := checkpoint.NewSigner(string(b))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func crashAppend(t *testing.T, log *audit.Log, from, n int) error {
	var evs []*auditv1.Event
	for i := from; i < from+n; i++ {
		evs = append(evs, &auditv1.Event{Id: fmt.Sprintf("crash-%d", i), Time: timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)), Kind: auditv1.Kind_KIND_KEY_ENCRYPT, Decision: auditv1.Decision_DECISION_ALLOW,
			Actor: &auditv1.Actor{Principal: "spiffe://credmatrix.dev/app"}})
	}
	_, err := log.Append(context.Background(), "spiffe://credmatrix.dev/keyguard", evs)
	return err
}

// TestKillMidCommitWithTilesHalfWritten: a process appending through the
// Log is killed with SIGKILL inside a commit, after the first of the two
// tiles the batch completes is written and before the commit. The store
// reopens (bounded start-up), holds exactly the batches committed before,
// a full verification finds every tile matching its events, proofs verify,
// and the log goes on and completes those tiles.
func TestKillMidCommitWithTilesHalfWritten(t *testing.T) {
	if dir := os.Getenv(crashDirEnv); dir != "" {
		crashChild(t, dir)
		return
	}
	dir := t.TempDir()
	cmd := osexec.Command(os.Args[0], "-test.run=^TestKillMidCommitWithTilesHalfWritten$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	var ee *osexec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the child was not killed by SIGKILL mid-commit: %v\n%s", err, out)
	}
	ctx := context.Background()
	signer := crashSigner(t, dir)
	st, err := sqlite.Open(ctx, filepath.Join(dir, "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if head, _ := st.Head(ctx); head != 400 {
		t.Fatalf("head after the crash = %d, want 400 (the batch being committed is gone, nothing else)", head)
	}
	for _, full := range []bool{false, true} {
		opts := []audit.Option{audit.WithSigner(signer)}
		if full {
			opts = append(opts, audit.WithFullVerification())
		}
		log, err := audit.Open(ctx, st, opts...)
		if err != nil {
			t.Fatalf("Open (full %v) after the crash: %v", full, err)
		}
		if oi := log.OpenInfo(); oi.TilesRebuilt != 0 {
			t.Fatalf("OpenInfo = %+v: a tile of the killed batch survived, or one was lost", oi)
		}
		cp, err := log.LatestCheckpoint(ctx)
		if err != nil || cp.Size != 400 {
			t.Fatalf("latest checkpoint = %d, %v", cp.Size, err)
		}
		lh, path, size, err := log.InclusionProof(ctx, 300, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, 300, size, lh, path, cp.Root); err != nil {
			t.Fatalf("inclusion proof after the crash: %v", err)
		}
		log.Close()
	}
	// The log goes on: the batch again, completing tiles 0/1 and 0/2.
	log, err := audit.Open(ctx, st, audit.WithSigner(signer))
	if err != nil {
		t.Fatal(err)
	}
	if err := crashAppend(t, log, 400, 400); err != nil {
		t.Fatal(err)
	}
	log.Close()
	got, err := st.ReadTiles(ctx, []tiles.ID{{Level: 0, Index: 1}, {Level: 0, Index: 2}})
	if err != nil || got[0] == nil || got[1] == nil {
		t.Fatalf("tiles 0/1 and 0/2 after the log went on: %v", err)
	}
	if _, err := audit.Open(ctx, st, audit.WithSigner(signer), audit.WithFullVerification()); err != nil {
		t.Fatalf("full verification after the log went on: %v", err)
	}
}

// crashChild appends 400 events (tile 0/0 complete, tile 0/1 partial),
// then a batch of 400 that completes tiles 0/1 and 0/2, and kills itself
// after the first of them is written, inside the commit.
func crashChild(t *testing.T, dir string) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	log, err := audit.Open(ctx, st, audit.WithSigner(crashSigner(t, dir)))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 400; i += 100 {
		if err := crashAppend(t, log, i, 100); err != nil {
			t.Fatal(err)
		}
	}
	written := 0
	sqlite.SetTileWrittenHook(func() {
		if written++; written == 1 {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	})
	crashAppend(t, log, 400, 400)
	t.Fatal("the commit completed: the hook did not kill the process")
}
