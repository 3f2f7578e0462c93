package devstack_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/platform/benchload"
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
//	go test -run '^$' -bench BenchmarkIssueSession -benchmem -benchtime 5s ./clients/cmd/credmatrix-dev/devstack
func BenchmarkIssueSession(b *testing.B) { benchIssueSession(b) }

// benchIssueSession is BenchmarkIssueSession's body, shared with the
// traced and metrics-off variants; adjust changes the stack's ports.
func benchIssueSession(b *testing.B, adjust ...func(*devstack.Ports)) {
	ctx := context.Background()
	ports := devstack.EphemeralPorts()
	for _, f := range adjust {
		f(&ports)
	}
	stack, err := devstack.Start(ctx, devstack.Config{StateDir: b.TempDir(), Ports: ports, LogLevel: "warn"})
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

	toks := make([]string, benchCallers)
	for i := range toks {
		toks[i] = <-tokens
	}
	benchload.Run(b, benchCallers, "issuances", func(caller int) error {
		_, err := client.IssueSession(ctx, req(toks[caller]))
		return err
	})
}
