package keyguard

import (
	"context"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// BearerRefusal is a request keyguard refused because its OIDC bearer
// token did not verify, or because the token's issuer could not be
// reached to verify it.
type BearerRefusal struct {
	// Kind is the operation the caller attempted (KIND_KEY_ENCRYPT …).
	Kind auditv1.Kind
	// Token is the refused token. Only its HMAC is recorded.
	Token string
	// Peer is the caller's mTLS identity, if the request came over mTLS
	// ("" on the public listener).
	Peer string
	// IssuerUnavailable says the token could not be checked (an error,
	// not a denial).
	IssuerUnavailable bool
	// Reason is what the caller is told.
	Reason string
}

// RefuseBearer records a refused bearer token, as the broker records the
// tokens it refuses: a DENY event (ERROR when the issuer was unavailable)
// of the attempted kind naming the token by its HMAC only, in the global
// log (nothing about the request can be trusted to pick a zone). It
// returns an error, Unavailable, only when the refusal cannot be
// recorded; the caller then gets that instead of the refusal.
func (s *Service) RefuseBearer(ctx context.Context, r BearerRefusal) error {
	id, _ := newUUID(s.rand)
	decision := auditv1.Decision_DECISION_DENY
	if r.IssuerUnavailable {
		decision = auditv1.Decision_DECISION_ERROR
	}
	ev := &auditv1.Event{
		Id:         id,
		Time:       timestamppb.New(s.clock()),
		Kind:       r.Kind,
		Decision:   decision,
		Reason:     r.Reason,
		Actor:      &auditv1.Actor{Peer: r.Peer},
		SecretRefs: []*auditv1.SecretRef{s.hasher.Ref("oidc_token", []byte(r.Token))},
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		ev.TraceId = sc.TraceID().String()
		ev.SpanId = sc.SpanID().String()
	}
	_, err := s.append(ctx, ev)
	return err
}
