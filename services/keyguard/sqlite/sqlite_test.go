package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/sqlite"
)

func TestStore(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	g := keyguard.Grant{
		ID: "g-1", Principal: "spiffe://credmatrix.dev/app", DataClass: "confidential",
		Operations: []keyguard.Operation{keyguard.OpEncrypt, keyguard.OpGenerateDataKey}, Regions: []string{"eu-west-1"},
		RequiredContext: map[string]string{"tenant": "acme"}, ExpireTime: t0.Add(time.Hour), CreateTime: t0, CreatedBy: "spiffe://credmatrix.dev/cli",
	}
	g2 := g
	g2.ID = "g-2"
	for _, gr := range []keyguard.Grant{g, g2} {
		if err := s.PutGrant(ctx, gr); err != nil {
			t.Fatalf("PutGrant: %v", err)
		}
	}
	if err := s.PutGrant(ctx, g); err == nil {
		t.Error("PutGrant of an existing id succeeded")
	}
	if ok, err := s.DeleteGrant(ctx, "g-2"); !ok || err != nil {
		t.Errorf("DeleteGrant = %v, %v", ok, err)
	}
	if ok, err := s.DeleteGrant(ctx, "g-2"); ok || err != nil {
		t.Errorf("second DeleteGrant = %v, %v", ok, err)
	}
	ring := keyguard.Ring{DataClass: "confidential", Region: "eu-west-1"}
	st := keyguard.RingState{MinDecryptVersion: 2, EncryptCounts: map[uint32]uint64{1: 10, 2: 3}}
	if err := s.PutRingState(ctx, ring, keyguard.RingState{MinDecryptVersion: 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutRingState(ctx, ring, st); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	grants, err := s.Grants(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(grants, []keyguard.Grant{g}, cmpopts.IgnoreUnexported(keyguard.Grant{})); diff != "" {
		t.Errorf("grants after reopen (-got +want):\n%s", diff)
	}
	states, err := s.RingStates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(states, map[keyguard.Ring]keyguard.RingState{ring: st}); diff != "" {
		t.Errorf("ring states after reopen (-got +want):\n%s", diff)
	}
}

func TestOpenRejects(t *testing.T) {
	for _, p := range []string{"", ":memory:", "file:x.db", "x.db?mode=ro"} {
		if _, err := sqlite.Open(context.Background(), p); err == nil {
			t.Errorf("Open(%q) succeeded", p)
		}
	}
}
