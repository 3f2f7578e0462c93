package devstack_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/clients/devstack"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
)

// benchCallers is the number of concurrent CI jobs the broker benchmark
// simulates.
const benchCallers = 16

// BenchmarkIssueSession measures IssueSession end to end, as a CI runner
// sees it: mTLS gRPC over loopback to the real broker (RS256 token
// verification, the development trust policy, the local provider, the
// SQLite state store) which records every issuance in the real audit
// service (over mTLS gRPC, SQLite, durable before it answers), with 16
// concurrent callers. It reports issuances/s and the p50 and p99 latency.
//
//	go test -run '^$' -bench BenchmarkIssueSession -benchmem -benchtime 5s ./clients/devstack
func BenchmarkIssueSession(b *testing.B) {
	ctx := context.Background()
	stack, err := devstack.Start(ctx, devstack.Config{StateDir: b.TempDir(), Ports: devstack.EphemeralPorts(), LogLevel: "warn"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stack.Close() })
	_, brokerAddr, _ := stack.Addrs()
	conn, err := grpcclient.Dial(stack.PKI().Client("cli", brokerAddr))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	client := brokerv1.NewBrokerServiceClient(conn)

	// One RS256 token per caller, as each CI job has its own.
	tokens := make(chan string, benchCallers*4)
	for i := range cap(tokens) {
		tok, err := stack.Issuer().Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", fmt.Sprint(1000+i), "credmatrix"), time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		tokens <- tok
	}
	req := func(tok string) *brokerv1.IssueSessionRequest {
		return &brokerv1.IssueSessionRequest{Token: tok, Targets: []*brokerv1.SessionTarget{{Role: "deploy", Account: "sandbox"}}}
	}
	if _, err := client.IssueSession(ctx, req(<-tokens)); err != nil {
		b.Fatal(err) // warm up: discovery, JWKS, connections
	}

	var mu sync.Mutex
	var latencies []time.Duration
	b.SetParallelism((benchCallers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
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
		latencies = append(latencies, mine...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	reportLatencies(b, latencies, elapsed)
}

// reportLatencies reports throughput and the p50 and p99 latency.
func reportLatencies(b *testing.B, latencies []time.Duration, elapsed time.Duration) {
	if len(latencies) == 0 {
		return
	}
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(len(latencies))/elapsed.Seconds(), "issuances/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}
