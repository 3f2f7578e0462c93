// Package grpcapi serves keyguard's v1 gRPC API: it translates protobuf
// requests into calls on the keyguard domain and domain results and errors
// back into protobuf responses and gRPC statuses (through the mapping every
// service shares, grpcserver.Fail). It holds no rules of its
// own beyond the shape of the API (who the caller is, batch limits); the
// interceptors of the shared server plumbing do logging, metrics, tracing
// and panic recovery.
package grpcapi

import (
	"context"
	"errors"
	"strings"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"

	"github.com/credmatrix/credmatrix/platform/domainerr"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/oidcauth"
)

// Batch limits, from the API contract: enough for a page of records, small
// enough that one request cannot hold a server's memory or the audit log
// for long.
const (
	// MaxBatchItems is the most items one batch request may carry.
	MaxBatchItems = 100
	// MaxBatchBytes bounds the serialised size of one batch request.
	MaxBatchBytes = 1 << 20
)

// Service is what the API needs from the domain; *keyguard.Service
// implements it. See the methods of keyguard.Service for the rules.
type Service interface {
	Encrypt(ctx context.Context, caller string, in keyguard.EncryptInput) (keyguard.EncryptOutput, error)
	Decrypt(ctx context.Context, caller string, in keyguard.DecryptInput) (keyguard.DecryptOutput, error)
	EncryptBatch(ctx context.Context, caller string, items []keyguard.EncryptInput) []keyguard.EncryptResult
	DecryptBatch(ctx context.Context, caller string, items []keyguard.DecryptInput) []keyguard.DecryptResult
	GenerateDataKey(ctx context.Context, caller string, in keyguard.GenerateDataKeyInput) (keyguard.GenerateDataKeyOutput, error)
	Rewrap(ctx context.Context, caller string, in keyguard.DecryptInput) (keyguard.RewrapOutput, error)
	RotateKey(ctx context.Context, caller, dataClass, region, reason string) (keyguard.KeyRef, uint64, error)
	SetMinDecryptVersion(ctx context.Context, caller, dataClass, region string, min uint32, reason string) (uint64, error)
	CreateGrant(ctx context.Context, caller string, g keyguard.Grant) (keyguard.Grant, uint64, error)
	RevokeGrant(ctx context.Context, caller, id, reason string) (uint64, error)
	ListGrants(ctx context.Context, caller string, in keyguard.ListGrantsInput) ([]keyguard.Grant, string, error)
	DescribeKeyRing(ctx context.Context, caller, dataClass, region string) (keyguard.RingDescription, error)
	RefuseBearer(ctx context.Context, r keyguard.BearerRefusal) error
}

var _ Service = (*keyguard.Service)(nil)

// Option configures a Server.
type Option func(*Server)

// WithIdentity sets how the caller's verified identity is found in a
// request's context (grpcserver.PeerIdentity for mTLS). Without it, and whenever
// it reports false, requests fail with Unauthenticated.
func WithIdentity(identify func(ctx context.Context) (string, bool)) Option {
	return func(s *Server) { s.identify = identify }
}

// WithBearer accepts OIDC bearer tokens ("authorization: Bearer <token>"
// metadata) as the caller's identity, verified by verify (see oidcauth);
// a request with a token is identified by it alone, and a token that does
// not verify is Unauthenticated, never a fall back to the certificate.
// Without this option, requests carrying a token are refused.
func WithBearer(verify func(ctx context.Context, token string) (string, error)) Option {
	return func(s *Server) { s.bearer = verify }
}

// WithLogger sets the logger that records the cause of internal and
// unavailable errors, which callers only see as a fixed message. The default
// discards them.
func WithLogger(l hclog.Logger) Option { return func(s *Server) { s.log = l } }

// Server implements keyguardv1.KeyguardServiceServer.
type Server struct {
	keyguardv1.UnimplementedKeyguardServiceServer

	svc      Service
	identify func(ctx context.Context) (string, bool)
	bearer   func(ctx context.Context, token string) (string, error)
	log      hclog.Logger
}

var _ keyguardv1.KeyguardServiceServer = (*Server)(nil)

