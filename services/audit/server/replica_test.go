package server

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credmatrix/credmatrix/clients/auditclient"
	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/pgtest"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/audit/audittest"
)

// pgServer starts an audit service on PostgreSQL (the configuration the
// Helm chart renders) with its own kept checkpoint file in dir.
func pgServer(t *testing.T, dsnFile, keyFile, dir string) (*Server, func(), error) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Server.ListenAddr = "127.0.0.1:0"
	cfg.Server.DevPlaintext = true
	cfg.Store, cfg.Postgres.DSNFile = "postgres", dsnFile
	cfg.Checkpoint.KeyFile, cfg.Checkpoint.GenerateKey = keyFile, true
	cfg.Checkpoint.KeptFile = filepath.Join(dir, "checkpoint.kept")
	srv, err := New(context.Background(), cfg, hclog.New(&hclog.LoggerOptions{Output: io.Discard}))
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return srv, stop, nil
}

func dialPlain(t *testing.T, addr string) *auditclient.Client {
	t.Helper()
	conn, err := grpcclient.Dial(grpcclient.Config{Target: addr, DevPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return auditclient.New(conn)
}

// TestPostgresReplicaRestarts restarts a read replica 20 times while the
// sequencer takes appends from several callers without pause. Every
// restart must start (start-up reads events and checkpoints in one
// snapshot: no false "truncated" alarm), refuse an append without
// poisoning its reads, follow the sequencer and serve its checkpoints,
// and the log exported from the replica must verify against the
// checkpoint kept from the previous round (what 'credmatrix audit verify
// --checkpoint-file' does against a replica).
func TestPostgresReplicaRestarts(t *testing.T) {
	if testing.Short() {
		t.Skip("20 replica restarts under load")
	}
	dir := t.TempDir()
	dsnFile := filepath.Join(dir, "dsn")
	if err := os.WriteFile(dsnFile, []byte(pgtest.Start(t).NewDatabase(t)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "checkpoint.key")
	seqDir := filepath.Join(dir, "sequencer")
	os.MkdirAll(seqDir, 0o700)
	seq, stopSeq, err := pgServer(t, dsnFile, keyFile, seqDir)
	if err != nil {
		t.Fatal(err)
	}
	sc := dialPlain(t, seq.Addr().String()).RPC()
	// The first replica up takes the sequencer lock a moment after it
	// serves: poll for it with a deadline.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := sc.Append(context.Background(), &auditv1.AppendRequest{Events: []*auditv1.Event{audittest.BenchEvent("first")}})
		if err == nil {
			break
		}
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			t.Fatalf("the sequencer does not take appends: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Sustained appends from 4 callers until the test ends.
	var acked atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := sc.Append(ctx, &auditv1.AppendRequest{Events: []*auditv1.Event{audittest.BenchEvent(fmt.Sprintf("load-%d-%d", c, i))}})
				cancel()
				if err != nil {
					select {
					case <-stop:
						return
					default:
					}
					t.Errorf("append to the sequencer: %v", err)
					return
				}
				acked.Add(1)
			}
		})
	}
	defer func() { close(stop); wg.Wait(); stopSeq() }()
	// waitAppends returns once n more appends are acknowledged.
	waitAppends := func(n int64) {
		t.Helper()
		target := acked.Load() + n
		deadline := time.Now().Add(60 * time.Second)
		for acked.Load() < target {
			if time.Now().After(deadline) {
				t.Fatalf("appends stalled at %d (want %d)", acked.Load(), target)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	pub, err := os.ReadFile(keyFile + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	key, err := checkpoint.NewVerifier(string(pub))
	if err != nil {
		t.Fatal(err)
	}
	repDir := filepath.Join(dir, "replica")
	os.MkdirAll(repDir, 0o700)
	var kept []byte
	falseAlarms := 0
	for round := range 20 {
		waitAppends(20) // the replica starts while the sequencer commits
		before := acked.Load()
		rep, stopRep, err := pgServer(t, dsnFile, keyFile, repDir)
		if err != nil {
			falseAlarms++
			t.Errorf("round %d: the replica refused to start on an intact store: %v", round, err)
			continue
		}
		rc := dialPlain(t, rep.Addr().String())
		// An append sent to the replica is refused, and refusing it
		// leaves its reads alone.
		if _, err := rc.RPC().Append(context.Background(), &auditv1.AppendRequest{Events: []*auditv1.Event{audittest.BenchEvent(fmt.Sprintf("to-replica-%d", round))}}); status.Code(err) != codes.Unavailable {
			t.Fatalf("round %d: append to the replica = %v, want UNAVAILABLE", round, err)
		}
		cp, err := rc.RPC().GetCheckpoint(context.Background(), &auditv1.GetCheckpointRequest{})
		if err != nil {
			t.Fatalf("round %d: replica GetCheckpoint: %v", round, err)
		}
		if cp.GetTreeSize() < uint64(before) {
			t.Errorf("round %d: the replica serves tree size %d, the sequencer had acknowledged %d before it started", round, cp.GetTreeSize(), before)
		}
		// audit verify against the replica, with the checkpoint kept
		// from the previous round.
		b, err := rc.Export(context.Background(), auditclient.ExportOptions{Verifier: key, Kept: kept})
		if err != nil {
			t.Fatalf("round %d: export from the replica: %v", round, err)
		}
		r, err := rc.Verify(context.Background(), b, verify.Options{Key: key, Trusted: kept})
		if err != nil {
			t.Fatalf("round %d: verify: %v", round, err)
		}
		if !r.OK() {
			t.Errorf("round %d: the log read from the replica does not verify: %s", round, r.Problem)
		}
		kept = r.Latest
		t.Logf("round %d: replica started and verified %d events under load", round, r.VerifiedSize)
		stopRep()
	}
	if falseAlarms > 0 {
		t.Errorf("%d of 20 replica restarts raised a false alarm", falseAlarms)
	}
}
