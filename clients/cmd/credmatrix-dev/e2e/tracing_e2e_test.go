package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/platform/devpki"
	"github.com/credmatrix/credmatrix/platform/keyfile"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
	"github.com/google/go-cmp/cmp"
	collectortracev1 "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonv1 "go.opentelemetry.io/proto/otlp/common/v1"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// otlpReceiver is an OTLP/HTTP trace receiver (protobuf encoding): what a
// collector would get from the CLI and the three services.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []recSpan
	raw   bytes.Buffer // every request body, for the secret scan
	errs  []string
}

// recSpan is one received span with the service that sent it.
type recSpan struct {
	service string
	span    *tracev1.Span
}

func (r *otlpReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || req.URL.Path != "/v1/traces" {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, 16<<20))
	var msg collectortracev1.ExportTraceServiceRequest
	if err == nil {
		err = proto.Unmarshal(body, &msg)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.errs = append(r.errs, fmt.Sprintf("content-type %q: %v", req.Header.Get("Content-Type"), err))
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	r.raw.Write(body)
	for _, rs := range msg.GetResourceSpans() {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				r.spans = append(r.spans, recSpan{service: service, span: s})
			}
		}
	}
	out, _ := proto.Marshal(&collectortracev1.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}

func (r *otlpReceiver) snapshot() []recSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recSpan(nil), r.spans...)
}

// waitFor polls until ok holds for the received spans or the deadline
// passes (the exporters batch every 100 ms).
func (r *otlpReceiver) waitFor(t *testing.T, what string, ok func([]recSpan) bool) []recSpan {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		spans := r.snapshot()
		if ok(spans) {
			return spans
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; got spans:\n%s", what, dumpSpans(spans))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func spanID(b []byte) string { return hex.EncodeToString(b) }

func attr(s *tracev1.Span, key string) string {
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() == key {
			return anyString(kv.GetValue())
		}
	}
	return ""
}

func anyString(v *commonv1.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonv1.AnyValue_StringValue:
		return x.StringValue
	case *commonv1.AnyValue_IntValue:
		return fmt.Sprint(x.IntValue)
	case *commonv1.AnyValue_BoolValue:
		return fmt.Sprint(x.BoolValue)
	}
	return protojson.Format(v)
}

func dumpSpans(spans []recSpan) string {
	var b strings.Builder
	for _, s := range spans {
		fmt.Fprintf(&b, "  %s %s trace=%s span=%s parent=%s\n", s.service, s.span.GetName(),
			spanID(s.span.GetTraceId()), spanID(s.span.GetSpanId()), spanID(s.span.GetParentSpanId()))
	}
	return b.String()
}

// traceIndex looks spans up by id within one trace.
type traceIndex struct {
	byID     map[string]recSpan
	children map[string][]recSpan
	root     recSpan
}

func indexTrace(spans []recSpan, traceID string) traceIndex {
	ix := traceIndex{byID: map[string]recSpan{}, children: map[string][]recSpan{}}
	for _, s := range spans {
		if spanID(s.span.GetTraceId()) != traceID {
			continue
		}
		ix.byID[spanID(s.span.GetSpanId())] = s
		p := spanID(s.span.GetParentSpanId())
		if p == "" {
			ix.root = s
		}
		ix.children[p] = append(ix.children[p], s)
	}
	for _, c := range ix.children {
		sort.Slice(c, func(i, j int) bool { return c[i].span.GetStartTimeUnixNano() < c[j].span.GetStartTimeUnixNano() })
	}
	return ix
}

// find returns the first span (depth first, in start order) of service
// named name.
func (ix traceIndex) find(service, name string) (recSpan, bool) {
	var walk func(s recSpan) (recSpan, bool)
	walk = func(s recSpan) (recSpan, bool) {
		if s.service == service && s.span.GetName() == name {
			return s, true
		}
		for _, c := range ix.children[spanID(s.span.GetSpanId())] {
			if f, ok := walk(c); ok {
				return f, true
			}
		}
		return recSpan{}, false
	}
	if ix.root.span == nil {
		return recSpan{}, false
	}
	return walk(ix.root)
}

