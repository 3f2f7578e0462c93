package broker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/awssts"
	"github.com/credmatrix/credmatrix/services/broker/awssts/awstest"
	"github.com/credmatrix/credmatrix/services/broker/brokertest"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// residencySeed is the seed of the residency property tests: random, or
// CREDMATRIX_RESIDENCY_SEED to replay a failure.
func residencySeed(t *testing.T) uint64 {
	seed := rand.Uint64()
	if s := os.Getenv("CREDMATRIX_RESIDENCY_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("CREDMATRIX_RESIDENCY_SEED: %v", err)
		}
	}
	t.Logf("seed %d (replay: CREDMATRIX_RESIDENCY_SEED=%d)", seed, seed)
	return seed
}

// zones are the residency zones of the random policies: declared ones with
// a list or a pattern, and "ca", undeclared, which means ca-*.
var zones = map[string][]string{
	"eu": {"eu-west-1", "eu-central-1"},
	"us": {"us-east-1", "us-west-2"},
	"ap": {"ap-*"},
	"ca": nil,
}

// regions are the regions requests ask for: every zone's and some of none.
var regions = []string{"eu-west-1", "eu-central-1", "eu-north-1", "us-east-1", "us-west-2", "ap-southeast-1", "ap-northeast-1",
	"ca-central-1", "sa-east-1", "me-south-1"}

// inZone is the test's own reading of a zone: its declared patterns, or
// <zone>-*.
func inZone(zone, region string) bool {
	pats := zones[zone]
	if pats == nil {
		pats = []string{zone + "-*"}
	}
	for _, p := range pats {
		if ok, _ := path.Match(p, region); ok {
			return true
		}
	}
	return false
}

// randomPolicy is a trust policy with accounts in random zones (or none),
// two roles each, and allow rules over random accounts and claims.
type randomPolicy struct {
	yaml     string
	accounts []randomAccount
}

type randomAccount struct{ id, name, zone, region string }

func newRandomPolicy(r *rand.Rand) randomPolicy {
	var b strings.Builder
	b.WriteString("version: 1\nissuers:\n  - name: dev\n    url: {{issuer}}\n    audiences: [credmatrix]\nzones:\n")
	for _, z := range []string{"ap", "eu", "us"} {
		fmt.Fprintf(&b, "  - name: %s\n    regions: [%s]\n", z, strings.Join(zones[z], ", "))
	}
	var p randomPolicy
	b.WriteString("accounts:\n")
	zoneNames := []string{"eu", "us", "ap", "ca", ""}
	for i := range 8 {
		a := randomAccount{id: fmt.Sprintf("%012d", 300000000000+i), name: fmt.Sprintf("acct-%d", i), zone: zoneNames[r.IntN(len(zoneNames))]}
		// The home region lies in the zone (the policy refuses one that
		// does not).
		for {
			a.region = regions[r.IntN(len(regions))]
			if a.zone == "" || inZone(a.zone, a.region) {
				break
			}
		}
		fmt.Fprintf(&b, "  - id: \"%s\"\n    name: %s\n    region: %s\n", a.id, a.name, a.region)
		if a.zone != "" {
			fmt.Fprintf(&b, "    residency: %s\n", a.zone)
		}
		p.accounts = append(p.accounts, a)
	}
	b.WriteString("roles:\n")
	for _, a := range p.accounts {
		fmt.Fprintf(&b, "  - name: deploy\n    account: %s\n  - name: read\n    account: %s\n", a.name, a.name)
	}
	b.WriteString("rules:\n")
	owners := []string{"acme", "beta"}
	for i := range 4 {
		var accts []string
		for _, a := range p.accounts {
			if r.IntN(2) == 0 {
				accts = append(accts, a.name)
			}
		}
		if len(accts) == 0 {
			accts = []string{p.accounts[0].name}
		}
		fmt.Fprintf(&b, "  - name: rule-%d\n    issuer: dev\n    roles: [deploy, read]\n    accounts: [%s]\n    claims:\n      repository_owner: %s\n",
			i, strings.Join(accts, ", "), owners[r.IntN(len(owners))])
	}
	p.yaml = b.String()
	return p
}

