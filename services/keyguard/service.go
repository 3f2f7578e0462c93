package keyguard

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/platform/auditevent"
	"github.com/credmatrix/credmatrix/platform/coalesce"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/clients/keyguardclient/envelope"
	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// SystemPrincipal is the actor of the operations keyguard performs on its
// own, such as automatic rotation.
const SystemPrincipal = "keyguard"

// Config is what a Service is built from. Values only: the cmd reads files
// and flags, builds the backend, the store and the audit client, and hands
// them over.
type Config struct {
	// Backend holds the key-encryption keys. Required.
	Backend KeyBackend
	// Auditor records every operation before its result is returned.
	// Required. If it also implements BatchAuditor, batches use one append.
	Auditor Auditor
	// Hasher names the secret-shaped values callers put in events (see
	// auditevent.Normalise). nil means a random key made at start: such
	// refs cannot be matched across restarts, so servers always set one.
	Hasher SecretHasher
	// Store persists API grants and ring state; nil keeps them in memory
	// only (tests, throwaway stacks).
	Store Store
	// Rings are the key rings this service serves; a request for any other
	// (data class, region) is NotFound. The backend must have a key for
	// each (the cmd ensures that at start-up).
	Rings []Ring
	// RingPolicies set rotation and retirement per ring; a ring without one
	// never rotates by itself and decrypts from version 1.
	RingPolicies []RingPolicy
	// Grants are the static grants from configuration; the API adds more.
	Grants []Grant
	// Admins are the principals allowed RotateKey, SetMinDecryptVersion and
	// the grant operations, and DescribeKeyRing on every ring.
	Admins []string
	// Clock stamps audit events and checks expiry; nil means time.Now.
	Clock func() time.Time
	// Rand supplies data keys, salts and ids; nil means crypto/rand.Reader.
	// It must be safe for concurrent use.
	Rand io.Reader
	// ZoneOf returns the data-residency zone of a region ("" for none); an
	// event is stamped with the zone of the ring (or grant regions) it is
	// about, which decides the audit log it goes to. Nil: no zones.
	ZoneOf func(region string) string
	// BackendName names the backend in audit events ("local", "awskms").
	// Required.
	BackendName string
	// StateTimeout bounds one read of the state version; zero means
	// coalesce.DefaultTimeout.
	StateTimeout time.Duration
}

// Service performs keyguard's operations. It is safe for concurrent use.
type Service struct {
	backend     KeyBackend
	auditor     Auditor
	batch       BatchAuditor
	hasher      SecretHasher
	store       Store
	clock       func() time.Time
	rand        io.Reader
	backendName string
	zoneOf      func(region string) string
	admins      map[string]bool
	rings       map[Ring]*ringState

	// gmu guards the grants. Writers update the store first, then the map,
	// under the write lock, so every request that starts after a
	// CreateGrant or RevokeGrant returns sees it; requests at other
	// replicas see it through the state version (see sync).
	gmu    sync.RWMutex
	grants map[string]*Grant
	byWho  map[string][]*Grant
	static []Grant

	// versions reads the store's state version for requests (shared by
	// concurrent ones); loaded is the version of the in-memory copy; smu
	// serialises reloads and flushes of it.
	versions *coalesce.Fresh[uint64]
	loaded   atomic.Uint64
	smu      sync.Mutex

	// kick asks the rotation loop to look at the rings now (a usage limit
	// was reached); see RotationKick.
	kick chan struct{}
}

