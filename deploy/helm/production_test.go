package helm

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"sigs.k8s.io/yaml"

	"github.com/credmatrix/credmatrix/deploy/internal/svcproc"
	"github.com/credmatrix/credmatrix/deploy/internal/testissuer"
	"github.com/credmatrix/credmatrix/deploy/internal/testpki"
	"github.com/credmatrix/credmatrix/platform/pgtest"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
)

// The production values' names the test relies on.
const (
	prodTrustDomain = "prod.example.com"
	prodPublicHost  = "credmatrix.ci.example.com"
	prodAuditor     = "spiffe://prod.example.com/ns/security-ops/sa/auditor"
	prodKeyguardApp = "spiffe://prod.example.com/ns/billing/sa/api"
	prodAccount     = "111111111111"
	brokerAccessKey = "AKIDBROKERIRSA000001"
)

// TestProductionConfigsStartServices starts the real binaries with the
// config files, key rings and Secrets' files the chart renders from
// ci/production-values.yaml, laid out as the pods mount them: audit, the
// broker and keyguard on PostgreSQL (throwaway databases of platform/pgtest),
// keyguard on awskms against local-kms with keys made by the AWS CLI, two
// keyguard replicas sharing their state, the broker's
// aws provider against an in-process STS endpoint that reads the real
// query-protocol requests and answers in STS's XML. Only addresses change
// (loopback instead of cluster DNS, the STS and KMS endpoints). Then, as a
// CI runner would, the CLI gets a session through the broker's public
// listener with only the public CA bundle; an app encrypts through one
// keyguard replica (KMS wraps the data key) and decrypts through the other;
// an auditor reads the events from PostgreSQL.
func TestProductionConfigsStartServices(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts the three services, PostgreSQL and local-kms")
	}
	ms := render(t, productionValues...)
	kmsBin := localKMSBinary(t)
	awsCLI := awsCLIBinary(t)
	pg := pgtest.Start(t)
	auditDSN, brokerDSN, keyguardDSN := pg.NewDatabase(t), pg.NewDatabase(t), pg.NewDatabase(t)
	bin := buildBinaries(t)
	issuer := testissuer.Start(t)
	sts := startSTS(t)
	kmsEndpoint := startLocalKMS(t, kmsBin)

	// The KMS key of every ring, under the alias the key ring names.
	var keyring struct {
		Rings []struct {
			DataClass string `json:"data_class"`
			Region    string `json:"region"`
			KMSKey    string `json:"kms_key"`
		} `json:"rings"`
	}
	keyringYAML := ms.get(t, "ConfigMap", name("keyguard")+"-keyring").Data["keyring.yaml"]
	if err := yaml.Unmarshal([]byte(keyringYAML), &keyring); err != nil {
		t.Fatal(err)
	}
	for _, r := range keyring.Rings {
		if !strings.HasPrefix(r.KMSKey, "alias/") {
			t.Fatalf("ring %s/%s: kms_key %q is not an alias", r.DataClass, r.Region, r.KMSKey)
		}
		id := strings.TrimSpace(awsRun(t, awsCLI, kmsEndpoint, r.Region, "kms", "create-key", "--description", "credmatrix "+r.DataClass+" "+r.Region, "--query", "KeyMetadata.KeyId", "--output", "text"))
		awsRun(t, awsCLI, kmsEndpoint, r.Region, "kms", "create-alias", "--alias-name", r.KMSKey, "--target-key-id", id)
	}

	root := t.TempDir()
	ca := testpki.New(t, "cluster")
	publicCA := testpki.New(t, "public")
	host := func(c string) string { return name(c) + "." + namespace + ".svc" }
	ports := map[string]string{}
	for _, p := range []string{"audit", "broker", "keyguard", "keyguard-2", "broker-public", "audit-metrics", "broker-metrics", "keyguard-metrics", "keyguard-2-metrics"} {
		ports[p] = svcproc.FreePort(t)
	}
	dirs := map[string]map[string]string{}
	for _, c := range components {
		d := map[string]string{}
		for _, sub := range []string{"tls", "public-tls", "keys", "config", "policy", "keyring", "data"} {
			d[sub] = filepath.Join(root, c, sub)
			if err := os.MkdirAll(d[sub], 0o750); err != nil {
				t.Fatal(err)
			}
		}
		dirs[c] = d
		cert, key := ca.Issue(c, "spiffe://"+prodTrustDomain+"/ns/"+namespace+"/sa/"+name(c), host(c))
		copyFile(t, cert, filepath.Join(d["tls"], "tls.crt"))
		copyFile(t, key, filepath.Join(d["tls"], "tls.key"))
		copyFile(t, ca.File, filepath.Join(d["tls"], "ca.crt"))
		cfg := ms.get(t, "ConfigMap", name(c)+"-config").Data["config.yaml"]
		cfg = strings.NewReplacer(
			"/etc/credmatrix/tls", d["tls"],
			"/etc/credmatrix/public-tls", d["public-tls"],
			"/etc/credmatrix/keys", d["keys"],
			"/etc/credmatrix/policy", d["policy"],
			"/etc/credmatrix/keyring", d["keyring"],
			"/var/lib/credmatrix", d["data"],
		).Replace(cfg)
		writeFile(t, filepath.Join(d["config"], "config.yaml"), cfg)
	}
	// The Secrets' files: audit's DSN and checkpoint key (with its public
	// half), the broker's HMAC key; the public certificate for its host.
	writeFile(t, filepath.Join(dirs["audit"]["keys"], "dsn"), auditDSN+"\n")
	skey, vkey := noteKey(t, "prod.example.com/credmatrix/audit")
	writeFile(t, filepath.Join(dirs["audit"]["keys"], "checkpoint-signing-key"), skey+"\n")
	writeFile(t, filepath.Join(dirs["audit"]["keys"], "checkpoint-signing-key.pub"), vkey+"\n")
	writeFile(t, filepath.Join(dirs["broker"]["keys"], "audit-hmac-key"), randomHex(t))
	writeFile(t, filepath.Join(dirs["keyguard"]["keys"], "awskms-mac-key"), randomHex(t))
	writeFile(t, filepath.Join(dirs["keyguard"]["keys"], "audit-hmac-key"), randomHex(t))
	pubCert, pubKey := publicCA.Issue("broker-public", "", prodPublicHost, "127.0.0.1")
	copyFile(t, pubCert, filepath.Join(dirs["broker"]["public-tls"], "tls.crt"))
	copyFile(t, pubKey, filepath.Join(dirs["broker"]["public-tls"], "tls.key"))
	// broker.existingPolicyConfigMap: the operator's own trust policy.
	writeFile(t, filepath.Join(dirs["broker"]["policy"], "policy.yaml"), fmt.Sprintf(`version: 1
issuers:
  - name: github
    url: %s
    audiences: [credmatrix]
accounts:
  - {id: "%s", name: prod, ou: /root/prod, region: eu-west-1}
roles:
  - {name: deploy, account: prod, max_duration: 1h}
rules:
  - name: app-main-deploys-prod
    issuer: github
    roles: [deploy]
    accounts: [prod]
    claims: {repository: acme/app, ref: refs/heads/main}
`, issuer.URL(), prodAccount))
	writeFile(t, filepath.Join(dirs["keyguard"]["keyring"], "keyring.yaml"), keyringYAML)

	auditAddr := "127.0.0.1:" + ports["audit"]
	// common are a process's flags: its component's config file, and
	// loopback addresses (replica names the port; "keyguard-2" is a second
	// keyguard pod).
	common := func(replica string) []string {
		c := strings.TrimSuffix(replica, "-2")
		args := []string{"--config=" + filepath.Join(dirs[c]["config"], "config.yaml"),
			"--server.listen-addr=127.0.0.1:" + ports[replica], "--metrics.listen-addr=127.0.0.1:" + ports[replica+"-metrics"]}
		if c != "audit" {
			args = append(args, "--audit.target="+auditAddr, "--audit.server-name="+host("audit"))
		}
		return args
	}
	awsEnv := func(accessKey string) []string {
		return []string{"AWS_ACCESS_KEY_ID=" + accessKey, "AWS_SECRET_ACCESS_KEY=test-secret", "AWS_REGION=eu-west-1",
			"AWS_EC2_METADATA_DISABLED=true", "AWS_CONFIG_FILE=" + filepath.Join(root, "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(root, "no-aws-credentials")}
	}
	operator := func(id string) (cert, key string) { return ca.Issue("op", id) }
	probeCert, probeKey := operator(prodAuditor)
	procs := map[string]*svcproc.Proc{}
	waitServing := func(replica string) {
		t.Run("serving/"+replica, func(t *testing.T) {
			svcproc.WaitServing(t, filepath.Join(bin, "credmatrix-probe"), []string{
				"--addr=127.0.0.1:" + ports[replica], "--server-name=" + host(strings.TrimSuffix(replica, "-2")), "--ca-file=" + ca.File,
				"--cert-file=" + probeCert, "--key-file=" + probeKey, "--timeout=2s",
			}, procs[replica])
		})
	}
	// Audit serves before its callers start: a caller that dials it too
	// early waits out gRPC's reconnect backoff, failing closed meanwhile
	// (keyguard dials at start to record its static grants).
	procs["audit"] = svcproc.Start(t, filepath.Join(bin, "audit"), svcproc.CleanEnv(), common("audit")...)
	waitServing("audit")
	if t.Failed() {
		return
	}
	// The chart passes the broker's DSN from its Secret as this variable.
	procs["broker"] = svcproc.Start(t, filepath.Join(bin, "broker"),
		svcproc.CleanEnv(append(awsEnv(brokerAccessKey), "CREDMATRIX_BROKER_STATE_POSTGRES_DSN="+brokerDSN)...),
		append(common("broker"), "--public.listen-addr=127.0.0.1:"+ports["broker-public"], "--aws.sts-endpoint="+sts.srv.URL)...)
	for _, replica := range []string{"keyguard", "keyguard-2"} {
		procs[replica] = svcproc.Start(t, filepath.Join(bin, "keyguard"),
			svcproc.CleanEnv(append(awsEnv("AKIDKEYGUARD"), "CREDMATRIX_KEYGUARD_STATE_POSTGRES_DSN="+keyguardDSN)...),
			append(common(replica), "--awskms.endpoint="+kmsEndpoint)...)
	}

	for _, replica := range []string{"broker", "keyguard", "keyguard-2"} {
		waitServing(replica)
	}
	if t.Failed() {
		return
	}

	var accessKeyID string
	t.Run("runner-session-through-the-public-listener", func(t *testing.T) {
		env := svcproc.CleanEnv("HOME="+t.TempDir(), "XDG_CACHE_HOME="+t.TempDir(),
			"CREDMATRIX_BROKER_ADDR=127.0.0.1:"+ports["broker-public"], "CREDMATRIX_CA_FILE="+publicCA.File,
			"CREDMATRIX_OIDC_TOKEN="+issuer.Token(t, "credmatrix", nil))
		cmd := exec.Command(filepath.Join(bin, "credmatrix"), "creds", "--token-source", "env", "--role", "deploy", "--account", "prod", "--output", "env")
		cmd.Env = env
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("credmatrix creds: %v\nstderr:\n%s", err, stderr.String())
		}
		m := regexp.MustCompile(`AWS_ACCESS_KEY_ID='?(ASIA[A-Z0-9]+)`).FindStringSubmatch(stdout.String())
		if m == nil {
			t.Fatalf("no session in:\n%s", stdout.String())
		}
		accessKeyID = m[1]
		calls := sts.calls()
		if len(calls) != 1 {
			t.Fatalf("STS saw %d AssumeRole calls, want 1", len(calls))
		}
		c := calls[0]
		if c.form.Get("RoleArn") != "arn:aws:iam::"+prodAccount+":role/deploy" || !strings.HasPrefix(c.form.Get("SourceIdentity"), "cm-") {
			t.Errorf("AssumeRole RoleArn %q SourceIdentity %q", c.form.Get("RoleArn"), c.form.Get("SourceIdentity"))
		}
		if !strings.Contains(c.auth, "Credential="+brokerAccessKey+"/") || !strings.Contains(c.auth, "/eu-west-1/sts/aws4_request") {
			t.Errorf("AssumeRole not signed by the broker's identity for STS in eu-west-1: %q", c.auth)
		}
		if c.form.Get("Tags.member.1.Key") == "" {
			t.Errorf("AssumeRole without session tags: %v", c.form)
		}
	})

	t.Run("app-encrypts-on-one-keyguard-replica-decrypts-on-the-other", func(t *testing.T) {
		cert, key := operator(prodKeyguardApp)
		kg1 := keyguardv1.NewKeyguardServiceClient(dialMTLS(t, "127.0.0.1:"+ports["keyguard"], host("keyguard"), ca.File, cert, key))
		kg2 := keyguardv1.NewKeyguardServiceClient(dialMTLS(t, "127.0.0.1:"+ports["keyguard-2"], host("keyguard"), ca.File, cert, key))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		enc, err := kg1.Encrypt(ctx, &keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1", Plaintext: []byte("iban DE89")})
		if err != nil {
			t.Fatalf("Encrypt: %v", err)
		}
		dec, err := kg2.Decrypt(ctx, &keyguardv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
		if err != nil || string(dec.GetPlaintext()) != "iban DE89" {
			t.Fatalf("Decrypt = %v, %v", dec, err)
		}
	})

	t.Run("auditor-reads-both-from-postgres", func(t *testing.T) {
		cert, key := operator(prodAuditor)
		conn := dialMTLS(t, auditAddr, host("audit"), ca.File, cert, key)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		resp, err := auditv1.NewAuditServiceClient(conn).Query(ctx, &auditv1.QueryRequest{})
		if err != nil {
			t.Fatalf("Query: %v", err)
		}
		kinds := map[auditv1.Kind]bool{}
		for _, ev := range resp.GetEvents() {
			kinds[ev.GetKind()] = true
			if ev.GetKind() == auditv1.Kind_KIND_SESSION_ISSUE && accessKeyID != "" && !strings.Contains(ev.String(), accessKeyID) {
				t.Errorf("issuance event does not name the access key id %s", accessKeyID)
			}
		}
		if !kinds[auditv1.Kind_KIND_SESSION_ISSUE] || !kinds[auditv1.Kind_KIND_KEY_ENCRYPT] {
			t.Errorf("audit kinds %v: want the issuance and the encryption", kinds)
		}
	})
}

// noteKey makes a signed-note Ed25519 key pair (golang.org/x/mod/sumdb/note
// format) for origin, as operators put in audit.checkpointKey's Secret.
func noteKey(t *testing.T, origin string) (skey, vkey string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pubkey := append([]byte{1}, pub...)
	sum := sha256.Sum256(append([]byte(origin+"\n"), pubkey...))
	hash := binary.BigEndian.Uint32(sum[:4])
	skey = fmt.Sprintf("PRIVATE+KEY+%s+%08x+%s", origin, hash, base64.StdEncoding.EncodeToString(append([]byte{1}, priv.Seed()...)))
	vkey = fmt.Sprintf("%s+%08x+%s", origin, hash, base64.StdEncoding.EncodeToString(pubkey))
	return skey, vkey
}

func dialMTLS(t *testing.T, addr, serverName, caFile, certFile, keyFile string) *grpc.ClientConn {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: serverName, Certificates: []tls.Certificate{cert},
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// localKMSBinary finds local-kms: $CREDMATRIX_LOCAL_KMS, else bin/local-kms
// (make tools builds it).
func localKMSBinary(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("CREDMATRIX_LOCAL_KMS"), filepath.Join(svcproc.RepoRoot(t), "bin", "local-kms")} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	pgtest.MissingDependency(t, "local-kms", "run `make tools` (builds bin/local-kms) or set CREDMATRIX_LOCAL_KMS")
	return ""
}

// awsCLIBinary finds the AWS CLI v2 at /usr/bin/aws.
func awsCLIBinary(t *testing.T) string {
	t.Helper()
	const p = "/usr/bin/aws"
	if _, err := os.Stat(p); err != nil {
		pgtest.MissingDependency(t, "AWS CLI v2 (/usr/bin/aws)", "run `make setup` (scripts/setup.sh installs it)")
	}
	return p
}

// awsRun runs the AWS CLI against endpoint and returns its stdout.
func awsRun(t *testing.T, cli, endpoint, region string, args ...string) string {
	t.Helper()
	cmd := exec.Command(cli, append([]string{"--endpoint-url", endpoint, "--region", region}, args...)...)
	cmd.Env = svcproc.CleanEnv("AWS_ACCESS_KEY_ID=AKIDLOCALKMS", "AWS_SECRET_ACCESS_KEY=local-kms-secret", "AWS_PAGER=",
		"AWS_CONFIG_FILE=/nonexistent", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent", "HOME="+t.TempDir())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("aws %v: %v\n%s", args, err, stderr.String())
	}
	return stdout.String()
}

// startLocalKMS runs local-kms on a free loopback port until the test ends
// and returns its endpoint once it accepts connections.
func startLocalKMS(t *testing.T, bin string) string {
	t.Helper()
	port := svcproc.FreePort(t)
	p := svcproc.Start(t, bin, svcproc.CleanEnv("PORT="+port, "KMS_REGION=eu-west-1", "KMS_ACCOUNT_ID=123456789012", "KMS_DATA_PATH="+t.TempDir()))
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second)
		if err == nil {
			c.Close()
			return "http://127.0.0.1:" + port
		}
		select {
		case <-p.Exited:
			t.Fatalf("local-kms exited; its log:\n%s", p.Log())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("local-kms did not accept connections within 30s; its log:\n%s", p.Log())
		}
	}
}

