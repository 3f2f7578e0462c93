// Package brokermetrics instruments the broker by wrapping its backends:
// the credential provider (upstream STS latency and errors) and the audit
// client (issuances and denials, read from the audit events the broker
// records before answering). The broker domain package stays free of
// Prometheus.
//
// Label values are bounded and never secret: roles and accounts only when
// the trust policy resolved them (otherwise "unknown", since a caller may
// ask for any name), rules from the policy or the broker's built-in rule
// names, reasons as a fixed set of categories. Subjects, tokens and
// session ids are never labels.
package brokermetrics

import (
	"context"
	"errors"
	"time"

	"github.com/credmatrix/credmatrix/platform/metrics"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Metric names.
const (
	IssuancesTotal      = "credmatrix_broker_issuances_total"
	DenialsTotal        = "credmatrix_broker_denials_total"
	IssueErrorsTotal    = "credmatrix_broker_issue_errors_total"
	IssueDuration       = "credmatrix_broker_issue_duration_seconds"
	UpstreamDuration    = "credmatrix_broker_upstream_request_duration_seconds"
	UpstreamErrorsTotal = "credmatrix_broker_upstream_errors_total"
	AuditAppendDuration = "credmatrix_broker_audit_append_duration_seconds"
	AuditAppendErrors   = "credmatrix_broker_audit_append_errors_total"
)

// Denial reason categories (the reason label of DenialsTotal).
const (
	ReasonAuthentication = "authentication" // the token did not verify (or was replayed)
	ReasonUnknownTarget  = "unknown_target" // the role or account is not in the trust policy
	ReasonFrozen         = "frozen"         // the account or its OU is frozen
	ReasonRevoked        = "revoked"        // a revocation matches the caller
	ReasonRateLimited    = "rate_limited"   // a rate limit refused the request
	ReasonPolicy         = "policy"         // a policy rule denied, or no allow rule matched
)

// Unknown is the label value of a role, account or rule the policy did not
// resolve, and of a request with none.
const Unknown = "unknown"

// Metrics are the broker's metrics.
type Metrics struct {
	issued      *prometheus.CounterVec
	denied      *prometheus.CounterVec
	issueErrors *prometheus.CounterVec
	issueDur    *prometheus.HistogramVec
	upstreamDur *prometheus.HistogramVec
	upstreamErr *prometheus.CounterVec
	auditDur    prometheus.Histogram
	auditErr    prometheus.Counter
}

// New creates the broker metrics and registers them with reg (nil: not
// registered).
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: IssuancesTotal,
			Help: "STS sessions issued (audited and returned), by role, account and region.",
		}, []string{"role", "account", "region"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: DenialsTotal,
			Help: "Refused session requests (one per refused target; one per refused token), by reason category, deciding rule, role and account.",
		}, []string{"reason", "rule", "role", "account"}),
		issueErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: IssueErrorsTotal,
			Help: "Allowed session requests that failed at the credential provider, by role and account.",
		}, []string{"role", "account"}),
		issueDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    IssueDuration,
			Help:    "Time to answer IssueSession (verification, policy, audit, STS), by outcome (issued, denied, error).",
			Buckets: metrics.LatencyBuckets,
		}, []string{"outcome"}),
		upstreamDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    UpstreamDuration,
			Help:    "Time of one credential provider call (AWS STS AssumeRole with retries, or the local issuer), by provider and region.",
			Buckets: metrics.LatencyBuckets,
		}, []string{"provider", "region"}),
		upstreamErr: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: UpstreamErrorsTotal,
			Help: "Failed credential provider calls, by provider, region and kind (unavailable: throttled or unreachable; refused: AWS refused, a configuration problem; error: anything else).",
		}, []string{"provider", "region", "kind"}),
		auditDur: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    AuditAppendDuration,
			Help:    "Time for one audit event to become durable, as the broker waits for it (batching included) before answering.",
			Buckets: metrics.LatencyBuckets,
		}),
		auditErr: prometheus.NewCounter(prometheus.CounterOpts{
			Name: AuditAppendErrors,
			Help: "Audit appends that failed; each failed its request closed (UNAVAILABLE, nothing issued).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.issued, m.denied, m.issueErrors, m.issueDur, m.upstreamDur, m.upstreamErr, m.auditDur, m.auditErr)
	}
	return m
}

// ObserveIssue records how long one IssueSession took and its outcome
// ("issued", "denied" or "error"); the gRPC edge calls it.
func (m *Metrics) ObserveIssue(outcome string, d time.Duration) {
	m.issueDur.WithLabelValues(outcome).Observe(d.Seconds())
}

// Auditor wraps the broker's audit client: it times every append and
// counts failures, and after an event is durably appended it counts the
// issuance, denial or provider error it records. Events that fail to
// append are not counted as issuances or denials (the request failed
// closed).
func (m *Metrics) Auditor(a broker.Auditor) broker.Auditor { return &auditor{inner: a, m: m} }

type auditor struct {
	inner broker.Auditor
	m     *Metrics
}

