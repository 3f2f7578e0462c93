// Package storetest is the conformance suite of broker.Store: every
// implementation's tests call Run with a constructor of fresh, empty
// stores, so SQLite and PostgreSQL behave the same.
package storetest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/google/go-cmp/cmp"
)

// Run runs the suite; newStore returns a fresh, empty store that is
// closed when the test ends.
func Run(t *testing.T, newStore func(t *testing.T) broker.Store) {
	ctx := context.Background()
	// Times are at microsecond precision, the finest PostgreSQL keeps.
	now := time.Now().UTC().Truncate(time.Microsecond)

	t.Run("jti/single-use", func(t *testing.T) {
		s := newStore(t)
		var got []bool
		for _, id := range []struct{ iss, jti string }{{"a", "1"}, {"a", "1"}, {"b", "1"}, {"a", "2"}, {"b", "1"}} {
			first, err := s.UseJTI(ctx, id.iss, id.jti, now.Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, first)
		}
		if diff := cmp.Diff(got, []bool{true, false, true, true, false}); diff != "" {
			t.Errorf("UseJTI firsts (-got +want):\n%s", diff)
		}
	})

	t.Run("jti/concurrent-replay-admits-one", func(t *testing.T) {
		s := newStore(t)
		const n = 16
		var wg sync.WaitGroup
		firsts := make(chan bool, n)
		errs := make(chan error, n)
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				first, err := s.UseJTI(ctx, "iss", "same", now.Add(time.Hour))
				if err != nil {
					errs <- err
					return
				}
				firsts <- first
			}()
		}
		wg.Wait()
		close(firsts)
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		count := 0
		for f := range firsts {
			if f {
				count++
			}
		}
		if count != 1 {
			t.Errorf("%d of %d concurrent uses were first, want exactly 1", count, n)
		}
	})

	t.Run("revocations/round-trip-and-window", func(t *testing.T) {
		s := newStore(t)
		blocking := broker.Revocation{ID: "r1", Subject: "repo:acme/app", Issuer: "https://iss", Role: "deploy", AccountID: "111111111111",
			Claims: map[string]string{"ref": "refs/heads/main"}, IssuedBefore: now, BlockUntil: now.Add(time.Hour), CreatedAt: now, Reason: "leak"}
		session := broker.Revocation{ID: "r2", SessionID: "s-1", IssuedBefore: now, CreatedAt: now.Add(time.Second), Reason: "one session"}
		stale := broker.Revocation{ID: "r3", Subject: "old", IssuedBefore: now.Add(-13 * time.Hour), BlockUntil: now.Add(-time.Minute), CreatedAt: now.Add(-13 * time.Hour), Reason: "old"}
		for _, r := range []broker.Revocation{blocking, session, stale} {
			if err := s.AddRevocation(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.AddRevocation(ctx, blocking); !errors.Is(err, broker.ErrExists) {
			t.Errorf("duplicate AddRevocation = %v, want ErrExists", err)
		}
		got, err := s.Revocations(ctx, now)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(got, []broker.Revocation{blocking, session}); diff != "" {
			t.Errorf("Revocations (-got +want):\n%s", diff)
		}
		later, err := s.Revocations(ctx, now.Add(13*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if len(later) != 0 {
			t.Errorf("Revocations 13h later = %d, want none in effect", len(later))
		}
	})

	t.Run("freezes", func(t *testing.T) {
		s := newStore(t)
		acct, ou := broker.FreezeScope("account", "111111111111"), broker.FreezeScope("ou", "/root/prod")
		steps := []struct {
			name string
			do   func() (any, error)
			want any
		}{
			{"nothing-frozen", func() (any, error) { return s.Frozen(ctx, []string{acct, ou}) }, ""},
			{"freeze-two", func() (any, error) { return s.Freeze(ctx, []string{acct, ou}, "incident", now) }, []string{acct, ou}},
			{"freeze-again-changes-nothing", func() (any, error) { return s.Freeze(ctx, []string{acct}, "incident", now) }, []string{}},
			{"first-frozen-in-order", func() (any, error) { return s.Frozen(ctx, []string{"account:other", ou, acct}) }, ou},
			{"list-sorted", func() (any, error) { return s.Freezes(ctx) }, []string{acct, ou}},
			{"unfreeze-one", func() (any, error) { return s.Unfreeze(ctx, []string{ou, "ou:/never"}) }, []string{ou}},
			{"still-frozen", func() (any, error) { return s.Frozen(ctx, []string{ou, acct}) }, acct},
			{"unfreeze-rest", func() (any, error) { return s.Unfreeze(ctx, []string{acct}) }, []string{acct}},
			{"none-left", func() (any, error) { return s.Frozen(ctx, []string{ou, acct}) }, ""},
			{"list-empty", func() (any, error) { return s.Freezes(ctx) }, []string{}},
			{"empty-scope-list", func() (any, error) { return s.Frozen(ctx, nil) }, ""},
		}
		for _, st := range steps {
			got, err := st.do()
			if err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			if diff := cmp.Diff(got, st.want); diff != "" {
				t.Errorf("%s (-got +want):\n%s", st.name, diff)
			}
		}
	})

	t.Run("cancelled-context", func(t *testing.T) {
		s := newStore(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := s.UseJTI(cctx, "i", "j", now.Add(time.Hour)); err == nil {
			t.Error("UseJTI with a cancelled context succeeded")
		}
		first, err := s.UseJTI(ctx, "i", "j", now.Add(time.Hour))
		if err != nil || !first {
			t.Errorf("UseJTI after a cancelled attempt = %v, %v; want the id unused", first, err)
		}
	})
}
