package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/platform/pgtest"
	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/postgres"
	"github.com/credmatrix/credmatrix/services/broker/storetest"
)

func TestConformance(t *testing.T) {
	c := pgtest.Start(t)
	storetest.Run(t, func(t *testing.T) broker.Store {
		s, err := postgres.Open(context.Background(), c.NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestConformanceShared(t *testing.T) {
	c := pgtest.Start(t)
	storetest.RunShared(t, func(t *testing.T) (broker.Store, broker.Store) {
		dsn := c.NewDatabase(t)
		var out [2]broker.Store
		for i := range out {
			s, err := postgres.Open(context.Background(), dsn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			out[i] = s
		}
		return out[0], out[1]
	})
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

func TestReplicas(t *testing.T) {
	c := pgtest.Start(t)
	storetest.RunReplicas(t, func(t *testing.T) (broker.Store, broker.Store) {
		dsn := c.NewDatabase(t)
		var out [2]broker.Store
		for i := range out {
			s, err := postgres.Open(context.Background(), dsn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			out[i] = s
		}
		return out[0], out[1]
	})
}

// TestFollowAnnouncesChanges: a change committed through one handle is
// announced to a follower on another.
func TestFollowAnnouncesChanges(t *testing.T) {
	c := pgtest.Start(t)
	dsn := c.NewDatabase(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := postgres.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := postgres.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	changed := make(chan struct{}, 8)
	go b.Follow(ctx, func() { changed <- struct{}{} }, nil)
	wait := func(what string) {
		t.Helper()
		select {
		case <-changed:
		case <-time.After(30 * time.Second):
			t.Fatalf("nothing announced within 30s (%s)", what)
		}
	}
	wait("on connecting")
	for name, change := range map[string]func() error{
		"freeze":         func() error { _, err := a.Freeze(ctx, []string{"account:111111111111"}, "x", time.Now()); return err },
		"request reload": func() error { _, err := a.RequestReload(ctx, "rpc:x"); return err },
	} {
		if err := change(); err != nil {
			t.Fatal(err)
		}
		wait(name)
	}
}
