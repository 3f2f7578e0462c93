// Package keyguardmetrics instruments keyguard by wrapping its backends:
// the KEK backend (local keystore or AWS KMS: latency and errors per call)
// and the audit client (key operations and grant denials, read from the
// audit events keyguard records before answering). The keyguard domain
// package stays free of Prometheus.
//
// Label values are bounded and never secret: a data class and region only
// when they name a configured ring (otherwise "unknown", since a caller may
// send any string), operations and decisions from enums. Principals,
// grant ids, encryption contexts and key material are never labels.
package keyguardmetrics

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/credmatrix/credmatrix/platform/metrics"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/prometheus/client_golang/prometheus"
)

// Metric names.
const (
	KeyOperationsTotal  = "credmatrix_keyguard_key_operations_total"
	GrantDenialsTotal   = "credmatrix_keyguard_grant_denials_total"
	KEKDuration         = "credmatrix_keyguard_kek_request_duration_seconds"
	KEKErrorsTotal      = "credmatrix_keyguard_kek_errors_total"
	AuditAppendDuration = "credmatrix_keyguard_audit_append_duration_seconds"
	AuditAppendErrors   = "credmatrix_keyguard_audit_append_errors_total"
)

// Unknown is the label value of a data class or region that names no
// configured ring.
const Unknown = "unknown"

// Metrics are keyguard's metrics.
type Metrics struct {
	rings    map[keyguard.Ring]bool
	ops      *prometheus.CounterVec
	denials  *prometheus.CounterVec
	kekDur   *prometheus.HistogramVec
	kekErr   *prometheus.CounterVec
	auditDur *prometheus.HistogramVec
	auditErr *prometheus.CounterVec
}

// New creates keyguard's metrics for the configured rings and registers
// them with reg (nil: not registered).
func New(reg prometheus.Registerer, rings []keyguard.Ring) *Metrics {
	m := &Metrics{
		rings: map[keyguard.Ring]bool{},
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: KeyOperationsTotal,
			Help: "Key operations (one per item of a batch), by data class, region, operation (encrypt, decrypt, generate_data_key, rewrap, rotate, grant_create, grant_revoke) and decision (allow, deny, error).",
		}, []string{"data_class", "region", "op", "decision"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: GrantDenialsTotal,
			Help: "Key operations refused (no grant, a grant without the operation, region or context, an unknown caller), by data class, region and operation.",
		}, []string{"data_class", "region", "op"}),
		kekDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    KEKDuration,
			Help:    "Time of one KEK backend call (AWS KMS or the local keystore), by backend, call (primary, wrap, unwrap, rotate, versions), data class and region.",
			Buckets: metrics.LatencyBuckets,
		}, []string{"backend", "call", "data_class", "region"}),
		kekErr: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: KEKErrorsTotal,
			Help: "Failed KEK backend calls, by backend, call and kind (unavailable, not_found, unwrap, error).",
		}, []string{"backend", "call", "kind"}),
		auditDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    AuditAppendDuration,
			Help:    "Time for audit events to become durable, as keyguard waits for them before answering, by call (append: one event; append_batch: a batch request's events).",
			Buckets: metrics.LatencyBuckets,
		}, []string{"call"}),
		auditErr: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: AuditAppendErrors,
			Help: "Audit appends that failed, by call; each failed its request closed (UNAVAILABLE, no key or plaintext returned).",
		}, []string{"call"}),
	}
	for _, r := range rings {
		m.rings[r] = true
	}
	if reg != nil {
		reg.MustRegister(m.ops, m.denials, m.kekDur, m.kekErr, m.auditDur, m.auditErr)
	}
	return m
}

// ring returns bounded labels for a data class and region.
func (m *Metrics) ring(dataClass, region string) (string, string) {
	if m.rings[keyguard.Ring{DataClass: dataClass, Region: region}] {
		return dataClass, region
	}
	return Unknown, Unknown
}

// Auditor wraps keyguard's audit client: it times every append and counts
// failures, and after events are durably appended it counts the key
// operations and denials they record. A BatchAuditor stays one.
func (m *Metrics) Auditor(a keyguard.Auditor) keyguard.Auditor {
	w := &auditor{inner: a, m: m}
	if b, ok := a.(keyguard.BatchAuditor); ok {
		return &batchAuditor{auditor: w, batch: b}
	}
	return w
}

type auditor struct {
	inner keyguard.Auditor
	m     *Metrics
}

func (a *auditor) Append(ctx context.Context, ev *auditv1.Event) (*auditv1.AppendResult, error) {
	start := time.Now()
	res, err := a.inner.Append(ctx, ev)
	a.m.appended("append", start, err)
	if err == nil {
		a.m.count(ev)
	}
	return res, err
}

type batchAuditor struct {
	*auditor
	batch keyguard.BatchAuditor
}

