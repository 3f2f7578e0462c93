// Package backendtest is the conformance suite every keyguard.KeyBackend
// passes: localkms, and awskms against local-kms. A backend's own
// tests call Run with a function that builds a backend holding the given
// rings, so that every backend is held to the same behaviour, errors
// included.
package backendtest

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/credmatrix/credmatrix/services/keyguard"
)

// NewBackend returns a fresh backend in which each of rings exists with at
// least one key version. It may use t.TempDir and t.Cleanup.
type NewBackend func(t *testing.T, rings ...keyguard.Ring) keyguard.KeyBackend

// Run runs the conformance suite against backends built by newBackend.
func Run(t *testing.T, newBackend NewBackend) {
	ringA := keyguard.Ring{DataClass: "confidential", Region: "eu-west-1"}
	ringB := keyguard.Ring{DataClass: "confidential", Region: "us-east-1"}
	dataKey := bytes.Repeat([]byte{0x5a}, keyguard.DataKeySize)
	ctx := context.Background()

	setup := func(t *testing.T) (keyguard.KeyBackend, uint32) {
		t.Helper()
		b := newBackend(t, ringA, ringB)
		v, err := b.Primary(ctx, ringA.DataClass, ringA.Region)
		if err != nil {
			t.Fatalf("Primary(%s): %v", ringA, err)
		}
		if v == 0 {
			t.Fatalf("Primary(%s) = 0, versions start at 1", ringA)
		}
		return b, v
	}

	t.Run("round-trip", func(t *testing.T) {
		b, v := setup(t)
		wrapped, err := b.Wrap(ctx, ringA.DataClass, ringA.Region, v, dataKey)
		if err != nil {
			t.Fatalf("Wrap: %v", err)
		}
		if bytes.Contains(wrapped, dataKey) {
			t.Fatal("wrapped key contains the data key")
		}
		got, err := b.Unwrap(ctx, ringA.DataClass, ringA.Region, v, wrapped)
		if err != nil {
			t.Fatalf("Unwrap: %v", err)
		}
		if !bytes.Equal(got, dataKey) {
			t.Fatal("Unwrap did not return the wrapped data key")
		}
	})

	t.Run("wraps-differ", func(t *testing.T) {
		b, v := setup(t)
		w1, err1 := b.Wrap(ctx, ringA.DataClass, ringA.Region, v, dataKey)
		w2, err2 := b.Wrap(ctx, ringA.DataClass, ringA.Region, v, dataKey)
		if err := errors.Join(err1, err2); err != nil {
			t.Fatalf("Wrap: %v", err)
		}
		if bytes.Equal(w1, w2) {
			t.Fatal("two wraps of the same key are identical")
		}
	})

	t.Run("not-found/ring", func(t *testing.T) {
		b, _ := setup(t)
		if _, err := b.Primary(ctx, "restricted", "eu-west-1"); !errors.Is(err, keyguard.ErrKeyNotFound) {
			t.Errorf("Primary of a missing ring: error %v, want ErrKeyNotFound", err)
		}
		if _, err := b.Wrap(ctx, "restricted", "eu-west-1", 1, dataKey); !errors.Is(err, keyguard.ErrKeyNotFound) {
			t.Errorf("Wrap in a missing ring: error %v, want ErrKeyNotFound", err)
		}
	})

	t.Run("not-found/version", func(t *testing.T) {
		b, v := setup(t)
		wrapped, err := b.Wrap(ctx, ringA.DataClass, ringA.Region, v, dataKey)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Unwrap(ctx, ringA.DataClass, ringA.Region, v+1000, wrapped); !errors.Is(err, keyguard.ErrKeyNotFound) {
			t.Errorf("Unwrap with a missing version: error %v, want ErrKeyNotFound", err)
		}
	})

	t.Run("unwrap/other-ring", func(t *testing.T) {
		b, v := setup(t)
		wrapped, err := b.Wrap(ctx, ringA.DataClass, ringA.Region, v, dataKey)
		if err != nil {
			t.Fatal(err)
		}
		vb, err := b.Primary(ctx, ringB.DataClass, ringB.Region)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Unwrap(ctx, ringB.DataClass, ringB.Region, vb, wrapped); !errors.Is(err, keyguard.ErrUnwrap) {
			t.Errorf("Unwrap in another ring: error %v, want ErrUnwrap", err)
		}
	})

	t.Run("unwrap/tampered", func(t *testing.T) {
		b, v := setup(t)
		wrapped, err := b.Wrap(ctx, ringA.DataClass, ringA.Region, v, dataKey)
		if err != nil {
			t.Fatal(err)
		}
		for i := range wrapped {
			w := bytes.Clone(wrapped)
			w[i] ^= 0x01
			if _, err := b.Unwrap(ctx, ringA.DataClass, ringA.Region, v, w); !errors.Is(err, keyguard.ErrUnwrap) {
				t.Fatalf("Unwrap with byte %d flipped: error %v, want ErrUnwrap", i, err)
			}
		}
		for _, w := range [][]byte{nil, wrapped[:len(wrapped)-1]} {
			if _, err := b.Unwrap(ctx, ringA.DataClass, ringA.Region, v, w); !errors.Is(err, keyguard.ErrUnwrap) {
				t.Fatalf("Unwrap of %d bytes: error %v, want ErrUnwrap", len(w), err)
			}
		}
	})

	t.Run("rotate", func(t *testing.T) {
		b, v := setup(t)
		old, err := b.Wrap(ctx, ringA.DataClass, ringA.Region, v, dataKey)
		if err != nil {
			t.Fatal(err)
		}
		nv, err := b.Rotate(ctx, ringA.DataClass, ringA.Region)
		if err != nil {
			t.Fatalf("Rotate: %v", err)
		}
		if nv != v+1 {
			t.Fatalf("Rotate made version %d, want %d", nv, v+1)
		}
		if p, err := b.Primary(ctx, ringA.DataClass, ringA.Region); err != nil || p != nv {
			t.Fatalf("Primary after Rotate = %d, %v; want %d", p, err, nv)
		}
		if p, err := b.Primary(ctx, ringB.DataClass, ringB.Region); err != nil || p != 1 {
			t.Fatalf("Primary of the other ring after Rotate = %d, %v; want 1", p, err)
		}
		vs, err := b.Versions(ctx, ringA.DataClass, ringA.Region)
		if err != nil || len(vs) != int(nv) || vs[len(vs)-1].Version != nv || vs[0].Version != 1 || vs[0].BackendKey == "" {
			t.Fatalf("Versions after Rotate = %+v, %v", vs, err)
		}
		got, err := b.Unwrap(ctx, ringA.DataClass, ringA.Region, v, old)
		if err != nil || !bytes.Equal(got, dataKey) {
			t.Fatalf("Unwrap under the old version after Rotate: %v", err)
		}
		if _, err := b.Unwrap(ctx, ringA.DataClass, ringA.Region, nv, old); !errors.Is(err, keyguard.ErrUnwrap) {
			t.Fatalf("Unwrap of an old-version key under the new version: %v, want ErrUnwrap", err)
		}
		if _, err := b.Rotate(ctx, "restricted", "eu-west-1"); !errors.Is(err, keyguard.ErrKeyNotFound) {
			t.Errorf("Rotate of a missing ring: %v, want ErrKeyNotFound", err)
		}
		if _, err := b.Versions(ctx, "restricted", "eu-west-1"); !errors.Is(err, keyguard.ErrKeyNotFound) {
			t.Errorf("Versions of a missing ring: %v, want ErrKeyNotFound", err)
		}
	})

	t.Run("cancelled", func(t *testing.T) {
		b, v := setup(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := b.Wrap(cctx, ringA.DataClass, ringA.Region, v, dataKey); !errors.Is(err, context.Canceled) {
			t.Errorf("Wrap with a cancelled context: error %v, want context.Canceled", err)
		}
	})
}
