// Package auditsink is how broker and keyguard write to the audit log: a
// small client that appends one event and returns only once the audit
// service says it is durable, and the keyed HMAC that names secrets in
// events without storing them.
//
// Callers treat every error from Append as "audit unavailable" and fail
// closed: no credential, data key or plaintext is returned without its event.
package auditsink

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"google.golang.org/grpc"
)

// DefaultTimeout bounds one append when the caller's context has no earlier
// deadline, so a hung audit service turns into a prompt UNAVAILABLE.
const DefaultTimeout = 5 * time.Second

// Client appends events to the audit service.
type Client struct {
	rpc     auditv1.AuditServiceClient
	timeout time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithTimeout sets the per-append timeout (DefaultTimeout otherwise).
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// New returns a client over conn (see grpcclient.Dial).
func New(conn grpc.ClientConnInterface, opts ...Option) *Client {
	c := &Client{rpc: auditv1.NewAuditServiceClient(conn), timeout: DefaultTimeout}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Append records ev and returns its durable position. It does not retry: the
// caller's request fails instead, and the caller's client retries it whole.
func (c *Client) Append(ctx context.Context, ev *auditv1.Event) (*auditv1.AppendResult, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.rpc.Append(ctx, &auditv1.AppendRequest{Events: []*auditv1.Event{ev}})
	if err != nil {
		return nil, fmt.Errorf("append audit event %s: %w", ev.GetId(), err)
	}
	if len(resp.GetResults()) != 1 {
		return nil, fmt.Errorf("append audit event %s: audit returned %d results for 1 event", ev.GetId(), len(resp.GetResults()))
	}
	return resp.GetResults()[0], nil
}

// MinKeyBytes is the shortest HMAC key Hasher accepts.
const MinKeyBytes = 32

// Hasher computes the keyed HMACs that stand for secrets in audit events.
// Its String method never shows the key.
type Hasher struct {
	keyID string
	key   []byte
}

// NewHasher returns a hasher for key. The key id is derived from the key
// (a SHA-256 fingerprint), so the log records which key recomputes a ref
// without revealing it.
func NewHasher(key []byte) (*Hasher, error) {
	if len(key) < MinKeyBytes {
		return nil, errors.New("audit HMAC key: at least 32 bytes required")
	}
	fp := sha256.Sum256(append([]byte("credmatrix audit hmac key id\x00"), key...))
	return &Hasher{keyID: "hmac-sha256:" + hex.EncodeToString(fp[:8]), key: append([]byte(nil), key...)}, nil
}

// KeyID names the key in events.
func (h *Hasher) KeyID() string { return h.keyID }

// Ref returns the SecretRef of one secret value.
func (h *Hasher) Ref(name string, secret []byte) *auditv1.SecretRef {
	m := hmac.New(sha256.New, h.key)
	m.Write(secret)
	return &auditv1.SecretRef{Name: name, HmacSha256: m.Sum(nil), KeyId: h.keyID}
}

// String implements fmt.Stringer without the key.
func (h *Hasher) String() string { return "auditsink.Hasher{" + h.keyID + ", key:[redacted]}" }

// GoString implements fmt.GoStringer without the key.
func (h *Hasher) GoString() string { return h.String() }