// New checks cfg, loads the stored grants and ring state, and returns a
// Service. A bad configuration is an error that names the field, so the cmd
// can refuse to start.
func New(ctx context.Context, cfg Config) (*Service, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Service{
		backend:     tracedBackend{KeyBackend: cfg.Backend, name: cfg.BackendName},
		auditor:     cfg.Auditor,
		hasher:      cfg.Hasher,
		store:       cfg.Store,
		clock:       cfg.Clock,
		rand:        cfg.Rand,
		backendName: cfg.BackendName,
		zoneOf:      cfg.ZoneOf,
		admins:      map[string]bool{},
		rings:       make(map[Ring]*ringState, len(cfg.Rings)),
		grants:      map[string]*Grant{},
		byWho:       map[string][]*Grant{},
		kick:        make(chan struct{}, 1),
	}
	if b, ok := cfg.Auditor.(BatchAuditor); ok {
		s.batch = b
	}
	if s.store == nil {
		s.store = NewMemoryStore()
	}
	s.versions = coalesce.New(s.store.Version, cfg.StateTimeout)
	if s.clock == nil {
		s.clock = time.Now
	}
	if s.rand == nil {
		s.rand = rand.Reader
	}
	if s.hasher == nil {
		key := make([]byte, auditevent.MinKeyBytes)
		_, _ = rand.Read(key) // crypto/rand, not cfg.Rand: tests' readers stay theirs
		h, err := auditevent.NewHasher(key)
		if err != nil {
			return nil, err
		}
		s.hasher = h
	}
	for _, a := range cfg.Admins {
		s.admins[a] = true
	}
	for _, r := range cfg.Rings {
		s.rings[r] = newRingState(RingPolicy{Ring: r})
	}
	for i, p := range cfg.RingPolicies {
		rs, ok := s.rings[p.Ring]
		if !ok {
			return nil, fmt.Errorf("keyguard: config: ring_policies[%d]: ring %s is not configured", i, p.Ring)
		}
		rs.policy = p
	}
	for i, g := range cfg.Grants {
		g := cloneGrant(g)
		if g.ID == "" {
			g.ID = fmt.Sprintf("config/%d", i)
		}
		s.static = append(s.static, g)
	}
	if err := s.reload(ctx, 0, true); err != nil {
		return nil, err
	}
	return s, nil
}

func cloneGrant(g Grant) Grant {
	g.Operations = append([]Operation(nil), g.Operations...)
	g.Regions = append([]string(nil), g.Regions...)
	g.RequiredContext = maps.Clone(g.RequiredContext)
	return g
}

// EncryptInput is one plaintext to encrypt.
type EncryptInput struct {
	// DataClass and Region name the ring. Required.
	DataClass, Region string
	// Plaintext is at most MaxPlaintextSize bytes. Secret.
	Plaintext []byte
	// Context is the encryption context: authenticated, not encrypted, and
	// needed again to decrypt. Recorded in the audit event.
	Context map[string]string
}

// EncryptOutput is an encrypted plaintext.
type EncryptOutput struct {
	// Ciphertext is the envelope (docs/envelope-format.md).
	Ciphertext []byte
	// Key is the key version used.
	Key KeyRef
	// AuditSequence is the sequence number of the audit event.
	AuditSequence uint64
}

// DecryptInput is one envelope to decrypt.
type DecryptInput struct {
	// Ciphertext is the envelope. Required.
	Ciphertext []byte
	// Context is the encryption context given to Encrypt.
	Context map[string]string
}

// DecryptOutput is a decrypted envelope.
type DecryptOutput struct {
	// Plaintext is the decrypted data. Secret.
	Plaintext []byte
	// Key is the key version that opened it.
	Key KeyRef
	// AuditSequence is the sequence number of the audit event.
	AuditSequence uint64
}

// errAuditUnavailable is what the caller learns when the audit log cannot
// record an operation: it was not performed, and may be retried.
func errAuditUnavailable(err error) error {
	return &domainerr.Error{Code: domainerr.Unavailable, Message: "audit log unavailable; operation not performed", Err: err}
}

// errAuthFailed is the one answer to every failure to authenticate an
// envelope, whichever check failed, so the answer leaks nothing.
func errAuthFailed(err error) error {
	return &domainerr.Error{Code: domainerr.Invalid, Message: "ciphertext: authentication failed (wrong encryption context or tampered data)", Err: err}
}

// op is one operation in flight: what the audit event needs to say about
// it.
type op struct {
	caller      string
	kind        auditv1.Kind
	operation   Operation
	ring        Ring
	grantID     string
	version     uint32
	fromVersion uint32
	context     map[string]string
	size        int
	items       uint32
	detail      func(*auditv1.KeyDetail)
	wrapped     []byte
}

