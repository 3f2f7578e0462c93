package publicpath

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/yaml"

	"github.com/credmatrix/credmatrix/deploy/internal/svcproc"
	"github.com/credmatrix/credmatrix/deploy/internal/testissuer"
	"github.com/credmatrix/credmatrix/deploy/internal/testpki"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
)

const (
	trustDomain      = "spiffe://test.local"
	operatorID       = trustDomain + "/operator"
	keyguardAudience = "credmatrix-keyguard"
)

// githubTokenEndpoint is the runner's ID-token endpoint
// (ACTIONS_ID_TOKEN_REQUEST_URL): it answers {"value": token} for the
// audience asked, to the bearer of requestToken.
type githubTokenEndpoint struct {
	srv          *httptest.Server
	requestToken string
	mu           sync.Mutex
	audiences    []string
}

func startGitHubTokenEndpoint(t *testing.T, is *testissuer.Issuer) *githubTokenEndpoint {
	t.Helper()
	g := &githubTokenEndpoint{requestToken: "runner-request-token-" + randomHex(t)}
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+g.requestToken {
			http.Error(w, "bad request token", http.StatusUnauthorized)
			return
		}
		aud := r.URL.Query().Get("audience")
		g.mu.Lock()
		g.audiences = append(g.audiences, aud)
		g.mu.Unlock()
		json.NewEncoder(w).Encode(map[string]string{"value": is.Token(t, aud, nil)})
	}))
	t.Cleanup(g.srv.Close)
	return g
}

