package grpcserver

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/credmatrix/credmatrix/platform/logging"
)

// MaxSPIFFEIDBytes bounds a SPIFFE ID, as the SPIFFE specification does.
const MaxSPIFFEIDBytes = 2048

// errNoIdentity is the one message every caller refused by the identity
// interceptor sees. It says what a valid certificate looks like and nothing
// about the one presented.
const errNoIdentity = "client certificate must carry exactly one SPIFFE ID (one URI SAN spiffe://<trust-domain>/<path>)"

// CheckSPIFFEID reports whether id is a SPIFFE ID naming a workload, in the
// strict form of the SPIFFE specification: scheme "spiffe", a trust domain
// of lower-case letters, digits, '.', '-' and '_' (no port, no user info),
// a non-empty path of segments of letters, digits, '.', '-' and '_' (no
// empty, "." or ".." segment, no trailing slash), and no query, fragment or
// percent-encoding. Configuration checks and the identity interceptor use
// it, so a principal that can never match a peer is refused at start-up.
func CheckSPIFFEID(id string) error {
	if len(id) > MaxSPIFFEIDBytes {
		return fmt.Errorf("longer than %d bytes", MaxSPIFFEIDBytes)
	}
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return errors.New(`must start with "spiffe://"`)
	}
	td, path, ok := strings.Cut(rest, "/")
	if td == "" {
		return errors.New("trust domain is empty")
	}
	for _, r := range td {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return fmt.Errorf("trust domain %q: only lower-case letters, digits, '.', '-' and '_' are allowed", td)
		}
	}
	if !ok || path == "" {
		return errors.New("path is empty: a SPIFFE ID of a workload names a path under its trust domain")
	}
	for _, seg := range strings.Split(path, "/") {
		switch seg {
		case "":
			return errors.New("path has an empty segment or a trailing slash")
		case ".", "..":
			return fmt.Errorf("path segment %q is not allowed", seg)
		}
		for _, r := range seg {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
				return fmt.Errorf("path segment %q: only letters, digits, '.', '-' and '_' are allowed", seg)
			}
		}
	}
	return nil
}

// certIdentity returns the identity of a verified client leaf: its one URI
// SAN, which must be a valid SPIFFE ID.
func certIdentity(leaf *x509.Certificate) (string, bool) {
	if len(leaf.URIs) != 1 {
		return "", false
	}
	id := leaf.URIs[0].String()
	if CheckSPIFFEID(id) != nil {
		return "", false
	}
	return id, true
}

// verifiedLeaf returns the client certificate that mutual TLS verified on
// the connection of ctx, or nil without one.
func verifiedLeaf(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil
	}
	return info.State.VerifiedChains[0][0]
}

// PeerIdentity returns, inside a server handler or interceptor, the SPIFFE
// ID (e.g. spiffe://credmatrix.dev/broker) of the client certificate mutual
// TLS verified. It reports false without a verified client certificate and
// for a certificate that does not carry exactly one URI SAN in strict
// SPIFFE form (see CheckSPIFFEID) — never the first of several. On the
// mTLS listener such certificates never reach a handler: the identity
// interceptor refuses them.
func PeerIdentity(ctx context.Context) (string, bool) {
	leaf := verifiedLeaf(ctx)
	if leaf == nil {
		return "", false
	}
	return certIdentity(leaf)
}

// checkIdentity refuses a request on the mTLS listener whose connection
// has no verified client certificate or one without a valid identity; the
// refused certificate (its serial number and how many URI SANs it has,
// never their text) is logged for the operator. Without TLS (plaintext
// development on loopback) there is no certificate to check: such requests
// have no identity, and the handlers' authorisation treats them so.
func (s *Server) checkIdentity(ctx context.Context, method string, requireCert bool) error {
	leaf := verifiedLeaf(ctx)
	if leaf == nil {
		if requireCert {
			return status.Error(codes.Unauthenticated, errNoIdentity)
		}
		return nil
	}
	if _, ok := certIdentity(leaf); !ok {
		logging.WithTrace(ctx, s.log).Warn("refused a client certificate without exactly one SPIFFE ID",
			"method", method, "serial", leaf.SerialNumber.Text(16), "uri_sans", len(leaf.URIs))
		return status.Error(codes.Unauthenticated, errNoIdentity)
	}
	return nil
}

// identityInterceptors are the one identity check of every credmatrix
// service, chained by New on the mTLS listener before any service
// interceptor, so no handler ever runs for a peer without exactly one
// SPIFFE ID.
func (s *Server) identityInterceptors(requireCert bool) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := s.checkIdentity(ctx, info.FullMethod, requireCert); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := s.checkIdentity(ss.Context(), info.FullMethod, requireCert); err != nil {
			return err
		}
		return handler(srv, ss)
	}
	return unary, stream
}
