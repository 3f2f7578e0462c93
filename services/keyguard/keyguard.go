// Package keyguard is the domain of the keyguard service: envelope
// encryption for internal apps, with one key ring per (data class, region),
// default-deny grants per caller, and an audit event recorded before any
// result leaves the service.
//
// The package holds the types, the errors, the rules and the interfaces it
// needs from the outside (a KEK backend, an audit log). The backends
// (localkms, later awskms), the gRPC translation (grpcapi) and the wiring
// (cmd/keyguard) live in packages of their own beside it; none of them is
// imported here, so the rules can be tested with any backend and without a
// network.
package keyguard

import (
	"context"
	"fmt"
	"slices"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/services/keyguard/envelope"
)

// Auditor records audit events durably. Append returns only once the event
// is durable; an error means it may not be, and the Service then fails the
// operation (fail closed). The audit service's gRPC client, behind a small
// adapter, satisfies it.
type Auditor interface {
	// Append records ev and returns its durable position in the log.
	Append(ctx context.Context, ev *auditv1.Event) (*auditv1.AppendResult, error)
}

// KeyBackend holds the key-encryption keys (KEKs) of the key rings and wraps
// and unwraps data keys with them; the KEKs never leave it. Implementations
// wrap ErrKeyNotFound, ErrUnwrap and ErrBackendUnavailable so the Service
// can answer callers; any other error is treated as internal.
type KeyBackend interface {
	// Primary returns the newest key version of the ring, the one new data
	// is encrypted under.
	Primary(ctx context.Context, dataClass, region string) (version uint32, err error)
	// Wrap encrypts a data key under one key version of the ring, binding
	// the ring and version so the result unwraps nowhere else.
	Wrap(ctx context.Context, dataClass, region string, version uint32, dataKey []byte) ([]byte, error)
	// Unwrap reverses Wrap.
	Unwrap(ctx context.Context, dataClass, region string, version uint32, wrapped []byte) ([]byte, error)
}

// Ring names a key ring. Data in one region is encrypted with that region's
// ring only: the region is a residency boundary.
type Ring struct {
	// DataClass is the class of data the ring protects (public, internal,
	// confidential, restricted, or any configured name).
	DataClass string
	// Region is the region whose data the ring protects (e.g. "eu-west-1").
	Region string
}

// String returns "class/region", as used in logs and messages.
func (r Ring) String() string { return r.DataClass + "/" + r.Region }

// KeyRef names one key version of one ring.
type KeyRef struct {
	// DataClass of the ring.
	DataClass string
	// Region of the ring.
	Region string
	// Version of the key, from 1.
	Version uint32
}

// Operation is what a grant allows.
type Operation uint8

// The operations a grant can allow. The values match the Operation enum of
// the keyguard v1 protobuf API.
const (
	// OpEncrypt allows Encrypt and BatchEncrypt.
	OpEncrypt Operation = 1
	// OpDecrypt allows Decrypt and BatchDecrypt.
	OpDecrypt Operation = 2
	// OpGenerateDataKey allows GenerateDataKey.
	OpGenerateDataKey Operation = 3
	// OpRewrap allows Rewrap.
	OpRewrap Operation = 4
	// OpDescribe allows DescribeKeyRing.
	OpDescribe Operation = 5
)

// String returns the lowercase name of the operation, as used in messages.
func (o Operation) String() string {
	switch o {
	case OpEncrypt:
		return "encrypt"
	case OpDecrypt:
		return "decrypt"
	case OpGenerateDataKey:
		return "generate-data-key"
	case OpRewrap:
		return "rewrap"
	case OpDescribe:
		return "describe"
	}
	return fmt.Sprintf("operation(%d)", uint8(o))
}

func (o Operation) valid() bool { return o >= OpEncrypt && o <= OpDescribe }

// Grant allows one principal some operations on one data class in some
// regions. Without a grant nothing is allowed. In this version grants are
// static, from configuration; a grant store with expiry and required
// encryption-context pairs comes later.
type Grant struct {
	// ID names the grant in audit events. Empty means "config/<index>".
	ID string
	// Principal is the caller it applies to, exactly as the identity layer
	// names it (a certificate URI SAN or "<issuer>#<sub>").
	Principal string
	// DataClass is the data class it applies to.
	DataClass string
	// Operations are the operations it allows; at least one.
	Operations []Operation
	// Regions are the regions whose rings it applies to; at least one.
	Regions []string
}

// allows reports whether g lets caller perform op on the ring.
func (g *Grant) allows(caller string, op Operation, ring Ring) bool {
	return g.Principal == caller && g.DataClass == ring.DataClass &&
		slices.Contains(g.Operations, op) && slices.Contains(g.Regions, ring.Region)
}

// Limits of the API. They keep single requests cheap to hold in memory and
// to audit; larger payloads use GenerateDataKey and a local envelope.
const (
	// MaxPlaintextSize is the largest plaintext Encrypt accepts.
	MaxPlaintextSize = 64 << 10
	// MaxCiphertextSize is the largest envelope Decrypt accepts: the largest
	// header, the largest plaintext and the tag.
	MaxCiphertextSize = envelope.MaxHeaderSize + MaxPlaintextSize + envelope.TagSize
	// MaxContextPairs is the most encryption-context pairs a request may
	// carry.
	MaxContextPairs = 16
	// MaxContextKeyLen bounds each encryption-context key, in bytes.
	MaxContextKeyLen = 256
	// MaxContextValueLen bounds each encryption-context value, in bytes.
	MaxContextValueLen = 256
	// ReservedContextPrefix starts the context keys keyguard keeps for
	// itself; callers may not use it.
	ReservedContextPrefix = "credmatrix:"
	// DataKeySize is the size of the data keys keyguard generates.
	DataKeySize = envelope.DataKeySize
)
