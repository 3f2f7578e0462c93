package keyguard

import (
	"context"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// tracerName names keyguard's instrumentation scope.
const tracerName = "github.com/credmatrix/credmatrix/services/keyguard"

// Span attribute keys. Their values name the ring (data class, region,
// key version), the backend, the decision and the deciding grant: never a
// data key, wrapped key, plaintext, ciphertext or encryption context value.
const (
	AttrDataClass  = attribute.Key("credmatrix.data_class")
	AttrRegion     = attribute.Key("credmatrix.region")
	AttrKeyVersion = attribute.Key("credmatrix.key_version")
	AttrBackend    = attribute.Key("credmatrix.kms.backend")
	AttrDecision   = attribute.Key("credmatrix.decision")
	AttrRule       = attribute.Key("credmatrix.rule")
	AttrOperation  = attribute.Key("credmatrix.operation")
	AttrEventID    = attribute.Key("credmatrix.audit.event_id")
)

func startSpan(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return otel.Tracer(tracerName).Start(ctx, name, trace.WithAttributes(attrs...))
}

// endSpan ends span, marking it failed when err is set; the error's text
// stays out of the span (a backend's may quote its upstream).
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.SetStatus(codes.Error, "failed")
	}
	span.End()
}

// tracedBackend is the decorator that gives every KEK operation of a
// backend (local keystore or AWS KMS) a span of its own.
type tracedBackend struct {
	KeyBackend
	name string
}

var _ KeyBackend = tracedBackend{}

func (b tracedBackend) attrs(dataClass, region string, version uint32) []attribute.KeyValue {
	return []attribute.KeyValue{
		AttrBackend.String(b.name), AttrDataClass.String(dataClass), AttrRegion.String(region),
		AttrKeyVersion.Int64(int64(version)),
	}
}

// Wrap implements KeyBackend in a "keyguard.kms_wrap" span.
func (b tracedBackend) Wrap(ctx context.Context, dataClass, region string, version uint32, dataKey []byte) (_ []byte, err error) {
	ctx, span := startSpan(ctx, "keyguard.kms_wrap", b.attrs(dataClass, region, version)...)
	defer func() { endSpan(span, err) }()
	return b.KeyBackend.Wrap(ctx, dataClass, region, version, dataKey)
}

// Unwrap implements KeyBackend in a "keyguard.kms_unwrap" span.
func (b tracedBackend) Unwrap(ctx context.Context, dataClass, region string, version uint32, wrapped []byte) (_ []byte, err error) {
	ctx, span := startSpan(ctx, "keyguard.kms_unwrap", b.attrs(dataClass, region, version)...)
	defer func() { endSpan(span, err) }()
	return b.KeyBackend.Unwrap(ctx, dataClass, region, version, wrapped)
}

// Rotate implements KeyBackend in a "keyguard.kms_rotate" span.
func (b tracedBackend) Rotate(ctx context.Context, dataClass, region string) (_ uint32, err error) {
	ctx, span := startSpan(ctx, "keyguard.kms_rotate", b.attrs(dataClass, region, 0)[:3]...)
	defer func() { endSpan(span, err) }()
	return b.KeyBackend.Rotate(ctx, dataClass, region)
}

// annotateRequest puts an operation's ring, decision and grant on the
// request's (gRPC server) span as its audit event is built.
func annotateRequest(ctx context.Context, ev *auditv1.Event) {
	kd := ev.GetKey()
	attrs := []attribute.KeyValue{
		AttrOperation.String(ev.GetKind().String()),
		AttrDecision.String(decisionName(ev.GetDecision())),
	}
	if kd.GetDataClass() != "" {
		attrs = append(attrs, AttrDataClass.String(kd.GetDataClass()), AttrRegion.String(kd.GetRegion()))
	}
	if ev.GetRule() != "" {
		attrs = append(attrs, AttrRule.String(ev.GetRule()))
	}
	trace.SpanFromContext(ctx).SetAttributes(attrs...)
}

// decisionName spells a decision as the broker's spans do.
func decisionName(d auditv1.Decision) string {
	switch d {
	case auditv1.Decision_DECISION_ALLOW:
		return "allow"
	case auditv1.Decision_DECISION_DENY:
		return "deny"
	case auditv1.Decision_DECISION_ERROR:
		return "error"
	}
	return "unspecified"
}