func (a *auditor) Append(ctx context.Context, ev *auditv1.Event) (*auditv1.AppendResult, error) {
	start := time.Now()
	res, err := a.inner.Append(ctx, ev)
	a.m.auditDur.Observe(time.Since(start).Seconds())
	if err != nil {
		a.m.auditErr.Inc()
		return res, err
	}
	a.m.count(ev)
	return res, err
}

// count turns one durable session event into counters.
func (m *Metrics) count(ev *auditv1.Event) {
	if ev.GetKind() != auditv1.Kind_KIND_SESSION_ISSUE {
		return
	}
	s := ev.GetSession()
	role, account := Unknown, Unknown
	if s.GetRoleArn() != "" && s.GetRoleName() != "" {
		role = s.GetRoleName()
	}
	if s.GetAccountId() != "" && s.GetAccountName() != "" {
		account = s.GetAccountName()
	}
	switch ev.GetDecision() {
	case auditv1.Decision_DECISION_ALLOW:
		region := s.GetRegion()
		if region == "" || account == Unknown {
			region = Unknown
		}
		m.issued.WithLabelValues(role, account, region).Inc()
	case auditv1.Decision_DECISION_DENY:
		rule := ev.GetRule()
		if rule == "" {
			rule = Unknown
		}
		m.denied.WithLabelValues(reasonOf(ev, role, account), rule, role, account).Inc()
	case auditv1.Decision_DECISION_ERROR:
		m.issueErrors.WithLabelValues(role, account).Inc()
	}
}

// reasonOf classifies a denial into one of the Reason* categories.
func reasonOf(ev *auditv1.Event, role, account string) string {
	switch {
	case ev.GetSession() == nil:
		return ReasonAuthentication
	case ev.GetRule() == broker.RuleAccountFrozen:
		return ReasonFrozen
	case ev.GetRule() == broker.RuleRevoked:
		return ReasonRevoked
	case ev.GetRule() == broker.RuleRateLimited:
		return ReasonRateLimited
	case role == Unknown || account == Unknown:
		return ReasonUnknownTarget
	default:
		return ReasonPolicy
	}
}

// Provider wraps p so that every Issue is timed and its failures counted.
// The optional interfaces p implements (Introspector, DurationLimiter,
// SessionRevoker) stay visible through the wrapper, and no others appear.
func (m *Metrics) Provider(p broker.Provider) broker.Provider {
	w := &provider{Provider: p, m: m}
	in, isIn := p.(broker.Introspector)
	dl, isDL := p.(broker.DurationLimiter)
	rv, isRV := p.(broker.SessionRevoker)
	switch {
	case isIn && isDL && isRV:
		return struct {
			*provider
			broker.Introspector
			broker.DurationLimiter
			broker.SessionRevoker
		}{w, in, dl, rv}
	case isIn && isDL:
		return struct {
			*provider
			broker.Introspector
			broker.DurationLimiter
		}{w, in, dl}
	case isIn && isRV:
		return struct {
			*provider
			broker.Introspector
			broker.SessionRevoker
		}{w, in, rv}
	case isDL && isRV:
		return struct {
			*provider
			broker.DurationLimiter
			broker.SessionRevoker
		}{w, dl, rv}
	case isIn:
		return struct {
			*provider
			broker.Introspector
		}{w, in}
	case isDL:
		return struct {
			*provider
			broker.DurationLimiter
		}{w, dl}
	case isRV:
		return struct {
			*provider
			broker.SessionRevoker
		}{w, rv}
	}
	return w
}

type provider struct {
	broker.Provider
	m *Metrics
}

var _ broker.Provider = (*provider)(nil)

func (p *provider) Issue(ctx context.Context, spec broker.SessionSpec) (broker.Credentials, error) {
	start := time.Now()
	creds, err := p.Provider.Issue(ctx, spec)
	region := spec.Region
	if region == "" {
		region = Unknown
	}
	name := p.Provider.Name()
	p.m.upstreamDur.WithLabelValues(name, region).Observe(time.Since(start).Seconds())
	if err != nil {
		kind := "error"
		switch {
		case errors.Is(err, broker.ErrProviderUnavailable):
			kind = "unavailable"
		case errors.Is(err, broker.ErrProviderRefused):
			kind = "refused"
		}
		p.m.upstreamErr.WithLabelValues(name, region, kind).Inc()
	}
	return creds, err
}

// IssueTimer is a unary server interceptor that times IssueSession for
// IssueDuration: OK is "issued"; PermissionDenied, Unauthenticated and
// ResourceExhausted (refusals, all audited) are "denied"; anything else is
// "error". Other methods pass through.
func IssueTimer(m *Metrics) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if info.FullMethod != brokerv1.BrokerService_IssueSession_FullMethodName {
			return handler(ctx, req)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		outcome := "error"
		switch status.Code(err) {
		case codes.OK:
			outcome = "issued"
		case codes.PermissionDenied, codes.Unauthenticated, codes.ResourceExhausted:
			outcome = "denied"
		}
		m.ObserveIssue(outcome, time.Since(start))
		return resp, err
	}
}
