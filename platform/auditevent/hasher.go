package auditevent

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// MinKeyBytes is the shortest HMAC key NewHasher accepts.
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
func (h *Hasher) String() string { return "auditevent.Hasher{" + h.keyID + ", key:[redacted]}" }

// GoString implements fmt.GoStringer without the key.
func (h *Hasher) GoString() string { return h.String() }
