// Package storetest is the conformance suite of broker.Store: every
// implementation's tests call Run with a constructor of fresh, empty
// stores, so SQLite and PostgreSQL behave the same.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/google/go-cmp/cmp"
)

// Run runs the suite; newStore returns a fresh, empty store that is
// closed when the test ends.
func Run(t *testing.T, newStore func(t *testing.T) broker.Store) {
	t.Run("state-version", func(t *testing.T) { runStateVersion(t, newStore(t)) })
	ctx := context.Background()
	// Times are at microsecond precision, the finest PostgreSQL keeps.
	now := time.Now().UTC().Truncate(time.Microsecond)

	t.Run("jti/reserve-commit-release", func(t *testing.T) {
		s := newStore(t)
		res := func(iss, jti, holder string) broker.JTIReservation {
			return broker.JTIReservation{Issuer: iss, JTI: jti, Holder: holder, Expires: now.Add(time.Hour), LeaseUntil: now.Add(time.Minute)}
		}
		steps := []struct {
			name string
			do   func() error
			want error
		}{
			{"reserve", func() error { return s.ReserveJTI(ctx, res("a", "1", "h1"), now) }, nil},
			{"in-use-by-another-request", func() error { return s.ReserveJTI(ctx, res("a", "1", "h2"), now) }, broker.ErrJTIInUse},
			{"other-issuer-independent", func() error { return s.ReserveJTI(ctx, res("b", "1", "h3"), now) }, nil},
			{"release", func() error { return s.ReleaseJTI(ctx, res("a", "1", "h1")) }, nil},
			{"released-id-reserved-again", func() error { return s.ReserveJTI(ctx, res("a", "1", "h2"), now) }, nil},
			{"commit-by-former-holder-lost", func() error { return s.CommitJTI(ctx, res("a", "1", "h1")) }, broker.ErrJTILost},
			{"release-by-former-holder-changes-nothing", func() error { return s.ReleaseJTI(ctx, res("a", "1", "h1")) }, nil},
			{"still-held", func() error { return s.ReserveJTI(ctx, res("a", "1", "h4"), now) }, broker.ErrJTIInUse},
			{"commit", func() error { return s.CommitJTI(ctx, res("a", "1", "h2")) }, nil},
			{"used", func() error { return s.ReserveJTI(ctx, res("a", "1", "h5"), now) }, broker.ErrJTIUsed},
			{"used-even-after-any-lease", func() error { return s.ReserveJTI(ctx, res("a", "1", "h5"), now.Add(time.Hour-time.Second)) }, broker.ErrJTIUsed},
			{"release-of-used-changes-nothing", func() error { return s.ReleaseJTI(ctx, res("a", "1", "h2")) }, nil},
			{"still-used", func() error { return s.ReserveJTI(ctx, res("a", "1", "h6"), now) }, broker.ErrJTIUsed},
			{"lapsed-reservation-taken-over", func() error { return s.ReserveJTI(ctx, res("b", "1", "h7"), now.Add(time.Minute)) }, nil},
			{"commit-after-takeover-lost", func() error { return s.CommitJTI(ctx, res("b", "1", "h3")) }, broker.ErrJTILost},
			{"taker-commits", func() error { return s.CommitJTI(ctx, res("b", "1", "h7")) }, nil},
		}
		for _, st := range steps {
			if err := st.do(); !errors.Is(err, st.want) || (st.want == nil && err != nil) {
				t.Errorf("%s: %v, want %v", st.name, err, st.want)
			}
		}
	})

	t.Run("jti/concurrent-reservations-admit-one", func(t *testing.T) {
		s := newStore(t)
		assertOneWinner(t, []broker.Store{s}, now)
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
		r := broker.JTIReservation{Issuer: "i", JTI: "j", Holder: "h", Expires: now.Add(time.Hour), LeaseUntil: now.Add(time.Minute)}
		if err := s.ReserveJTI(cctx, r, now); err == nil {
			t.Error("ReserveJTI with a cancelled context succeeded")
		}
		if err := s.ReserveJTI(ctx, r, now); err != nil {
			t.Errorf("ReserveJTI after a cancelled attempt = %v; want the id free", err)
		}
	})
}

// RunShared runs the checks that need two handles on one database, as
// two broker replicas have: open returns both, closed when the test
// ends.
func RunShared(t *testing.T, open func(t *testing.T) (broker.Store, broker.Store)) {
	now := time.Now().UTC().Truncate(time.Microsecond)
	t.Run("jti/replicas-admit-one", func(t *testing.T) {
		a, b := open(t)
		assertOneWinner(t, []broker.Store{a, b}, now)
	})
	t.Run("jti/used-at-one-replica-used-at-the-other", func(t *testing.T) {
		a, b := open(t)
		ctx := context.Background()
		r := broker.JTIReservation{Issuer: "iss", JTI: "x", Holder: "h1", Expires: now.Add(time.Hour), LeaseUntil: now.Add(time.Minute)}
		if err := a.ReserveJTI(ctx, r, now); err != nil {
			t.Fatal(err)
		}
		r2 := r
		r2.Holder = "h2"
		if err := b.ReserveJTI(ctx, r2, now); !errors.Is(err, broker.ErrJTIInUse) {
			t.Errorf("reserve at the other replica while held: %v, want ErrJTIInUse", err)
		}
		if err := a.CommitJTI(ctx, r); err != nil {
			t.Fatal(err)
		}
		if err := b.ReserveJTI(ctx, r2, now.Add(time.Hour-time.Second)); !errors.Is(err, broker.ErrJTIUsed) {
			t.Errorf("reserve at the other replica once used: %v, want ErrJTIUsed", err)
		}
	})
}

// assertOneWinner races reservations of one id through the stores (one
// handle per replica), then commits the winner's: exactly one wins, the
// others see it in use, and after the commit it is used.
func assertOneWinner(t *testing.T, stores []broker.Store, now time.Time) {
	t.Helper()
	ctx := context.Background()
	const n = 16
	start := make(chan struct{})
	var wg sync.WaitGroup
	results := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			r := broker.JTIReservation{Issuer: "iss", JTI: "same", Holder: fmt.Sprintf("h%d", i), Expires: now.Add(time.Hour), LeaseUntil: now.Add(time.Minute)}
			results[i] = stores[i%len(stores)].ReserveJTI(ctx, r, now)
		}()
	}
	close(start)
	wg.Wait()
	winner, inUse := -1, 0
	for i, err := range results {
		switch {
		case err == nil && winner < 0:
			winner = i
		case err == nil:
			t.Errorf("reservations %d and %d both won", winner, i)
		case errors.Is(err, broker.ErrJTIInUse):
			inUse++
		default:
			t.Errorf("reservation %d: %v", i, err)
		}
	}
	if winner < 0 || inUse != n-1 {
		t.Fatalf("winner %d, %d in use; want exactly one winner of %d", winner, inUse, n)
	}
	w := broker.JTIReservation{Issuer: "iss", JTI: "same", Holder: fmt.Sprintf("h%d", winner), Expires: now.Add(time.Hour), LeaseUntil: now.Add(time.Minute)}
	if err := stores[winner%len(stores)].CommitJTI(ctx, w); err != nil {
		t.Fatal(err)
	}
	for i, s := range stores {
		r := w
		r.Holder = "late"
		if err := s.ReserveJTI(ctx, r, now); !errors.Is(err, broker.ErrJTIUsed) {
			t.Errorf("store %d after the commit: %v, want ErrJTIUsed", i, err)
		}
	}
}
