package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/sqlite"
	"github.com/credmatrix/credmatrix/services/broker/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) broker.Store {
		s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "broker.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestConformanceShared(t *testing.T) {
	storetest.RunShared(t, func(t *testing.T) (broker.Store, broker.Store) {
		path := filepath.Join(t.TempDir(), "broker.db")
		var out [2]broker.Store
		for i := range out {
			s, err := sqlite.Open(context.Background(), path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			out[i] = s
		}
		return out[0], out[1]
	})
}

func TestReopenKeepsState(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Freeze(ctx, []string{"account:1"}, "x", testTime); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, err := s.Frozen(ctx, []string{"account:1"}); err != nil || got != "account:1" {
		t.Errorf("Frozen after reopen = %q, %v", got, err)
	}
}

func TestOpenRejectsSpecialPaths(t *testing.T) {
	for _, path := range []string{"", ":memory:", "file:x.db", "x.db?mode=ro"} {
		if _, err := sqlite.Open(context.Background(), path); err == nil {
			t.Errorf("Open(%q) succeeded", path)
		}
	}
}

var testTime = time.Unix(1700000000, 0)

func TestReplicas(t *testing.T) {
	storetest.RunReplicas(t, func(t *testing.T) (broker.Store, broker.Store) {
		path := filepath.Join(t.TempDir(), "broker.db")
		var out [2]broker.Store
		for i := range out {
			s, err := sqlite.Open(context.Background(), path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			out[i] = s
		}
		return out[0], out[1]
	})
}