// sealed is the result of sealing one plaintext, before it is audited.
type sealed struct {
	ciphertext []byte
	version    uint32
}

// dataKey is a fresh data key wrapped under a ring's primary version.
type dataKey struct {
	version uint32
	key     []byte
	wrapped []byte
}

// newDataKey generates a data key and wraps it under the ring's primary
// version.
func (s *Service) newDataKey(ctx context.Context, ring Ring) (*dataKey, error) {
	version, err := s.backend.Primary(ctx, ring.DataClass, ring.Region)
	if err != nil {
		return nil, backendError(ring, err)
	}
	dk := &dataKey{version: version, key: make([]byte, DataKeySize)}
	if _, err := io.ReadFull(s.rand, dk.key); err != nil {
		return dk, &domainerr.Error{Code: domainerr.Internal, Message: domainerr.InternalMessage, Err: fmt.Errorf("generate data key: %w", err)}
	}
	if dk.wrapped, err = s.backend.Wrap(ctx, ring.DataClass, ring.Region, version, dk.key); err != nil {
		clear(dk.key)
		return dk, backendError(ring, err)
	}
	return dk, nil
}

// sealWith seals plaintext in a new envelope under dk.
func (s *Service) sealWith(dk *dataKey, ring Ring, encCtx map[string]string, plaintext []byte) (sealed, error) {
	ct, err := envelope.Seal(dk.key, envelope.Header{
		DataClass: ring.DataClass, Region: ring.Region, KeyVersion: dk.version, WrappedKey: dk.wrapped,
	}, encCtx, plaintext, s.rand)
	if err != nil {
		return sealed{version: dk.version}, &domainerr.Error{Code: domainerr.Internal, Message: domainerr.InternalMessage, Err: err}
	}
	return sealed{ciphertext: ct, version: dk.version}, nil
}

// seal generates a data key, wraps it under the ring's primary version and
// seals plaintext with it.
func (s *Service) seal(ctx context.Context, ring Ring, encCtx map[string]string, plaintext []byte) (sealed, error) {
	dk, err := s.newDataKey(ctx, ring)
	if err != nil {
		if dk != nil {
			return sealed{version: dk.version}, err
		}
		return sealed{}, err
	}
	defer clear(dk.key)
	return s.sealWith(dk, ring, encCtx, plaintext)
}

// open parses, authorizes (through check) and opens an envelope. The header
// is parsed before anything else; o is filled in from it.
func (s *Service) open(ctx context.Context, o *op, ciphertext []byte, encCtx map[string]string) ([]byte, error) {
	dataKey, err := s.backend.Unwrap(ctx, o.ring.DataClass, o.ring.Region, o.version, o.wrapped)
	if err != nil {
		switch {
		case errors.Is(err, ErrUnwrap):
			err = errAuthFailed(err)
		case errors.Is(err, ErrKeyNotFound):
			err = &domainerr.Error{Code: domainerr.NotFound, Message: fmt.Sprintf("no key version %d for data class %s in region %s", o.version, o.ring.DataClass, o.ring.Region), Err: err}
		default:
			err = backendError(o.ring, err)
		}
		return nil, err
	}
	plaintext, _, err := envelope.Open(dataKey, ciphertext, encCtx)
	clear(dataKey)
	if err != nil {
		if errors.Is(err, envelope.ErrAuthentication) {
			return nil, errAuthFailed(err)
		}
		return nil, &domainerr.Error{Code: domainerr.Invalid, Message: "ciphertext: " + err.Error(), Err: err}
	}
	return plaintext, nil
}

// parse parses an envelope's header into a new op of the given kind.
func parse(caller string, kind auditv1.Kind, operation Operation, ciphertext []byte, encCtx map[string]string) (*op, error) {
	h, _, err := envelope.ParseHeader(ciphertext)
	if err != nil {
		return nil, &domainerr.Error{Code: domainerr.Invalid, Message: "ciphertext: " + err.Error(), Err: err}
	}
	return &op{
		caller: caller, kind: kind, operation: operation,
		ring: Ring{DataClass: h.DataClass, Region: h.Region}, version: h.KeyVersion, context: encCtx,
		wrapped: h.WrappedKey,
	}, nil
}

