package devstack_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/credmatrix/credmatrix/clients/brokerclient"
	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
)

// A CI job swaps its OIDC token for a session. Here the local stack stands
// in for a deployed broker and the dev issuer for GitHub Actions.
func Example_brokerClient() {
	dir, _ := os.MkdirTemp("", "credmatrix-example")
	defer os.RemoveAll(dir)
	stack, err := devstack.Start(context.Background(), devstack.Config{StateDir: dir, Ports: devstack.EphemeralPorts()})
	if err != nil {
		log.Fatal(err)
	}
	defer stack.Close()
	token, _ := stack.Issuer().Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "42", "credmatrix"), time.Minute)

	_, brokerAddr, _ := stack.Addrs()
	client, err := brokerclient.Dial(stack.PKI().Client("cli", brokerAddr)) // mTLS; reuse for every call
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	ctx := context.Background()
	sessions, err := client.IssueSession(ctx, token, "example", brokerclient.Target{Role: "deploy", Account: "sandbox"})
	if err != nil {
		log.Fatal(err)
	}
	s := sessions[0]
	fmt.Println(s.GetRole(), s.GetAccountId(), s.GetRegion(), strings.HasPrefix(s.GetCredentials().GetAccessKeyId(), "ASIA"))

	_, err = client.IssueSession(ctx, token, "", brokerclient.Target{Role: "deploy", Account: "prod"})
	fmt.Println(brokerclient.IsDenied(err), err)
	// Output:
	// deploy 111111111111 eu-west-1 true
	// true denied by rule default-deny: no allow rule matches role "deploy" in account "prod" for this token
}
