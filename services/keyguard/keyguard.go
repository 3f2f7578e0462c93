// Package keyguard is the domain of the keyguard service: envelope
// encryption for internal apps, with one key ring per (data class, region),
// default-deny grants per caller, and an audit event recorded before any
// result leaves the service.
//
// The package holds the types, the errors, the rules (grants, residency,
// key versions, rotation and retirement) and the interfaces it needs from
// the outside (a KEK backend, an audit log, a state store). The backends
// (localkms, awskms), the state store (sqlite), token verification
// (oidcauth), the gRPC translation (grpcapi) and the wiring (server,
// cmd/keyguard) live in packages of their own beside it; none of them is
// imported here, so the rules can be tested with any backend and without a
// network. The audit appender is platform/auditappend, shared with the
// broker; every event is normalised with platform/auditevent before it is
// appended.
package keyguard

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/clients/keyguardclient/envelope"
)

// Auditor records audit events durably. Append returns only once the event
// is durable; an error means it may not be, and the Service then fails the
// operation (fail closed). The audit service's gRPC client, behind a small
// adapter, satisfies it.
type Auditor interface {
	// Append records ev and returns its durable position in the log.
	Append(ctx context.Context, ev *auditv1.Event) (*auditv1.AppendResult, error)
}

// BatchAuditor is an Auditor that can record many events in one durable
// append. The batch operations use it when the Auditor has it, so a batch of
// 100 items costs one audit round trip, not 100.
type BatchAuditor interface {
	// AppendBatch records evs in one append and returns their positions,
	// in order; an error means they may not all be durable.
	AppendBatch(ctx context.Context, evs []*auditv1.Event) ([]*auditv1.AppendResult, error)
}

// SecretHasher names a secret by a keyed HMAC of it, so that an audit event
// can identify a secret-shaped value a caller sent (in an encryption
// context, a grant) without holding it. *auditevent.Hasher implements it.
type SecretHasher interface {
	Ref(name string, secret []byte) *auditv1.SecretRef
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
	// Rotate adds the next key version to an existing ring and makes it
	// primary; versions are consecutive from 1, so the new one is the old
	// primary plus one.
	Rotate(ctx context.Context, dataClass, region string) (uint32, error)
	// Versions describes the ring's key versions, oldest first.
	Versions(ctx context.Context, dataClass, region string) ([]VersionInfo, error)
	// Refresh re-reads key versions that another replica may have added;
	// the Service calls it whenever the shared state changed. Backends
	// whose versions only this process changes do nothing.
	Refresh(ctx context.Context) error
}

// VersionInfo describes one key version held by a backend. Nothing in it is
// secret.
type VersionInfo struct {
	// Version is the key version, from 1.
	Version uint32
	// Created is when the version was created.
	Created time.Time
	// BackendKey names the KEK in the backend (a KMS key ARN, a local key
	// id).
	BackendKey string
}

// Store persists the state keyguard replicas share: grants created through
// the API, the run-time state of each ring (minimum decryption version,
// usage counts), the key versions of backends that keep them here (awskms)
// and the rotation lock. Writes are durable when they return.
//
// Every change that can alter a decision (grants, minimum versions, key
// versions) increases the state version in the same transaction; usage
// counts do not. A Service reads the version before each decision and
// reloads its in-memory copy when it moved, so a change acknowledged by any
// replica binds every replica's next request. The sqlite package (one
// process), the postgres package (replicas) and NewMemoryStore implement
// it; storetest is their conformance suite.
type Store interface {
	// Load returns the whole state as of one moment, with its version.
	Load(ctx context.Context) (State, error)
	// Version returns the state version: it increases with every change
	// Load would show, usage counts excepted.
	Version(ctx context.Context) (uint64, error)
	// PutGrant stores a new grant; an existing id is ErrExists.
	PutGrant(ctx context.Context, g Grant) error
	// DeleteGrant removes a grant, reporting whether it existed.
	DeleteGrant(ctx context.Context, id string) (bool, error)
	// SetMinDecryptVersion sets a ring's minimum decryption version.
	SetMinDecryptVersion(ctx context.Context, r Ring, min uint32) error
	// AddUsage adds n[k] messages to the usage count of each key version k.
	AddUsage(ctx context.Context, n map[KeyRef]uint64) error
	// KeyVersions returns the stored key versions of every ring, oldest
	// first.
	KeyVersions(ctx context.Context) (map[Ring][]StoredKeyVersion, error)
	// AddKeyVersion appends v to the ring's key versions. v.Version must be
	// the next (1 for the first): anything else is ErrConflict, so two
	// replicas can never both create one version.
	AddKeyVersion(ctx context.Context, r Ring, v StoredKeyVersion) error
	// LockRotation waits for the rotation lock (or for ctx to end) and
	// returns its release: rotations, retirements and ring creation run one
	// at a time across replicas. The lock also ends if the holder's process
	// or database session does.
	LockRotation(ctx context.Context) (unlock func(), err error)
}

