package e2e

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/credmatrix/credmatrix/platform/devpki"
)

// TestSetupErrorsAreNotTransient points the real CLI at the real stack with
// each common setup mistake and checks it says what is wrong and how to fix
// it, with exit 2 — not "service unavailable (retry later)", exit 4, which
// is kept for what really is transient (nothing listening). A wrong
// service at an address is named instead of a raw "Unimplemented".
func TestSetupErrorsAreNotTransient(t *testing.T) {
	stack, _, _ := startStack(t)
	audit, broker, keyguard := stack.Addrs()
	issuerHostPort := strings.TrimPrefix(stack.IssuerURL(), "http://")
	other, err := devpki.Generate(filepath.Join(t.TempDir(), "other"), "cli")
	if err != nil {
		t.Fatal(err)
	}
	otherCA := other.Client("cli", "").CAFile

	base := envMap(stack.Env())
	token := strings.TrimSpace((&cli{t: t, env: base}).devOK("token"))
	creds := []string{"creds", "--role", "deploy", "--account", "sandbox", "--cache=false"}
	for _, tc := range []struct {
		name string
		env  map[string]string // changes to the stack's environment; "" unsets
		args []string
		code int
		want []string
	}{
		{"no-client-certificate", map[string]string{"CREDMATRIX_CERT_FILE": "", "CREDMATRIX_KEY_FILE": ""}, creds, exitUsage,
			[]string{"configuration error", "requires a client certificate", "public listener", "--cert-file"}},
		{"plain-http-port", map[string]string{"CREDMATRIX_BROKER_ADDR": issuerHostPort}, creds, exitUsage,
			[]string{"configuration error", "is not a TLS port", "plain HTTP", "--broker-addr"}},
		{"unknown-ca", map[string]string{"CREDMATRIX_CA_FILE": otherCA}, creds, exitUsage,
			[]string{"configuration error", "credmatrix development CA", "does not contain", "--ca-file"}},
		{"no-ca-file", map[string]string{"CREDMATRIX_CA_FILE": ""}, creds, exitUsage,
			[]string{"configuration error", "not among the system's trusted roots"}},
		{"wrong-service-for-broker", map[string]string{"CREDMATRIX_BROKER_ADDR": audit}, creds, exitUsage,
			[]string{"configuration error", "is the audit service, not the broker", "--broker-addr"}},
		{"wrong-service-for-audit", map[string]string{"CREDMATRIX_AUDIT_ADDR": keyguard}, []string{"audit", "query"}, exitUsage,
			[]string{"is the keyguard service, not the audit service", "--audit-addr"}},
		{"wrong-service-for-tail", map[string]string{"CREDMATRIX_AUDIT_ADDR": broker}, []string{"audit", "tail"}, exitUsage,
			[]string{"is the broker, not the audit service"}},
		{"plaintext-to-tls", map[string]string{"CREDMATRIX_CA_FILE": "", "CREDMATRIX_CERT_FILE": "", "CREDMATRIX_KEY_FILE": "", "CREDMATRIX_DEV_PLAINTEXT": "true"},
			[]string{"encrypt", "--data-class", "internal", "--region", "eu-west-1"}, exitUsage,
			[]string{"speaks TLS, but --dev-plaintext", "drop --dev-plaintext"}},
		{"nothing-listening", map[string]string{"CREDMATRIX_BROKER_ADDR": "127.0.0.1:1"}, creds, exitUnavailable,
			[]string{"service unavailable (retry later)", "nothing is listening at 127.0.0.1:1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"CREDMATRIX_OIDC_TOKEN": token}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range tc.env {
				if v == "" {
					delete(env, k)
				} else {
					env[k] = v
				}
			}
			r := (&cli{t: t, env: env}).run("x", tc.args...)
			if r.code != tc.code || r.stdout != "" {
				t.Fatalf("exit %d (want %d), stdout %q\nstderr: %s", r.code, tc.code, r.stdout, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
			if strings.Contains(r.stderr, "Unimplemented") || (tc.code != exitUnavailable && strings.Contains(r.stderr, "retry later")) {
				t.Errorf("stderr still reads like a raw or transient error:\n%s", r.stderr)
			}
		})
	}
}

// TestUsageExitCodes checks the documented exit code 2 for command lines
// the CLI cannot run.
func TestUsageExitCodes(t *testing.T) {
	c := &cli{t: t, env: map[string]string{}}
	for _, args := range [][]string{{"nosuchcmd"}, {"audit", "nosuch"}, {"creds", "--nope"}, {"creds", "extra-arg"}} {
		r := c.run("", args...)
		if r.code != exitUsage || !strings.Contains(r.stderr, "credmatrix: ") {
			t.Errorf("credmatrix %s: exit %d, stderr %q; want %d", strings.Join(args, " "), r.code, r.stderr, exitUsage)
		}
	}
}
