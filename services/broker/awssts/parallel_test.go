package awssts_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/awssts"
	"github.com/credmatrix/credmatrix/services/broker/awssts/awstest"
	"github.com/credmatrix/credmatrix/services/broker/brokertest"
)

// manyRolesPolicy has roles roles spread over accounts accounts.
func manyRolesPolicy(accounts, roles int) string {
	var b strings.Builder
	b.WriteString("version: 1\nissuers:\n  - name: dev\n    url: {{issuer}}\n    audiences: [credmatrix]\naccounts:\n")
	for a := range accounts {
		fmt.Fprintf(&b, "  - id: \"%012d\"\n    name: acct-%d\n    region: eu-west-1\n", 100000000000+a, a)
	}
	b.WriteString("roles:\n")
	for r := range roles {
		fmt.Fprintf(&b, "  - name: role-%d\n    account: acct-%d\n", r, r%accounts)
	}
	b.WriteString("rules:\n  - name: acme\n    issuer: dev\n    roles: [role-0]\n    accounts: [acct-0]\n    claims:\n      repository_owner: acme\n")
	return b.String()
}

// TestRevocationOnManyRolesHonoursThrottling: one revocation covering 100
// roles puts the deny on every one, in parallel, against an IAM endpoint
// that throttles each account like IAM; throttled calls are paced and
// retried, none is lost.
func TestRevocationOnManyRolesHonoursThrottling(t *testing.T) {
	for _, tc := range []struct {
		name     string
		accounts int
	}{
		{"100-roles-in-10-accounts", 10},
		{"100-roles-in-1-account", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := brokertest.NewEnv(t, manyRolesPolicy(tc.accounts, 100))
			// Each account accepts 40 IAM calls a second after a burst of
			// 10: one account needs pacing to take 100.
			iamEP := awstest.New(awstest.Options{IAMRate: 40, IAMBurst: 10})
			srv := httptest.NewServer(iamEP)
			t.Cleanup(srv.Close)
			p, err := awssts.New(aws.Config{
				Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("AKIDBROKEREXAMPLE", "broker-secret", ""),
				HTTPClient: srv.Client(),
			}, awssts.Config{STSEndpoint: srv.URL, IAMEndpoint: srv.URL, RevokerRoleName: "credmatrix-revoker",
				BaseDelay: 20 * time.Millisecond, MaxDelay: 200 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			svc, err := broker.New(broker.Config{Policy: e.Policy, Verifier: e.Verifier, Provider: p, Auditor: e.Auditor,
				Hasher: e.Hasher, Store: e.Store, Admins: []string{brokertest.AdminPeer}})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			res, err := svc.RevokeSessions(context.Background(), brokertest.AdminPeer, broker.RevokeRequest{Subject: "repo:acme/app:ref:refs/heads/main", Reason: "leak"})
			elapsed := time.Since(start)
			if err != nil {
				t.Fatalf("RevokeSessions: %v", err)
			}
			if res.RolesUpdated != 100 {
				t.Fatalf("%d roles updated, want 100", res.RolesUpdated)
			}
			missing := 0
			for r := range 100 {
				if iamEP.Policy(fmt.Sprintf("%012d", 100000000000+r%tc.accounts), fmt.Sprintf("role-%d", r), awssts.RevocationPolicyName) == "" {
					missing++
				}
			}
			if missing > 0 {
				t.Errorf("%d roles have no revocation policy in IAM", missing)
			}
			t.Logf("%s: %s, %d PutRolePolicy calls, %d throttled", tc.name, elapsed.Round(time.Millisecond),
				iamEP.Calls("PutRolePolicy"), iamEP.Throttled("PutRolePolicy"))
		})
	}
}
