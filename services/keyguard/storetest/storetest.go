// Package storetest is the conformance suite of keyguard.Store: the sqlite
// and postgres packages and the in-memory store call Run with a constructor
// of fresh, empty stores, so that every store keeps the same promises the
// Service relies on (the version moves with every change that can alter a
// decision, key versions never fork, the rotation lock excludes).
package storetest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/credmatrix/credmatrix/services/keyguard"
)

// Run runs the suite; newStore returns a fresh, empty store that is closed
// when the test ends.
func Run(t *testing.T, newStore func(t *testing.T) keyguard.Store) {
	ctx := context.Background()
	// A time with nanoseconds: stores must keep times exactly, since key
	// version records are authenticated over them.
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
	eu := keyguard.Ring{DataClass: "confidential", Region: "eu-west-1"}
	us := keyguard.Ring{DataClass: "confidential", Region: "us-east-1"}
	grant := func(id string) keyguard.Grant {
		return keyguard.Grant{
			ID: id, Principal: "spiffe://credmatrix.dev/app", DataClass: "confidential",
			Operations: []keyguard.Operation{keyguard.OpEncrypt, keyguard.OpGenerateDataKey}, Regions: []string{"eu-west-1", "us-east-1"},
			RequiredContext: map[string]string{"tenant": "acme", "ünï": "cödé"}, ExpireTime: t0.Add(time.Hour), CreateTime: t0,
			CreatedBy: "spiffe://credmatrix.dev/cli",
		}
	}
	version := func(t *testing.T, s keyguard.Store) uint64 {
		t.Helper()
		v, err := s.Version(ctx)
		if err != nil {
			t.Fatalf("Version: %v", err)
		}
		return v
	}
	load := func(t *testing.T, s keyguard.Store) keyguard.State {
		t.Helper()
		st, err := s.Load(ctx)
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		return st
	}
	// bumps runs a change and checks that it moved the version (or not).
	bumps := func(t *testing.T, s keyguard.Store, name string, want bool, change func() error) {
		t.Helper()
		before := version(t, s)
		if err := change(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		after := version(t, s)
		if moved := after > before; moved != want {
			t.Errorf("%s: version %d -> %d; want moved=%v", name, before, after, want)
		}
		if after < before {
			t.Errorf("%s: version went back from %d to %d", name, before, after)
		}
	}
	ignore := cmpopts.IgnoreUnexported(keyguard.Grant{})

	t.Run("empty", func(t *testing.T) {
		s := newStore(t)
		st := load(t, s)
		if st.Version != version(t, s) {
			t.Errorf("Load version %d, Version %d", st.Version, version(t, s))
		}
		if len(st.Grants) != 0 || len(st.Rings) != 0 || len(st.KeyVersions) != 0 {
			t.Errorf("fresh store holds %+v", st)
		}
	})

	t.Run("grants", func(t *testing.T) {
		s := newStore(t)
		bumps(t, s, "put g-2", true, func() error { return s.PutGrant(ctx, grant("g-2")) })
		bumps(t, s, "put g-1", true, func() error { return s.PutGrant(ctx, grant("g-1")) })
		before := version(t, s)
		if err := s.PutGrant(ctx, grant("g-1")); !errors.Is(err, keyguard.ErrExists) {
			t.Errorf("PutGrant of an existing id = %v, want ErrExists", err)
		}
		if v := version(t, s); v != before {
			t.Errorf("a refused PutGrant moved the version %d -> %d", before, v)
		}
		if diff := cmp.Diff(load(t, s).Grants, []keyguard.Grant{grant("g-1"), grant("g-2")}, ignore); diff != "" {
			t.Errorf("grants (-got +want):\n%s", diff)
		}
		bumps(t, s, "delete g-2", true, func() error {
			ok, err := s.DeleteGrant(ctx, "g-2")
			if err == nil && !ok {
				t.Error("DeleteGrant(g-2) = false, want true")
			}
			return err
		})
		if ok, err := s.DeleteGrant(ctx, "g-2"); ok || err != nil {
			t.Errorf("second DeleteGrant = %v, %v; want false, nil", ok, err)
		}
		st := load(t, s)
		if diff := cmp.Diff(st.Grants, []keyguard.Grant{grant("g-1")}, ignore); diff != "" {
			t.Errorf("grants after delete (-got +want):\n%s", diff)
		}
		if st.Version != version(t, s) {
			t.Errorf("Load version %d, Version %d", st.Version, version(t, s))
		}
	})

	t.Run("min-decrypt-version", func(t *testing.T) {
		s := newStore(t)
		bumps(t, s, "set 2", true, func() error { return s.SetMinDecryptVersion(ctx, eu, 2) })
		bumps(t, s, "set 3", true, func() error { return s.SetMinDecryptVersion(ctx, eu, 3) })
		if got := load(t, s).Rings[eu].MinDecryptVersion; got != 3 {
			t.Errorf("MinDecryptVersion = %d, want 3", got)
		}
		if _, ok := load(t, s).Rings[us]; ok {
			t.Errorf("ring %s has state it was never given", us)
		}
	})

	t.Run("usage-adds-without-moving-the-version", func(t *testing.T) {
		s := newStore(t)
		if err := s.SetMinDecryptVersion(ctx, eu, 1); err != nil {
			t.Fatal(err)
		}
		bumps(t, s, "add usage", false, func() error {
			return s.AddUsage(ctx, map[keyguard.KeyRef]uint64{{DataClass: eu.DataClass, Region: eu.Region, Version: 1}: 5})
		})
		// Replicas add concurrently; nothing may be lost.
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- s.AddUsage(ctx, map[keyguard.KeyRef]uint64{
					{DataClass: eu.DataClass, Region: eu.Region, Version: 1}: 10,
					{DataClass: eu.DataClass, Region: eu.Region, Version: 2}: 1,
					{DataClass: us.DataClass, Region: us.Region, Version: 1}: 2,
				})
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		want := map[keyguard.Ring]keyguard.RingState{
			eu: {MinDecryptVersion: 1, EncryptCounts: map[uint32]uint64{1: 85, 2: 8}},
			us: {EncryptCounts: map[uint32]uint64{1: 16}},
		}
		if diff := cmp.Diff(load(t, s).Rings, want); diff != "" {
			t.Errorf("ring state (-got +want):\n%s", diff)
		}
	})

	t.Run("key-versions", func(t *testing.T) {
		s := newStore(t)
		kv := func(v uint32) keyguard.StoredKeyVersion {
			return keyguard.StoredKeyVersion{Version: v, Created: t0.Add(time.Duration(v) * time.Hour),
				BackendKey: "arn:aws:kms:eu-west-1:111122223333:key/k" + string(rune('0'+v)), MAC: []byte{byte(v), 0, 0xff}}
		}
		bumps(t, s, "add v1", true, func() error { return s.AddKeyVersion(ctx, eu, kv(1)) })
		for _, bad := range []uint32{1, 3, 0} {
			before := version(t, s)
			if err := s.AddKeyVersion(ctx, eu, kv(bad)); !errors.Is(err, keyguard.ErrConflict) {
				t.Errorf("AddKeyVersion(%d) after v1 = %v, want ErrConflict", bad, err)
			}
			if v := version(t, s); v != before {
				t.Errorf("a refused AddKeyVersion moved the version %d -> %d", before, v)
			}
		}
		bumps(t, s, "add v2", true, func() error { return s.AddKeyVersion(ctx, eu, kv(2)) })
		bumps(t, s, "add v1 of another ring", true, func() error { return s.AddKeyVersion(ctx, us, kv(1)) })
		want := map[keyguard.Ring][]keyguard.StoredKeyVersion{eu: {kv(1), kv(2)}, us: {kv(1)}}
		got, err := s.KeyVersions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("KeyVersions (-got +want):\n%s", diff)
		}
		if diff := cmp.Diff(load(t, s).KeyVersions, want); diff != "" {
			t.Errorf("Load().KeyVersions (-got +want):\n%s", diff)
		}
	})

	t.Run("key-versions/concurrent-creators-one-wins", func(t *testing.T) {
		s := newStore(t)
		const n = 8
		var wg sync.WaitGroup
		results := make(chan error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results <- s.AddKeyVersion(ctx, eu, keyguard.StoredKeyVersion{Version: 1, Created: t0, BackendKey: "k", MAC: []byte{byte(i)}})
			}()
		}
		wg.Wait()
		close(results)
		won := 0
		for err := range results {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, keyguard.ErrConflict):
				t.Errorf("AddKeyVersion = %v, want nil or ErrConflict", err)
			}
		}
		if won != 1 {
			t.Errorf("%d of %d concurrent creators of version 1 succeeded, want exactly 1", won, n)
		}
		got, err := s.KeyVersions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(got[eu]) != 1 {
			t.Errorf("ring holds %d versions, want 1", len(got[eu]))
		}
	})

	t.Run("rotation-lock-excludes", func(t *testing.T) {
		s := newStore(t)
		unlock, err := s.LockRotation(ctx)
		if err != nil {
			t.Fatal(err)
		}
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		if u, err := s.LockRotation(short); err == nil {
			u()
			t.Fatal("a second LockRotation succeeded while the lock was held")
		}
		got := make(chan func(), 1)
		go func() {
			u, err := s.LockRotation(ctx)
			if err != nil {
				t.Error(err)
				close(got)
				return
			}
			got <- u
		}()
		unlock()
		unlock() // a second call is harmless
		select {
		case u, ok := <-got:
			if ok {
				u()
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the waiting LockRotation did not get the lock within 30s of its release")
		}
	})

	t.Run("cancelled-context-changes-nothing", func(t *testing.T) {
		s := newStore(t)
		before := load(t, s)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		errs := []error{
			s.PutGrant(cctx, grant("g-1")),
			s.SetMinDecryptVersion(cctx, eu, 2),
			s.AddKeyVersion(cctx, eu, keyguard.StoredKeyVersion{Version: 1, Created: t0, BackendKey: "k", MAC: []byte{1}}),
			s.AddUsage(cctx, map[keyguard.KeyRef]uint64{{DataClass: eu.DataClass, Region: eu.Region, Version: 1}: 1}),
		}
		for i, err := range errs {
			if err == nil {
				t.Errorf("write %d with a cancelled context succeeded", i)
			}
		}
		if diff := cmp.Diff(load(t, s), before, ignore, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("state changed by cancelled writes (-got +want):\n%s", diff)
		}
	})
}
