// Package leaf is the one home of the audit log's leaf format: how an event
// becomes the bytes that are stored, hashed into the RFC 6962 Merkle tree,
// exported in bundles and verified. The audit service and every verifier
// import it, so they cannot disagree on what a leaf is.
package leaf

import (
	"crypto/sha256"

	"google.golang.org/protobuf/proto"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// HashSize is the size of a leaf hash (SHA-256).
const HashSize = sha256.Size

// Marshal is the one serialisation of an event: deterministic protobuf, the
// bytes that are stored and hashed into the Merkle leaf.
func Marshal(e *auditv1.Event) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(e)
}

// Hash returns the RFC 6962 leaf hash of leaf bytes: SHA-256(0x00 || data).
func Hash(data []byte) [HashSize]byte {
	h := sha256.New()
	h.Write([]byte{0x00})
	h.Write(data)
	var out [HashSize]byte
	h.Sum(out[:0])
	return out
}

// HashEvent returns the leaf hash of e: Hash(Marshal(e)).
func HashEvent(e *auditv1.Event) ([HashSize]byte, error) {
	b, err := Marshal(e)
	if err != nil {
		return [HashSize]byte{}, err
	}
	return Hash(b), nil
}