// Encrypt seals in.Plaintext under the primary key version of the ring of
// (in.DataClass, in.Region) for caller, the verified identity of the
// requester.
//
// The request is validated, the ring must exist and a grant must allow it;
// a denial is audited. A fresh data key is generated, wrapped by the backend
// and used once. The ciphertext is returned only after the audit event is
// durable: if the audit log fails, Encrypt fails with Unavailable and
// returns nothing.
func (s *Service) Encrypt(ctx context.Context, caller string, in EncryptInput) (EncryptOutput, error) {
	res := s.EncryptBatch(ctx, caller, []EncryptInput{in})
	return res[0].Output, res[0].Err
}

// Decrypt opens an envelope for caller. The ring and key version come from
// the envelope's header, which is parsed (and a malformed one rejected)
// before anything else; then a grant must allow decryption on that ring (a
// denial is audited), the version must not be retired, the data key is
// unwrapped and the envelope opened. A wrong context or a tampered envelope
// is Invalid and audited as an error. The plaintext is returned only after
// the audit event is durable.
func (s *Service) Decrypt(ctx context.Context, caller string, in DecryptInput) (DecryptOutput, error) {
	res := s.DecryptBatch(ctx, caller, []DecryptInput{in})
	return res[0].Output, res[0].Err
}

// EncryptResult is one item's outcome in a batch.
type EncryptResult struct {
	// Output is set when Err is nil.
	Output EncryptOutput
	// Err is the item's failure.
	Err error
}

// DecryptResult is one item's outcome in a batch.
type DecryptResult struct {
	// Output is set when Err is nil.
	Output DecryptOutput
	// Err is the item's failure.
	Err error
}

// pending is one audited item of a batch: its event, and what becomes of it
// once the event is durable.
type pending struct {
	ev   *auditv1.Event
	done func(seq uint64)
}

// EncryptBatch encrypts each item as Encrypt would and reports failures per
// item, in order. The audit events of all items (allowed, denied, failed)
// are recorded in one append; if it fails, every item fails with
// Unavailable and no ciphertext is returned.
//
// The items of one ring share one fresh data key, wrapped once: each
// envelope still derives its own AES key from its own salt (see
// envelope.Seal), so sharing is as safe as a client's cached data key, and
// it saves a KEK wrap (a KMS call with awskms) per item.
func (s *Service) EncryptBatch(ctx context.Context, caller string, items []EncryptInput) []EncryptResult {
	res := make([]EncryptResult, len(items))
	if err := s.sync(ctx); err != nil {
		for i := range res {
			res[i].Err = err
		}
		return res
	}
	evs := make([]pending, 0, len(items))
	keys := map[Ring]*dataKey{}
	defer func() {
		for _, dk := range keys {
			clear(dk.key)
		}
	}()
	for i := range items {
		in := &items[i]
		if err := in.validate(); err != nil {
			res[i].Err = err
			continue
		}
		o := &op{
			caller: caller, kind: auditv1.Kind_KIND_KEY_ENCRYPT, operation: OpEncrypt,
			ring: Ring{DataClass: in.DataClass, Region: in.Region}, context: in.Context, size: len(in.Plaintext),
		}
		if err := s.check(o); err != nil {
			res[i].Err = err
			if e := s.deniedEvent(ctx, o, err); e != nil {
				evs = append(evs, pending{ev: e})
			}
			continue
		}
		dk := keys[o.ring]
		var err error
		if dk == nil {
			if dk, err = s.newDataKey(ctx, o.ring); err == nil {
				keys[o.ring] = dk
			}
		}
		var sl sealed
		if err == nil {
			sl, err = s.sealWith(dk, o.ring, in.Context, in.Plaintext)
		}
		if dk != nil {
			o.version = dk.version
		}
		if err != nil {
			res[i].Err = err
			evs = append(evs, pending{ev: s.event(ctx, o, auditv1.Decision_DECISION_ERROR, domainerr.MessageOf(err))})
			continue
		}
		s.rings[o.ring].count(sl.version, s.kick)
		evs = append(evs, pending{
			ev: s.event(ctx, o, auditv1.Decision_DECISION_ALLOW, "allowed by grant "+o.grantID),
			done: func(seq uint64) {
				res[i].Output = EncryptOutput{Ciphertext: sl.ciphertext, Key: KeyRef{o.ring.DataClass, o.ring.Region, sl.version}, AuditSequence: seq}
			},
		})
	}
	if err := s.appendAll(ctx, evs); err != nil {
		for i := range res {
			res[i] = EncryptResult{Err: err}
		}
	}
	return res
}

