package devstack_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
)

// zonesPolicy has an account in zone eu, one in zone us and one in no
// zone; acme/app on main may deploy to each.
const zonesPolicy = `version: 1
issuers:
  - name: dev
    url: ${DEV_ISSUER_URL}
    audiences: [credmatrix]
zones:
  - name: eu
    regions: [eu-west-1, eu-central-1]
  - name: us
    regions: [us-east-1]
accounts:
  - {id: "111111111111", name: eu-acct, ou: /root/eu, region: eu-west-1, residency: eu}
  - {id: "222222222222", name: us-acct, ou: /root/us, region: us-east-1, residency: us}
  - {id: "333333333333", name: shared, ou: /root/shared, region: eu-west-1}
roles:
  - {name: deploy, account: eu-acct}
  - {name: deploy, account: us-acct}
  - {name: deploy, account: shared}
rules:
  - name: app-main
    issuer: dev
    roles: [deploy]
    accounts: [eu-acct, us-acct, shared]
    claims:
      repository: acme/app
      ref: refs/heads/main
`

// TestAuditPerResidencyZone runs the stack with an audit log per zone:
// every event lands in the log of its account's or ring's zone and in no
// other (the global log keeps only events of no zone), and a zone's log
// going down fails that zone's requests only.
func TestAuditPerResidencyZone(t *testing.T) {
	ctx := context.Background()
	stack, err := devstack.Start(ctx, devstack.Config{StateDir: t.TempDir(), Ports: devstack.EphemeralPorts(), Policy: zonesPolicy,
		Zones: []devstack.Zone{{Name: "eu", Regions: []string{"eu-*"}}, {Name: "us", Regions: []string{"us-*"}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	conn := func(addr string) *grpc.ClientConn {
		c, err := grpcclient.Dial(stack.PKI().Client("cli", addr))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	auditAddr, brokerAddr, keyguardAddr := stack.Addrs()
	broker := brokerv1.NewBrokerServiceClient(conn(brokerAddr))
	keyguard := keyguardv1.NewKeyguardServiceClient(conn(keyguardAddr))
	tok, err := stack.Issuer().Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "9", "credmatrix"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(account string) error {
		c, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_, err := broker.IssueSession(c, &brokerv1.IssueSessionRequest{Token: tok, Targets: []*brokerv1.SessionTarget{{Role: "deploy", Account: account}}})
		return err
	}
	encrypt := func(region string) error {
		c, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_, err := keyguard.Encrypt(c, &keyguardv1.EncryptRequest{DataClass: "internal", Region: region, Plaintext: []byte("zoned")})
		return err
	}
	for _, a := range []string{"eu-acct", "us-acct", "shared"} {
		if err := issue(a); err != nil {
			t.Fatalf("issue in %s: %v", a, err)
		}
	}
	for _, r := range []string{"eu-west-1", "us-east-1"} {
		if err := encrypt(r); err != nil {
			t.Fatalf("encrypt in %s: %v", r, err)
		}
	}

	// Events of no single zone go to the global log: a denial before the
	// target account is known, actions naming accounts of several zones or
	// none, a grant over two zones. One zone's go to its log.
	if err := issue("no-such-account"); status.Code(err) != codes.PermissionDenied && status.Code(err) != codes.InvalidArgument && status.Code(err) != codes.NotFound {
		t.Fatalf("issue in an unknown account: %v", err)
	}
	admin := func(name string, call func(context.Context) error) {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := call(c); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	admin("freeze eu-acct", func(c context.Context) error {
		_, err := broker.FreezeAccount(c, &brokerv1.FreezeAccountRequest{Account: "eu-acct", Reason: "drill eu"})
		return err
	})
	admin("unfreeze eu-acct", func(c context.Context) error {
		_, err := broker.UnfreezeAccount(c, &brokerv1.UnfreezeAccountRequest{Account: "eu-acct", Reason: "drill eu over"})
		return err
	})
	admin("freeze /root", func(c context.Context) error {
		_, err := broker.FreezeAccount(c, &brokerv1.FreezeAccountRequest{OuPath: "/root", Reason: "drill all"})
		return err
	})
	admin("unfreeze /root", func(c context.Context) error {
		_, err := broker.UnfreezeAccount(c, &brokerv1.UnfreezeAccountRequest{OuPath: "/root", Reason: "drill all over"})
		return err
	})
	admin("revoke in us-acct", func(c context.Context) error {
		_, err := broker.RevokeSessions(c, &brokerv1.RevokeSessionsRequest{Subject: "repo:someone/else:ref:refs/heads/main", AccountId: "222222222222", Reason: "drill us"})
		return err
	})
	admin("revoke by subject", func(c context.Context) error {
		_, err := broker.RevokeSessions(c, &brokerv1.RevokeSessionsRequest{Subject: "repo:someone/else:ref:refs/heads/main", Reason: "drill subject"})
		return err
	})
	for _, regions := range [][]string{{"eu-west-1"}, {"eu-west-1", "us-east-1"}} {
		admin(fmt.Sprint("grant over ", regions), func(c context.Context) error {
			_, err := keyguard.CreateGrant(c, &keyguardv1.CreateGrantRequest{Grant: &keyguardv1.Grant{Principal: "spiffe://credmatrix.dev/zone-test",
				DataClass: "internal", Operations: []keyguardv1.Operation{keyguardv1.Operation_OPERATION_ENCRYPT}, Regions: regions,
				ExpireTime: timestamppb.New(time.Now().Add(time.Hour))}})
			return err
		})
	}

	// Read every log back.
	logs := map[string]string{"": auditAddr}
	for z, addr := range stack.ZoneAuditAddrs() {
		logs[z] = addr
	}
	where := map[string][]string{} // what happened → the logs holding it
	for zone, addr := range logs {
		audit := auditv1.NewAuditServiceClient(conn(addr))
		res, err := audit.Query(ctx, &auditv1.QueryRequest{PageSize: 1000})
		if err != nil {
			t.Fatalf("query the %q log: %v", zone, err)
		}
		for _, ev := range res.GetEvents() {
			if ev.GetResidencyZone() != zone {
				t.Errorf("the %q log holds event %s of zone %q (%s)", zone, ev.GetId(), ev.GetResidencyZone(), ev.GetKind())
			}
			switch {
			case ev.GetKind() == auditv1.Kind_KIND_SESSION_ISSUE && ev.GetDecision() == auditv1.Decision_DECISION_ALLOW:
				what := "session " + ev.GetSession().GetAccountId()
				where[what] = append(where[what], zone)
			case ev.GetKind() == auditv1.Kind_KIND_KEY_ENCRYPT:
				what := "encrypt " + ev.GetKey().GetRegion()
				where[what] = append(where[what], zone)
			case ev.GetKind() == auditv1.Kind_KIND_SESSION_ISSUE && ev.GetSession().GetAccountId() == "":
				where["denial before the account"] = append(where["denial before the account"], zone)
			case ev.GetAdmin() != nil && ev.GetReason() != "":
				what := ev.GetAdmin().GetAction() + " " + ev.GetReason()
				where[what] = append(where[what], zone)
			case ev.GetKind() == auditv1.Kind_KIND_GRANT_CREATE && ev.GetKey().GetOperation() == "static-grant":
				what := "grant " + ev.GetKey().GetGrantId()
				where[what] = append(where[what], zone)
			case ev.GetKind() == auditv1.Kind_KIND_GRANT_CREATE:
				what := "grant over " + strings.Join(ev.GetKey().GetGrantRegions(), "+")
				where[what] = append(where[what], zone)
			}
		}
	}
	want := map[string][]string{
		"session 111111111111": {"eu"}, "session 222222222222": {"us"}, "session 333333333333": {""},
		"encrypt eu-west-1": {"eu"}, "encrypt us-east-1": {"us"},
		"denial before the account": {""},
		"freeze drill eu":           {"eu"}, "unfreeze drill eu over": {"eu"},
		"freeze drill all": {""}, "unfreeze drill all over": {""},
		"revoke sessions drill us": {"us"}, "revoke sessions drill subject": {""},
		// the key-ring file's static grants (recorded at start) and the API's
		"grant cli-confidential-eu": {"eu"}, "grant cli-internal": {""},
		"grant over eu-west-1": {"eu"}, "grant over eu-west-1+us-east-1": {""},
	}
	for k := range where {
		sort.Strings(where[k])
	}
	if diff := cmp.Diff(where, want); diff != "" {
		t.Errorf("the logs holding each operation's event (-got +want):\n%s", diff)
	}

	// The us log goes down: us requests fail closed, the rest go on.
	stack.StopZoneAudit("us")
	got := map[string]codes.Code{}
	for _, a := range []string{"eu-acct", "us-acct", "shared"} {
		got["issue "+a] = status.Code(issue(a))
	}
	for _, r := range []string{"eu-west-1", "us-east-1"} {
		got["encrypt "+r] = status.Code(encrypt(r))
	}
	wantCodes := map[string]codes.Code{
		"issue eu-acct": codes.OK, "issue us-acct": codes.Unavailable, "issue shared": codes.OK,
		"encrypt eu-west-1": codes.OK, "encrypt us-east-1": codes.Unavailable,
	}
	if diff := cmp.Diff(got, wantCodes); diff != "" {
		t.Errorf("with the us audit log down (-got +want):\n%s", diff)
	}
}
