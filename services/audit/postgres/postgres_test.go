package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
	"github.com/credmatrix/credmatrix/platform/pgtest"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/audittest"
	"github.com/credmatrix/credmatrix/services/audit/postgres"
	"github.com/credmatrix/credmatrix/services/audit/storetest"

	"github.com/credmatrix/credmatrix/platform/domainerr"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

func open(t testing.TB, dsn string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), dsn)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func waitSequencer(t testing.TB, s *postgres.Store) {
	t.Helper()
	select {
	case <-s.Sequencing():
	case <-time.After(30 * time.Second):
		t.Fatal("the store did not become the sequencer within 30s")
	}
}

func TestConformance(t *testing.T) {
	c := pgtest.Start(t)
	var mu sync.Mutex
	dsns := map[string]string{} // storetest dir -> database
	storetest.Run(t, func(t *testing.T, dir string) audit.Store {
		mu.Lock()
		dsn, ok := dsns[dir]
		if !ok {
			dsn = c.NewDatabase(t)
			dsns[dir] = dsn
		}
		mu.Unlock()
		s := open(t, dsn)
		waitSequencer(t, s)
		return s
	})
}

// TestFailover runs two replicas on one database: one sequences, the other
// serves reads and refuses appends; when the sequencer goes away the other
// takes over the lock and continues the log without a gap, and the whole
// log verifies under one key.
func TestFailover(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.Start(t).NewDatabase(t)
	signer := audittest.NewSigner(t)

	a := open(t, dsn)
	waitSequencer(t, a)
	b := open(t, dsn)
	defer b.Close()
	logA, err := audit.Open(ctx, a, audit.WithSigner(signer))
	if err != nil {
		t.Fatal(err)
	}
	logB, err := audit.Open(ctx, b, audit.WithSigner(signer), audit.WithFollow(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer logB.Close()
	appendTo := func(l *audit.Log, ids ...string) ([]*auditv1.AppendResult, error) {
		var batch []*auditv1.Event
		for _, id := range ids {
			batch = append(batch, audittest.BenchEvent(id))
		}
		return l.Append(ctx, "spiffe://credmatrix.dev/broker", batch)
	}
	if _, err := appendTo(logA, "a1", "a2", "a3"); err != nil {
		t.Fatalf("append to the sequencer: %v", err)
	}
	if b.IsSequencer() {
		t.Fatal("both replicas hold the sequencer lock")
	}
	_, err = appendTo(logB, "b-refused")
	if domainerr.CodeOf(err) != domainerr.Unavailable || !errors.Is(err, postgres.ErrNotSequencer) {
		t.Fatalf("append to the replica = %v, want Unavailable (not the sequencer)", err)
	}
	// The replica serves reads of what the sequencer wrote, once it has
	// followed it (LatestCheckpoint reads and checks the store first).
	if cp, err := logB.LatestCheckpoint(ctx); err != nil || cp.Size != 3 {
		t.Fatalf("replica checkpoint = %d, %v; want 3", cp.Size, err)
	}
	page, err := logB.Query(ctx, audit.Filter{})
	if err != nil || len(page.Events) != 3 {
		t.Fatalf("replica Query = %d events, %v; want 3", len(page.Events), err)
	}

	// The sequencer goes away; the replica takes over.
	logA.Close()
	a.Close()
	waitSequencer(t, b)
	// B's tree is behind (it never appended): its first commit finds the
	// store ahead, catches up and numbers the batch after A's events.
	res, err := appendTo(logB, "b1", "b2")
	if err != nil {
		t.Fatalf("append after takeover: %v", err)
	}
	if res[0].GetSequence() != 3 || res[1].GetSequence() != 4 {
		t.Fatalf("sequences after takeover = %d, %d; want 3, 4", res[0].GetSequence(), res[1].GetSequence())
	}
	if _, err := logB.LatestCheckpoint(ctx); err != nil {
		t.Fatalf("checkpoint after takeover: %v", err)
	}
	bu, _, err := audit.ExportBundle(ctx, b, signer.Origin(), signer.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if r := verify.Bundle(bu, verify.Options{Key: signer.Verifier()}); !r.OK() || r.VerifiedSize != 5 {
		t.Fatalf("log after failover: verified %d, problem %v", r.VerifiedSize, r.Problem)
	}
	var ids []string
	for _, e := range mustRead(t, b) {
		ids = append(ids, fmt.Sprintf("%d:%s", e.GetSequence(), e.GetId()))
	}
	if fmt.Sprint(ids) != "[0:a1 1:a2 2:a3 3:b1 4:b2]" {
		t.Errorf("log after failover = %v", ids)
	}
}

func mustRead(t *testing.T, s audit.Store) []*auditv1.Event {
	t.Helper()
	got, err := s.Read(context.Background(), 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// BenchmarkDurableAppend is sqlite's benchmark on PostgreSQL.
//
//	go test -run '^$' -bench DurableAppend -benchtime 20000x ./services/audit/postgres/
func BenchmarkDurableAppend(b *testing.B) {
	c := pgtest.Start(b)
	for _, callers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			s := open(b, c.NewDatabase(b))
			defer s.Close()
			waitSequencer(b, s)
			log := audittest.OpenLog(b, s, audit.WithSigner(audittest.NewSigner(b)))
			audittest.RunAppendBenchmark(b, log, callers)
		})
	}
}
