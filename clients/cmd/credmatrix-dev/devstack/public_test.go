package devstack

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/platform/grpcclient"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestRunnerEnv checks the stack's public listeners the way RunnerEnv
// describes them: with the CA bundle alone (no client certificate) and a
// token from the dev issuer, a session; an operator RPC is refused there.
func TestRunnerEnv(t *testing.T) {
	s, err := Start(context.Background(), Config{StateDir: t.TempDir(), Ports: EphemeralPorts()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	env := map[string]string{}
	for _, kv := range s.RunnerEnv() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	if env["CREDMATRIX_CERT_FILE"] != "" || env["CREDMATRIX_KEY_FILE"] != "" {
		t.Fatalf("RunnerEnv hands out a client certificate: %v", env)
	}
	conn, err := grpcclient.Dial(grpcclient.Config{Target: env["CREDMATRIX_BROKER_ADDR"], CAFile: env["CREDMATRIX_CA_FILE"]})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	broker := brokerv1.NewBrokerServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := s.Issuer().Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "1", "credmatrix"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := broker.IssueSession(ctx, &brokerv1.IssueSessionRequest{Token: tok, Targets: []*brokerv1.SessionTarget{{Role: "deploy", Account: "sandbox"}}})
	if err != nil {
		t.Fatalf("IssueSession on the public listener: %v", err)
	}
	if id := resp.GetSessions()[0].GetCredentials().GetAccessKeyId(); !strings.HasPrefix(id, "ASIA") {
		t.Errorf("access key id %q", id)
	}
	if _, err := broker.FreezeAccount(ctx, &brokerv1.FreezeAccountRequest{Account: "sandbox", Reason: "x"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("FreezeAccount on the public listener: %v, want PermissionDenied", err)
	}
}