// path lists "service: name (kind)" from s up to the trace's root.
func (ix traceIndex) path(s recSpan) []string {
	var out []string
	for s.span != nil {
		out = append(out, fmt.Sprintf("%s: %s (%s)", s.service, s.span.GetName(), strings.TrimPrefix(s.span.GetKind().String(), "SPAN_KIND_")))
		s = ix.byID[spanID(s.span.GetParentSpanId())]
	}
	return out
}

// tree renders the trace as an indented span tree.
func (ix traceIndex) tree() string {
	var b strings.Builder
	var walk func(s recSpan, depth int)
	walk = func(s recSpan, depth int) {
		var attrs []string
		for _, kv := range s.span.GetAttributes() {
			if strings.HasPrefix(kv.GetKey(), "credmatrix.") {
				attrs = append(attrs, kv.GetKey()+"="+anyString(kv.GetValue()))
			}
		}
		fmt.Fprintf(&b, "%s%s: %s %v\n", strings.Repeat("  ", depth), s.service, s.span.GetName(), attrs)
		for _, c := range ix.children[spanID(s.span.GetSpanId())] {
			walk(c, depth+1)
		}
	}
	if ix.root.span != nil {
		walk(ix.root, 0)
	}
	return b.String()
}

// rootTrace finds the CLI's root span named name of a command that
// succeeded and returns its trace id.
func rootTrace(spans []recSpan, name string) (string, bool) {
	for _, s := range spans {
		if s.service == "credmatrix-cli" && s.span.GetName() == name && len(s.span.GetParentSpanId()) == 0 &&
			attr(s.span, "credmatrix.exit_code") == "0" {
			return spanID(s.span.GetTraceId()), true
		}
	}
	return "", false
}

// process is a service binary run by the test.
type process struct {
	name string
	addr string // where it listens
	cmd  *exec.Cmd
	logs *syncBuffer
	stop func() // SIGTERM and wait: the process flushes its spans first
}

// startProcess runs bin with args and env and returns once it logs its
// listen address; the test stops it (SIGTERM, so it flushes its spans).
func startProcess(t *testing.T, bin string, env []string, args ...string) *process {
	t.Helper()
	p := &process{name: filepath.Base(bin), logs: &syncBuffer{}}
	addrc := make(chan string, 1)
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.logs.Write([]byte(line + "\n"))
			var l struct {
				Message string `json:"@message"`
				Addr    string `json:"addr"`
			}
			if json.Unmarshal([]byte(line), &l) == nil && l.Message == "started" && l.Addr != "" {
				select {
				case addrc <- l.Addr:
				default:
				}
			}
		}
	}()
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			<-done
			_ = p.cmd.Wait()
		})
	}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("%s log:\n%s", p.name, p.logs.String())
		}
	})
	select {
	case p.addr = <-addrc:
		return p
	case <-done:
		t.Fatalf("%s exited before listening:\n%s", p.name, p.logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not start:\n%s", p.name, p.logs.String())
	}
	return p
}

