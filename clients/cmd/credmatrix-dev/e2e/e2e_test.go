package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
	"github.com/credmatrix/credmatrix/services/broker/brokertest"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
)

// syncBuffer collects the log lines of every service in the stack.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func startStack(t *testing.T) (*devstack.Stack, *syncBuffer, string) {
	t.Helper()
	logs := &syncBuffer{}
	dir := t.TempDir()
	stack, err := devstack.Start(context.Background(), devstack.Config{
		StateDir: dir, Ports: devstack.EphemeralPorts(), Log: logs, LogLevel: "debug",
	})
	if err != nil {
		t.Fatalf("start stack: %v", err)
	}
	t.Cleanup(func() {
		if err := stack.Close(); err != nil {
			t.Errorf("close stack: %v", err)
		}
	})
	return stack, logs, dir
}

func envMap(kvs []string) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// dialAs connects to addr with the dev certificate of name.
func dialAs(t *testing.T, stack *devstack.Stack, name, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpcclient.Dial(stack.PKI().Client(name, addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestDemoFlow runs the make-demo story over mTLS against the three real
// services and checks what the audit log, the CLI and the logs hold.
func TestDemoFlow(t *testing.T) {
	stack, logs, stateDir := startStack(t)
	c := &cli{t: t, env: envMap(stack.Env()), transcript: &syncBuffer{}}
	c.env["CREDMATRIX_CACHE_DIR"] = filepath.Join(t.TempDir(), "cache")

	// 1. The CI job's OIDC token, from the dev issuer's mint endpoint.
	token := strings.TrimSpace(c.devOK("token", "--repository", "acme/app", "--ref", "refs/heads/main"))
	if strings.Count(token, ".") != 2 {
		t.Fatalf("dev token is not a JWS: %q", token)
	}
	c.env["CREDMATRIX_OIDC_TOKEN"] = token

	// 2. A session, as credential_process JSON.
	var creds credentialProcess
	if err := json.Unmarshal([]byte(c.ok("", "creds", "--role", "deploy", "--account", "sandbox", "--output", "credential-process")), &creds); err != nil {
		t.Fatal(err)
	}
	if creds.Version != 1 || !strings.HasPrefix(creds.AccessKeyID, "ASIA") || len(creds.AccessKeyID) != 20 ||
		creds.SecretAccessKey == "" || creds.SessionToken == "" {
		t.Fatalf("credential_process output %+v", creds)
	}
	exp, err := time.Parse(time.RFC3339, creds.Expiration)
	if err != nil || time.Until(exp) < 50*time.Minute || time.Until(exp) > 61*time.Minute {
		t.Fatalf("expiration %q: want about 1h from now (the role's max)", creds.Expiration)
	}
	// The same session in shell form carries the same kind of values.
	envOut := c.ok("", "creds", "--role", "deploy", "--account", "sandbox", "--output", "env")
	for _, want := range []string{"export AWS_ACCESS_KEY_ID='ASIA", "export AWS_SECRET_ACCESS_KEY='", "export AWS_SESSION_TOKEN='", "export AWS_REGION='eu-west-1'"} {
		if !strings.Contains(envOut, want) {
			t.Fatalf("env output lacks %q:\n%s", want, envOut)
		}
	}
	secrets := []string{token, creds.SecretAccessKey, creds.SessionToken}
	for _, line := range strings.Split(envOut, "\n") {
		if k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "="); ok && (k == "AWS_SECRET_ACCESS_KEY" || k == "AWS_SESSION_TOKEN") {
			secrets = append(secrets, strings.Trim(v, "'"))
		}
	}

	// 3. Encrypt and decrypt a record; the wrong context fails.
	record := "iban=DE89370400440532013000;owner=c-1042"
	secrets = append(secrets, record)
	envelope := c.ok(record, "encrypt", "--data-class", "confidential", "--region", "eu-west-1", "--context", "table=customers")
	if got := c.ok(envelope, "decrypt", "--context", "table=customers"); got != record {
		t.Fatalf("decrypt = %q, want %q", got, record)
	}
	if r := c.run(envelope, "decrypt", "--context", "table=orders"); r.code != exitUsage || r.stdout != "" ||
		!strings.Contains(r.stderr, "authentication failed") {
		t.Fatalf("decrypt with the wrong context: %+v", r)
	}

	// 4. A forbidden role: denied with its reason, no credentials.
	r := c.run("", "creds", "--role", "deploy", "--account", "prod", "--output", "credential-process")
	if r.code != exitDenied || r.stdout != "" || !strings.Contains(r.stderr, "default-deny") || !strings.Contains(r.stderr, "audit event:") {
		t.Fatalf("denied request: %+v", r)
	}

	// 5. The audit log holds exactly these events, in order, gap-free.
	var events []*auditv1.Event
	for _, line := range strings.Split(strings.TrimSpace(c.ok("", "audit", "tail", "--from", "0", "--follow=false", "--output", "json")), "\n") {
		ev := &auditv1.Event{}
		if err := protojson.Unmarshal([]byte(line), ev); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		events = append(events, ev)
	}
	type row struct {
		Seq      uint64
		Kind     auditv1.Kind
		Decision auditv1.Decision
	}
	var got []row
	for _, ev := range events {
		got = append(got, row{ev.GetSequence(), ev.GetKind(), ev.GetDecision()})
	}
	want := []row{
		// keyguard's start: the two static grants of the dev key-ring file.
		{0, auditv1.Kind_KIND_GRANT_CREATE, auditv1.Decision_DECISION_ALLOW},
		{1, auditv1.Kind_KIND_GRANT_CREATE, auditv1.Decision_DECISION_ALLOW},
		{2, auditv1.Kind_KIND_SESSION_ISSUE, auditv1.Decision_DECISION_ALLOW},
		{3, auditv1.Kind_KIND_SESSION_ISSUE, auditv1.Decision_DECISION_ALLOW},
		{4, auditv1.Kind_KIND_KEY_ENCRYPT, auditv1.Decision_DECISION_ALLOW},
		{5, auditv1.Kind_KIND_KEY_DECRYPT, auditv1.Decision_DECISION_ALLOW},
		{6, auditv1.Kind_KIND_KEY_DECRYPT, auditv1.Decision_DECISION_ERROR},
		{7, auditv1.Kind_KIND_SESSION_ISSUE, auditv1.Decision_DECISION_DENY},
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Fatalf("audit log (-got +want):\n%s", diff)
	}
	for _, ev := range events[:2] {
		if ev.GetKey().GetOperation() != "static-grant" || ev.GetKey().GetItemCount() != 2 || ev.GetKey().GetStaticLoad() == "" {
			t.Fatalf("static grant event: %v", ev)
		}
	}
	events = events[2:]
	issued := events[0].GetSession()
	if issued.GetAccessKeyId() != creds.AccessKeyID || issued.GetAccountId() != "111111111111" || issued.GetRoleName() != "deploy" {
		t.Fatalf("issuance event: %v", issued)
	}
	if len(events[0].GetSecretRefs()) == 0 || events[0].GetSourceService() != "spiffe://credmatrix.dev/broker" {
		t.Fatalf("issuance event lacks secret refs or source: %v", events[0])
	}
	denied := events[5]
	if denied.GetSession().GetAccessKeyId() != "" || denied.GetRule() != "default-deny" || denied.GetSession().GetAccountId() != "222222222222" {
		t.Fatalf("denial event: %v", denied)
	}
	if events[2].GetKey().GetEncryptionContext()["table"] != "customers" || events[2].GetSourceService() != "spiffe://credmatrix.dev/keyguard" {
		t.Fatalf("encrypt event: %v", events[2])
	}

	// 6. Audit down: both services fail closed with UNAVAILABLE.
	stack.StopAudit()
	if r := c.run("", "creds", "--role", "deploy", "--account", "sandbox", "--output", "credential-process", "--cache=false"); r.code != exitUnavailable || r.stdout != "" {
		t.Fatalf("creds with audit down: %+v", r)
	}
	if r := c.run(record, "encrypt", "--data-class", "confidential", "--region", "eu-west-1"); r.code != exitUnavailable || r.stdout != "" {
		t.Fatalf("encrypt with audit down: %+v", r)
	}
	_, brokerAddr, keyguardAddr := stack.Addrs()
	ctx := context.Background()
	_, err = brokerv1.NewBrokerServiceClient(dialAs(t, stack, "cli", brokerAddr)).IssueSession(ctx, &brokerv1.IssueSessionRequest{
		Token: token, Targets: []*brokerv1.SessionTarget{{Role: "deploy", Account: "sandbox"}},
	})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("IssueSession with audit down: %v, want Unavailable", err)
	}
	_, err = keyguardv1.NewKeyguardServiceClient(dialAs(t, stack, "cli", keyguardAddr)).Encrypt(ctx, &keyguardv1.EncryptRequest{
		DataClass: "confidential", Region: "eu-west-1", Plaintext: []byte(record),
	})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("Encrypt with audit down: %v, want Unavailable", err)
	}

	// 7. No secret in any log line, CLI error output or the audit database.
	db, err := os.ReadFile(filepath.Join(stateDir, "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	wal, _ := os.ReadFile(filepath.Join(stateDir, "audit.db-wal"))
	logText := logs.String()
	if !strings.Contains(logText, "IssueSession") {
		t.Fatalf("the captured logs look empty:\n%.500s", logText)
	}
	for _, s := range secrets {
		if s == "" {
			t.Fatal("empty secret in the check list")
		}
		for where, text := range map[string]string{"service logs": logText, "CLI stderr": c.transcript.String(), "audit db": string(db) + string(wal)} {
			if strings.Contains(text, s) {
				t.Errorf("%s contain a secret (%d bytes, starts %.6q)", where, len(s), s)
			}
		}
	}
}

// TestBadInput sends empty, malformed and oversized fields to every RPC of
// the skeleton over mTLS and expects INVALID_ARGUMENT naming the field.
func TestBadInput(t *testing.T) {
	stack, _, _ := startStack(t)
	auditAddr, brokerAddr, keyguardAddr := stack.Addrs()
	broker := brokerv1.NewBrokerServiceClient(dialAs(t, stack, "cli", brokerAddr))
	keyguard := keyguardv1.NewKeyguardServiceClient(dialAs(t, stack, "cli", keyguardAddr))
	auditAsBroker := auditv1.NewAuditServiceClient(dialAs(t, stack, "broker", auditAddr))
	auditAsCLI := auditv1.NewAuditServiceClient(dialAs(t, stack, "cli", auditAddr))

	token, err := stack.Issuer().Mint(map[string]any{"sub": "repo:acme/app:ref:refs/heads/main", "aud": "credmatrix", "repository": "acme/app", "ref": "refs/heads/main"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	target := []*brokerv1.SessionTarget{{Role: "deploy", Account: "sandbox"}}
	big := strings.Repeat("a", 17<<10)

	for _, tc := range []struct {
		name  string
		call  func(context.Context) error
		field string
	}{
		{"broker/empty-token", func(ctx context.Context) error {
			_, err := broker.IssueSession(ctx, &brokerv1.IssueSessionRequest{Targets: target})
			return err
		}, "token"},
		{"broker/oversized-token", func(ctx context.Context) error {
			_, err := broker.IssueSession(ctx, &brokerv1.IssueSessionRequest{Token: big, Targets: target})
			return err
		}, "token"},
		{"broker/no-targets", func(ctx context.Context) error {
			_, err := broker.IssueSession(ctx, &brokerv1.IssueSessionRequest{Token: token})
			return err
		}, "targets"},
		{"broker/empty-role", func(ctx context.Context) error {
			_, err := broker.IssueSession(ctx, &brokerv1.IssueSessionRequest{Token: token, Targets: []*brokerv1.SessionTarget{{Account: "sandbox"}}})
			return err
		}, "targets[0].role"},
		{"broker/oversized-reason", func(ctx context.Context) error {
			_, err := broker.IssueSession(ctx, &brokerv1.IssueSessionRequest{Token: token, Targets: target, Reason: big})
			return err
		}, "reason"},
		{"keyguard/empty-data-class", func(ctx context.Context) error {
			_, err := keyguard.Encrypt(ctx, &keyguardv1.EncryptRequest{Region: "eu-west-1", Plaintext: []byte("x")})
			return err
		}, "data_class"},
		{"keyguard/malformed-region", func(ctx context.Context) error {
			_, err := keyguard.Encrypt(ctx, &keyguardv1.EncryptRequest{DataClass: "confidential", Region: "EU WEST", Plaintext: []byte("x")})
			return err
		}, "region"},
		{"keyguard/oversized-plaintext", func(ctx context.Context) error {
			_, err := keyguard.Encrypt(ctx, &keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1", Plaintext: make([]byte, 65537)})
			return err
		}, "plaintext"},
		{"keyguard/empty-ciphertext", func(ctx context.Context) error {
			_, err := keyguard.Decrypt(ctx, &keyguardv1.DecryptRequest{})
			return err
		}, "ciphertext"},
		{"keyguard/garbage-ciphertext", func(ctx context.Context) error {
			_, err := keyguard.Decrypt(ctx, &keyguardv1.DecryptRequest{Ciphertext: []byte("not an envelope at all")})
			return err
		}, "ciphertext"},
		{"audit/empty-batch", func(ctx context.Context) error {
			_, err := auditAsBroker.Append(ctx, &auditv1.AppendRequest{})
			return err
		}, "events"},
		{"audit/missing-id", func(ctx context.Context) error {
			_, err := auditAsBroker.Append(ctx, &auditv1.AppendRequest{Events: []*auditv1.Event{{Kind: auditv1.Kind_KIND_KEY_ENCRYPT}}})
			return err
		}, "events[0].id"},
		{"audit/oversized-event", func(ctx context.Context) error {
			_, err := auditAsBroker.Append(ctx, &auditv1.AppendRequest{Events: []*auditv1.Event{{Id: "x", Reason: strings.Repeat("r", 70<<10)}}})
			return err
		}, "events[0]"},
		{"audit/page-size", func(ctx context.Context) error {
			_, err := auditAsCLI.Query(ctx, &auditv1.QueryRequest{PageSize: 5000})
			return err
		}, "page_size"},
		{"audit/page-token", func(ctx context.Context) error {
			_, err := auditAsCLI.Query(ctx, &auditv1.QueryRequest{PageToken: "%%%"})
			return err
		}, "page_token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := tc.call(ctx)
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.field) {
				t.Fatalf("got %v %q, want InvalidArgument naming %q", st.Code(), st.Message(), tc.field)
			}
		})
	}
}

// TestHostileTokens checks that forged tokens are refused with a fixed,
// non-revealing message and never produce credentials.
func TestHostileTokens(t *testing.T) {
	stack, logs, _ := startStack(t)
	_, brokerAddr, _ := stack.Addrs()
	broker := brokerv1.NewBrokerServiceClient(dialAs(t, stack, "cli", brokerAddr))
	claims := map[string]any{
		"iss": stack.IssuerURL(), "sub": "repo:acme/app:ref:refs/heads/main", "aud": "credmatrix",
		"repository": "acme/app", "ref": "refs/heads/main",
		"iat": time.Now().Unix(), "exp": time.Now().Add(time.Minute).Unix(),
	}
	good, err := stack.Issuer().Mint(claims, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, token string }{
		{"alg-none", brokertest.AlgNoneToken(claims)},
		{"hs256-with-public-key", brokertest.PublicKeyHS256Token(stack.Issuer().PublicKey(), stack.Issuer().KeyID(), claims)},
		{"tampered-signature", brokertest.TamperSignature(good)},
		{"tampered-payload", brokertest.TamperPayload(good, map[string]any{"repository": "evil/app"})},
		{"not-a-jwt", "hello-not-a-jwt-0123456789"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := broker.IssueSession(context.Background(), &brokerv1.IssueSessionRequest{
				Token: tc.token, Targets: []*brokerv1.SessionTarget{{Role: "deploy", Account: "sandbox"}},
			})
			if status.Code(err) != codes.Unauthenticated || resp != nil {
				t.Fatalf("got %v, %v; want Unauthenticated and nothing else", resp, err)
			}
			if strings.Contains(status.Convert(err).Message(), tc.token) {
				t.Fatal("the error message echoes the token")
			}
		})
	}
	// The refusals are logged (debug level, with their causes), but no log
	// line holds a rejected token or any of its segments: a forged token is
	// still someone's credential material.
	text := logs.String()
	if !strings.Contains(text, "Unauthenticated") {
		t.Fatalf("the refusals were not logged; the check below would prove nothing:\n%.500s", text)
	}
	for _, tc := range cases {
		for _, part := range append(strings.Split(tc.token, "."), tc.token) {
			if len(part) >= 16 && strings.Contains(text, part) {
				t.Errorf("%s: a log line holds a %d-byte piece of the rejected token", tc.name, len(part))
			}
		}
	}
}
