package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
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
	if diff := cmp.Diff(rows, map[string]string{"eu-acct": "eu", "us-acct": "us", "shared": "global"}); diff != "" || !strings.HasPrefix(out, "LOG ") {
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
	if diff := cmp.Diff(got, map[string]string{"eu-west-1": "eu", "us-east-1": "us"}); diff != "" {
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