// TestTracingAcrossProcesses runs the audit, broker and keyguard binaries
// and the credmatrix CLI as separate processes exporting OTLP/HTTP to an
// in-test receiver, and checks that each user action is one trace whose
// spans chain CLI → broker or keyguard → audit, that the audit event
// carries that trace (and the request's span), that domain spans carry the
// documented attributes, and that no span holds a secret of the flow.
func TestTracingAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs four binaries; skipped with -short")
	}
	bin := binaries(t).dir

	recv := &otlpReceiver{}
	collector := httptest.NewServer(recv)
	t.Cleanup(collector.Close)

	dir := t.TempDir()
	pki, err := devpki.Generate(filepath.Join(dir, "pki"), "audit", "broker", "keyguard", "cli")
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := devissuer.New()
	if err != nil {
		t.Fatal(err)
	}
	issuerURL, err := issuer.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { issuer.Close() })
	keyFiles := map[string]string{}
	for _, k := range []string{"audit-hmac.key", "local-sts.key", "keyguard-root.key"} {
		keyFiles[k] = filepath.Join(dir, k)
		if _, err := keyfile.Ensure(keyFiles[k], 32); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	policyFile := write("policy.yaml", devstack.DefaultPolicy(issuerURL))
	keyringFile := write("keyguard.yaml", devstack.DefaultKeyguardConfig())

	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "TMPDIR=" + os.TempDir(),
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + collector.URL,
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_BSP_SCHEDULE_DELAY=100",
	}
	tlsArgs := func(name string) []string {
		f := pki.Files(name)
		return []string{"--server.listen-addr", "127.0.0.1:0", "--server.tls.cert-file", f.CertFile,
			"--server.tls.key-file", f.KeyFile, "--server.tls.client-ca-file", f.ClientCAFile}
	}
	auditClientArgs := func(name, target string) []string {
		c := pki.Client(name, target)
		return []string{"--audit.target", target, "--audit.ca-file", c.CAFile, "--audit.cert-file", c.CertFile, "--audit.key-file", c.KeyFile}
	}

	audit := startProcess(t, filepath.Join(bin, "audit"), env, append(tlsArgs("audit"),
		"--db-path", filepath.Join(dir, "audit.db"),
		"--checkpoint.key-file", filepath.Join(dir, "audit-checkpoint.key"), "--checkpoint.generate-key",
		"--append-principals", devpki.SPIFFEID("broker")+","+devpki.SPIFFEID("keyguard"),
		"--read-principals", devpki.SPIFFEID("cli"))...)
	broker := startProcess(t, filepath.Join(bin, "broker"), env, append(append(tlsArgs("broker"), auditClientArgs("broker", audit.addr)...),
		"--policy-file", policyFile,
		"--audit-hmac-key-file", keyFiles["audit-hmac.key"],
		"--local-sts.signing-key-file", keyFiles["local-sts.key"],
		"--state.sqlite-path", filepath.Join(dir, "broker-state.db"))...)
	keyguard := startProcess(t, filepath.Join(bin, "keyguard"), env, append(append(tlsArgs("keyguard"), auditClientArgs("keyguard", audit.addr)...),
		"--keyring-file", keyringFile,
		"--audit-hmac-key-file", keyFiles["audit-hmac.key"],
		"--local.keystore-file", filepath.Join(dir, "keyguard-keystore.json"),
		"--local.root-key-file", keyFiles["keyguard-root.key"],
		"--state.sqlite-path", filepath.Join(dir, "keyguard-state.db"))...)

	token, err := issuer.Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "4242", "credmatrix"), 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cliTLS := pki.Client("cli", "")
	cliEnv := append(append([]string(nil), env...),
		"CREDMATRIX_BROKER_ADDR="+broker.addr, "CREDMATRIX_KEYGUARD_ADDR="+keyguard.addr, "CREDMATRIX_AUDIT_ADDR="+audit.addr,
		"CREDMATRIX_CA_FILE="+cliTLS.CAFile, "CREDMATRIX_CERT_FILE="+cliTLS.CertFile, "CREDMATRIX_KEY_FILE="+cliTLS.KeyFile,
		"CREDMATRIX_CACHE_DIR="+filepath.Join(dir, "cache"), "CREDMATRIX_OIDC_TOKEN="+token)
	var runCLIEnv func(extra []string, stdin string, wantCode int, args ...string) string
	runCLI := func(stdin string, wantCode int, args ...string) string {
		t.Helper()
		return runCLIEnv(nil, stdin, wantCode, args...)
	}
	runCLIEnv = func(extra []string, stdin string, wantCode int, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "credmatrix"), args...)
		cmd.Env = append(append([]string(nil), cliEnv...), extra...)
		cmd.Stdin = strings.NewReader(stdin)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("credmatrix %s: %v", strings.Join(args, " "), err)
		}
		if code != wantCode {
			t.Fatalf("credmatrix %s: exit %d, want %d\nstderr: %s", strings.Join(args, " "), code, wantCode, errb.String())
		}
		return out.String()
	}

	// The user actions: a session, a denial, an encrypt and a decrypt.
	var creds credentialProcess
	if err := json.Unmarshal([]byte(runCLI("", 0, "creds", "--role", "deploy", "--account", "sandbox", "--output", "credential-process", "--cache=false")), &creds); err != nil {
		t.Fatal(err)
	}
	runCLI("", exitDenied, "creds", "--role", "deploy", "--account", "prod", "--output", "credential-process", "--cache=false")
	const plaintext = "customer 4711: card 4111-1111-1111-1111"
	envelope := runCLI(plaintext, 0, "encrypt", "--data-class", "confidential", "--region", "eu-west-1", "--context", "table=customers")
	if got := runCLI(envelope, 0, "decrypt", "--context", "table=customers"); got != plaintext {
		t.Fatalf("decrypt = %q, want the plaintext", got)
	}

	// Attacks: a token signed by another key under the trusted issuer's
	// URL, a token with a spliced signature, and a confidential encrypt
	// outside its residency region. Each is refused, audited and traced
	// without the token.
	forger, err := devissuer.New(devissuer.WithURL(issuerURL))
	if err != nil {
		t.Fatal(err)
	}
	forged, err := forger.Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "4243", "credmatrix"), 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	other, err := issuer.Mint(devissuer.GitHubActionsClaims("evil/app", "refs/heads/main", "4244", "credmatrix"), 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	spliced := other[:strings.LastIndexByte(other, '.')] + token[strings.LastIndexByte(token, '.'):]
	for _, bad := range []string{forged, spliced} {
		runCLIEnv([]string{"CREDMATRIX_OIDC_TOKEN=" + bad}, "", exitDenied, "creds", "--role", "deploy", "--account", "sandbox", "--output", "credential-process", "--cache=false")
	}
	runCLI(plaintext, exitDenied, "encrypt", "--data-class", "confidential", "--region", "us-east-1")

	// The CLI flushed its spans as each command exited: find the
	// session's trace and ask the audit log for it while it runs.
	var credsTrace string
	recv.waitFor(t, "the CLI's root spans", func(spans []recSpan) bool {
		credsTrace, _ = rootTrace(spans, "credmatrix creds")
		return credsTrace != ""
	})
	type eventTrace struct {
		Kind     string `json:"kind"`
		Decision string `json:"decision"`
		TraceID  string `json:"trace_id"`
		SpanID   string `json:"span_id"`
	}
	var events []eventTrace
	for _, line := range strings.Split(strings.TrimSpace(runCLI("", 0, "audit", "query", "--trace-id", credsTrace, "--output", "json")), "\n") {
		var ev eventTrace
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("audit query line %q: %v", line, err)
		}
		events = append(events, ev)
	}
	// Stopping the services flushes their spans: then every span of
	// every action has arrived.
	for _, p := range []*process{keyguard, broker, audit} {
		p.stop()
	}
	spans := recv.snapshot()

	const (
		issueRPC   = "credmatrix.broker.v1.BrokerService/IssueSession"
		encryptRPC = "credmatrix.keyguard.v1.KeyguardService/Encrypt"
		decryptRPC = "credmatrix.keyguard.v1.KeyguardService/Decrypt"
		appendRPC  = "credmatrix.audit.v1.AuditService/Append"
	)
	// Traces by root, with the whole chain from the audit commit up.
	for _, tc := range []struct {
		name, root string
		want       []string
		domain     map[string]map[string]string // span name -> attributes that must be set
	}{
		{
			name: "session",
			root: "credmatrix creds",
			want: []string{
				"credmatrix-audit: audit.commit (INTERNAL)",
				"credmatrix-audit: " + appendRPC + " (SERVER)",
				"credmatrix-broker: " + appendRPC + " (CLIENT)",
				"credmatrix-broker: audit.append_batch (INTERNAL)",
				"credmatrix-broker: broker.audit_append (INTERNAL)",
				"credmatrix-broker: " + issueRPC + " (SERVER)",
				"credmatrix-cli: " + issueRPC + " (CLIENT)",
				"credmatrix-cli: credmatrix creds (INTERNAL)",
			},
			domain: map[string]map[string]string{
				"credmatrix creds":       {"credmatrix.role": "deploy", "credmatrix.account": "sandbox", "credmatrix.exit_code": "0"},
				issueRPC:                 {"credmatrix.role": "deploy", "credmatrix.account": "sandbox", "credmatrix.decision": "allow"},
				"broker.evaluate_policy": {"credmatrix.role": "deploy", "credmatrix.account": "sandbox", "credmatrix.region": "eu-west-1", "credmatrix.decision": "allow"},
				"broker.provider_issue":  {"credmatrix.provider": "local", "credmatrix.account": "sandbox"},
				"broker.audit_append":    {"credmatrix.audit.kind": "KIND_SESSION_ISSUE", "credmatrix.decision": "allow"},
				"audit.append_batch":     {"credmatrix.audit.batch_size": "1"},
			},
		},
		{
			name: "encrypt",
			root: "credmatrix encrypt",
			want: []string{
				"credmatrix-audit: audit.commit (INTERNAL)",
				"credmatrix-audit: " + appendRPC + " (SERVER)",
				"credmatrix-keyguard: " + appendRPC + " (CLIENT)",
				"credmatrix-keyguard: audit.append_batch (INTERNAL)",
				"credmatrix-keyguard: keyguard.audit_append (INTERNAL)",
				"credmatrix-keyguard: " + encryptRPC + " (SERVER)",
				"credmatrix-cli: " + encryptRPC + " (CLIENT)",
				"credmatrix-cli: credmatrix encrypt (INTERNAL)",
			},
			domain: map[string]map[string]string{
				"credmatrix encrypt": {"credmatrix.data_class": "confidential", "credmatrix.region": "eu-west-1"},
				encryptRPC:           {"credmatrix.data_class": "confidential", "credmatrix.region": "eu-west-1", "credmatrix.decision": "allow", "credmatrix.rule": "cli-confidential-eu"},
				"keyguard.kms_wrap":  {"credmatrix.data_class": "confidential", "credmatrix.region": "eu-west-1", "credmatrix.kms.backend": "local"},
			},
		},
		{
			name: "decrypt",
			root: "credmatrix decrypt",
			want: []string{
				"credmatrix-audit: audit.commit (INTERNAL)",
				"credmatrix-audit: " + appendRPC + " (SERVER)",
				"credmatrix-keyguard: " + appendRPC + " (CLIENT)",
				"credmatrix-keyguard: audit.append_batch (INTERNAL)",
				"credmatrix-keyguard: keyguard.audit_append (INTERNAL)",
				"credmatrix-keyguard: " + decryptRPC + " (SERVER)",
				"credmatrix-cli: " + decryptRPC + " (CLIENT)",
				"credmatrix-cli: credmatrix decrypt (INTERNAL)",
			},
			domain: map[string]map[string]string{
				decryptRPC:            {"credmatrix.data_class": "confidential", "credmatrix.region": "eu-west-1", "credmatrix.decision": "allow", "credmatrix.operation": "KIND_KEY_DECRYPT"},
				"keyguard.kms_unwrap": {"credmatrix.data_class": "confidential", "credmatrix.region": "eu-west-1", "credmatrix.key_version": "1"},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			traceID, ok := rootTrace(spans, tc.root)
			if !ok {
				t.Fatalf("no root span %q:\n%s", tc.root, dumpSpans(spans))
			}
			ix := indexTrace(spans, traceID)
			t.Logf("span tree of %q (trace %s):\n%s", tc.root, traceID, ix.tree())
			commit, ok := ix.find("credmatrix-audit", "audit.commit")
			if !ok {
				t.Fatalf("no audit.commit span in trace %s:\n%s", traceID, ix.tree())
			}
			if diff := cmp.Diff(ix.path(commit), tc.want); diff != "" {
				t.Errorf("path from the audit commit to the root (-got +want):\n%s", diff)
			}
			for name, want := range tc.domain {
				var s recSpan
				for _, c := range ix.byID {
					if c.span.GetName() == name && (!strings.Contains(name, "/") || c.span.GetKind() == tracev1.Span_SPAN_KIND_SERVER) {
						s = c
					}
				}
				if s.span == nil {
					t.Errorf("no span %q in the trace", name)
					continue
				}
				got := map[string]string{}
				for k := range want {
					got[k] = attr(s.span, k)
				}
				if diff := cmp.Diff(got, want); diff != "" {
					t.Errorf("span %q attributes (-got +want):\n%s", name, diff)
				}
			}
		})
	}

	// The audit event names the trace and the broker's server span: an
	// investigator jumps from the record to the trace.
	t.Run("audit-event", func(t *testing.T) {
		server, ok := indexTrace(spans, credsTrace).find("credmatrix-broker", issueRPC)
		if !ok {
			t.Fatalf("no broker span in trace %s", credsTrace)
		}
		want := []eventTrace{{"KIND_SESSION_ISSUE", "DECISION_ALLOW", credsTrace, spanID(server.span.GetSpanId())}}
		if diff := cmp.Diff(events, want); diff != "" {
			t.Errorf("audit query --trace-id (-got +want):\n%s", diff)
		}
	})

	// The denial is one trace too, with the decision and rule on the
	// broker's span, and its audit commit in the same trace.
	t.Run("denial", func(t *testing.T) {
		var denied string
		for _, s := range spans {
			if s.service == "credmatrix-cli" && s.span.GetName() == "credmatrix creds" && attr(s.span, "credmatrix.account") == "prod" {
				denied = spanID(s.span.GetTraceId())
			}
		}
		ix := indexTrace(spans, denied)
		server, ok := ix.find("credmatrix-broker", issueRPC)
		if !ok {
			t.Fatalf("no broker span in the denial's trace:\n%s", dumpSpans(spans))
		}
		_, committed := ix.find("credmatrix-audit", "audit.commit")
		got := map[string]string{
			"broker decision":       attr(server.span, "credmatrix.decision"),
			"broker account":        attr(server.span, "credmatrix.account"),
			"broker rule set":       fmt.Sprint(attr(server.span, "credmatrix.rule") != ""),
			"cli exit code":         attr(ix.root.span, "credmatrix.exit_code"),
			"audit commit in trace": fmt.Sprint(committed),
		}
		want := map[string]string{"broker decision": "deny", "broker account": "prod", "broker rule set": "true", "cli exit code": "3", "audit commit in trace": "true"}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("denial trace (-got +want):\n%s\n%s", diff, ix.tree())
		}
	})

	// The refused tokens and the residency denial are traced as denials.
	t.Run("attack-denials", func(t *testing.T) {
		var got []string
		for _, s := range spans {
			switch {
			case s.service == "credmatrix-broker" && s.span.GetName() == issueRPC && s.span.GetKind() == tracev1.Span_SPAN_KIND_SERVER:
				got = append(got, fmt.Sprintf("broker decision=%s account=%s", attr(s.span, "credmatrix.decision"), attr(s.span, "credmatrix.account")))
			case s.service == "credmatrix-keyguard" && s.span.GetName() == encryptRPC && s.span.GetKind() == tracev1.Span_SPAN_KIND_SERVER:
				got = append(got, fmt.Sprintf("keyguard decision=%s region=%s", attr(s.span, "credmatrix.decision"), attr(s.span, "credmatrix.region")))
			}
		}
		sort.Strings(got)
		want := []string{
			"broker decision=allow account=sandbox",
			"broker decision=deny account=",
			"broker decision=deny account=",
			"broker decision=deny account=prod",
			"keyguard decision=allow region=eu-west-1",
			"keyguard decision=deny region=us-east-1",
		}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("server spans (-got +want):\n%s", diff)
		}
	})

	// No span, attribute, event or status of any process holds a secret
	// of the flow: the OIDC token (or its signature), the credentials,
	// the plaintext, or a key file's content.
	t.Run("no-secrets", func(t *testing.T) {
		recv.mu.Lock()
		raw := recv.raw.String()
		var text strings.Builder
		for _, s := range recv.spans {
			text.WriteString(protojson.Format(s.span))
		}
		recv.mu.Unlock()
		if !strings.Contains(raw, "app-main-deploys-sandbox") {
			t.Fatalf("the scan does not see attribute values")
		}
		secrets := map[string]string{
			"forged token":          forged,
			"spliced token":         spliced,
			"oidc token":            token,
			"oidc token signature":  token[strings.LastIndexByte(token, '.')+1:],
			"secret access key":     creds.SecretAccessKey,
			"session token":         creds.SessionToken,
			"plaintext":             plaintext,
			"plaintext card number": "4111-1111-1111-1111",
		}
		for name, path := range keyFiles {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			secrets[name] = strings.TrimSpace(string(b))
		}
		for name, secret := range secrets {
			if len(secret) < 8 {
				t.Fatalf("secret %q too short to scan for: %q", name, secret)
			}
			if strings.Contains(raw, secret) || strings.Contains(text.String(), secret) {
				t.Errorf("the exported spans contain the %s", name)
			}
		}
	})
	recv.mu.Lock()
	defer recv.mu.Unlock()
	if len(recv.errs) > 0 {
		t.Errorf("receiver errors: %v", recv.errs)
	}
}
