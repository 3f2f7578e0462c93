// Package grpcapi serves keyguard's v1 gRPC API: it translates protobuf
// requests into calls on the keyguard domain and domain results and errors
// back into protobuf responses and gRPC statuses. It holds no rules of its
// own beyond the shape of the API (who the caller is, batch limits); the
// interceptors of the shared server plumbing do logging, metrics, tracing
// and panic recovery.
package grpcapi

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"

	"github.com/credmatrix/credmatrix/services/keyguard"
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
// implements it.
type Service interface {
	// Encrypt seals a plaintext for caller (see keyguard.Service.Encrypt).
	Encrypt(ctx context.Context, caller string, in keyguard.EncryptInput) (keyguard.EncryptOutput, error)
	// Decrypt opens an envelope for caller (see keyguard.Service.Decrypt).
	Decrypt(ctx context.Context, caller string, in keyguard.DecryptInput) (keyguard.DecryptOutput, error)
}

var _ Service = (*keyguard.Service)(nil)

// Option configures a Server.
type Option func(*Server)

// WithIdentity sets how the caller's verified identity is found in a
// request's context (PeerCertIdentity for mTLS). Without it, and whenever
// it reports false, requests fail with Unauthenticated.
func WithIdentity(identify func(ctx context.Context) (string, bool)) Option {
	return func(s *Server) { s.identify = identify }
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

// PeerCertIdentity returns the URI SAN (e.g. "spiffe://credmatrix.dev/app")
// of the peer's verified mTLS client certificate. A connection without a
// verified chain, or a leaf without exactly one URI SAN, has no identity.
// Use it with WithIdentity.
func PeerCertIdentity(ctx context.Context) (string, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return "", false
	}
	leaf := info.State.VerifiedChains[0][0]
	if len(leaf.URIs) != 1 {
		return "", false
	}
	return leaf.URIs[0].String(), true
}

// caller returns the verified identity of the requester.
func (s *Server) caller(ctx context.Context) (string, error) {
	caller, ok := s.identify(ctx)
	if !ok || caller == "" {
		return "", status.Error(codes.Unauthenticated, "caller identity required")
	}
	return caller, nil
}

// toStatus maps a domain error to the gRPC status the caller sees. Only the
// domain's safe message crosses; anything unknown is Internal with a fixed
// message.
func toStatus(err error) *status.Status {
	if e, ok := errors.AsType[*keyguard.Error](err); ok {
		switch e.Code {
		case keyguard.Invalid:
			return status.New(codes.InvalidArgument, e.Message)
		case keyguard.NotFound:
			return status.New(codes.NotFound, e.Message)
		case keyguard.PermissionDenied:
			return status.New(codes.PermissionDenied, e.Message)
		case keyguard.Unavailable:
			return status.New(codes.Unavailable, e.Message)
		}
		return status.New(codes.Internal, "internal error")
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, "request cancelled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.New(codes.DeadlineExceeded, "deadline exceeded")
	}
	return status.New(codes.Internal, "internal error")
}

// fail converts err for the caller, logging its cause once when the caller
// is not told it.
func (s *Server) fail(method string, err error) *status.Status {
	st := toStatus(err)
	if c := st.Code(); c == codes.Internal || c == codes.Unavailable {
		s.log.Error("request failed", "method", method, "code", c.String(), "error", err)
	}
	return st
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
		return nil, s.fail("Encrypt", err)
	}
	return &keyguardv1.EncryptResponse{Ciphertext: out.Ciphertext, Key: keyRef(out.Key), AuditSequence: out.AuditSequence}, nil
}

func (s *Server) decrypt(ctx context.Context, caller string, req *keyguardv1.DecryptRequest) (*keyguardv1.DecryptResponse, *status.Status) {
	out, err := s.svc.Decrypt(ctx, caller, keyguard.DecryptInput{
		Ciphertext: req.GetCiphertext(),
		Context:    req.GetEncryptionContext(),
	})
	if err != nil {
		return nil, s.fail("Decrypt", err)
	}
	return &keyguardv1.DecryptResponse{Plaintext: out.Plaintext, Key: keyRef(out.Key), AuditSequence: out.AuditSequence}, nil
}

// Encrypt seals one plaintext.
func (s *Server) Encrypt(ctx context.Context, req *keyguardv1.EncryptRequest) (*keyguardv1.EncryptResponse, error) {
	caller, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	resp, st := s.encrypt(ctx, caller, req)
	return resp, st.Err()
}

