package brokermetrics_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/brokermetrics"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type okAuditor struct{ err error }

func (a okAuditor) Append(context.Context, *auditv1.Event) (*auditv1.AppendResult, error) {
	if a.err != nil {
		return nil, a.err
	}
	return &auditv1.AppendResult{}, nil
}

func sessionEvent(d auditv1.Decision, rule string, s *auditv1.SessionDetail) *auditv1.Event {
	ev := &auditv1.Event{Kind: auditv1.Kind_KIND_SESSION_ISSUE, Decision: d, Rule: rule, Reason: "free text from " + rule}
	if s != nil {
		ev.Detail = &auditv1.Event_Session{Session: s}
	}
	return ev
}

var resolved = &auditv1.SessionDetail{AccountId: "111111111111", AccountName: "sandbox", RoleName: "deploy", RoleArn: "arn:aws:iam::111111111111:role/deploy", Region: "eu-west-1"}

// TestAuditorCounts feeds durable session events through the Auditor
// decorator and checks the counter each lands in, with bounded labels.
func TestAuditorCounts(t *testing.T) {
	tests := []struct {
		name   string
		ev     *auditv1.Event
		metric string
		labels []string // in the metric's label order
	}{
		{"allow", sessionEvent(auditv1.Decision_DECISION_ALLOW, "app-main", resolved), brokermetrics.IssuancesTotal, []string{"deploy", "sandbox", "eu-west-1"}},
		{"deny/policy", sessionEvent(auditv1.Decision_DECISION_DENY, "no-prod-from-pull-requests", resolved), brokermetrics.DenialsTotal, []string{"policy", "no-prod-from-pull-requests", "deploy", "sandbox"}},
		{"deny/no-rule", sessionEvent(auditv1.Decision_DECISION_DENY, "", resolved), brokermetrics.DenialsTotal, []string{"policy", "unknown", "deploy", "sandbox"}},
		{"deny/frozen", sessionEvent(auditv1.Decision_DECISION_DENY, broker.RuleAccountFrozen, resolved), brokermetrics.DenialsTotal, []string{"frozen", broker.RuleAccountFrozen, "deploy", "sandbox"}},
		{"deny/revoked", sessionEvent(auditv1.Decision_DECISION_DENY, broker.RuleRevoked, resolved), brokermetrics.DenialsTotal, []string{"revoked", broker.RuleRevoked, "deploy", "sandbox"}},
		{"deny/rate-limited", sessionEvent(auditv1.Decision_DECISION_DENY, broker.RuleRateLimited, resolved), brokermetrics.DenialsTotal, []string{"rate_limited", broker.RuleRateLimited, "deploy", "sandbox"}},
		{"deny/token", sessionEvent(auditv1.Decision_DECISION_DENY, "", nil), brokermetrics.DenialsTotal, []string{"authentication", "unknown", "unknown", "unknown"}},
		{"attack/unknown-account-name-is-not-a-label", sessionEvent(auditv1.Decision_DECISION_DENY, "", &auditv1.SessionDetail{AccountName: "attacker-picked-name", RoleName: "deploy"}), brokermetrics.DenialsTotal, []string{"unknown_target", "unknown", "unknown", "unknown"}},
		{"attack/unknown-role-name-is-not-a-label", sessionEvent(auditv1.Decision_DECISION_DENY, "", &auditv1.SessionDetail{AccountId: "1", AccountName: "sandbox", RoleName: "x" + string(make([]byte, 300))}), brokermetrics.DenialsTotal, []string{"unknown_target", "unknown", "unknown", "sandbox"}},
		{"error", sessionEvent(auditv1.Decision_DECISION_ERROR, "app-main", resolved), brokermetrics.IssueErrorsTotal, []string{"deploy", "sandbox"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m := brokermetrics.New(reg)
			if _, err := m.Auditor(okAuditor{}).Append(context.Background(), tc.ev); err != nil {
				t.Fatal(err)
			}
			got := map[string]int{}
			for _, name := range []string{brokermetrics.IssuancesTotal, brokermetrics.DenialsTotal, brokermetrics.IssueErrorsTotal} {
				got[name] = testutil.CollectAndCount(reg, name)
			}
			want := map[string]int{brokermetrics.IssuancesTotal: 0, brokermetrics.DenialsTotal: 0, brokermetrics.IssueErrorsTotal: 0}
			want[tc.metric] = 1
			if diff := cmp.Diff(got, want); diff != "" {
				t.Fatalf("series per metric (-got +want):\n%s", diff)
			}
			if v := testutil.ToFloat64(counterVec(t, m, tc.metric).WithLabelValues(tc.labels...)); v != 1 {
				t.Errorf("%s%v = %v, want 1", tc.metric, tc.labels, v)
			}
		})
	}
}

