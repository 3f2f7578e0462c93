package broker

import (
	"context"
	"strings"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/broker/policy"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// tracerName names the broker's instrumentation scope.
const tracerName = "github.com/credmatrix/credmatrix/services/broker"

// Span attribute keys. Their values are names from the trust policy and
// the request (role, account, region), the decision and the deciding rule:
// never a token, a claim value, a credential or a session policy.
const (
	AttrRole     = attribute.Key("credmatrix.role")
	AttrAccount  = attribute.Key("credmatrix.account")
	AttrRegion   = attribute.Key("credmatrix.region")
	AttrDecision = attribute.Key("credmatrix.decision")
	AttrRule     = attribute.Key("credmatrix.rule")
	AttrEventID  = attribute.Key("credmatrix.audit.event_id")
	AttrKind     = attribute.Key("credmatrix.audit.kind")
	AttrProvider = attribute.Key("credmatrix.provider")
)

// startSpan starts a domain span under the request's span.
func startSpan(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return otel.Tracer(tracerName).Start(ctx, name, trace.WithAttributes(attrs...))
}

// targetAttrs names a target, resolved by the decision where it could be.
func targetAttrs(t Target, d policy.Decision) []attribute.KeyValue {
	role, account, region := t.Role, t.Account, t.Region
	if d.Role.Name != "" {
		role = d.Role.Name
	}
	if d.Account.Name != "" {
		account = d.Account.Name
	}
	if d.Region != "" {
		region = d.Region
	}
	return []attribute.KeyValue{AttrRole.String(role), AttrAccount.String(account), AttrRegion.String(region)}
}

// decisionAttrs describes a decision.
func decisionAttrs(d policy.Decision) []attribute.KeyValue {
	dec := "deny"
	if d.Allowed {
		dec = "allow"
	}
	return []attribute.KeyValue{AttrDecision.String(dec), AttrRule.String(d.Rule)}
}

// annotateRequest puts a target's names and decision on the request's
// (gRPC server) span, so the RPC span alone answers "who asked for what,
// and what happened".
func annotateRequest(ctx context.Context, t Target, d policy.Decision) {
	span := trace.SpanFromContext(ctx)
	span.SetAttributes(targetAttrs(t, d)...)
	span.SetAttributes(decisionAttrs(d)...)
}

// endSpan ends span, marking it failed when err is set; the error's text
// stays out of the span (it may quote upstream responses).
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.SetStatus(codes.Error, "failed")
	}
	span.End()
}

// eventAttrs names an audit event (its id, kind and decision, spelled
// allow, deny or error as on the other spans; never its content).
func eventAttrs(ev *auditv1.Event) []attribute.KeyValue {
	return []attribute.KeyValue{
		AttrEventID.String(ev.GetId()),
		AttrKind.String(ev.GetKind().String()),
		AttrDecision.String(strings.ToLower(strings.TrimPrefix(ev.GetDecision().String(), "DECISION_"))),
	}
}
