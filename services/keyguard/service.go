package keyguard

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"maps"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/services/keyguard/envelope"
)

// Config is what a Service is built from. Values only: the cmd reads files
// and flags, builds the backend and the audit client, and hands them over.
type Config struct {
	// Backend holds the key-encryption keys. Required.
	Backend KeyBackend
	// Auditor records every operation before its result is returned.
	// Required.
	Auditor Auditor
	// Rings are the key rings this service serves; a request for any other
	// (data class, region) is NotFound. The backend must have a key for
	// each (the cmd ensures that at start-up).
	Rings []Ring
	// Grants are the static grants; without one, every request is denied.
	Grants []Grant
	// Clock stamps audit events; nil means time.Now.
	Clock func() time.Time
	// Rand supplies data keys, salts and event ids; nil means
	// crypto/rand.Reader. It must be safe for concurrent use.
	Rand io.Reader
	// BackendName names the backend in audit events ("local", "awskms").
	// Required.
	BackendName string
}

// Service performs keyguard's operations. It is safe for concurrent use.
type Service struct {
	backend     KeyBackend
	auditor     Auditor
	rings       map[Ring]bool
	grants      []Grant
	clock       func() time.Time
	rand        io.Reader
	backendName string
}

// New checks cfg and returns a Service. A bad configuration is an error that
// names the field, so the cmd can refuse to start.
func New(cfg Config) (*Service, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Service{
		backend:     cfg.Backend,
		auditor:     cfg.Auditor,
		rings:       make(map[Ring]bool, len(cfg.Rings)),
		grants:      make([]Grant, len(cfg.Grants)),
		clock:       cfg.Clock,
		rand:        cfg.Rand,
		backendName: cfg.BackendName,
	}
	for _, r := range cfg.Rings {
		s.rings[r] = true
	}
	for i, g := range cfg.Grants {
		g.Operations = append([]Operation(nil), g.Operations...)
		g.Regions = append([]string(nil), g.Regions...)
		if g.ID == "" {
			g.ID = fmt.Sprintf("config/%d", i)
		}
		s.grants[i] = g
	}
	if s.clock == nil {
		s.clock = time.Now
	}
	if s.rand == nil {
		s.rand = rand.Reader
	}
	return s, nil
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
	return &Error{Code: Unavailable, Message: "audit log unavailable; operation not performed", Err: err}
}

// errAuthFailed is the one answer to every failure to authenticate an
// envelope, whichever check failed, so the answer leaks nothing.
func errAuthFailed(err error) error {
	return &Error{Code: Invalid, Message: "ciphertext: authentication failed (wrong encryption context or tampered data)", Err: err}
}

// op is one operation in flight: what the audit event needs to say about
// it.
type op struct {
	caller    string
	kind      auditv1.Kind
	operation Operation
	ring      Ring
	grantID   string
	version   uint32
	context   map[string]string
	size      int
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
	if err := in.validate(); err != nil {
		return EncryptOutput{}, err
	}
	o := &op{
		caller: caller, kind: auditv1.Kind_KIND_KEY_ENCRYPT, operation: OpEncrypt,
		ring: Ring{DataClass: in.DataClass, Region: in.Region}, context: in.Context, size: len(in.Plaintext),
	}
	if err := s.authorize(ctx, o); err != nil {
		return EncryptOutput{}, err
	}

	version, err := s.backend.Primary(ctx, o.ring.DataClass, o.ring.Region)
	if err != nil {
		return EncryptOutput{}, s.fail(ctx, o, backendError(o.ring, err))
	}
	o.version = version
	dataKey := make([]byte, DataKeySize)
	defer clear(dataKey)
	if _, err := io.ReadFull(s.rand, dataKey); err != nil {
		return EncryptOutput{}, s.fail(ctx, o, &Error{Code: Internal, Message: "internal error", Err: fmt.Errorf("generate data key: %w", err)})
	}
	wrapped, err := s.backend.Wrap(ctx, o.ring.DataClass, o.ring.Region, version, dataKey)
	if err != nil {
		return EncryptOutput{}, s.fail(ctx, o, backendError(o.ring, err))
	}
	ciphertext, err := envelope.Seal(dataKey, envelope.Header{
		DataClass: o.ring.DataClass, Region: o.ring.Region, KeyVersion: version, WrappedKey: wrapped,
	}, in.Context, in.Plaintext, s.rand)
	if err != nil {
		return EncryptOutput{}, s.fail(ctx, o, &Error{Code: Internal, Message: "internal error", Err: err})
	}

	seq, err := s.record(ctx, o, auditv1.Decision_DECISION_ALLOW, "allowed by grant "+o.grantID)
	if err != nil {
		return EncryptOutput{}, err
	}
	return EncryptOutput{
		Ciphertext:    ciphertext,
		Key:           KeyRef{DataClass: o.ring.DataClass, Region: o.ring.Region, Version: version},
		AuditSequence: seq,
	}, nil
}