// TestResidencyProperty: over random policies, claims, accounts and
// requested regions, through the real decision and the aws provider
// against the in-process STS endpoint, no session is ever issued in a
// region outside its account's residency zone, each is asked of STS in its
// own region, and the session policy STS receives denies every
// region outside the zone.
func TestResidencyProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(residencySeed(t), 0))
	issued, outsideRefused := 0, 0
	for range 6 {
		pol := newRandomPolicy(r)
		e := brokertest.NewEnv(t, pol.yaml)
		sts := awstest.New(awstest.Options{})
		srv := httptest.NewServer(sts)
		p, err := awssts.New(aws.Config{Region: "us-east-1", HTTPClient: srv.Client(),
			Credentials: credentials.NewStaticCredentialsProvider("AKIDBROKEREXAMPLE", "broker-secret", "")},
			awssts.Config{STSEndpoint: srv.URL, IAMEndpoint: srv.URL})
		if err != nil {
			t.Fatal(err)
		}
		svc, err := broker.New(broker.Config{Policy: e.Policy, Verifier: e.Verifier, Provider: p, Auditor: e.Auditor, Hasher: e.Hasher, Store: e.Store})
		if err != nil {
			t.Fatal(err)
		}
		for range 60 {
			a := pol.accounts[r.IntN(len(pol.accounts))]
			region := ""
			if r.IntN(4) > 0 {
				region = regions[r.IntN(len(regions))]
			}
			tok := e.TokenWith(t, time.Hour, map[string]any{"repository_owner": []string{"acme", "beta", "gamma"}[r.IntN(3)]})
			sessions, err := svc.IssueSession(context.Background(), broker.IssueRequest{Token: tok,
				Targets: []broker.Target{{Role: []string{"deploy", "read"}[r.IntN(2)], Account: a.name, Region: region}}})
			if err != nil {
				var be *domainerr.Error
				if a.zone != "" && region != "" && !inZone(a.zone, region) {
					if dn, ok := denialOf(err, &be); !ok || dn.Rule != "residency" {
						t.Errorf("request for %s in %s (zone %s) refused, but not by the residency rule: %v", a.name, region, a.zone, err)
					}
					outsideRefused++
				}
				continue
			}
			s := sessions[0]
			issued++
			if a.zone != "" && !inZone(a.zone, s.Region) {
				t.Errorf("session in %s for account %s of zone %s (asked %q)", s.Region, a.name, a.zone, region)
			}
			req := sts.Assumed()[sts.Sessions()-1]
			form := req.Form
			if form.Get("SourceIdentity") != s.SourceIdentity {
				t.Fatalf("the last STS request is not this session's")
			}
			if req.Region != s.Region {
				t.Errorf("session in %s asked of STS in %s", s.Region, req.Region)
			}
			if a.zone != "" {
				denied := residencyDeny(t, form.Get("Policy"))
				want := zones[a.zone]
				if want == nil {
					want = []string{a.zone + "-*"}
				}
				if !slices.Equal(denied, want) {
					t.Errorf("session policy of %s (zone %s) denies regions outside %v, want outside %v", a.name, a.zone, denied, want)
				}
			}
		}
		srv.Close()
	}
	// The property is only checked if both kinds of request happened.
	if issued == 0 || outsideRefused == 0 {
		t.Fatalf("%d sessions issued, %d requests outside their zone refused: the random requests did not exercise the property", issued, outsideRefused)
	}
	t.Logf("%d sessions issued, all inside their zone; %d requests outside their account's zone refused", issued, outsideRefused)
}

// residencyDeny returns the regions the session policy's residency
// statement leaves allowed (StringNotLike aws:RequestedRegion of a Deny),
// failing when there is none.
func residencyDeny(t *testing.T, doc string) []string {
	t.Helper()
	var pol struct {
		Statement []struct {
			Effect    string
			Condition map[string]map[string]any
		}
	}
	if err := json.Unmarshal([]byte(doc), &pol); err != nil {
		t.Fatalf("session policy %q: %v", doc, err)
	}
	for _, st := range pol.Statement {
		if st.Effect != "Deny" {
			continue
		}
		v, ok := st.Condition["StringNotLike"]["aws:RequestedRegion"]
		if !ok {
			continue
		}
		var out []string
		switch v := v.(type) {
		case string:
			out = []string{v}
		case []any:
			for _, x := range v {
				out = append(out, fmt.Sprint(x))
			}
		}
		return out
	}
	t.Fatalf("session policy has no residency deny: %s", doc)
	return nil
}

// denialOf returns the denial detail of a PermissionDenied domain error.
func denialOf(err error, be **domainerr.Error) (*broker.Denial, bool) {
	if !errors.As(err, be) || (*be).Code != domainerr.PermissionDenied {
		return nil, false
	}
	dn, ok := (*be).Detail.(*broker.Denial)
	return dn, ok
}