var _ keyguard.BatchAuditor = (*batchAuditor)(nil)

func (a *batchAuditor) AppendBatch(ctx context.Context, evs []*auditv1.Event) ([]*auditv1.AppendResult, error) {
	start := time.Now()
	res, err := a.batch.AppendBatch(ctx, evs)
	a.m.appended("append_batch", start, err)
	if err == nil {
		for _, ev := range evs {
			a.m.count(ev)
		}
	}
	return res, err
}

func (m *Metrics) appended(call string, start time.Time, err error) {
	m.auditDur.WithLabelValues(call).Observe(time.Since(start).Seconds())
	if err != nil {
		m.auditErr.WithLabelValues(call).Inc()
	}
}

// count turns one durable key event into counters.
func (m *Metrics) count(ev *auditv1.Event) {
	op := opOf(ev.GetKind())
	if op == "" {
		return
	}
	class, region := m.ring(ev.GetKey().GetDataClass(), ev.GetKey().GetRegion())
	decision := strings.ToLower(strings.TrimPrefix(ev.GetDecision().String(), "DECISION_"))
	m.ops.WithLabelValues(class, region, op, decision).Inc()
	if ev.GetDecision() == auditv1.Decision_DECISION_DENY {
		m.denials.WithLabelValues(class, region, op).Inc()
	}
}

// opOf names a key event's operation; "" for other kinds.
func opOf(k auditv1.Kind) string {
	switch k {
	case auditv1.Kind_KIND_KEY_ENCRYPT:
		return "encrypt"
	case auditv1.Kind_KIND_KEY_DECRYPT:
		return "decrypt"
	case auditv1.Kind_KIND_KEY_GENERATE_DATA_KEY:
		return "generate_data_key"
	case auditv1.Kind_KIND_KEY_REWRAP:
		return "rewrap"
	case auditv1.Kind_KIND_KEY_ROTATE:
		return "rotate"
	case auditv1.Kind_KIND_GRANT_CREATE:
		return "grant_create"
	case auditv1.Kind_KIND_GRANT_REVOKE:
		return "grant_revoke"
	}
	return ""
}

// Backend wraps b, named name ("local", "awskms") in the labels, so that
// every call is timed and its failures counted. Key material passes
// through untouched and is never looked at.
func (m *Metrics) Backend(name string, b keyguard.KeyBackend) keyguard.KeyBackend {
	return &backend{inner: b, name: name, m: m}
}

type backend struct {
	inner keyguard.KeyBackend
	name  string
	m     *Metrics
}

var _ keyguard.KeyBackend = (*backend)(nil)

func (b *backend) observe(call, dataClass, region string, start time.Time, err error) {
	class, reg := b.m.ring(dataClass, region)
	b.m.kekDur.WithLabelValues(b.name, call, class, reg).Observe(time.Since(start).Seconds())
	if err == nil {
		return
	}
	kind := "error"
	switch {
	case errors.Is(err, keyguard.ErrBackendUnavailable):
		kind = "unavailable"
	case errors.Is(err, keyguard.ErrKeyNotFound):
		kind = "not_found"
	case errors.Is(err, keyguard.ErrUnwrap):
		kind = "unwrap"
	}
	b.m.kekErr.WithLabelValues(b.name, call, kind).Inc()
}

func (b *backend) Primary(ctx context.Context, dataClass, region string) (uint32, error) {
	start := time.Now()
	v, err := b.inner.Primary(ctx, dataClass, region)
	b.observe("primary", dataClass, region, start, err)
	return v, err
}

func (b *backend) Wrap(ctx context.Context, dataClass, region string, version uint32, dataKey []byte) ([]byte, error) {
	start := time.Now()
	w, err := b.inner.Wrap(ctx, dataClass, region, version, dataKey)
	b.observe("wrap", dataClass, region, start, err)
	return w, err
}

func (b *backend) Unwrap(ctx context.Context, dataClass, region string, version uint32, wrapped []byte) ([]byte, error) {
	start := time.Now()
	k, err := b.inner.Unwrap(ctx, dataClass, region, version, wrapped)
	b.observe("unwrap", dataClass, region, start, err)
	return k, err
}

func (b *backend) Rotate(ctx context.Context, dataClass, region string) (uint32, error) {
	start := time.Now()
	v, err := b.inner.Rotate(ctx, dataClass, region)
	b.observe("rotate", dataClass, region, start, err)
	return v, err
}

func (b *backend) Versions(ctx context.Context, dataClass, region string) ([]keyguard.VersionInfo, error) {
	start := time.Now()
	v, err := b.inner.Versions(ctx, dataClass, region)
	b.observe("versions", dataClass, region, start, err)
	return v, err
}

// Refresh is not a KEK operation: it passes through unobserved.
func (b *backend) Refresh(ctx context.Context) error { return b.inner.Refresh(ctx) }