// Decrypt opens an envelope for caller. The ring and key version come from
// the envelope's header, which is parsed (and a malformed one rejected)
// before anything else; then a grant must allow decryption on that ring (a
// denial is audited), the data key is unwrapped and the envelope opened. A
// wrong context or a tampered envelope is Invalid and audited as an error.
// The plaintext is returned only after the audit event is durable.
func (s *Service) Decrypt(ctx context.Context, caller string, in DecryptInput) (DecryptOutput, error) {
	if err := in.validate(); err != nil {
		return DecryptOutput{}, err
	}
	h, _, err := envelope.ParseHeader(in.Ciphertext)
	if err != nil {
		return DecryptOutput{}, &Error{Code: Invalid, Message: "ciphertext: " + err.Error(), Err: err}
	}
	o := &op{
		caller: caller, kind: auditv1.Kind_KIND_KEY_DECRYPT, operation: OpDecrypt,
		ring: Ring{DataClass: h.DataClass, Region: h.Region}, version: h.KeyVersion, context: in.Context,
	}
	if err := s.authorize(ctx, o); err != nil {
		return DecryptOutput{}, err
	}

	dataKey, err := s.backend.Unwrap(ctx, o.ring.DataClass, o.ring.Region, h.KeyVersion, h.WrappedKey)
	if err != nil {
		switch {
		case errors.Is(err, ErrUnwrap):
			err = errAuthFailed(err)
		case errors.Is(err, ErrKeyNotFound):
			err = &Error{Code: NotFound, Message: fmt.Sprintf("no key version %d for data class %s in region %s", h.KeyVersion, h.DataClass, h.Region), Err: err}
		default:
			err = backendError(o.ring, err)
		}
		return DecryptOutput{}, s.fail(ctx, o, err)
	}
	plaintext, _, err := envelope.Open(dataKey, in.Ciphertext, in.Context)
	clear(dataKey)
	if err != nil {
		if errors.Is(err, envelope.ErrAuthentication) {
			err = errAuthFailed(err)
		} else {
			err = &Error{Code: Invalid, Message: "ciphertext: " + err.Error(), Err: err}
		}
		return DecryptOutput{}, s.fail(ctx, o, err)
	}
	o.size = len(plaintext)

	seq, err := s.record(ctx, o, auditv1.Decision_DECISION_ALLOW, "allowed by grant "+o.grantID)
	if err != nil {
		clear(plaintext)
		return DecryptOutput{}, err
	}
	return DecryptOutput{
		Plaintext:     plaintext,
		Key:           KeyRef{DataClass: o.ring.DataClass, Region: o.ring.Region, Version: h.KeyVersion},
		AuditSequence: seq,
	}, nil
}

// authorize checks that the ring exists and that a grant allows the
// operation, recording the grant in o. A denial is audited before it is
// returned.
func (s *Service) authorize(ctx context.Context, o *op) error {
	if !s.rings[o.ring] {
		return &Error{Code: NotFound, Message: fmt.Sprintf("no key ring for data class %s in region %s", o.ring.DataClass, o.ring.Region)}
	}
	for i := range s.grants {
		if s.grants[i].allows(o.caller, o.operation, o.ring) {
			o.grantID = s.grants[i].ID
			return nil
		}
	}
	deny := &Error{Code: PermissionDenied, Message: fmt.Sprintf("no grant allows %s to %s data class %s in region %s", o.caller, o.operation, o.ring.DataClass, o.ring.Region)}
	if _, err := s.record(ctx, o, auditv1.Decision_DECISION_DENY, deny.Message); err != nil {
		return err
	}
	return deny
}

// fail audits an allowed operation that failed, then returns its error, or
// Unavailable if even the failure cannot be recorded.
func (s *Service) fail(ctx context.Context, o *op, cause error) error {
	if _, err := s.record(ctx, o, auditv1.Decision_DECISION_ERROR, ErrorMessage(cause)); err != nil {
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
		return &Error{Code: Unavailable, Message: "key backend unavailable; operation not performed", Err: err}
	case errors.Is(err, ErrKeyNotFound):
		// The ring is configured but the backend has no key for it: a
		// deployment error, not the caller's.
		return &Error{Code: Internal, Message: "internal error", Err: fmt.Errorf("key ring %s missing in backend: %w", ring, err)}
	}
	return &Error{Code: Internal, Message: "internal error", Err: fmt.Errorf("key ring %s: %w", ring, err)}
}

// record appends the audit event of o and returns its sequence number. Any
// failure is Unavailable: the operation must then not be performed.
func (s *Service) record(ctx context.Context, o *op, decision auditv1.Decision, reason string) (uint64, error) {
	id, err := newUUID(s.rand)
	if err != nil {
		return 0, errAuditUnavailable(fmt.Errorf("event id: %w", err))
	}
	ev := &auditv1.Event{
		Id:       id,
		Time:     timestamppb.New(s.clock()),
		Kind:     o.kind,
		Decision: decision,
		Reason:   reason,
		Rule:     o.grantID,
		Actor:    &auditv1.Actor{Principal: o.caller},
		Detail: &auditv1.Event_Key{Key: &auditv1.KeyDetail{
			DataClass:         o.ring.DataClass,
			Region:            o.ring.Region,
			KeyVersion:        o.version,
			GrantId:           o.grantID,
			EncryptionContext: maps.Clone(o.context),
			PlaintextBytes:    uint64(o.size),
			Backend:           s.backendName,
		}},
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		ev.TraceId = sc.TraceID().String()
		ev.SpanId = sc.SpanID().String()
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

// newUUID returns a random (version 4) UUID read from r.
func newUUID(r io.Reader) (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}