// DecryptBatch decrypts each item as Decrypt would and reports failures per
// item, in order, with one audit append for all items (see EncryptBatch).
func (s *Service) DecryptBatch(ctx context.Context, caller string, items []DecryptInput) []DecryptResult {
	res := make([]DecryptResult, len(items))
	if err := s.sync(ctx); err != nil {
		for i := range res {
			res[i].Err = err
		}
		return res
	}
	var evs []pending
	for i := range items {
		in := &items[i]
		if err := in.validate(); err != nil {
			res[i].Err = err
			continue
		}
		o, err := parse(caller, auditv1.Kind_KIND_KEY_DECRYPT, OpDecrypt, in.Ciphertext, in.Context)
		if err != nil {
			res[i].Err = err
			continue
		}
		if err := s.check(o); err != nil {
			res[i].Err = err
			if e := s.deniedEvent(ctx, o, err); e != nil {
				evs = append(evs, pending{ev: e})
			}
			continue
		}
		plaintext, err := s.open(ctx, o, in.Ciphertext, in.Context)
		if err != nil {
			res[i].Err = err
			evs = append(evs, pending{ev: s.event(ctx, o, auditv1.Decision_DECISION_ERROR, domainerr.MessageOf(err))})
			continue
		}
		o.size = len(plaintext)
		evs = append(evs, pending{
			ev: s.event(ctx, o, auditv1.Decision_DECISION_ALLOW, "allowed by grant "+o.grantID),
			done: func(seq uint64) {
				res[i].Output = DecryptOutput{Plaintext: plaintext, Key: KeyRef{o.ring.DataClass, o.ring.Region, o.version}, AuditSequence: seq}
			},
		})
	}
	if err := s.appendAll(ctx, evs); err != nil {
		for i := range res {
			clear(res[i].Output.Plaintext)
			res[i] = DecryptResult{Err: err}
		}
	}
	return res
}

// GenerateDataKeyInput asks for a data key for client-side envelopes.
type GenerateDataKeyInput struct {
	// DataClass and Region name the ring. Required.
	DataClass, Region string
	// Context is bound to the wrapped key: Decrypt of WrappedKey needs it.
	Context map[string]string
}

// GenerateDataKeyOutput is a fresh data key, in plaintext and wrapped.
type GenerateDataKeyOutput struct {
	// PlaintextKey is the 32-byte data key. Secret.
	PlaintextKey []byte
	// WrappedKey is an envelope whose plaintext is the data key: Decrypt
	// with the same context returns it.
	WrappedKey []byte
	// Key is the key version that wraps it.
	Key KeyRef
	// AuditSequence is the sequence number of the audit event.
	AuditSequence uint64
}

