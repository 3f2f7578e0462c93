package checkpoint_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
)

func newSigner(t *testing.T, origin string) *checkpoint.Signer {
	t.Helper()
	skey, _, err := checkpoint.GenerateKey(origin)
	if err != nil {
		t.Fatal(err)
	}
	s, err := checkpoint.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSignOpen(t *testing.T) {
	s := newSigner(t, "example.com/log")
	root := bytes.Repeat([]byte{7}, 32)
	signed, err := s.Sign(42, root)
	if err != nil {
		t.Fatal(err)
	}
	v, err := checkpoint.NewVerifier(s.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	got, err := v.Open(signed)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if diff := cmp.Diff(got, checkpoint.Checkpoint{Origin: "example.com/log", Size: 42, Root: root}); diff != "" {
		t.Errorf("Open (-got +want):\n%s", diff)
	}
	if v.KeyID() != s.KeyID() || s.Origin() != "example.com/log" {
		t.Errorf("KeyID %q vs %q, origin %q", v.KeyID(), s.KeyID(), s.Origin())
	}
}

func TestOpenRejects(t *testing.T) {
	s := newSigner(t, "example.com/log")
	other := newSigner(t, "example.com/log")
	root := bytes.Repeat([]byte{7}, 32)
	good, _ := s.Sign(42, root)
	forged, _ := other.Sign(42, root)
	flipped := bytes.Clone(good)
	flipped[len("example.com/log\n")] = '5' // size 42 -> 52
	for _, tc := range []struct {
		name   string
		signed []byte
	}{
		{"other-key-same-origin", forged},
		{"body-modified", flipped},
		{"empty", nil},
		{"garbage", []byte("hello\n\n— x y\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := s.Verifier()
			if _, err := v.Open(tc.signed); !errors.Is(err, checkpoint.ErrSignature) {
				t.Errorf("Open = %v, want ErrSignature", err)
			}
		})
	}
}

func TestBadKeys(t *testing.T) {
	for _, k := range []string{"", "PRIVATE+KEY+x+00000000+AAAA", "not a key"} {
		if _, err := checkpoint.NewSigner(k); err == nil {
			t.Errorf("NewSigner(%q) succeeded", k)
		}
		if _, err := checkpoint.NewVerifier(k); err == nil {
			t.Errorf("NewVerifier(%q) succeeded", k)
		}
	}
}