// counterVec reaches a counter through a fresh registration check: the
// labels either exist with value 1 or ToFloat64 reads 0.
func counterVec(t *testing.T, m *brokermetrics.Metrics, name string) *prometheus.CounterVec {
	t.Helper()
	return brokermetrics.CounterForTest(m, name)
}

// TestAuditorFailedAppendNotCounted: an event that is not durable
// (audit down: the request fails closed) is not counted.
func TestAuditorFailedAppendNotCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := brokermetrics.New(reg)
	if _, err := m.Auditor(okAuditor{err: errors.New("down")}).Append(context.Background(), sessionEvent(auditv1.Decision_DECISION_ALLOW, "r", resolved)); err == nil {
		t.Fatal("error swallowed")
	}
	if n := testutil.CollectAndCount(reg, brokermetrics.IssuancesTotal); n != 0 {
		t.Errorf("%d issuance series after a failed append", n)
	}
	if v := testutil.ToFloat64(brokermetrics.AuditErrorsForTest(m)); v != 1 {
		t.Errorf("audit append errors = %v, want 1", v)
	}
	if n := testutil.CollectAndCount(reg, brokermetrics.AuditAppendDuration); n != 1 {
		t.Errorf("%d audit latency series, want 1", n)
	}
}

type baseProvider struct{ err error }

func (p baseProvider) Name() string { return "fake" }
func (p baseProvider) Issue(context.Context, broker.SessionSpec) (broker.Credentials, error) {
	return broker.Credentials{AccessKeyID: "ASIAFAKE"}, p.err
}

type introspector struct{ baseProvider }

func (introspector) Introspect(string, string) (*broker.SessionInfo, error) { return nil, nil }

type limiter struct{ baseProvider }

func (limiter) MaxDuration() time.Duration { return time.Hour }

type revoker struct{ baseProvider }

func (revoker) RevokeSessions(context.Context, []broker.RoleRef, broker.Revocation) (int, error) {
	return 0, nil
}

type all struct {
	introspector
	limiter
	revoker
}

func (all) Name() string { return "fake" }
func (all) Issue(context.Context, broker.SessionSpec) (broker.Credentials, error) {
	return broker.Credentials{}, nil
}

type introLimiter struct {
	introspector
	limiter
}

func (introLimiter) Name() string { return "fake" }
func (introLimiter) Issue(context.Context, broker.SessionSpec) (broker.Credentials, error) {
	return broker.Credentials{}, nil
}

func interfacesOf(p broker.Provider) [3]bool {
	_, in := p.(broker.Introspector)
	_, dl := p.(broker.DurationLimiter)
	_, rv := p.(broker.SessionRevoker)
	return [3]bool{in, dl, rv}
}

// TestProviderKeepsOptionalInterfaces: the decorator exposes exactly the
// optional interfaces the wrapped provider has, so the broker's feature
// checks (GetSession, duration caps, revocation) see through it.
func TestProviderKeepsOptionalInterfaces(t *testing.T) {
	m := brokermetrics.New(nil)
	for _, p := range []broker.Provider{baseProvider{}, introspector{}, limiter{}, revoker{}, all{}, introLimiter{}} {
		t.Run(fmt.Sprintf("%T", p), func(t *testing.T) {
			if diff := cmp.Diff(interfacesOf(m.Provider(p)), interfacesOf(p)); diff != "" {
				t.Errorf("(-wrapped +original):\n%s", diff)
			}
		})
	}
}

func TestProviderErrors(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		wantKind string
	}{
		{"ok", nil, ""},
		{"unavailable", fmt.Errorf("throttled: %w", broker.ErrProviderUnavailable), "unavailable"},
		{"refused", fmt.Errorf("AccessDenied: %w", broker.ErrProviderRefused), "refused"},
		{"other", errors.New("upstream said something with secret-looking text"), "error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m := brokermetrics.New(reg)
			_, err := m.Provider(baseProvider{err: tc.err}).Issue(context.Background(), broker.SessionSpec{Region: "eu-west-1", WebIdentityToken: "secret-token"})
			if !errors.Is(err, tc.err) {
				t.Fatalf("error %v not passed through", err)
			}
			if n := testutil.CollectAndCount(reg, brokermetrics.UpstreamDuration); n != 1 {
				t.Errorf("%d latency series, want 1", n)
			}
			wantSeries := 0
			if tc.wantKind != "" {
				wantSeries = 1
				if v := testutil.ToFloat64(brokermetrics.CounterForTest(m, brokermetrics.UpstreamErrorsTotal).WithLabelValues("fake", "eu-west-1", tc.wantKind)); v != 1 {
					t.Errorf("errors{kind=%s} = %v", tc.wantKind, v)
				}
			}
			if n := testutil.CollectAndCount(reg, brokermetrics.UpstreamErrorsTotal); n != wantSeries {
				t.Errorf("%d error series, want %d", n, wantSeries)
			}
		})
	}
}
