package grpcapi_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/platform/benchload"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/credmatrix/credmatrix/services/broker/brokertest"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
)

// BenchmarkIssueSessionBrokerOnly measures the broker's own cost of
// IssueSession over in-process gRPC (bufconn): RS256 verification,
// policy evaluation, state checks, session policy rendering and the
// local provider, with 16 concurrent callers and an in-memory audit log.
// clients/cmd/credmatrix-dev/devstack's BenchmarkIssueSession adds mTLS and the real,
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
	toks := make([]string, 16)
	for i := range toks {
		toks[i] = <-tokens
	}
	benchload.Run(b, 16, "issuances", func(caller int) error {
		_, err := client.IssueSession(ctx, req(toks[caller]))
		return err
	})
	s.Auditor.Reset()
}