// stack is audit, broker and keyguard running as processes: service ports
// with mTLS under the internal CA, public listeners under another CA.
type stack struct {
	bin                        string
	dir                        string
	issuer                     *testissuer.Issuer
	internalCA, publicCA       *testpki.CA
	operatorCert, operatorKey  string // an administrator's mTLS certificate
	brokerAddr, brokerPublic   string
	keyguardAddr, keyguardPub  string
	publicCAFile, internalFile string
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func randomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func toYAML(t *testing.T, v any) string {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func startStack(t *testing.T) *stack {
	t.Helper()
	s := &stack{
		bin: svcproc.Build(t, "./services/audit/cmd/audit", "./services/broker/cmd/broker", "./services/keyguard/cmd/keyguard",
			"./deploy/cmd/credmatrix-probe", "./clients/cmd/credmatrix"),
		dir: t.TempDir(), issuer: testissuer.Start(t),
		internalCA: testpki.New(t, "internal"), publicCA: testpki.New(t, "public"),
	}
	s.publicCAFile, s.internalFile = s.publicCA.File, s.internalCA.File
	s.operatorCert, s.operatorKey = s.internalCA.Issue("operator", operatorID)
	port := map[string]string{}
	for _, p := range []string{"audit", "broker", "broker-public", "keyguard", "keyguard-public"} {
		port[p] = svcproc.FreePort(t)
	}
	s.brokerAddr, s.brokerPublic = "127.0.0.1:"+port["broker"], "127.0.0.1:"+port["broker-public"]
	s.keyguardAddr, s.keyguardPub = "127.0.0.1:"+port["keyguard"], "127.0.0.1:"+port["keyguard-public"]

	server := func(name string) map[string]any {
		cert, key := s.internalCA.Issue(name, trustDomain+"/"+name, "localhost", "127.0.0.1")
		return map[string]any{"listen_addr": "127.0.0.1:" + port[name], "tls": map[string]any{"cert_file": cert, "key_file": key, "client_ca_file": s.internalCA.File}}
	}
	public := func(name string) map[string]any {
		cert, key := s.publicCA.Issue(name+"-public", "", "localhost", "127.0.0.1")
		return map[string]any{"listen_addr": "127.0.0.1:" + port[name+"-public"], "tls": map[string]any{"cert_file": cert, "key_file": key}}
	}
	auditClient := func(name string) map[string]any {
		cert, key := s.internalCA.Issue(name+"-client", trustDomain+"/"+name)
		return map[string]any{"target": "127.0.0.1:" + port["audit"], "ca_file": s.internalCA.File, "cert_file": cert, "key_file": key}
	}
	hmacKey := writeFile(t, filepath.Join(s.dir, "keys", "audit-hmac"), randomHex(t)+"\n")

	cfgs := map[string]map[string]any{
		"audit": {
			"server": server("audit"), "db_path": filepath.Join(s.dir, "audit.db"),
			"checkpoint":        map[string]any{"key_file": filepath.Join(s.dir, "checkpoint.key"), "generate_key": true},
			"append_principals": []string{trustDomain + "/broker", trustDomain + "/keyguard"},
			"read_principals":   []string{operatorID},
		},
		"broker": {
			"server": server("broker"), "public": public("broker"), "audit": auditClient("broker"),
			"policy_file": writeFile(t, filepath.Join(s.dir, "policy.yaml"), fmt.Sprintf(`version: 1
issuers:
  - name: ci
    url: %s
    audiences: [credmatrix]
accounts:
  - {id: "111111111111", name: prod, ou: /root/prod, region: eu-west-1}
roles:
  - {name: deploy, account: prod, max_duration: 1h}
rules:
  - name: app-main-deploys-prod
    issuer: ci
    roles: [deploy]
    accounts: [prod]
    claims: {repository: acme/app, ref: refs/heads/main}
`, s.issuer.URL())),
			"audit_hmac_key_file": hmacKey, "provider": "local",
			"local_sts":        map[string]any{"signing_key_file": writeFile(t, filepath.Join(s.dir, "keys", "sts"), randomHex(t)+"\n")},
			"state":            map[string]any{"driver": "sqlite", "sqlite_path": filepath.Join(s.dir, "broker-state.db")},
			"admin_principals": []string{operatorID},
		},
		"keyguard": {
			"server": server("keyguard"), "public": public("keyguard"), "audit": auditClient("keyguard"),
			"keyring_file": writeFile(t, filepath.Join(s.dir, "keyring.yaml"), fmt.Sprintf(`rings:
  - {data_class: confidential, region: eu-west-1}
grants:
  - {id: app, principal: "%s#%s", data_class: confidential, operations: [encrypt, decrypt], regions: [eu-west-1]}
`, s.issuer.URL(), testissuer.Subject)),
			"state": map[string]any{"driver": "sqlite", "sqlite_path": filepath.Join(s.dir, "keyguard-state.db")}, "backend": "local",
			"audit_hmac_key_file": hmacKey,
			"local":               map[string]any{"keystore_file": filepath.Join(s.dir, "keystore"), "root_key_file": writeFile(t, filepath.Join(s.dir, "keys", "root"), randomHex(t)+"\n")},
			"oidc":                map[string]any{"issuers": []string{s.issuer.URL()}, "audience": keyguardAudience},
			"admins":              []string{operatorID},
		},
	}
	for _, name := range []string{"audit", "broker", "keyguard"} {
		cfg := writeFile(t, filepath.Join(s.dir, name+".yaml"), toYAML(t, cfgs[name]))
		p := svcproc.Start(t, filepath.Join(s.bin, name), svcproc.CleanEnv(), "--config="+cfg)
		svcproc.WaitServing(t, filepath.Join(s.bin, "credmatrix-probe"), []string{
			"--addr=127.0.0.1:" + port[name], "--server-name=localhost", "--ca-file=" + s.internalCA.File,
			"--cert-file=" + s.operatorCert, "--key-file=" + s.operatorKey, "--timeout=2s",
		}, p)
	}
	return s
}

// TestPublicPath starts audit, broker and keyguard as processes, with
// mTLS service ports under an internal CA and public listeners under
// another CA, and runs the CI examples and the CLI against them.
func TestPublicPath(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts the services")
	}
	s := startStack(t)
	t.Run("github-actions-example", func(t *testing.T) { testGitHubActionsExample(t, s) })
	t.Run("gitlab-example", func(t *testing.T) { testGitLabExample(t, s) })
	t.Run("cli-with-ca-bundle-only", func(t *testing.T) { testCLIWithCABundleOnly(t, s) })
	t.Run("public-listeners-refuse-admin-rpcs", func(t *testing.T) { testPublicListenersRefuseAdminRPCs(t, s) })
	t.Run("plaintext-public-listener-refused-off-loopback", func(t *testing.T) { testPlaintextPublicListenerRefusedOffLoopback(t, s) })
}

// result is a finished command.
type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, dir string, env []string, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env = dir, env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %s: %v", name, err)
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// readmeBlock returns the first ```yaml block of the repository README
// after the line holding marker.
func readmeBlock(t *testing.T, marker string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(svcproc.RepoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	i := strings.Index(text, marker)
	if i < 0 {
		t.Fatalf("README has no %q", marker)
	}
	m := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindStringSubmatch(text[i:])
	if m == nil {
		t.Fatalf("README: no yaml block after %q", marker)
	}
	return m[1]
}

func unmarshal(t *testing.T, doc string, v any) {
	t.Helper()
	if err := yaml.Unmarshal([]byte(doc), v); err != nil {
		t.Fatalf("parse YAML: %v\n%s", err, doc)
	}
}

var accessKeyRE = regexp.MustCompile(`(?m)^AWS_ACCESS_KEY_ID=(ASIA[A-Z0-9]{12,})$`)

// testGitHubActionsExample runs the README's GitHub Actions example as
// written — its `with:` inputs, the composite action's credentials step
// with the environment GitHub gives it — against the broker's public
// listener. Only the broker address is changed (to the test's); the job
// has the CA bundle the README names and no client certificate.
func testGitHubActionsExample(t *testing.T, s *stack) {
	gh := startGitHubTokenEndpoint(t, s.issuer)

	var job struct {
		Steps []struct {
			Uses string            `json:"uses"`
			With map[string]string `json:"with"`
		} `json:"steps"`
	}
	unmarshal(t, readmeBlock(t, "**GitHub Actions**"), &job)
	inputs := map[string]string{}
	for _, st := range job.Steps {
		if strings.HasPrefix(st.Uses, "credmatrix/credmatrix/clients/github-action") {
			inputs = st.With
		}
	}
	if inputs["broker-addr"] == "" || inputs["ca-file"] == "" {
		t.Fatalf("README's GitHub example lacks broker-addr or ca-file: %v", inputs)
	}
	if inputs["cert-file"] != "" || inputs["key-file"] != "" {
		t.Fatalf("README's GitHub example hands the runner a client certificate: %v", inputs)
	}
	inputs["broker-addr"] = s.brokerPublic

	var action struct {
		Inputs map[string]struct {
			Default string `json:"default"`
		} `json:"inputs"`
		Runs struct {
			Steps []struct {
				ID  string            `json:"id"`
				Env map[string]string `json:"env"`
				Run string            `json:"run"`
			} `json:"steps"`
		} `json:"runs"`
	}
	b, err := os.ReadFile(filepath.Join(svcproc.RepoRoot(t), "clients", "github-action", "action.yml"))
	if err != nil {
		t.Fatal(err)
	}
	unmarshal(t, string(b), &action)
	for name, in := range action.Inputs {
		if _, ok := inputs[name]; !ok {
			inputs[name] = in.Default
		}
	}
	var script string
	var stepEnv map[string]string
	for _, st := range action.Runs.Steps {
		if st.ID == "creds" {
			script, stepEnv = st.Run, st.Env
		}
	}
	if script == "" {
		t.Fatal("action.yml has no step with id creds")
	}

	workspace, runnerTemp := t.TempDir(), t.TempDir()
	caBundle, _ := os.ReadFile(s.publicCAFile)
	writeFile(t, filepath.Join(workspace, inputs["ca-file"]), string(caBundle))
	// The action's build step puts the CLI here; the test built it.
	cli, _ := os.ReadFile(filepath.Join(s.bin, "credmatrix"))
	if err := os.MkdirAll(filepath.Join(runnerTemp, "credmatrix-bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(runnerTemp, "credmatrix-bin", "credmatrix"), cli, 0o755); err != nil {
		t.Fatal(err)
	}
	githubEnv := writeFile(t, filepath.Join(runnerTemp, "github_env"), "")
	githubOutput := writeFile(t, filepath.Join(runnerTemp, "github_output"), "")
	env := svcproc.CleanEnv(
		"GITHUB_ACTIONS=true", "GITHUB_WORKSPACE="+workspace, "RUNNER_TEMP="+runnerTemp,
		"GITHUB_ENV="+githubEnv, "GITHUB_OUTPUT="+githubOutput,
		"ACTIONS_ID_TOKEN_REQUEST_URL="+gh.srv.URL+"/token?api-version=2.0", "ACTIONS_ID_TOKEN_REQUEST_TOKEN="+gh.requestToken,
		"HOME="+t.TempDir(), "XDG_CACHE_HOME="+t.TempDir(),
	)
	expr := regexp.MustCompile(`^\$\{\{ inputs\.([a-z-]+) \}\}$`)
	for k, v := range stepEnv {
		if m := expr.FindStringSubmatch(v); m != nil {
			v = inputs[m[1]]
		}
		env = append(env, k+"="+v)
	}

	res := run(t, workspace, env, "bash", "-e", "-c", script)
	if res.code != 0 {
		t.Fatalf("credentials step exited %d\nstdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
	}
	envFile, _ := os.ReadFile(githubEnv)
	m := accessKeyRE.FindStringSubmatch(string(envFile))
	if m == nil || !strings.Contains(string(envFile), "AWS_SECRET_ACCESS_KEY") || !strings.Contains(string(envFile), "AWS_SESSION_TOKEN") {
		t.Fatalf("GITHUB_ENV lacks the session:\n%s", envFile)
	}
	if !strings.Contains(res.stdout, "::add-mask::"+m[1]) {
		t.Errorf("the access key id is not masked in the step log:\n%s", res.stdout)
	}
	out, _ := os.ReadFile(githubOutput)
	if !strings.Contains(string(out), "access-key-id="+m[1]) {
		t.Errorf("GITHUB_OUTPUT = %q, want access-key-id=%s", out, m[1])
	}
	gh.mu.Lock()
	auds := append([]string(nil), gh.audiences...)
	gh.mu.Unlock()
	if diff := cmp.Diff(auds, []string{inputs["audience"]}); diff != "" {
		t.Errorf("ID-token audiences requested (-got +want):\n%s", diff)
	}
}

// testGitLabExample runs the README's GitLab CI job as written — the
// template's variables and before_script under the job's variables, the ID
// token GitLab puts in CREDMATRIX_ID_TOKEN for the template's id_tokens
// audience — in a real sh, against the broker's public listener with only
// the CA bundle. Only the broker address is changed.
func testGitLabExample(t *testing.T, s *stack) {
	var job map[string]struct {
		Variables map[string]string `json:"variables"`
	}
	unmarshal(t, readmeBlock(t, "**GitLab CI**"), &job)
	jobVars := job["deploy"].Variables
	if jobVars["CREDMATRIX_CA_FILE"] == "" || jobVars["CREDMATRIX_CERT_FILE"] != "" {
		t.Fatalf("README's GitLab job: want a CA bundle and no client certificate, got %v", jobVars)
	}
	jobVars["CREDMATRIX_BROKER_ADDR"] = s.brokerPublic

	var tmpl map[string]struct {
		IDTokens map[string]struct {
			Aud string `json:"aud"`
		} `json:"id_tokens"`
		Variables    map[string]string `json:"variables"`
		BeforeScript []string          `json:"before_script"`
	}
	b, err := os.ReadFile(filepath.Join(svcproc.RepoRoot(t), "clients", "gitlab", "credmatrix.gitlab-ci.yml"))
	if err != nil {
		t.Fatal(err)
	}
	unmarshal(t, string(b), &tmpl)
	base := tmpl[".credmatrix-aws"]
	if len(base.BeforeScript) == 0 {
		t.Fatal("template .credmatrix-aws has no before_script")
	}
	projectDir := t.TempDir()
	caBundle, _ := os.ReadFile(s.publicCAFile)
	writeFile(t, filepath.Join(projectDir, jobVars["CREDMATRIX_CA_FILE"]), string(caBundle))

	env := svcproc.CleanEnv("PATH="+s.bin+":"+os.Getenv("PATH"), "HOME="+t.TempDir(), "XDG_CACHE_HOME="+t.TempDir(),
		"GITLAB_CI=true", "CI_PROJECT_DIR="+projectDir, "CI_PROJECT_PATH=acme/app", "CI_PIPELINE_ID=77")
	vars := map[string]string{}
	for k, v := range base.Variables {
		vars[k] = v
	}
	for k, v := range jobVars {
		vars[k] = v
	}
	for name, tok := range base.IDTokens {
		vars[name] = s.issuer.Token(t, tok.Aud, nil)
	}
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	script := strings.Join(base.BeforeScript, "\n") + "\n" + `printf 'AWS_ACCESS_KEY_ID=%s\n' "${AWS_ACCESS_KEY_ID:-unset}"`
	res := run(t, projectDir, env, "sh", "-c", script)
	if res.code != 0 || !accessKeyRE.MatchString(res.stdout) {
		t.Fatalf("job exited %d without a session\nstdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
	}
}

// testCLIWithCABundleOnly runs the credmatrix CLI against the public
// listeners with nothing but the public CA bundle and a token, and every
// way it must refuse.
func testCLIWithCABundleOnly(t *testing.T, s *stack) {
	cli := filepath.Join(s.bin, "credmatrix")
	base := svcproc.CleanEnv("HOME="+t.TempDir(), "XDG_CACHE_HOME="+t.TempDir(), "CREDMATRIX_CA_FILE="+s.publicCAFile)
	with := func(extra ...string) []string { return append(append([]string(nil), base...), extra...) }
	good := s.issuer.Token(t, "credmatrix", nil)
	creds := []string{"creds", "--token-source", "env", "--role", "deploy", "--account", "prod", "--output", "json"}

	t.Run("allow/creds", func(t *testing.T) {
		res := run(t, "", with("CREDMATRIX_BROKER_ADDR="+s.brokerPublic, "CREDMATRIX_OIDC_TOKEN="+good), cli, creds...)
		if res.code != 0 || !strings.Contains(res.stdout, `"AccessKeyId": "ASIA`) {
			t.Fatalf("creds exited %d\nstdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
		}
	})

	refusals := []struct {
		name     string
		env      []string
		args     []string
		wantCode int
		wantErr  string
	}{
		{name: "no-token", env: with("CREDMATRIX_BROKER_ADDR=" + s.brokerPublic), args: creds, wantCode: 2, wantErr: "CREDMATRIX_OIDC_TOKEN"},
		{name: "forged-token", env: with("CREDMATRIX_BROKER_ADDR="+s.brokerPublic, "CREDMATRIX_OIDC_TOKEN="+good[:len(good)-6]+"AAAAAA"), args: creds, wantCode: 3, wantErr: "access denied"},
		{name: "token-of-another-repository", env: with("CREDMATRIX_BROKER_ADDR="+s.brokerPublic, "CREDMATRIX_OIDC_TOKEN="+s.issuer.Token(t, "credmatrix", func(c map[string]any) { c["repository"] = "acme/other" })), args: creds, wantCode: 3, wantErr: "denied"},
		{name: "plaintext-off-loopback", env: with("CREDMATRIX_BROKER_ADDR=credmatrix.example.com:443", "CREDMATRIX_OIDC_TOKEN="+good), args: append([]string{"--dev-plaintext", "--ca-file="}, creds...), wantCode: 2, wantErr: "refused"},
		{name: "plaintext-to-tls-listener", env: with("CREDMATRIX_BROKER_ADDR="+s.brokerPublic, "CREDMATRIX_OIDC_TOKEN="+good), args: append([]string{"--dev-plaintext", "--ca-file="}, creds...), wantCode: 2},
		{name: "ca-bundle-only-on-the-mtls-port", env: with("CREDMATRIX_BROKER_ADDR="+s.brokerAddr, "CREDMATRIX_CA_FILE="+s.internalFile, "CREDMATRIX_OIDC_TOKEN="+good), args: creds},
		{name: "internal-ca-for-the-public-listener", env: with("CREDMATRIX_BROKER_ADDR="+s.brokerPublic, "CREDMATRIX_CA_FILE="+s.internalFile, "CREDMATRIX_OIDC_TOKEN="+good), args: creds},
		{name: "admin-rpc-on-keyguard-public", env: with("CREDMATRIX_KEYGUARD_ADDR=" + s.keyguardPub), args: []string{"keyguard", "grant", "list"}, wantCode: 3, wantErr: "not served on the public listener"},
	}
	for _, tc := range refusals {
		t.Run("refuse/"+tc.name, func(t *testing.T) {
			res := run(t, "", tc.env, cli, tc.args...)
			if res.code == 0 || (tc.wantCode != 0 && res.code != tc.wantCode) {
				t.Errorf("exit %d, want %d (non-zero)\nstderr:\n%s", res.code, tc.wantCode, res.stderr)
			}
			if !strings.Contains(res.stderr, tc.wantErr) {
				t.Errorf("stderr lacks %q:\n%s", tc.wantErr, res.stderr)
			}
			if strings.Contains(res.stdout, "AccessKeyId") || strings.Contains(res.stdout, "AWS_") {
				t.Errorf("credentials printed on a refusal:\n%s", res.stdout)
			}
		})
	}
}

// testPublicListenersRefuseAdminRPCs calls the administrative RPCs on the
// broker's and keyguard's public listeners, with only the CA bundle and
// with the administrator's own certificate, which the public listener
// never asks for: all are PermissionDenied there. keyguard's data RPCs take
// the bearer token there; without it they are refused.
func testPublicListenersRefuseAdminRPCs(t *testing.T, s *stack) {
	dial := func(addr string, withCert bool) *grpc.ClientConn {
		pem, err := os.ReadFile(s.publicCAFile)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: "127.0.0.1"}
		if withCert {
			cert, err := tls.LoadX509KeyPair(s.operatorCert, s.operatorKey)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	type call struct {
		name string
		do   func(*grpc.ClientConn) error
	}
	broker := []call{
		{"RevokeSessions", func(c *grpc.ClientConn) error {
			_, err := brokerv1.NewBrokerServiceClient(c).RevokeSessions(ctx, &brokerv1.RevokeSessionsRequest{Subject: testissuer.Subject, Reason: "x"})
			return err
		}},
		{"FreezeAccount", func(c *grpc.ClientConn) error {
			_, err := brokerv1.NewBrokerServiceClient(c).FreezeAccount(ctx, &brokerv1.FreezeAccountRequest{Account: "prod", Reason: "x"})
			return err
		}},
		{"UnfreezeAccount", func(c *grpc.ClientConn) error {
			_, err := brokerv1.NewBrokerServiceClient(c).UnfreezeAccount(ctx, &brokerv1.UnfreezeAccountRequest{Account: "prod", Reason: "x"})
			return err
		}},
		{"ReloadPolicy", func(c *grpc.ClientConn) error {
			_, err := brokerv1.NewBrokerServiceClient(c).ReloadPolicy(ctx, &brokerv1.ReloadPolicyRequest{})
			return err
		}},
		{"GetSession", func(c *grpc.ClientConn) error {
			_, err := brokerv1.NewBrokerServiceClient(c).GetSession(ctx, &brokerv1.GetSessionRequest{AccessKeyId: "ASIAAAAAAAAAAAAAAAAA", SessionToken: "x"})
			return err
		}},
	}
	keyguard := []call{
		{"RotateKey", func(c *grpc.ClientConn) error {
			_, err := keyguardv1.NewKeyguardServiceClient(c).RotateKey(ctx, &keyguardv1.RotateKeyRequest{DataClass: "confidential", Region: "eu-west-1"})
			return err
		}},
		{"CreateGrant", func(c *grpc.ClientConn) error {
			_, err := keyguardv1.NewKeyguardServiceClient(c).CreateGrant(ctx, &keyguardv1.CreateGrantRequest{})
			return err
		}},
		{"ListGrants", func(c *grpc.ClientConn) error {
			_, err := keyguardv1.NewKeyguardServiceClient(c).ListGrants(ctx, &keyguardv1.ListGrantsRequest{})
			return err
		}},
	}
	for _, svc := range []struct {
		name, addr string
		calls      []call
	}{{"broker", s.brokerPublic, broker}, {"keyguard", s.keyguardPub, keyguard}} {
		for _, withCert := range []bool{false, true} {
			conn := dial(svc.addr, withCert)
			for _, c := range svc.calls {
				t.Run(fmt.Sprintf("%s/%s/admin-certificate=%v", svc.name, c.name, withCert), func(t *testing.T) {
					if got := status.Code(c.do(conn)); got != codes.PermissionDenied {
						t.Errorf("code %v, want PermissionDenied", got)
					}
				})
			}
		}
	}

	t.Run("keyguard/encrypt-with-bearer-token", func(t *testing.T) {
		kg := keyguardv1.NewKeyguardServiceClient(dial(s.keyguardPub, false))
		req := &keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1", Plaintext: []byte("secret")}
		if _, err := kg.Encrypt(ctx, req); status.Code(err) != codes.Unauthenticated {
			t.Errorf("Encrypt without a token: %v, want Unauthenticated", err)
		}
		tctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+s.issuer.Token(t, keyguardAudience, nil))
		enc, err := kg.Encrypt(tctx, req)
		if err != nil {
			t.Fatalf("Encrypt with a token: %v", err)
		}
		dec, err := kg.Decrypt(tctx, &keyguardv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
		if err != nil || string(dec.GetPlaintext()) != "secret" {
			t.Fatalf("Decrypt = %v, %v", dec, err)
		}
	})
}

// testPlaintextPublicListenerRefusedOffLoopback starts the broker binary
// with a plaintext public listener on all interfaces: it exits with the
// configuration error naming the setting.
func testPlaintextPublicListenerRefusedOffLoopback(t *testing.T, s *stack) {
	res := run(t, "", svcproc.CleanEnv(), filepath.Join(s.bin, "broker"), "--public.listen-addr=0.0.0.0:8444", "--public.dev-plaintext")
	want := `config: public.dev_plaintext (from flag --public.dev-plaintext): refused: listen_addr host "0.0.0.0" is not loopback`
	if res.code != 2 || !strings.Contains(res.stderr, want) {
		t.Errorf("broker exited %d, want 2 with %q; stderr:\n%s", res.code, want, res.stderr)
	}
}
