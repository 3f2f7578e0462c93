package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credmatrix/credmatrix/platform/pgtest"
	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/postgres"
	"github.com/credmatrix/credmatrix/services/keyguard/storetest"
)

func open(t *testing.T, dsn string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	c := pgtest.Start(t)
	storetest.Run(t, func(t *testing.T) keyguard.Store { return open(t, c.NewDatabase(t)) })
}

// TestServiceReplicas: keyguard Services on two stores of one database
// behave as one.
func TestServiceReplicas(t *testing.T) {
	c := pgtest.Start(t)
	storetest.RunReplicas(t, func(t *testing.T) (keyguard.Store, keyguard.Store) {
		dsn := c.NewDatabase(t)
		return open(t, dsn), open(t, dsn)
	})
}

// TestReplicas: two stores on one database are two replicas: a change made
// through one moves the version the other reads and is announced to its
// follower, and the rotation lock excludes across them.
func TestReplicas(t *testing.T) {
	c := pgtest.Start(t)
	dsn := c.NewDatabase(t)
	a, b := open(t, dsn), open(t, dsn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changed := make(chan struct{}, 16)
	go b.Follow(ctx, func() { changed <- struct{}{} }, func(err error) { t.Logf("follow: %v", err) })
	wait := func(what string) {
		t.Helper()
		select {
		case <-changed:
		case <-time.After(30 * time.Second):
			t.Fatalf("no change announced to the other replica within 30s (%s)", what)
		}
	}
	wait("after connecting") // Follow reports its connection: re-read.
	before, err := b.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.PutGrant(ctx, keyguard.Grant{ID: "g-1", Principal: "p", DataClass: "c", Operations: []keyguard.Operation{keyguard.OpEncrypt},
		Regions: []string{"eu-west-1"}, ExpireTime: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if after, err := b.Version(ctx); err != nil || after <= before {
		t.Errorf("version at the other replica %d -> %d (%v); want it moved", before, after, err)
	}
	wait("after PutGrant")
	st, err := b.Load(ctx)
	if err != nil || len(st.Grants) != 1 {
		t.Fatalf("Load at the other replica: %d grants, %v", len(st.Grants), err)
	}

	unlock, err := a.LockRotation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancelShort()
	if u, err := b.LockRotation(short); err == nil {
		u()
		t.Fatal("the other replica took the rotation lock while it was held")
	}
	unlock()
	u, err := b.LockRotation(ctx)
	if err != nil {
		t.Fatalf("the other replica could not take the released lock: %v", err)
	}
	u()
}

// TestRotationLockDiesWithItsHolder: a replica that dies holding the lock
// (its session ends) does not block rotation forever.
func TestRotationLockDiesWithItsHolder(t *testing.T) {
	c := pgtest.Start(t)
	dsn := c.NewDatabase(t)
	ctx := context.Background()
	dead := open(t, dsn)
	unlockDead, err := dead.LockRotation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer unlockDead()
	// The holder "dies": its session ends without unlocking.
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var killed int
	if err := conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted`).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d lock holders (%v), want 1", killed, err)
	}
	alive := open(t, dsn)
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	u, err := alive.LockRotation(lctx)
	if err != nil {
		t.Fatalf("lock still held after its holder's session ended: %v", err)
	}
	u()
}

func TestConcurrentMigrations(t *testing.T) {
	c := pgtest.Start(t)
	dsn := c.NewDatabase(t)
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			s, err := postgres.Open(context.Background(), dsn)
			if err == nil {
				s.Close()
			}
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Errorf("Open: %v", err)
		}
	}
}