// GenerateDataKey returns a fresh data key and the same key sealed in an
// envelope of the ring, for envelopes made by the client. It needs a
// generate-data-key grant; the key is returned only once audited.
func (s *Service) GenerateDataKey(ctx context.Context, caller string, in GenerateDataKeyInput) (GenerateDataKeyOutput, error) {
	if err := (&EncryptInput{DataClass: in.DataClass, Region: in.Region, Context: in.Context}).validate(); err != nil {
		return GenerateDataKeyOutput{}, err
	}
	o := &op{
		caller: caller, kind: auditv1.Kind_KIND_KEY_GENERATE_DATA_KEY, operation: OpGenerateDataKey,
		ring: Ring{DataClass: in.DataClass, Region: in.Region}, context: in.Context, size: DataKeySize,
	}
	if err := s.sync(ctx); err != nil {
		return GenerateDataKeyOutput{}, err
	}
	if err := s.authorize(ctx, o); err != nil {
		return GenerateDataKeyOutput{}, err
	}
	dataKey := make([]byte, DataKeySize)
	if _, err := io.ReadFull(s.rand, dataKey); err != nil {
		return GenerateDataKeyOutput{}, s.fail(ctx, o, &domainerr.Error{Code: domainerr.Internal, Message: domainerr.InternalMessage, Err: fmt.Errorf("generate data key: %w", err)})
	}
	sl, err := s.seal(ctx, o.ring, in.Context, dataKey)
	o.version = sl.version
	if err != nil {
		clear(dataKey)
		return GenerateDataKeyOutput{}, s.fail(ctx, o, err)
	}
	s.rings[o.ring].count(sl.version, s.kick)
	seq, err := s.record(ctx, o, auditv1.Decision_DECISION_ALLOW, "allowed by grant "+o.grantID)
	if err != nil {
		clear(dataKey)
		return GenerateDataKeyOutput{}, err
	}
	return GenerateDataKeyOutput{
		PlaintextKey: dataKey, WrappedKey: sl.ciphertext,
		Key: KeyRef{o.ring.DataClass, o.ring.Region, sl.version}, AuditSequence: seq,
	}, nil
}

// RewrapOutput is an envelope moved to the newest key version.
type RewrapOutput struct {
	// Ciphertext is the new envelope, same plaintext and context.
	Ciphertext []byte
	// From and To are the key versions before and after.
	From, To KeyRef
	// AuditSequence is the sequence number of the audit event.
	AuditSequence uint64
}

// Rewrap opens an envelope and seals its plaintext again, under a fresh data
// key wrapped by the ring's primary version, with the same context. The
// plaintext never leaves the service. It needs a rewrap grant; retired
// versions cannot be rewrapped (raise the minimum only after rewrapping).
func (s *Service) Rewrap(ctx context.Context, caller string, in DecryptInput) (RewrapOutput, error) {
	if err := in.validate(); err != nil {
		return RewrapOutput{}, err
	}
	o, err := parse(caller, auditv1.Kind_KIND_KEY_REWRAP, OpRewrap, in.Ciphertext, in.Context)
	if err != nil {
		return RewrapOutput{}, err
	}
	o.fromVersion = o.version
	if err := s.sync(ctx); err != nil {
		return RewrapOutput{}, err
	}
	if err := s.authorize(ctx, o); err != nil {
		return RewrapOutput{}, err
	}
	plaintext, err := s.open(ctx, o, in.Ciphertext, in.Context)
	if err != nil {
		return RewrapOutput{}, s.fail(ctx, o, err)
	}
	o.size = len(plaintext)
	sl, err := s.seal(ctx, o.ring, in.Context, plaintext)
	clear(plaintext)
	if sl.version != 0 {
		o.version = sl.version
	}
	if err != nil {
		return RewrapOutput{}, s.fail(ctx, o, err)
	}
	s.rings[o.ring].count(sl.version, s.kick)
	seq, err := s.record(ctx, o, auditv1.Decision_DECISION_ALLOW, "allowed by grant "+o.grantID)
	if err != nil {
		return RewrapOutput{}, err
	}
	return RewrapOutput{
		Ciphertext:    sl.ciphertext,
		From:          KeyRef{o.ring.DataClass, o.ring.Region, o.fromVersion},
		To:            KeyRef{o.ring.DataClass, o.ring.Region, sl.version},
		AuditSequence: seq,
	}, nil
}

