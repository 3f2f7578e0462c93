package e2e

import (
	"context"
	"regexp"
	"strings"
	"testing"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/google/go-cmp/cmp"
)

var auditEventRE = regexp.MustCompile(`audit event ([0-9a-f-]{36})`)

// TestAdminCLI runs the incident-response commands of the credmatrix
// binary against the local stack, each first as a dry run (which changes
// nothing), then refused at the confirmation prompt, then confirmed:
// every change prints the audit event that records it, and the audit log
// holds it with the right kind. Along the way: `roles`, and the denial
// hint, run as printed, reproducing a residency denial.
func TestAdminCLI(t *testing.T) {
	stack, _, _ := startStack(t)
	c := &cli{t: t, env: envMap(stack.Env()), transcript: &syncBuffer{}}
	c.env["CREDMATRIX_OIDC_TOKEN"] = strings.TrimSpace(c.devOK("token", "--repository", "acme/app", "--ref", "refs/heads/main"))
	creds := func() result {
		return c.run("", "creds", "--role", "deploy", "--account", "sandbox", "--output", "json", "--cache=false")
	}
	expect := func(r result, code int, want ...string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(r.stdout+r.stderr, w) {
				t.Fatalf("output lacks %q (exit %d):\n%s%s", w, r.code, r.stdout, r.stderr)
			}
		}
		if r.code != code {
			t.Fatalf("exit %d, want %d:\n%s%s", r.code, code, r.stdout, r.stderr)
		}
	}
	var events []string // audit event ids the commands printed
	recorded := func(r result) {
		t.Helper()
		m := auditEventRE.FindStringSubmatch(r.stdout)
		if m == nil {
			t.Fatalf("no audit event id in:\n%s", r.stdout)
		}
		events = append(events, m[1])
	}

	// roles: what this token may assume now.
	expect(c.run("", "roles"), exitOK, "deploy", "sandbox (111111111111)", "app-main-deploys-sandbox")

	// The denial hint reproduces the decision offline, run as printed.
	r := c.run("", "creds", "--role", "deploy", "--account", "sandbox", "--region", "us-east-1", "--output", "json")
	expect(r, exitDenied, "residency", "reproduce locally: credmatrix policy test --token-env CREDMATRIX_OIDC_TOKEN")
	hint := strings.TrimSpace(strings.SplitN(strings.SplitN(r.stderr, "reproduce locally: ", 2)[1], "\n", 2)[0])
	expect(c.run("", strings.Fields(hint)[1:]...), exitDenied, `decided by residency: region "us-east-1" is outside residency zone "eu"`)

	// freeze: dry run, refused confirmation, then for real.
	expect(c.run("", "admin", "freeze", "--account", "sandbox", "--dry-run"), exitOK,
		"dry run: freeze of account sandbox covers", "accounts: 111111111111", "arn:aws:iam::111111111111:role/deploy", "nothing was changed")
	expect(creds(), exitOK)
	expect(c.run("no\n", "admin", "freeze", "--account", "sandbox", "--reason", "drill"), exitError, "Type yes to proceed", "not confirmed: nothing was changed")
	expect(creds(), exitOK)
	r = c.run("yes\n", "admin", "freeze", "--account", "sandbox", "--reason", "incident drill")
	expect(r, exitOK, "account sandbox frozen: accounts 111111111111; audit event")
	recorded(r)
	expect(creds(), exitDenied, "account-frozen", "ask them, quoting audit event")
	expect(c.run("", "admin", "revocations"), exitOK, "frozen: account:111111111111", "revocations: none in effect")

	// revoke: the dry run shows every role and its reach.
	subject := "repo:acme/app:ref:refs/heads/main"
	expect(c.run("", "admin", "revoke", "--subject", subject, "--dry-run"), exitOK,
		"dry run: the revocation would", "arn:aws:iam::111111111111:role/deploy", "issuance blocked only", "provider local puts no IAM policy", "nothing was recorded")
	expect(c.run("", "admin", "revocations"), exitOK, "revocations: none in effect")
	expect(c.run("", "admin", "revoke", "--subject", subject, "--yes"), exitUsage, "--reason is required")
	r = c.run("", "admin", "revoke", "--subject", subject, "--reason", "token leaked in a build log", "--yes")
	expect(r, exitOK, "revocation ", "recorded", "0 roles updated in IAM; audit event")
	recorded(r)
	expect(c.run("", "admin", "revocations"), exitOK, "subject="+subject, "token leaked in a build log")

	// unfreeze: the freeze is lifted, the revocation still refuses.
	expect(c.run("", "admin", "unfreeze", "--account", "sandbox", "--dry-run"), exitOK, "dry run: unfreeze of account sandbox covers")
	r = c.run("", "admin", "unfreeze", "--account", "sandbox", "--reason", "drill over", "--yes")
	expect(r, exitOK, "account sandbox unfrozen")
	recorded(r)
	expect(creds(), exitDenied, "rule revoked")
	expect(c.run("", "admin", "revocations"), exitOK, "frozen: (none)")

	// reload: the dry run validates; the reload refetches keys.
	expect(c.run("", "admin", "reload", "--dry-run"), exitOK, "the same as the policy in force", "nothing was changed")
	r = c.run("", "admin", "reload", "--yes")
	expect(r, exitOK, "policy reloaded", "changed false; signing keys refetched; audit event")
	recorded(r)

	// Every printed audit event is in the log, as what it says.
	auditAddr, _, _ := stack.Addrs()
	resp, err := auditv1.NewAuditServiceClient(dialAs(t, stack, "cli", auditAddr)).Query(context.Background(), &auditv1.QueryRequest{})
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]auditv1.Kind{}
	for _, ev := range resp.GetEvents() {
		kinds[ev.GetId()] = ev.GetKind()
	}
	var got []auditv1.Kind
	for _, id := range events {
		got = append(got, kinds[id])
	}
	want := []auditv1.Kind{auditv1.Kind_KIND_ACCOUNT_FREEZE, auditv1.Kind_KIND_SESSION_REVOKE, auditv1.Kind_KIND_ACCOUNT_UNFREEZE, auditv1.Kind_KIND_POLICY_RELOAD}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("kinds of the printed audit events (-got +want):\n%s", diff)
	}
	if strings.Contains(c.transcript.String(), c.env["CREDMATRIX_OIDC_TOKEN"]) {
		t.Error("the CLI printed the token")
	}
}

// TestAdminCLIRefusedWithoutOperatorIdentity: with another service's
// certificate the broker refuses every admin command, dry runs included,
// and says why.
func TestAdminCLIRefusedWithoutOperatorIdentity(t *testing.T) {
	stack, _, _ := startStack(t)
	c := &cli{t: t, env: envMap(stack.Env())}
	other := stack.PKI().Client("keyguard", "")
	c.env["CREDMATRIX_CERT_FILE"], c.env["CREDMATRIX_KEY_FILE"] = other.CertFile, other.KeyFile
	for _, args := range [][]string{
		{"admin", "freeze", "--account", "sandbox", "--dry-run"},
		{"admin", "unfreeze", "--account", "sandbox", "--dry-run"},
		{"admin", "revoke", "--subject", "x", "--dry-run"},
		{"admin", "reload", "--dry-run"},
		{"admin", "revocations"},
	} {
		r := c.run("", args...)
		if r.code != exitDenied || !strings.Contains(r.stderr, "operator RPCs need an administrator's mTLS identity") {
			t.Errorf("%s as keyguard: exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
	}
}
