// Package brokertest provides in-memory stand-ins for the broker's
// dependencies that live in another service: the audit log and the
// secret hasher. Everything else in broker tests is real (the development
// OIDC issuer, the verifier, the policy, the local provider).
package brokertest

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"

	"github.com/credmatrix/credmatrix/platform/auditevent"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"google.golang.org/protobuf/proto"
)

// ErrAuditDown is returned by a failing Auditor.
var ErrAuditDown = errors.New("brokertest: audit log down")

// Auditor records appended events in memory and can be told to fail, to
// test that the broker fails closed. It is safe for concurrent use.
type Auditor struct {
	mu        sync.Mutex
	events    []*auditv1.Event
	failAfter int // appends left before failing; negative: never fail
}

// NewAuditor returns a working, empty Auditor.
func NewAuditor() *Auditor { return &Auditor{failAfter: -1} }

// Append records a copy of ev with the next sequence number, unless the
// auditor is failing or the audit service would refuse ev (text that is
// not UTF-8 or holds a secret shape: auditevent.Check). Like the real
// appender it records the event even when ctx is done, and then returns
// ctx's error.
func (a *Auditor) Append(ctx context.Context, ev *auditv1.Event) (*auditv1.AppendResult, error) {
	if err := auditevent.Check(ev); err != nil {
		return nil, fmt.Errorf("brokertest: the audit service would refuse event %s: %w", ev.GetId(), err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.failAfter == 0 {
		return nil, ErrAuditDown
	}
	if a.failAfter > 0 {
		a.failAfter--
	}
	rec := proto.Clone(ev).(*auditv1.Event)
	rec.Sequence = uint64(len(a.events))
	a.events = append(a.events, rec)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return &auditv1.AppendResult{Id: rec.GetId(), Sequence: rec.Sequence}, nil
}

// SetFailing makes every later Append fail (true) or succeed (false).
func (a *Auditor) SetFailing(failing bool) {
	if failing {
		a.FailAfter(0)
	} else {
		a.FailAfter(-1)
	}
}

// FailAfter lets n more appends succeed, then fails every later one; a
// negative n never fails.
func (a *Auditor) FailAfter(n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.failAfter = n
}

// Events returns copies of the recorded events, in order.
func (a *Auditor) Events() []*auditv1.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*auditv1.Event, len(a.events))
	for i, ev := range a.events {
		out[i] = proto.Clone(ev).(*auditv1.Event)
	}
	return out
}

// Reset forgets every recorded event; the sequence restarts at 0.
func (a *Auditor) Reset() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events = nil
}

// Hasher names secrets by HMAC-SHA256 under a random key.
type Hasher struct {
	keyID string
	key   []byte
}

// NewHasher returns a Hasher with a fresh random key.
func NewHasher() *Hasher {
	key := make([]byte, 32)
	_, _ = rand.Read(key) // crypto/rand.Read never fails
	return &Hasher{keyID: "brokertest", key: key}
}

// Ref returns the SecretRef of secret.
func (h *Hasher) Ref(name string, secret []byte) *auditv1.SecretRef {
	m := hmac.New(sha256.New, h.key)
	m.Write(secret)
	return &auditv1.SecretRef{Name: name, HmacSha256: m.Sum(nil), KeyId: h.keyID}
}