// check verifies that the ring exists, that a grant allows the operation
// (recording the grant in o) and, for operations that read an envelope,
// that its key version is not retired. It records nothing.
func (s *Service) check(o *op) error {
	rs, ok := s.rings[o.ring]
	if !ok {
		return &domainerr.Error{Code: domainerr.NotFound, Message: fmt.Sprintf("no key ring for data class %s in region %s", o.ring.DataClass, o.ring.Region)}
	}
	now := s.clock()
	s.gmu.RLock()
	for _, g := range s.byWho[o.caller] {
		if g.allows(o.caller, o.operation, o.ring, o.context, now) {
			o.grantID = g.ID
			break
		}
	}
	s.gmu.RUnlock()
	if o.grantID == "" {
		// One message whatever part of the grant failed (region,
		// operation, context, expiry): the caller learns no more.
		return &domainerr.Error{Code: domainerr.PermissionDenied, Message: fmt.Sprintf("no grant allows %s to %s data class %s in region %s", o.caller, o.operation, o.ring.DataClass, o.ring.Region)}
	}
	if o.operation == OpDecrypt || o.operation == OpRewrap {
		if min := rs.minDecrypt(); o.version < min {
			return &domainerr.Error{Code: domainerr.FailedPrecondition, Message: fmt.Sprintf("key version %d of data class %s in region %s is retired (minimum decryption version %d)", o.version, o.ring.DataClass, o.ring.Region, min)}
		}
	}
	return nil
}

// deniedEvent returns the audit event of a refused operation, or nil when
// nothing is recorded (no such ring).
func (s *Service) deniedEvent(ctx context.Context, o *op, err error) *auditv1.Event {
	if domainerr.CodeOf(err) == domainerr.NotFound {
		return nil
	}
	return s.event(ctx, o, auditv1.Decision_DECISION_DENY, domainerr.MessageOf(err))
}

// authorize is check for single operations: a denial is audited before it
// is returned.
func (s *Service) authorize(ctx context.Context, o *op) error {
	err := s.check(o)
	if err == nil {
		return nil
	}
	if ev := s.deniedEvent(ctx, o, err); ev != nil {
		if _, aerr := s.append(ctx, ev); aerr != nil {
			return aerr
		}
	}
	return err
}

// fail audits an allowed operation that failed, then returns its error, or
// Unavailable if even the failure cannot be recorded.
func (s *Service) fail(ctx context.Context, o *op, cause error) error {
	if _, err := s.record(ctx, o, auditv1.Decision_DECISION_ERROR, domainerr.MessageOf(cause)); err != nil {
		return err
	}
	return cause
}

// backendError turns a KEK backend failure into a domain error without
// echoing the backend's text to the caller.
func backendError(ring Ring, err error) error {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, ErrBackendUnavailable):
		return &domainerr.Error{Code: domainerr.Unavailable, Message: "key backend unavailable; operation not performed", Err: err}
	case errors.Is(err, ErrKeyNotFound):
		// The ring is configured but the backend has no key for it: a
		// deployment error, not the caller's.
		return &domainerr.Error{Code: domainerr.Internal, Message: domainerr.InternalMessage, Err: fmt.Errorf("key ring %s missing in backend: %w", ring, err)}
	}
	return &domainerr.Error{Code: domainerr.Internal, Message: domainerr.InternalMessage, Err: fmt.Errorf("key ring %s: %w", ring, err)}
}

// record appends the audit event of o and returns its sequence number. Any
// failure is Unavailable: the operation must then not be performed.
func (s *Service) record(ctx context.Context, o *op, decision auditv1.Decision, reason string) (uint64, error) {
	return s.append(ctx, s.event(ctx, o, decision, reason))
}

