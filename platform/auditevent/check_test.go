package auditevent

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

const (
	testJWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOmFjbWUifQ.c2lnbmF0dXJlc2lnbmF0dXJlc2ln"
	testPEM = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----"
)

// TestCheckAgreesWithTheWalk: Check (with its serialised fast path) gives
// exactly the answer of the field-by-field walk, for clean events, bad
// strings at every depth, and marks that only bytes fields hold.
func TestCheckAgreesWithTheWalk(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(e *auditv1.Event)
		wantBad bool
	}{
		{"clean", func(*auditv1.Event) {}, false},
		{"clean/mark-in-bytes-only", func(e *auditv1.Event) {
			e.SecretRefs[0].HmacSha256 = []byte("eyJ-----BEGIN -----BEGIN PRIVATE KEY-----eyJhbGciOiJSUzI1NiJ9")[:32]
		}, false},
		{"clean/mark-without-shape", func(e *auditv1.Event) { e.Reason = "eyJ and -----BEGIN CERTIFICATE-----" }, false},
		{"bad/jwt-in-reason", func(e *auditv1.Event) { e.Reason = "token " + testJWT }, true},
		{"bad/jwt-in-claim-value", func(e *auditv1.Event) { e.Actor.Claims["ref"] = testJWT }, true},
		{"bad/jwt-in-claim-key", func(e *auditv1.Event) { e.Actor.Claims[testJWT] = "x" }, true},
		{"bad/pem-in-detail", func(e *auditv1.Event) { e.GetSession().AccountName = testPEM }, true},
		{"bad/utf8-in-reason", func(e *auditv1.Event) { e.Reason = "a\xffb" }, true},
		{"bad/utf8-in-claim-key", func(e *auditv1.Event) { e.Actor.Claims["k\xc3"] = "v" }, true},
		{"bad/utf8-in-claim-value", func(e *auditv1.Event) { e.Actor.Claims["ref"] = "\xed\xa0\x80" }, true},
		{"bad/utf8-in-secret-ref-name", func(e *auditv1.Event) { e.SecretRefs[0].Name = "\x80" }, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := event("refs/heads/main")
			tc.edit(e)
			var p path
			want := checkMessage(e.ProtoReflect(), &p)
			got := Check(e)
			if diff := cmp.Diff(errString(got), errString(want)); diff != "" {
				t.Errorf("Check and the walk disagree (-Check +walk):\n%s", diff)
			}
			var te *TextError
			if bad := errors.As(got, &te); bad != tc.wantBad {
				t.Errorf("Check = %v, want bad %v", got, tc.wantBad)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestUTF8Enforced: the fast path is taken only for types whose every
// reachable string is proto3 (serialising fails on bad UTF-8).
func TestUTF8Enforced(t *testing.T) {
	for _, m := range []proto.Message{&auditv1.Event{}, &auditv1.AppendRequest{}, &structpb.Struct{}} {
		if !utf8Enforced(m.ProtoReflect().Descriptor()) {
			t.Errorf("%s: not enforced, want enforced (proto3 throughout)", m.ProtoReflect().Descriptor().FullName())
		}
	}
}

// BenchmarkCheck measures Check on a clean event (the fast path) and on
// one that needs the walk.
//
//	go test -run '^$' -bench Check ./platform/auditevent/
func BenchmarkCheck(b *testing.B) {
	b.Run("clean", func(b *testing.B) {
		e := event("refs/heads/main")
		b.ReportAllocs()
		for b.Loop() {
			if err := Check(e); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("walk", func(b *testing.B) {
		e := event("eyJ but no token")
		b.ReportAllocs()
		for b.Loop() {
			if err := Check(e); err != nil {
				b.Fatal(err)
			}
		}
	})
}
