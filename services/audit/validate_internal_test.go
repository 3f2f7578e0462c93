package audit

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/platform/auditevent"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// textEvent is a valid event whose caller text (reason, a claim, a
// context value) is s.
func textEvent(s string) *auditv1.Event {
	return &auditv1.Event{
		Id:       "e1",
		Time:     timestamppb.New(time.Unix(1700000000, 0)),
		Kind:     auditv1.Kind_KIND_KEY_DECRYPT,
		Decision: auditv1.Decision_DECISION_DENY,
		Reason:   s,
		Actor:    &auditv1.Actor{Principal: "spiffe://credmatrix.dev/app", Claims: map[string]string{"ref": s}},
		Detail:   &auditv1.Event_Key{Key: &auditv1.KeyDetail{DataClass: "internal", EncryptionContext: map[string]string{s: s}}},
	}
}

// BenchmarkValidateEvent shows that validating an event costs time linear
// in its size whatever its text: ns/op grows with the size of the text and
// MB/s stays flat, for the shapes that made the former raw-token scan
// quadratic. Text beyond the event limit is refused by its size before any
// scan (the former validator spent 56 s of CPU on one 600 KB field).
//
//	go test -run '^$' -bench ValidateEvent ./services/audit/
func BenchmarkValidateEvent(b *testing.B) {
	for _, shape := range []string{"eyJ", "eyJaaaaaaaaaa.", "eyJaaaaaaaaaa.bbbbbbbbbbbb "} {
		// Four copies of the text per event (reason, a claim, a context key
		// and value): a quarter of each size is one copy.
		for _, size := range []int{4 << 10, 16 << 10, 60 << 10, 600 << 10} {
			s := strings.Repeat(shape, size/4/len(shape)+1)[:size/4]
			e := textEvent(s)
			b.Run(fmt.Sprintf("%s/%d", strings.TrimRight(shape, " "), proto.Size(e)), func(b *testing.B) {
				b.SetBytes(int64(proto.Size(e)))
				for b.Loop() {
					validateEvent(e)
				}
			})
		}
	}
}

// FuzzNormalisedEventsAreAccepted is the contract between producers and
// the audit service: whatever text a caller sends, the event a producer
// normalises with auditevent.Normalise passes validateEvent. The same
// detector runs on both sides, so they cannot disagree.
//
//	go test -run '^$' -fuzz FuzzNormalisedEventsAreAccepted ./services/audit/
func FuzzNormalisedEventsAreAccepted(f *testing.F) {
	jwt := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOmFjbWUvYXBwIn0.c2lnbmF0dXJlLWJ5dGVzLWhlcmUtYW5kLW1vcmU"
	for _, s := range []string{"main", jwt, "\x1b]0;pwned\x07\xff", strings.Repeat("eyJ", 40), "-----BEGIN PRIVATE KEY-----\nAA"} {
		f.Add(s)
	}
	h, err := auditevent.NewHasher(bytes.Repeat([]byte{1}, 32))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e := textEvent(s)
		auditevent.Normalise(e, h)
		if err := validateEvent(e); err != nil {
			t.Fatalf("normalised event refused: events[0]%v", err)
		}
	})
}

// TestNormalisedOversizedEventIsAccepted: text far beyond the event limit
// in every caller field is cut to fit.
func TestNormalisedOversizedEventIsAccepted(t *testing.T) {
	h, err := auditevent.NewHasher(bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	e := textEvent(strings.Repeat("eyJ\xff\x1b", 200<<10))
	auditevent.Normalise(e, h)
	if err := validateEvent(e); err != nil {
		t.Fatalf("normalised event refused: events[0]%v", err)
	}
}
