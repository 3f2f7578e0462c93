package postgres_test

import (
	"context"
	"testing"

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
