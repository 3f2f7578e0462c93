package brokermetrics

import "github.com/prometheus/client_golang/prometheus"

// CounterForTest returns the counter vector named name.
func CounterForTest(m *Metrics, name string) *prometheus.CounterVec {
	switch name {
	case IssuancesTotal:
		return m.issued
	case DenialsTotal:
		return m.denied
	case IssueErrorsTotal:
		return m.issueErrors
	case UpstreamErrorsTotal:
		return m.upstreamErr
	}
	panic("no counter " + name)
}

// AuditErrorsForTest returns the audit append error counter.
func AuditErrorsForTest(m *Metrics) prometheus.Counter { return m.auditErr }