// State is everything a Store holds, read at one moment.
type State struct {
	// Version is the state version the rest reflects.
	Version uint64
	// Grants are the grants created through the API.
	Grants []Grant
	// Rings is the run-time state of each ring that has one.
	Rings map[Ring]RingState
	// KeyVersions are the stored key versions, oldest first.
	KeyVersions map[Ring][]StoredKeyVersion
}

// StoredKeyVersion is one key version of a ring as a backend that keeps its
// versions in the Store records it. Nothing in it is secret; MAC lets the
// backend detect a record it did not write.
type StoredKeyVersion struct {
	// Version is the key version, from 1.
	Version uint32
	// Created is when the version was created.
	Created time.Time
	// BackendKey names the KEK in the backend (a KMS key ARN).
	BackendKey string
	// MAC authenticates the record (and its predecessors) under a key only
	// the backend holds.
	MAC []byte
}

// Errors of a Store.
var (
	// ErrExists means a grant with that id is stored already.
	ErrExists = errors.New("already exists")
	// ErrConflict means a key version was not the ring's next: another
	// replica created it first.
	ErrConflict = errors.New("key version conflict")
)

// RingState is the run-time state of a ring that outlives the process.
type RingState struct {
	// MinDecryptVersion is the oldest version allowed to decrypt, as last
	// set through the API (the configured floor applies on top).
	MinDecryptVersion uint32
	// EncryptCounts counts the messages sealed under each version, across
	// replicas, as far as they have saved them.
	EncryptCounts map[uint32]uint64
}

// RingPolicy is the configured life cycle of one ring.
type RingPolicy struct {
	// Ring names the ring.
	Ring Ring
	// RotationPeriod rotates the ring when its primary version is this old;
	// zero means never by age.
	RotationPeriod time.Duration
	// MaxEncryptions rotates the ring when its primary version has sealed
	// this many messages; zero means never by usage.
	MaxEncryptions uint64
	// MinDecryptVersion is the oldest version allowed to decrypt (a floor:
	// the API may raise it, never lower it); zero means 1.
	MinDecryptVersion uint32
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

// ParseOperation turns the lowercase name of an operation (as String
// returns it, or with '_' for '-') back into the Operation.
func ParseOperation(s string) (Operation, bool) {
	for o := OpEncrypt; o <= OpDescribe; o++ {
		if s == o.String() || s == strings.ReplaceAll(o.String(), "-", "_") {
			return o, true
		}
	}
	return 0, false
}

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
// regions. Without a grant nothing is allowed.
type Grant struct {
	// ID names the grant in audit events. Empty in configuration means
	// "config/<index>"; the API assigns "g-<random>".
	ID string
	// Principal is the caller it applies to, exactly as the identity layer
	// names it (a certificate URI SAN or "<issuer>#<sub>").
	Principal string
	// DataClass is the data class it applies to.
	DataClass string
	// Operations are the operations it allows; at least one.
	Operations []Operation
	// Regions are the regions whose rings it applies to; at least one. A
	// ring's region is a hard boundary: no other grant field widens it.
	Regions []string
	// RequiredContext are pairs every request's encryption context must
	// hold, with these values.
	RequiredContext map[string]string
	// ExpireTime is when the grant stops working. Grants created through the
	// API always have one; zero (configuration only) means never.
	ExpireTime time.Time
	// CreateTime is when the grant was created (API grants).
	CreateTime time.Time
	// CreatedBy is who created it (API grants).
	CreatedBy string

	static bool
}

// Static reports whether the grant comes from configuration (and so cannot
// be revoked through the API).
func (g *Grant) Static() bool { return g.static }

// allows reports whether g lets caller perform op on the ring with the
// encryption context encCtx at time now.
func (g *Grant) allows(caller string, op Operation, ring Ring, encCtx map[string]string, now time.Time) bool {
	if g.Principal != caller || g.DataClass != ring.DataClass ||
		!slices.Contains(g.Operations, op) || !slices.Contains(g.Regions, ring.Region) {
		return false
	}
	if !g.ExpireTime.IsZero() && !now.Before(g.ExpireTime) {
		return false
	}
	if op == OpDescribe {
		return true // describing a ring involves no encryption context
	}
	for k, v := range g.RequiredContext {
		if got, ok := encCtx[k]; !ok || got != v {
			return false
		}
	}
	return true
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
