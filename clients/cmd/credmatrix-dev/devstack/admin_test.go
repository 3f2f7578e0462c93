package devstack_test

import (
	"context"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestBrokerOperatorRPCsOverMTLS checks the broker's admin check against
// real certificates: the CLI's identity (an admin in the local stack)
// may freeze and reload, another service's may not.
func TestBrokerOperatorRPCsOverMTLS(t *testing.T) {
	ctx := context.Background()
	stack, err := devstack.Start(ctx, devstack.Config{StateDir: t.TempDir(), Ports: devstack.EphemeralPorts()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	_, brokerAddr, _ := stack.Addrs()
	client := func(name string) brokerv1.BrokerServiceClient {
		conn, err := grpcclient.Dial(stack.PKI().Client(name, brokerAddr))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return brokerv1.NewBrokerServiceClient(conn)
	}
	admin, other := client("cli"), client("keyguard")
	tok, err := stack.Issuer().Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "7", "credmatrix"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func() codes.Code {
		_, err := admin.IssueSession(ctx, &brokerv1.IssueSessionRequest{Token: tok, Targets: []*brokerv1.SessionTarget{{Role: "deploy", Account: "sandbox"}}})
		return status.Code(err)
	}
	call := func(f func() error) codes.Code { return status.Code(f()) }
	got := []codes.Code{
		issue(),
		call(func() error {
			_, err := other.FreezeAccount(ctx, &brokerv1.FreezeAccountRequest{Account: "sandbox", Reason: "not mine to freeze"})
			return err
		}),
		issue(),
		call(func() error {
			_, err := admin.FreezeAccount(ctx, &brokerv1.FreezeAccountRequest{OuPath: "/root/dev", Reason: "incident drill"})
			return err
		}),
		issue(),
		call(func() error {
			_, err := admin.UnfreezeAccount(ctx, &brokerv1.UnfreezeAccountRequest{OuPath: "/root/dev", Reason: "drill over"})
			return err
		}),
		issue(),
		call(func() error { _, err := other.ReloadPolicy(ctx, &brokerv1.ReloadPolicyRequest{}); return err }),
		call(func() error { _, err := admin.ReloadPolicy(ctx, &brokerv1.ReloadPolicyRequest{}); return err }),
	}
	want := []codes.Code{
		codes.OK, codes.PermissionDenied, codes.OK, codes.OK, codes.PermissionDenied, codes.OK, codes.OK,
		codes.PermissionDenied, codes.OK,
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("(issue, freeze by keyguard, issue, freeze by cli, issue, unfreeze, issue, reload by keyguard, reload by cli) (-got +want):\n%s", diff)
	}
}
