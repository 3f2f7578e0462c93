package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/credmatrix/credmatrix/services/broker"
)

// runStateVersion checks the state version replicas rely on: it moves
// with every change of freezes, revocations and reload requests, and
// LoadState shows one consistent state with its version.
func runStateVersion(t *testing.T, s broker.Store) {
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)
	version := func() uint64 {
		t.Helper()
		v, err := s.StateVersion(ctx)
		if err != nil {
			t.Fatalf("StateVersion: %v", err)
		}
		return v
	}
	step := func(name string, wantMoved bool, change func() error) {
		t.Helper()
		before := version()
		if err := change(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		after := version()
		if after < before {
			t.Errorf("%s: version went back %d -> %d", name, before, after)
		}
		if wantMoved && after == before {
			t.Errorf("%s: version stayed at %d, want it moved", name, before)
		}
		if !wantMoved && after != before {
			t.Errorf("%s: version moved %d -> %d, want it unchanged", name, before, after)
		}
	}
	acct := broker.FreezeScope("account", "111111111111")
	rev := broker.Revocation{ID: "r1", Subject: "s", Claims: map[string]string{}, IssuedBefore: now, BlockUntil: now.Add(time.Hour), CreatedAt: now, Reason: "leak"}
	step("reserve and commit a token id", false, func() error {
		r := broker.JTIReservation{Issuer: "i", JTI: "j", Holder: "h", Expires: now.Add(time.Hour), LeaseUntil: now.Add(time.Minute)}
		if err := s.ReserveJTI(ctx, r, now); err != nil {
			return err
		}
		return s.CommitJTI(ctx, r)
	})
	step("freeze", true, func() error { _, err := s.Freeze(ctx, []string{acct}, "incident", now); return err })
	step("add a revocation", true, func() error { return s.AddRevocation(ctx, rev) })
	var gens []uint64
	for range 2 {
		step("request a reload", true, func() error {
			g, err := s.RequestReload(ctx, "rpc:spiffe://x/admin")
			gens = append(gens, g)
			return err
		})
	}
	if diff := cmp.Diff(gens, []uint64{1, 2}); diff != "" {
		t.Errorf("reload generations (-got +want):\n%s", diff)
	}
	st, err := s.LoadState(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	want := broker.SharedState{Version: version(), Frozen: []string{acct}, Revocations: []broker.Revocation{rev}, ReloadGeneration: 2, ReloadBy: "rpc:spiffe://x/admin"}
	if diff := cmp.Diff(st, want); diff != "" {
		t.Errorf("LoadState (-got +want):\n%s", diff)
	}
	step("unfreeze", true, func() error { _, err := s.Unfreeze(ctx, []string{acct}); return err })
	st, err = s.LoadState(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Frozen) != 0 || st.Version != version() {
		t.Errorf("LoadState after unfreeze: frozen %v at version %d, store at %d", st.Frozen, st.Version, version())
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	before := version()
	if _, err := s.Freeze(cctx, []string{acct}, "x", now); err == nil {
		t.Error("Freeze with a cancelled context succeeded")
	}
	if _, err := s.RequestReload(cctx, "x"); err == nil {
		t.Error("RequestReload with a cancelled context succeeded")
	}
	if v := version(); v != before {
		t.Errorf("cancelled changes moved the version %d -> %d", before, v)
	}
}
