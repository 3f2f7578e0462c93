package e2e

import (
	"encoding/base64"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/platform/devpki"
)

// fakeJWT is a token with these claims and a signature nobody made: doctor
// reads the claims, the broker refuses it.
func fakeJWT(t *testing.T, claims map[string]any) string {
	t.Helper()
	b, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256","kid":"nobody"}`)) + "." + enc(b) + "." + enc([]byte("not-a-signature"))
}

// TestDoctor runs `credmatrix doctor` against the real local stack, healthy
// and broken each common way, and checks that it names the problem and
// the fix, with exit 0 (healthy), 2 (setup) or 4 (down).
func TestDoctor(t *testing.T) {
	stack, _, _ := startStack(t)
	audit, broker, _ := stack.Addrs()
	_, keyguardPublic := stack.PublicAddrs()
	operator := envMap(stack.Env())
	runner := envMap(stack.RunnerEnv())
	token := strings.TrimSpace((&cli{t: t, env: operator}).devOK("token"))
	other, err := devpki.Generate(filepath.Join(t.TempDir(), "other"), "cli")
	if err != nil {
		t.Fatal(err)
	}
	brokerCert := stack.PKI().Client("broker", "")
	now := time.Now()
	expired := fakeJWT(t, map[string]any{"iss": stack.IssuerURL(), "sub": "repo:acme/app:ref:refs/heads/main", "aud": "credmatrix",
		"iat": now.Add(-2 * time.Hour).Unix(), "exp": now.Add(-time.Hour).Unix()})
	forged := fakeJWT(t, map[string]any{"iss": stack.IssuerURL(), "sub": "repo:acme/app:ref:refs/heads/main", "aud": "credmatrix",
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix()})

	with := func(base map[string]string, kv ...string) map[string]string {
		env := map[string]string{}
		for k, v := range base {
			env[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(env, kv[i])
			} else {
				env[kv[i]] = kv[i+1]
			}
		}
		return env
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		code int
		want []string
	}{
		{"healthy-operator", with(operator, "CREDMATRIX_OIDC_TOKEN", token), nil, exitOK,
			[]string{"every check passed", "a mutual-TLS port", "accepts the token; it may assume 1 role: deploy@sandbox", "lets this certificate read the log", "in step with the issuer"}},
		{"healthy-runner", with(runner, "CREDMATRIX_OIDC_TOKEN", token), nil, exitOK,
			[]string{"client certificate: none", "asks for no client certificate (a public listener", "accepts the token"}},
		{"wrong-ca", with(operator, "CREDMATRIX_OIDC_TOKEN", token, "CREDMATRIX_CA_FILE", other.Client("cli", "").CAFile), []string{"--service", "broker"}, exitUsage,
			[]string{"FAIL  the certificate of " + broker + " is signed by", "does not contain", "fix: set --ca-file"}},
		{"plaintext-port", with(operator, "CREDMATRIX_BROKER_ADDR", strings.TrimPrefix(stack.IssuerURL(), "http://")), []string{"--service", "broker"}, exitUsage,
			[]string{"is not a TLS port: it answered with plain HTTP", "fix: point --broker-addr"}},
		{"missing-client-certificate", with(runner, "CREDMATRIX_AUDIT_ADDR", audit), []string{"--service", "audit"}, exitUsage,
			[]string{"requires a client certificate (it is a mutual-TLS service port) and none was given", "fix: set --cert-file"}},
		{"wrong-service", with(operator, "CREDMATRIX_BROKER_ADDR", audit), []string{"--service", "broker"}, exitUsage,
			[]string{"this address is the audit service, not the broker", "fix: set --broker-addr"}},
		{"keyguard-public-listener", with(operator, "CREDMATRIX_KEYGUARD_ADDR", keyguardPublic), []string{"--service", "keyguard"}, exitOK,
			[]string{"warn  asks for no client certificate: this is keyguard's public listener"}},
		{"certificate-not-a-reader", with(operator, "CREDMATRIX_CERT_FILE", brokerCert.CertFile, "CREDMATRIX_KEY_FILE", brokerCert.KeyFile), []string{"--service", "audit"}, exitUsage,
			[]string{"the audit service refuses this certificate", "read_principals"}},
		{"token-missing", with(runner), []string{"--service", "broker"}, exitOK,
			[]string{"warn  no OIDC token", "no token to try"}},
		{"token-source-missing", with(runner), []string{"--service", "broker", "--token-source", "env"}, exitUsage,
			[]string{"FAIL  no OIDC token from env", "fix: set CREDMATRIX_OIDC_TOKEN"}},
		{"token-expired", with(runner, "CREDMATRIX_OIDC_TOKEN", expired), []string{"--service", "broker"}, exitUsage,
			[]string{"FAIL  the token expired at", "the broker refuses the token"}},
		{"token-forged", with(runner, "CREDMATRIX_OIDC_TOKEN", forged), []string{"--service", "broker"}, exitUsage,
			[]string{"FAIL  the broker refuses the token", "fix: the trust policy must list this issuer"}},
		{"broker-down", with(runner, "CREDMATRIX_BROKER_ADDR", "127.0.0.1:1", "CREDMATRIX_OIDC_TOKEN", token), nil, exitUnavailable,
			[]string{"FAIL  nothing is listening at 127.0.0.1:1", "1 problem found"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := (&cli{t: t, env: tc.env}).run("", append([]string{"doctor"}, tc.args...)...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d\n%s%s", r.code, tc.code, r.stdout, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("doctor output lacks %q:\n%s", w, r.stdout)
				}
			}
			for _, secret := range []string{token, expired, forged} {
				if strings.Contains(r.stdout+r.stderr, secret) {
					t.Fatal("doctor printed a token")
				}
			}
		})
	}
}