// event builds the audit event of o. An event id that cannot be generated
// leaves the id empty, which the audit log refuses: fail closed.
func (s *Service) event(ctx context.Context, o *op, decision auditv1.Decision, reason string) *auditv1.Event {
	id, _ := newUUID(s.rand)
	kd := &auditv1.KeyDetail{
		DataClass:         o.ring.DataClass,
		Region:            o.ring.Region,
		KeyVersion:        o.version,
		FromKeyVersion:    o.fromVersion,
		GrantId:           o.grantID,
		EncryptionContext: maps.Clone(o.context),
		PlaintextBytes:    uint64(o.size),
		ItemCount:         o.items,
		Backend:           s.backendName,
	}
	if o.detail != nil {
		o.detail(kd)
	}
	ev := &auditv1.Event{
		Id:       id,
		Time:     timestamppb.New(s.clock()),
		Kind:     o.kind,
		Decision: decision,
		Reason:   reason,
		Rule:     o.grantID,
		Actor:    &auditv1.Actor{Principal: o.caller},
		Detail:   &auditv1.Event_Key{Key: kd},
		// The log the event goes to: its ring's zone.
		ResidencyZone: s.zoneOfDetail(kd),
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		ev.TraceId = sc.TraceID().String()
		ev.SpanId = sc.SpanID().String()
	}
	annotateRequest(ctx, ev)
	return ev
}

// zoneOfDetail is the residency zone an event is about: that of its
// ring's region, or of every region of the grant it records when they
// are all in one zone; "" (the global log) otherwise.
func (s *Service) zoneOfDetail(kd *auditv1.KeyDetail) string {
	if s.zoneOf == nil {
		return ""
	}
	regions := kd.GetGrantRegions()
	if kd.GetRegion() != "" {
		regions = append([]string{kd.GetRegion()}, regions...)
	}
	zone, seen := "", false
	for _, r := range regions {
		z := s.zoneOf(r)
		switch {
		case !seen:
			zone, seen = z, true
		case z != zone:
			return ""
		}
	}
	return zone
}

// append records one event durably. Every event passes through
// auditevent.Normalise first (here and in appendAll), so no text a caller
// put in it (encryption-context keys and values, grant fields, a
// principal) can make it unrecordable.
func (s *Service) append(ctx context.Context, ev *auditv1.Event) (_ uint64, err error) {
	auditevent.Normalise(ev, s.hasher)
	ctx, span := startSpan(ctx, "keyguard.audit_append", AttrEventID.String(ev.GetId()), AttrOperation.String(ev.GetKind().String()))
	defer func() { endSpan(span, err) }()
	if ev.GetId() == "" {
		return 0, errAuditUnavailable(errors.New("no event id: random source failed"))
	}
	res, err := s.auditor.Append(ctx, ev)
	if err != nil {
		return 0, errAuditUnavailable(err)
	}
	if res == nil {
		return 0, errAuditUnavailable(errors.New("append returned no result"))
	}
	return res.GetSequence(), nil
}

// appendAll records the events of a batch, in one append when the auditor
// can, and then calls each item's done with its sequence number. On error
// nothing is done.
func (s *Service) appendAll(ctx context.Context, items []pending) (err error) {
	if len(items) == 0 {
		return nil
	}
	seqs := make([]uint64, len(items))
	if s.batch != nil && len(items) > 1 {
		var span trace.Span
		ctx, span = startSpan(ctx, "keyguard.audit_append", attribute.Int("credmatrix.audit.batch_size", len(items)))
		defer func() { endSpan(span, err) }()
		evs := make([]*auditv1.Event, len(items))
		for i, p := range items {
			if p.ev.GetId() == "" {
				return errAuditUnavailable(errors.New("no event id: random source failed"))
			}
			auditevent.Normalise(p.ev, s.hasher)
			evs[i] = p.ev
		}
		res, err := s.batch.AppendBatch(ctx, evs)
		if err != nil {
			return errAuditUnavailable(err)
		}
		if len(res) != len(evs) {
			return errAuditUnavailable(fmt.Errorf("append returned %d results for %d events", len(res), len(evs)))
		}
		for i, r := range res {
			seqs[i] = r.GetSequence()
		}
	} else {
		for i, p := range items {
			seq, err := s.append(ctx, p.ev)
			if err != nil {
				return err
			}
			seqs[i] = seq
		}
	}
	for i, p := range items {
		if p.done != nil {
			p.done(seqs[i])
		}
	}
	return nil
}

// newUUID returns a random (version 4) UUID read from r.
func newUUID(r io.Reader) (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:16])
	return string(out[:]), nil
}
