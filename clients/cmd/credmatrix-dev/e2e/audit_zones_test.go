package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/procstack"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
)

// zonesPolicy has an account in zone eu, one in zone us and one in no
// zone; acme/app on main may deploy to each (the dev token's claims).
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
  - {id: "111111111111", name: eu-acct, region: eu-west-1, residency: eu}
  - {id: "222222222222", name: us-acct, region: us-east-1, residency: us}
  - {id: "333333333333", name: shared, region: eu-west-1}
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
`

// TestAuditCLIAcrossZones runs the credmatrix binary against a stack
// with an audit log per residency zone (CREDMATRIX_AUDIT_ZONES): query,
// verify and replay read every log, name the log of each answer, verify
// each log with its own key and kept checkpoint, and a zone whose log is
// down is named while the others still answer.
func TestAuditCLIAcrossZones(t *testing.T) {
	stack, err := devstack.Start(context.Background(), devstack.Config{StateDir: t.TempDir(), Ports: devstack.EphemeralPorts(), Policy: zonesPolicy,
		Zones: []devstack.Zone{{Name: "eu", Regions: []string{"eu-*"}}, {Name: "us", Regions: []string{"us-*"}}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	c := &cli{t: t, env: envMap(stack.Env())}
	if c.env["CREDMATRIX_AUDIT_ZONES"] == "" || c.env["CREDMATRIX_AUDIT_ZONE_PUBLIC_KEY_FILES"] == "" {
		t.Fatalf("the stack's environment names no zone logs: %v", c.env)
	}
	c.env["CREDMATRIX_OIDC_TOKEN"] = strings.TrimSpace(c.devOK("token"))
	for _, a := range []string{"eu-acct", "us-acct", "shared"} {
		c.ok("", "creds", "--role", "deploy", "--account", a, "--cache=false")
	}
	for _, r := range []string{"eu-west-1", "us-east-1"} {
		c.ok("x", "encrypt", "--data-class", "internal", "--region", r)
	}

	// query: one table over every log, each row naming its log.
	out := c.ok("", "audit", "query", "--kind", "session-issue")
	rows := map[string]string{} // account -> log
	for _, line := range strings.Split(out, "\n")[1:] {
		if f := strings.Fields(line); len(f) > 6 && f[3] == "session-issue" {
			m := regexp.MustCompile(`@(\S+)/`).FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("row without an account: %q", line)
			}
			rows[m[1]] = f[0]
		}
	}
	if diff := gocmp.Diff(rows, map[string]string{"eu-acct": "eu", "us-acct": "us", "shared": "global"}); diff != "" || !strings.HasPrefix(out, "LOG ") {
		t.Fatalf("query across zones (-got +want):\n%s\n%s", diff, out)
	}
	if !strings.HasSuffix(out, "\n3 events (global 1, eu 1, us 1)\n") {
		t.Errorf("query summary:\n%s", out)
	}
	// JSON lines carry the log of each event first.
	r := c.run("", "audit", "query", "--kind", "key-encrypt", "--output", "json")
	if r.code != exitOK {
		t.Fatalf("json query: %+v", r)
	}
	got := map[string]string{} // region -> log
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var ev struct {
			Log string `json:"audit_log"`
			Key struct {
				Region string `json:"region"`
			} `json:"key"`
			Zone string `json:"residency_zone"`
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil || !strings.HasPrefix(line, `{"audit_log":`) {
			t.Fatalf("json line %q: %v", line, err)
		}
		got[ev.Key.Region] = ev.Log
		if ev.Zone != ev.Log {
			t.Errorf("event of zone %q in the %s log", ev.Zone, ev.Log)
		}
	}
	if diff := gocmp.Diff(got, map[string]string{"eu-west-1": "eu", "us-east-1": "us"}); diff != "" {
		t.Errorf("key-encrypt events per log (-got +want):\n%s", diff)
	}
	// --zone reads one log; tail and export need it.
	if out := c.ok("", "audit", "query", "--zone", "eu", "--kind", "session-issue"); strings.Count(out, "session-issue") != 1 || !strings.Contains(out, "eu-acct") {
		t.Errorf("query --zone eu:\n%s", out)
	}
	if r := c.run("", "audit", "tail", "--follow=false"); r.code != exitUsage || !strings.Contains(r.stderr, "--zone") {
		t.Errorf("tail without --zone: %+v", r)
	}
	if out := c.ok("", "audit", "tail", "--follow=false", "--zone", "us", "--kind", "session-issue"); !strings.Contains(out, "us-acct") || strings.Contains(out, "eu-acct") {
		t.Errorf("tail --zone us:\n%s", out)
	}
	if r := c.run("", "audit", "query", "--zone", "ap"); r.code != exitUsage || !strings.Contains(r.stderr, `"ap"`) {
		t.Errorf("query --zone ap: %+v", r)
	}

	// verify: every log with its own key and its own kept checkpoint.
	kept := filepath.Join(t.TempDir(), "kept")
	out = c.ok("", "audit", "verify", "--checkpoint-file", kept)
	for _, l := range []string{"global", "eu", "us"} {
		if !strings.Contains(out, "== audit log "+l+" (") {
			t.Errorf("verify says nothing of the %s log:\n%s", l, out)
		}
	}
	for _, f := range []string{kept, kept + ".eu", kept + ".us"} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("kept checkpoint: %v", err)
		}
	}
	c.ok("", "audit", "verify", "--checkpoint-file", kept) // the logs extend what was kept
	// A zone's log does not verify under another zone's key: each has its own.
	keys := stack.ZoneAuditPublicKeyFiles()
	c.env["CREDMATRIX_AUDIT_ZONE_PUBLIC_KEY_FILES"] = "eu=" + keys["us"] + ",us=" + keys["us"]
	if r := c.run("", "audit", "verify"); r.code != exitError || !strings.Contains(r.stderr, "audit log(s) eu") {
		t.Errorf("verify with the us key for eu: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	c.env["CREDMATRIX_AUDIT_ZONE_PUBLIC_KEY_FILES"] = envMap(stack.Env())["CREDMATRIX_AUDIT_ZONE_PUBLIC_KEY_FILES"]

	// replay: the logs together, each answer naming its log; the static
	// grants, recorded across the eu and global logs, are both in force.
	out = c.ok("", "audit", "replay", "sessions", "--at", "now")
	if !strings.HasPrefix(out, "LOG ") || !regexp.MustCompile(`(?m)^eu .*eu-acct 111111111111`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^us .*us-acct 222222222222`).MatchString(out) || !regexp.MustCompile(`(?m)^global .*shared 333333333333`).MatchString(out) {
		t.Errorf("replay sessions:\n%s", out)
	}
	out = c.ok("", "audit", "replay", "key-ops", "--data-class", "internal")
	if !regexp.MustCompile(`(?m)^eu .*internal/eu-west-1`).MatchString(out) || !regexp.MustCompile(`(?m)^us .*internal/us-east-1`).MatchString(out) {
		t.Errorf("replay key-ops:\n%s", out)
	}
	if out := c.ok("", "audit", "replay", "grants", "--at", "now"); !strings.Contains(out, "2 grant(s) in force") ||
		!regexp.MustCompile(`(?m)^eu .*cli-confidential-eu`).MatchString(out) || !regexp.MustCompile(`(?m)^global .*cli-internal`).MatchString(out) {
		t.Errorf("replay grants:\n%s", out)
	}

	// The us log goes down: query names it and still prints the others.
	stack.StopZoneAudit("us")
	r = c.run("", "audit", "query", "--kind", "session-issue")
	if r.code != exitUnavailable || !strings.Contains(r.stderr, "audit log us (") ||
		!strings.Contains(r.stdout, "eu-acct") || !strings.Contains(r.stdout, "shared") || strings.Contains(r.stdout, "us-acct") ||
		!strings.Contains(r.stdout, "us unavailable") {
		t.Errorf("query with the us log down: %+v", r)
	}
	// Replay refuses a partial picture.
	if r := c.run("", "audit", "replay", "sessions", "--at", "now"); r.code != exitUnavailable || !strings.Contains(r.stderr, "audit log us") {
		t.Errorf("replay with the us log down: %+v", r)
	}
}