// New returns a Server calling svc.
func New(svc Service, opts ...Option) *Server {
	s := &Server{
		svc:      svc,
		identify: func(context.Context) (string, bool) { return "", false },
		log:      hclog.NewNullLogger(),
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// caller returns the verified identity of the requester: its OIDC bearer
// token if it sent one, else its certificate. A bearer token that is
// refused is audited as an attempt at kind (by its HMAC only) before the
// refusal is returned; kind is KIND_UNSPECIFIED for reads, which keyguard
// does not audit.
func (s *Server) caller(ctx context.Context, kind auditv1.Kind) (string, error) {
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get("authorization")) > 0 {
		vals := md.Get("authorization")
		token, ok := strings.CutPrefix(vals[0], "Bearer ")
		switch {
		case len(vals) != 1 || !ok || token == "":
			return "", domainerr.Errorf(domainerr.Unauthenticated, "authorization: want one \"Bearer <token>\"")
		case s.bearer == nil:
			return "", domainerr.Errorf(domainerr.Unauthenticated, "authorization: bearer tokens are not accepted by this keyguard")
		}
		caller, err := s.bearer(ctx, token)
		if err == nil && caller != "" {
			return caller, nil
		}
		refused := &domainerr.Error{Code: domainerr.Unauthenticated, Message: "invalid bearer token", Err: err}
		if errors.Is(err, oidcauth.ErrIssuerUnavailable) {
			refused = &domainerr.Error{Code: domainerr.Unavailable, Message: "token issuer unavailable; retry later", Err: err}
		}
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || kind == auditv1.Kind_KIND_UNSPECIFIED {
			return "", refused
		}
		mtls, _ := s.identify(ctx)
		if aerr := s.svc.RefuseBearer(ctx, keyguard.BearerRefusal{
			Kind: kind, Token: token, Peer: mtls,
			IssuerUnavailable: refused.Code == domainerr.Unavailable, Reason: refused.Message,
		}); aerr != nil {
			return "", aerr // not even the refusal could be recorded: Unavailable
		}
		return "", refused
	}
	caller, ok := s.identify(ctx)
	if !ok || caller == "" {
		return "", domainerr.Errorf(domainerr.Unauthenticated, "caller identity required")
	}
	return caller, nil
}

// fail logs the cause of err once and returns the status the caller sees,
// by the mapping every service shares (grpcserver.Fail).
func (s *Server) fail(ctx context.Context, err error) *status.Status {
	return grpcserver.Fail(ctx, s.log, err)
}

func keyRef(k keyguard.KeyRef) *keyguardv1.KeyRef {
	return &keyguardv1.KeyRef{DataClass: k.DataClass, Region: k.Region, Version: k.Version}
}

func (s *Server) encrypt(ctx context.Context, caller string, req *keyguardv1.EncryptRequest) (*keyguardv1.EncryptResponse, *status.Status) {
	out, err := s.svc.Encrypt(ctx, caller, keyguard.EncryptInput{
		DataClass: req.GetDataClass(),
		Region:    req.GetRegion(),
		Plaintext: req.GetPlaintext(),
		Context:   req.GetEncryptionContext(),
	})
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &keyguardv1.EncryptResponse{Ciphertext: out.Ciphertext, Key: keyRef(out.Key), AuditSequence: out.AuditSequence}, nil
}

func (s *Server) decrypt(ctx context.Context, caller string, req *keyguardv1.DecryptRequest) (*keyguardv1.DecryptResponse, *status.Status) {
	out, err := s.svc.Decrypt(ctx, caller, keyguard.DecryptInput{
		Ciphertext: req.GetCiphertext(),
		Context:    req.GetEncryptionContext(),
	})
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &keyguardv1.DecryptResponse{Plaintext: out.Plaintext, Key: keyRef(out.Key), AuditSequence: out.AuditSequence}, nil
}

// Encrypt seals one plaintext.
func (s *Server) Encrypt(ctx context.Context, req *keyguardv1.EncryptRequest) (*keyguardv1.EncryptResponse, error) {
	caller, err := s.caller(ctx, auditv1.Kind_KIND_KEY_ENCRYPT)
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	resp, st := s.encrypt(ctx, caller, req)
	return resp, st.Err()
}

// Decrypt opens one envelope.
func (s *Server) Decrypt(ctx context.Context, req *keyguardv1.DecryptRequest) (*keyguardv1.DecryptResponse, error) {
	caller, err := s.caller(ctx, auditv1.Kind_KIND_KEY_DECRYPT)
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	resp, st := s.decrypt(ctx, caller, req)
	return resp, st.Err()
}

// checkBatch enforces the batch limits on a whole request.
func checkBatch(n int, req proto.Message) error {
	switch {
	case n == 0:
		return domainerr.Errorf(domainerr.Invalid, "items: required")
	case n > MaxBatchItems:
		return domainerr.Errorf(domainerr.Invalid, "items: at most %d", MaxBatchItems)
	case proto.Size(req) > MaxBatchBytes:
		return domainerr.Errorf(domainerr.Invalid, "items: exceed %d bytes in total", MaxBatchBytes)
	}
	return nil
}

func itemError(st *status.Status) *keyguardv1.ItemError {
	return &keyguardv1.ItemError{Code: int32(st.Code()), Message: st.Message()}
}

// BatchEncrypt encrypts each item as Encrypt would, each with its own audit
// event (all recorded in one append), and reports failures per item, in
// request order.
func (s *Server) BatchEncrypt(ctx context.Context, req *keyguardv1.BatchEncryptRequest) (*keyguardv1.BatchEncryptResponse, error) {
	caller, err := s.caller(ctx, auditv1.Kind_KIND_KEY_ENCRYPT)
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	if err := checkBatch(len(req.GetItems()), req); err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	items := make([]keyguard.EncryptInput, len(req.GetItems()))
	for i, it := range req.GetItems() {
		items[i] = keyguard.EncryptInput{DataClass: it.GetDataClass(), Region: it.GetRegion(), Plaintext: it.GetPlaintext(), Context: it.GetEncryptionContext()}
	}
	res := s.svc.EncryptBatch(ctx, caller, items)
	resp := &keyguardv1.BatchEncryptResponse{Results: make([]*keyguardv1.BatchEncryptResult, len(res))}
	for i, r := range res {
		if r.Err != nil {
			resp.Results[i] = &keyguardv1.BatchEncryptResult{Result: &keyguardv1.BatchEncryptResult_Error{Error: itemError(s.fail(ctx, r.Err))}}
			continue
		}
		resp.Results[i] = &keyguardv1.BatchEncryptResult{Result: &keyguardv1.BatchEncryptResult_Response{Response: &keyguardv1.EncryptResponse{
			Ciphertext: r.Output.Ciphertext, Key: keyRef(r.Output.Key), AuditSequence: r.Output.AuditSequence,
		}}}
	}
	return resp, nil
}

// BatchDecrypt decrypts each item as Decrypt would, each with its own audit
// event (all recorded in one append), and reports failures per item, in
// request order.
func (s *Server) BatchDecrypt(ctx context.Context, req *keyguardv1.BatchDecryptRequest) (*keyguardv1.BatchDecryptResponse, error) {
	caller, err := s.caller(ctx, auditv1.Kind_KIND_KEY_DECRYPT)
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	if err := checkBatch(len(req.GetItems()), req); err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	items := make([]keyguard.DecryptInput, len(req.GetItems()))
	for i, it := range req.GetItems() {
		items[i] = keyguard.DecryptInput{Ciphertext: it.GetCiphertext(), Context: it.GetEncryptionContext()}
	}
	res := s.svc.DecryptBatch(ctx, caller, items)
	resp := &keyguardv1.BatchDecryptResponse{Results: make([]*keyguardv1.BatchDecryptResult, len(res))}
	for i, r := range res {
		if r.Err != nil {
			resp.Results[i] = &keyguardv1.BatchDecryptResult{Result: &keyguardv1.BatchDecryptResult_Error{Error: itemError(s.fail(ctx, r.Err))}}
			continue
		}
		resp.Results[i] = &keyguardv1.BatchDecryptResult{Result: &keyguardv1.BatchDecryptResult_Response{Response: &keyguardv1.DecryptResponse{
			Plaintext: r.Output.Plaintext, Key: keyRef(r.Output.Key), AuditSequence: r.Output.AuditSequence,
		}}}
	}
	return resp, nil
}

// GenerateDataKey returns a fresh data key, in plaintext and wrapped.
func (s *Server) GenerateDataKey(ctx context.Context, req *keyguardv1.GenerateDataKeyRequest) (*keyguardv1.GenerateDataKeyResponse, error) {
	caller, err := s.caller(ctx, auditv1.Kind_KIND_KEY_GENERATE_DATA_KEY)
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	out, err := s.svc.GenerateDataKey(ctx, caller, keyguard.GenerateDataKeyInput{
		DataClass: req.GetDataClass(), Region: req.GetRegion(), Context: req.GetEncryptionContext(),
	})
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	return &keyguardv1.GenerateDataKeyResponse{
		PlaintextDataKey: out.PlaintextKey, WrappedDataKey: out.WrappedKey, Key: keyRef(out.Key), AuditSequence: out.AuditSequence,
	}, nil
}

// Rewrap moves an envelope to the newest key version of its ring.
func (s *Server) Rewrap(ctx context.Context, req *keyguardv1.RewrapRequest) (*keyguardv1.RewrapResponse, error) {
	caller, err := s.caller(ctx, auditv1.Kind_KIND_KEY_REWRAP)
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	out, err := s.svc.Rewrap(ctx, caller, keyguard.DecryptInput{Ciphertext: req.GetCiphertext(), Context: req.GetEncryptionContext()})
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	return &keyguardv1.RewrapResponse{Ciphertext: out.Ciphertext, FromKey: keyRef(out.From), ToKey: keyRef(out.To), AuditSequence: out.AuditSequence}, nil
}

// RotateKey adds a key version to a ring.
func (s *Server) RotateKey(ctx context.Context, req *keyguardv1.RotateKeyRequest) (*keyguardv1.RotateKeyResponse, error) {
	caller, err := s.caller(ctx, auditv1.Kind_KIND_KEY_ROTATE)
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	ref, seq, err := s.svc.RotateKey(ctx, caller, req.GetDataClass(), req.GetRegion(), req.GetReason())
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	return &keyguardv1.RotateKeyResponse{Key: keyRef(ref), AuditSequence: seq}, nil
}

// SetMinDecryptVersion retires the versions of a ring below a minimum.
func (s *Server) SetMinDecryptVersion(ctx context.Context, req *keyguardv1.SetMinDecryptVersionRequest) (*keyguardv1.SetMinDecryptVersionResponse, error) {
	caller, err := s.caller(ctx, auditv1.Kind_KIND_KEY_ROTATE)
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	seq, err := s.svc.SetMinDecryptVersion(ctx, caller, req.GetDataClass(), req.GetRegion(), req.GetMinDecryptVersion(), req.GetReason())
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	return &keyguardv1.SetMinDecryptVersionResponse{AuditSequence: seq}, nil
}

// operations maps API operations to the domain's; both use the same
// numbers, but the mapping is explicit so an unknown value is refused.
func operationFromProto(op keyguardv1.Operation) (keyguard.Operation, bool) {
	switch op {
	case keyguardv1.Operation_OPERATION_ENCRYPT:
		return keyguard.OpEncrypt, true
	case keyguardv1.Operation_OPERATION_DECRYPT:
		return keyguard.OpDecrypt, true
	case keyguardv1.Operation_OPERATION_GENERATE_DATA_KEY:
		return keyguard.OpGenerateDataKey, true
	case keyguardv1.Operation_OPERATION_REWRAP:
		return keyguard.OpRewrap, true
	case keyguardv1.Operation_OPERATION_DESCRIBE:
		return keyguard.OpDescribe, true
	}
	return 0, false
}

func grantToProto(g keyguard.Grant) *keyguardv1.Grant {
	pg := &keyguardv1.Grant{
		GrantId: g.ID, Principal: g.Principal, DataClass: g.DataClass, Regions: g.Regions,
		RequiredContext: g.RequiredContext, CreatedBy: g.CreatedBy,
	}
	for _, op := range g.Operations {
		pg.Operations = append(pg.Operations, keyguardv1.Operation(op))
	}
	if !g.ExpireTime.IsZero() {
		pg.ExpireTime = timestamppb.New(g.ExpireTime)
	}
	if !g.CreateTime.IsZero() {
		pg.CreateTime = timestamppb.New(g.CreateTime)
	}
	return pg
}

// CreateGrant creates a grant.
func (s *Server) CreateGrant(ctx context.Context, req *keyguardv1.CreateGrantRequest) (*keyguardv1.CreateGrantResponse, error) {
	caller, err := s.caller(ctx, auditv1.Kind_KIND_GRANT_CREATE)
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	pg := req.GetGrant()
	if pg == nil {
		return nil, s.fail(ctx, domainerr.Errorf(domainerr.Invalid, "grant: required")).Err()
	}
	g := keyguard.Grant{Principal: pg.GetPrincipal(), DataClass: pg.GetDataClass(), Regions: pg.GetRegions(), RequiredContext: pg.GetRequiredContext()}
	for i, op := range pg.GetOperations() {
		o, ok := operationFromProto(op)
		if !ok {
			return nil, s.fail(ctx, domainerr.Errorf(domainerr.Invalid, "grant.operations[%d]: unknown operation %v", i, op)).Err()
		}
		g.Operations = append(g.Operations, o)
	}
	if pg.GetExpireTime() != nil {
		if err := pg.GetExpireTime().CheckValid(); err != nil {
			return nil, s.fail(ctx, domainerr.Errorf(domainerr.Invalid, "grant.expire_time: not a valid timestamp")).Err()
		}
		g.ExpireTime = pg.GetExpireTime().AsTime()
	}
	out, seq, err := s.svc.CreateGrant(ctx, caller, g)
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	return &keyguardv1.CreateGrantResponse{Grant: grantToProto(out), AuditSequence: seq}, nil
}

// RevokeGrant removes a grant.
func (s *Server) RevokeGrant(ctx context.Context, req *keyguardv1.RevokeGrantRequest) (*keyguardv1.RevokeGrantResponse, error) {
	caller, err := s.caller(ctx, auditv1.Kind_KIND_GRANT_REVOKE)
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	seq, err := s.svc.RevokeGrant(ctx, caller, req.GetGrantId(), req.GetReason())
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	return &keyguardv1.RevokeGrantResponse{AuditSequence: seq}, nil
}

// ListGrants lists grants.
func (s *Server) ListGrants(ctx context.Context, req *keyguardv1.ListGrantsRequest) (*keyguardv1.ListGrantsResponse, error) {
	caller, err := s.caller(ctx, auditv1.Kind_KIND_UNSPECIFIED)
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	gs, next, err := s.svc.ListGrants(ctx, caller, keyguard.ListGrantsInput{
		Principal: req.GetPrincipal(), DataClass: req.GetDataClass(), PageSize: int(req.GetPageSize()), PageToken: req.GetPageToken(),
	})
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	resp := &keyguardv1.ListGrantsResponse{NextPageToken: next}
	for _, g := range gs {
		resp.Grants = append(resp.Grants, grantToProto(g))
	}
	return resp, nil
}

// DescribeKeyRing describes a ring.
func (s *Server) DescribeKeyRing(ctx context.Context, req *keyguardv1.DescribeKeyRingRequest) (*keyguardv1.DescribeKeyRingResponse, error) {
	caller, err := s.caller(ctx, auditv1.Kind_KIND_UNSPECIFIED)
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	d, err := s.svc.DescribeKeyRing(ctx, caller, req.GetDataClass(), req.GetRegion())
	if err != nil {
		return nil, s.fail(ctx, err).Err()
	}
	resp := &keyguardv1.DescribeKeyRingResponse{
		DataClass: d.Ring.DataClass, Region: d.Ring.Region, Backend: d.Backend,
		PrimaryVersion: d.Primary, MinDecryptVersion: d.MinDecryptVersion, RotationDue: d.RotationDue,
	}
	if !d.NextRotation.IsZero() {
		resp.NextRotationTime = timestamppb.New(d.NextRotation)
	}
	for _, v := range d.Versions {
		resp.Versions = append(resp.Versions, &keyguardv1.KeyVersion{
			Version: v.Version, State: keyguardv1.KeyVersionState(v.State), CreateTime: timestamppb.New(v.Created),
			EncryptCount: v.EncryptCount, BackendKey: v.BackendKey,
		})
	}
	return resp, nil
}