// Decrypt opens one envelope.
func (s *Server) Decrypt(ctx context.Context, req *keyguardv1.DecryptRequest) (*keyguardv1.DecryptResponse, error) {
	caller, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	resp, st := s.decrypt(ctx, caller, req)
	return resp, st.Err()
}

// checkBatch enforces the batch limits on a whole request.
func checkBatch(n int, req proto.Message) error {
	switch {
	case n == 0:
		return status.Error(codes.InvalidArgument, "items: required")
	case n > MaxBatchItems:
		return status.Error(codes.InvalidArgument, fmt.Sprintf("items: at most %d", MaxBatchItems))
	case proto.Size(req) > MaxBatchBytes:
		return status.Error(codes.InvalidArgument, fmt.Sprintf("items: exceed %d bytes in total", MaxBatchBytes))
	}
	return nil
}

func itemError(st *status.Status) *keyguardv1.ItemError {
	return &keyguardv1.ItemError{Code: int32(st.Code()), Message: st.Message()}
}

// BatchEncrypt encrypts each item as Encrypt would, each with its own audit
// event, and reports failures per item, in request order.
func (s *Server) BatchEncrypt(ctx context.Context, req *keyguardv1.BatchEncryptRequest) (*keyguardv1.BatchEncryptResponse, error) {
	caller, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkBatch(len(req.GetItems()), req); err != nil {
		return nil, err
	}
	resp := &keyguardv1.BatchEncryptResponse{Results: make([]*keyguardv1.BatchEncryptResult, len(req.GetItems()))}
	for i, item := range req.GetItems() {
		out, st := s.encrypt(ctx, caller, item)
		if st != nil {
			resp.Results[i] = &keyguardv1.BatchEncryptResult{Result: &keyguardv1.BatchEncryptResult_Error{Error: itemError(st)}}
			continue
		}
		resp.Results[i] = &keyguardv1.BatchEncryptResult{Result: &keyguardv1.BatchEncryptResult_Response{Response: out}}
	}
	return resp, nil
}

// BatchDecrypt decrypts each item as Decrypt would, each with its own audit
// event, and reports failures per item, in request order.
func (s *Server) BatchDecrypt(ctx context.Context, req *keyguardv1.BatchDecryptRequest) (*keyguardv1.BatchDecryptResponse, error) {
	caller, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkBatch(len(req.GetItems()), req); err != nil {
		return nil, err
	}
	resp := &keyguardv1.BatchDecryptResponse{Results: make([]*keyguardv1.BatchDecryptResult, len(req.GetItems()))}
	for i, item := range req.GetItems() {
		out, st := s.decrypt(ctx, caller, item)
		if st != nil {
			resp.Results[i] = &keyguardv1.BatchDecryptResult{Result: &keyguardv1.BatchDecryptResult_Error{Error: itemError(st)}}
			continue
		}
		resp.Results[i] = &keyguardv1.BatchDecryptResult{Result: &keyguardv1.BatchDecryptResult_Response{Response: out}}
	}
	return resp, nil
}

// errNotYet answers the RPCs of the API that this version does not serve.
var errNotYet = status.Error(codes.Unimplemented, "not available yet")

// GenerateDataKey is not available yet.
func (s *Server) GenerateDataKey(context.Context, *keyguardv1.GenerateDataKeyRequest) (*keyguardv1.GenerateDataKeyResponse, error) {
	return nil, errNotYet
}

// Rewrap is not available yet.
func (s *Server) Rewrap(context.Context, *keyguardv1.RewrapRequest) (*keyguardv1.RewrapResponse, error) {
	return nil, errNotYet
}

// RotateKey is not available yet.
func (s *Server) RotateKey(context.Context, *keyguardv1.RotateKeyRequest) (*keyguardv1.RotateKeyResponse, error) {
	return nil, errNotYet
}

// CreateGrant is not available yet.
func (s *Server) CreateGrant(context.Context, *keyguardv1.CreateGrantRequest) (*keyguardv1.CreateGrantResponse, error) {
	return nil, errNotYet
}

// RevokeGrant is not available yet.
func (s *Server) RevokeGrant(context.Context, *keyguardv1.RevokeGrantRequest) (*keyguardv1.RevokeGrantResponse, error) {
	return nil, errNotYet
}

// ListGrants is not available yet.
func (s *Server) ListGrants(context.Context, *keyguardv1.ListGrantsRequest) (*keyguardv1.ListGrantsResponse, error) {
	return nil, errNotYet
}

// DescribeKeyRing is not available yet.
func (s *Server) DescribeKeyRing(context.Context, *keyguardv1.DescribeKeyRingRequest) (*keyguardv1.DescribeKeyRingResponse, error) {
	return nil, errNotYet
}
