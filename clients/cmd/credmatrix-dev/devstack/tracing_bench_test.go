package devstack_test

import (
	"context"
	"testing"

	"github.com/credmatrix/credmatrix/platform/telemetry"
)

// BenchmarkIssueSessionTraced is BenchmarkIssueSession with the services'
// tracing on as in production without a collector: the SDK tracer provider
// of telemetry.Setup records every span (otelgrpc client and server spans
// of broker and audit, the broker's domain spans, the audit batch and
// commit spans) with its attributes, and drops them. Compare the two to
// see what tracing costs an issuance.
//
//	go test -run '^$' -bench 'BenchmarkIssueSession' -benchmem -benchtime 5s ./clients/cmd/credmatrix-dev/devstack
func BenchmarkIssueSessionTraced(b *testing.B) {
	shutdown, err := telemetry.Setup(context.Background(), "credmatrix-bench", nil)
	if err != nil {
		b.Fatal(err)
	}
	// The stack's handlers keep the provider they were built with; after
	// shutdown it records nothing, as before Setup.
	b.Cleanup(func() { _ = shutdown(context.Background()) })
	benchIssueSession(b)
}