// stsEndpoint answers the STS query protocol as AWS does, for AssumeRole:
// it records each request's form and Authorization header and returns
// credentials in STS's XML.
type stsEndpoint struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []stsCall
}

type stsCall struct {
	form url.Values
	auth string
}

func startSTS(t *testing.T) *stsEndpoint {
	t.Helper()
	s := &stsEndpoint{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil || r.Method != http.MethodPost || r.Form.Get("Version") != "2011-06-15" {
			stsError(w, "InvalidRequest", "not an STS query-protocol request")
			return
		}
		if r.Form.Get("Action") != "AssumeRole" {
			stsError(w, "InvalidAction", "unexpected action "+r.Form.Get("Action"))
			return
		}
		s.mu.Lock()
		s.got = append(s.got, stsCall{form: r.Form, auth: r.Header.Get("Authorization")})
		s.mu.Unlock()
		id := make([]byte, 8)
		_, _ = rand.Read(id)
		session := r.Form.Get("RoleSessionName")
		type creds struct {
			AccessKeyID     string `xml:"AccessKeyId"`
			SecretAccessKey string `xml:"SecretAccessKey"`
			SessionToken    string `xml:"SessionToken"`
			Expiration      string `xml:"Expiration"`
		}
		type result struct {
			XMLName        xml.Name `xml:"https://sts.amazonaws.com/doc/2011-06-15/ AssumeRoleResponse"`
			SourceIdentity string   `xml:"AssumeRoleResult>SourceIdentity"`
			Arn            string   `xml:"AssumeRoleResult>AssumedRoleUser>Arn"`
			AssumedRoleID  string   `xml:"AssumeRoleResult>AssumedRoleUser>AssumedRoleId"`
			Credentials    creds    `xml:"AssumeRoleResult>Credentials"`
			RequestID      string   `xml:"ResponseMetadata>RequestId"`
		}
		role := r.Form.Get("RoleArn")[strings.LastIndex(r.Form.Get("RoleArn"), "/")+1:]
		out, _ := xml.Marshal(result{
			SourceIdentity: r.Form.Get("SourceIdentity"),
			Arn:            "arn:aws:sts::" + prodAccount + ":assumed-role/" + role + "/" + session,
			AssumedRoleID:  "AROATESTROLE:" + session,
			Credentials: creds{
				AccessKeyID: "ASIA" + strings.ToUpper(hex.EncodeToString(id)), SecretAccessKey: hex.EncodeToString(id) + "secret",
				SessionToken: base64.StdEncoding.EncodeToString(append(id, id...)), Expiration: time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
			},
			RequestID: "c6104cbe-af31-11e0-8154-cbc7ccf896c7",
		})
		w.Header().Set("Content-Type", "text/xml")
		w.Write(out)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func stsError(w http.ResponseWriter, code, msg string) {
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(http.StatusBadRequest)
	fmt.Fprintf(w, `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>`, code, msg)
}

// calls returns what the endpoint received.
func (s *stsEndpoint) calls() []stsCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]stsCall(nil), s.got...)
}