// TestAuditZonesAcrossBinaries runs the real binaries as processes, audit
// once for the global log and once per zone (residency_zone set), with the
// broker and keyguard configured through their config files
// (audit_zones, residency_zones): each event lands in its zone's log, a
// producer that sends an event to another zone's log is refused, and a
// zone's audit process killed fails that zone only.
func TestAuditZonesAcrossBinaries(t *testing.T) {
	ctx := context.Background()
	st, err := procstack.Start(ctx, procstack.Config{BinDir: binaries(t).dir, StateDir: t.TempDir(), Policy: zonesPolicy,
		Zones: []devstack.Zone{{Name: "eu", Regions: []string{"eu-*"}}, {Name: "us", Regions: []string{"us-*"}}}})
	if err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if err := st.Close(); err != nil && !killed {
			t.Errorf("close: %v", err)
		}
	})
	dial := func(service, identity string) *grpc.ClientConn {
		conn, err := st.Dial(service, identity)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	broker := brokerv1.NewBrokerServiceClient(dial("broker", "cli"))
	keyguard := keyguardv1.NewKeyguardServiceClient(dial("keyguard", "cli"))
	tok, err := st.Issuer.Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "9", "credmatrix"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(account string) codes.Code {
		c, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_, err := broker.IssueSession(c, &brokerv1.IssueSessionRequest{Token: tok, Targets: []*brokerv1.SessionTarget{{Role: "deploy", Account: account}}})
		return status.Code(err)
	}
	encrypt := func(region string) codes.Code {
		c, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_, err := keyguard.Encrypt(c, &keyguardv1.EncryptRequest{DataClass: "internal", Region: region, Plaintext: []byte("zoned")})
		return status.Code(err)
	}
	got := map[string]codes.Code{}
	for _, a := range []string{"eu-acct", "us-acct", "shared"} {
		got["issue "+a] = issue(a)
	}
	for _, r := range []string{"eu-west-1", "us-east-1"} {
		got["encrypt "+r] = encrypt(r)
	}
	wantOK := map[string]codes.Code{"issue eu-acct": codes.OK, "issue us-acct": codes.OK, "issue shared": codes.OK, "encrypt eu-west-1": codes.OK, "encrypt us-east-1": codes.OK}
	if diff := gocmp.Diff(got, wantOK); diff != "" {
		t.Fatalf("with every log up (-got +want):\n%s", diff)
	}

	// What each log holds, read with the credmatrix binary.
	cliCert := st.PKI.Client("cli", "")
	c := &cli{t: t, env: map[string]string{
		"CREDMATRIX_AUDIT_ADDR": st.Procs["audit"].Addr, "CREDMATRIX_AUDIT_PUBLIC_KEY_FILE": st.AuditPublicKeyFile(),
		"CREDMATRIX_AUDIT_ZONES":                 "eu=" + st.Procs["audit-eu"].Addr + ",us=" + st.Procs["audit-us"].Addr,
		"CREDMATRIX_AUDIT_ZONE_PUBLIC_KEY_FILES": "eu=" + st.ZoneAuditPublicKeyFile("eu") + ",us=" + st.ZoneAuditPublicKeyFile("us"),
		"CREDMATRIX_CA_FILE":                     cliCert.CAFile, "CREDMATRIX_CERT_FILE": cliCert.CertFile, "CREDMATRIX_KEY_FILE": cliCert.KeyFile,
	}}
	where := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(c.ok("", "audit", "query", "--kind", "session-issue,key-encrypt", "--output", "json")), "\n") {
		var ev struct {
			Log     string `json:"audit_log"`
			Zone    string `json:"residency_zone"`
			Session struct {
				Account string `json:"account_name"`
			} `json:"session"`
			Key struct {
				Region string `json:"region"`
			} `json:"key"`
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if ev.Log != cmp.Or(ev.Zone, "global") {
			t.Errorf("event of zone %q in the %s log", ev.Zone, ev.Log)
		}
		where[ev.Session.Account+ev.Key.Region] = ev.Log
	}
	if diff := gocmp.Diff(where, map[string]string{"eu-acct": "eu", "us-acct": "us", "shared": "global", "eu-west-1": "eu", "us-east-1": "us"}); diff != "" {
		t.Errorf("the log of each event (-got +want):\n%s", diff)
	}
	c.ok("", "audit", "verify")

	// A producer that sends a us event to the eu log is refused, and
	// nothing of it is recorded there.
	euAudit := auditv1.NewAuditServiceClient(dial("audit-eu", "broker"))
	stray := &auditv1.Event{Id: "7d0f5a43-1a52-4a8e-9c1e-5b7a2f1e0c11", Time: timestamppb.Now(), Kind: auditv1.Kind_KIND_KEY_ENCRYPT,
		Decision: auditv1.Decision_DECISION_ALLOW, ResidencyZone: "us", SourceService: "broker"}
	if _, err := euAudit.Append(ctx, &auditv1.AppendRequest{Events: []*auditv1.Event{stray}}); status.Code(err) != codes.InvalidArgument ||
		!strings.Contains(status.Convert(err).Message(), `residency_zone: "us": this log keeps the events of residency zone "eu" only`) {
		t.Errorf("a us event appended to the eu log: %v, want InvalidArgument for its zone", err)
	}
	if out := c.ok("", "audit", "query", "--zone", "eu", "--output", "json"); strings.Contains(out, stray.GetId()) {
		t.Errorf("the eu log recorded the us event:\n%s", out)
	}

	// The us audit process dies: us requests fail closed, the rest go on.
	killed = true
	if err := syscall.Kill(st.Procs["audit-us"].Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-st.Procs["audit-us"].Exited()
	got = map[string]codes.Code{}
	for _, a := range []string{"eu-acct", "us-acct", "shared"} {
		got["issue "+a] = issue(a)
	}
	for _, r := range []string{"eu-west-1", "us-east-1"} {
		got["encrypt "+r] = encrypt(r)
	}
	want := map[string]codes.Code{"issue eu-acct": codes.OK, "issue us-acct": codes.Unavailable, "issue shared": codes.OK, "encrypt eu-west-1": codes.OK, "encrypt us-east-1": codes.Unavailable}
	if diff := gocmp.Diff(got, want); diff != "" {
		t.Errorf("with the us audit process killed (-got +want):\n%s", diff)
	}
}
