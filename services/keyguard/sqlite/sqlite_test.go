package sqlite_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/sqlite"
	"github.com/credmatrix/credmatrix/services/keyguard/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) keyguard.Store {
		s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "state.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestReopenKeepsEverything(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 1, time.UTC)
	ring := keyguard.Ring{DataClass: "confidential", Region: "eu-west-1"}
	g := keyguard.Grant{ID: "g-1", Principal: "p", DataClass: "confidential", Operations: []keyguard.Operation{keyguard.OpDecrypt},
		Regions: []string{"eu-west-1"}, ExpireTime: t0.Add(time.Hour), CreateTime: t0, CreatedBy: "admin"}
	for _, err := range []error{
		s.PutGrant(ctx, g),
		s.SetMinDecryptVersion(ctx, ring, 2),
		s.AddUsage(ctx, map[keyguard.KeyRef]uint64{{DataClass: ring.DataClass, Region: ring.Region, Version: 2}: 7}),
		s.AddKeyVersion(ctx, ring, keyguard.StoredKeyVersion{Version: 1, Created: t0, BackendKey: "arn:k", MAC: []byte{9}}),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	want, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, want, cmpopts.IgnoreUnexported(keyguard.Grant{})); diff != "" {
		t.Errorf("state after reopen (-got +want):\n%s", diff)
	}
}

// TestMigratesTheFirstSchema: a state file written before the schema was
// versioned (usage counts as JSON in the rings table) keeps its grants,
// minimum versions and counts.
func TestMigratesTheFirstSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	body := `{"id":"g-1","principal":"p","data_class":"confidential","operations":["decrypt"],"regions":["eu-west-1"],"expire_time":"2026-03-01T13:00:00Z","create_time":"2026-03-01T12:00:00Z","created_by":"admin"}`
	if _, err := db.Exec(`
CREATE TABLE grants (id TEXT PRIMARY KEY, principal TEXT NOT NULL, data_class TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE rings (data_class TEXT NOT NULL, region TEXT NOT NULL, min_decrypt_version INTEGER NOT NULL, counts TEXT NOT NULL, PRIMARY KEY (data_class, region));
INSERT INTO grants VALUES ('g-1', 'p', 'confidential', ?);
INSERT INTO rings VALUES ('confidential', 'eu-west-1', 2, '{"1":10,"2":3}');`, body); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ring := keyguard.Ring{DataClass: "confidential", Region: "eu-west-1"}
	if diff := cmp.Diff(st.Rings, map[keyguard.Ring]keyguard.RingState{ring: {MinDecryptVersion: 2, EncryptCounts: map[uint32]uint64{1: 10, 2: 3}}}); diff != "" {
		t.Errorf("ring state after migration (-got +want):\n%s", diff)
	}
	if len(st.Grants) != 1 || st.Grants[0].ID != "g-1" || st.Grants[0].Operations[0] != keyguard.OpDecrypt {
		t.Errorf("grants after migration: %+v", st.Grants)
	}
}

func TestOpenRejects(t *testing.T) {
	for _, p := range []string{"", ":memory:", "file:x.db", "x.db?mode=ro"} {
		if _, err := sqlite.Open(context.Background(), p); err == nil {
			t.Errorf("Open(%q) succeeded", p)
		}
	}
}
