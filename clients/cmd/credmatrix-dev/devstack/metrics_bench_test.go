package devstack_test

import (
	"testing"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
)

// BenchmarkIssueSessionMetricsOff is BenchmarkIssueSession (which runs
// with every service's metrics on) with metrics off, to show what the
// metrics cost an issuance.
//
//	go test -run '^$' -bench 'BenchmarkIssueSession$|MetricsOff' -benchtime 5s ./clients/cmd/credmatrix-dev/devstack
func BenchmarkIssueSessionMetricsOff(b *testing.B) {
	benchIssueSession(b, func(p *devstack.Ports) {
		p.AuditMetrics, p.BrokerMetrics, p.KeyguardMetrics = "", "", ""
	})
}
