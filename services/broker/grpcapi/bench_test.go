package grpcapi_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/credmatrix/credmatrix/services/broker/brokertest"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
)

// BenchmarkIssueSessionBrokerOnly measures the broker's own cost of
// IssueSession over in-process gRPC (bufconn): RS256 verification,
// policy evaluation, state checks, session policy rendering and the
// local provider, with 16 concurrent callers and an in-memory audit log.
// clients/devstack's BenchmarkIssueSession adds mTLS and the real,
// durable audit service.
//
//	go test -run '^$' -bench BenchmarkIssueSessionBrokerOnly -benchmem ./services/broker/grpcapi
func BenchmarkIssueSessionBrokerOnly(b *testing.B) {
	s := &stack{Env: brokertest.NewEnv(b, "")}
	client := serve(b, s, peerID)
	tokens := make(chan string, 64)
	for i := range cap(tokens) {
		tok, err := s.Issuer.Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", fmt.Sprint(i), brokertest.Audience), time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		tokens <- tok
	}
	ctx := context.Background()
	req := func(tok string) *brokerv1.IssueSessionRequest {
		return &brokerv1.IssueSessionRequest{Token: tok, Targets: []*brokerv1.SessionTarget{target("deploy", "dev")}}
	}
	if _, err := client.IssueSession(ctx, req(<-tokens)); err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	var lat []time.Duration
	b.SetParallelism((16 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		tok := <-tokens
		var mine []time.Duration
		for pb.Next() {
			t0 := time.Now()
			if _, err := client.IssueSession(ctx, req(tok)); err != nil {
				b.Error(err)
				return
			}
			mine = append(mine, time.Since(t0))
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	s.Auditor.Reset()
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "issuances/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}
