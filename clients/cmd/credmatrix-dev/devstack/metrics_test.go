package devstack_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/clients/keyguardclient"
	"github.com/credmatrix/credmatrix/clients/keyguardclient/keyguardprom"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// scrape fetches and parses one Prometheus endpoint, returning the parsed
// families and the raw text.
func scrape(t *testing.T, url string) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: status %d, %v", url, resp.StatusCode, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return fams, string(body)
}

// gather is scrape for an in-process registry.
func gather(t *testing.T, g prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// value sums, over the series of name whose labels include want, the
// counter or gauge value, or the histogram's sample count. -1 means no
// such series.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	mf := fams[name]
	if mf == nil {
		return -1
	}
	sum, found := 0.0, false
series:
	for _, m := range mf.GetMetric() {
		got := map[string]string{}
		for _, lp := range m.GetLabel() {
			got[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue series
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	if !found {
		return -1
	}
	return sum
}

// labelValues lists every "name=value" label pair of the credmatrix_*
// families, for the no-secrets check.
func labelValues(fams map[string]*dto.MetricFamily) []string {
	var out []string
	for name, mf := range fams {
		if !strings.HasPrefix(name, "credmatrix_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				out = append(out, lp.GetName()+"="+lp.GetValue())
			}
		}
	}
	sort.Strings(out)
	return out
}

// TestMetricsAfterDemoFlow runs a demo-like flow against the local stack
// (a session, policy denials, an unknown account, a forged token, encrypt
// and decrypt, a residency denial, client-side envelopes), then scrapes
// each service's endpoint and checks that the series exist with the
// values the flow implies, and that no label carries a caller-chosen or
// secret value.
func TestMetricsAfterDemoFlow(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stack, err := devstack.Start(ctx, devstack.Config{StateDir: t.TempDir(), Ports: devstack.EphemeralPorts()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	auditURL, brokerURL, keyguardURL := stack.MetricsURLs()
	auditAddr, brokerAddr, keyguardAddr := stack.Addrs()
	for _, u := range []string{auditURL, brokerURL, keyguardURL} {
		for _, grpcAddr := range []string{auditAddr, brokerAddr, keyguardAddr} {
			if strings.Contains(u, "//"+grpcAddr+"/") {
				t.Fatalf("metrics endpoint %s shares a gRPC address", u)
			}
		}
	}
	env := strings.Join(stack.Env(), "\n")
	for _, want := range []string{"CREDMATRIX_BROKER_METRICS_URL=" + brokerURL, "CREDMATRIX_KEYGUARD_METRICS_URL=" + keyguardURL, "CREDMATRIX_AUDIT_METRICS_URL=" + auditURL} {
		if !strings.Contains(env, want) {
			t.Errorf("stack env lacks %s", want)
		}
	}

	bconn, err := grpcclient.Dial(stack.PKI().Client("cli", brokerAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer bconn.Close()
	broker := brokerv1.NewBrokerServiceClient(bconn)
	tok, err := stack.Issuer().Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "7", "credmatrix"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(token, role, account string) codes.Code {
		_, err := broker.IssueSession(ctx, &brokerv1.IssueSessionRequest{Token: token, Targets: []*brokerv1.SessionTarget{{Role: role, Account: account}}})
		return status.Code(err)
	}
	const attackerAccount = "attacker-chosen-account-1234"
	gotCodes := []codes.Code{
		issue(tok, "deploy", "sandbox"),
		issue(tok, "deploy", "sandbox"),
		issue(tok, "deploy", "prod"),                // no allow rule for main in prod
		issue(tok, "deploy", attackerAccount),       // not in the policy: must not become a label
		issue(tok+"x", "deploy", "sandbox"),         // forged signature
		issue("not-a-jwt-at-all", "deploy", "prod"), // garbage
	}
	wantCodes := []codes.Code{codes.OK, codes.OK, codes.PermissionDenied, codes.PermissionDenied, codes.Unauthenticated, codes.Unauthenticated}
	if diff := cmp.Diff(gotCodes, wantCodes); diff != "" {
		t.Fatalf("issue codes (-got +want):\n%s", diff)
	}

	kconn, err := grpcclient.Dial(stack.PKI().Client("cli", keyguardAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer kconn.Close()
	appReg := prometheus.NewRegistry()
	kg := keyguardclient.New(kconn, keyguardprom.WithMetrics(appReg))
	encCtx := map[string]string{"table": "customers"}
	ct, _, err := kg.Encrypt(ctx, "confidential", "eu-west-1", []byte("iban=DE89"), encCtx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := kg.Decrypt(ctx, ct, encCtx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := kg.Encrypt(ctx, "confidential", "us-east-1", []byte("x"), encCtx); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("residency: got %v, want PermissionDenied", err)
	}
	if _, _, err := kg.Encrypt(ctx, "attacker-class-5678", "eu-west-1", []byte("x"), encCtx); err == nil {
		t.Fatal("unknown data class: encrypt succeeded")
	}
	for i := 0; i < 3; i++ {
		local, err := kg.EncryptLocal(ctx, "internal", "eu-west-1", []byte(fmt.Sprint("record ", i)), encCtx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kg.DecryptLocal(ctx, local, encCtx); err != nil {
			t.Fatal(err)
		}
	}

	bf, btext := scrape(t, brokerURL)
	kf, ktext := scrape(t, keyguardURL)
	af, atext := scrape(t, auditURL)
	cf := gather(t, appReg)

	type check struct {
		name   string
		fams   map[string]*dto.MetricFamily
		metric string
		labels map[string]string
		want   float64
	}
	issueMethod := map[string]string{"grpc_service": "credmatrix.broker.v1.BrokerService", "grpc_method": "IssueSession"}
	with := func(base map[string]string, k, v string) map[string]string {
		m := map[string]string{k: v}
		for bk, bv := range base {
			m[bk] = bv
		}
		return m
	}
	checks := []check{
		{"broker/issuances", bf, "credmatrix_broker_issuances_total", map[string]string{"role": "deploy", "account": "sandbox", "region": "eu-west-1"}, 2},
		{"broker/denial-policy", bf, "credmatrix_broker_denials_total", map[string]string{"reason": "policy", "role": "deploy", "account": "prod"}, 1},
		{"broker/denial-unknown-account", bf, "credmatrix_broker_denials_total", map[string]string{"reason": "unknown_target", "account": "unknown"}, 1},
		{"broker/denial-authentication", bf, "credmatrix_broker_denials_total", map[string]string{"reason": "authentication", "role": "unknown", "account": "unknown", "rule": "unknown"}, 2},
		{"broker/issue-latency-issued", bf, "credmatrix_broker_issue_duration_seconds", map[string]string{"outcome": "issued"}, 2},
		{"broker/issue-latency-denied", bf, "credmatrix_broker_issue_duration_seconds", map[string]string{"outcome": "denied"}, 4},
		{"broker/upstream-latency", bf, "credmatrix_broker_upstream_request_duration_seconds", map[string]string{"provider": "local"}, 2},
		{"broker/grpc-ok", bf, "credmatrix_grpc_server_requests_total", with(issueMethod, "grpc_code", "OK"), 2},
		{"broker/grpc-denied", bf, "credmatrix_grpc_server_requests_total", with(issueMethod, "grpc_code", "PermissionDenied"), 2},
		{"broker/grpc-unauthenticated", bf, "credmatrix_grpc_server_requests_total", with(issueMethod, "grpc_code", "Unauthenticated"), 2},
		{"broker/grpc-latency", bf, "credmatrix_grpc_server_request_duration_seconds", issueMethod, 6},
		{"keyguard/encrypt-allow", kf, "credmatrix_keyguard_key_operations_total", map[string]string{"data_class": "confidential", "region": "eu-west-1", "op": "encrypt", "decision": "allow"}, 1},
		{"keyguard/decrypt-allow", kf, "credmatrix_keyguard_key_operations_total", map[string]string{"data_class": "confidential", "region": "eu-west-1", "op": "decrypt", "decision": "allow"}, 1},
		{"keyguard/residency-denial", kf, "credmatrix_keyguard_grant_denials_total", map[string]string{"data_class": "confidential", "region": "us-east-1", "op": "encrypt"}, 1},
		{"keyguard/generate-data-key", kf, "credmatrix_keyguard_key_operations_total", map[string]string{"data_class": "internal", "region": "eu-west-1", "op": "generate_data_key", "decision": "allow"}, 1},
		{"keyguard/kek-wrap", kf, "credmatrix_keyguard_kek_request_duration_seconds", map[string]string{"backend": "local", "call": "wrap", "data_class": "confidential", "region": "eu-west-1"}, 1},
		{"keyguard/kek-unwrap", kf, "credmatrix_keyguard_kek_request_duration_seconds", map[string]string{"backend": "local", "call": "unwrap", "data_class": "confidential", "region": "eu-west-1"}, 1},
		{"client/cache-miss-encrypt", cf, keyguardprom.DataKeyCacheRequests, map[string]string{"cache": "encrypt", "result": "miss"}, 1},
		{"client/cache-hit-encrypt", cf, keyguardprom.DataKeyCacheRequests, map[string]string{"cache": "encrypt", "result": "hit"}, 2},
		{"client/cache-miss-decrypt", cf, keyguardprom.DataKeyCacheRequests, map[string]string{"cache": "decrypt", "result": "miss"}, 1},
		{"client/cache-hit-decrypt", cf, keyguardprom.DataKeyCacheRequests, map[string]string{"cache": "decrypt", "result": "hit"}, 2},
		{"audit/queue-empty", af, "credmatrix_audit_queue_events", nil, 0},
		{"audit/checkpoint-lag-known", af, "credmatrix_audit_checkpoints_total", nil, -2}, // exists (see below)
	}
	for _, c := range checks {
		got := value(c.fams, c.metric, c.labels)
		if c.want == -2 {
			if got < 0 {
				t.Errorf("%s: %s%v missing", c.name, c.metric, c.labels)
			}
			continue
		}
		if got != c.want {
			t.Errorf("%s: %s%v = %v, want %v", c.name, c.metric, c.labels, got, c.want)
		}
	}

	// Every broker and keyguard decision above is one durable audit
	// event: the audit service's counts agree with the flow.
	minimums := []struct {
		name   string
		metric string
		labels map[string]string
		min    float64
	}{
		{"audit/session-allow", "credmatrix_audit_events_total", map[string]string{"kind": "session_issue", "decision": "allow"}, 2},
		{"audit/session-deny", "credmatrix_audit_events_total", map[string]string{"kind": "session_issue", "decision": "deny"}, 4},
		{"audit/key-encrypt", "credmatrix_audit_events_total", map[string]string{"kind": "key_encrypt"}, 2},
		{"audit/commits", "credmatrix_audit_commit_duration_seconds", map[string]string{"store": "sqlite"}, 1},
		{"audit/batches", "credmatrix_audit_commit_batch_events", map[string]string{"store": "sqlite"}, 1},
		{"audit/tree-size", "credmatrix_audit_tree_size", nil, 8},
		{"audit/checkpoint-age", "credmatrix_audit_checkpoint_age_seconds", nil, 0},
		{"audit/checkpoint-lag", "credmatrix_audit_checkpoint_lag_events", nil, 0},
		{"audit/grpc-append", "credmatrix_grpc_server_requests_total", map[string]string{"grpc_service": "credmatrix.audit.v1.AuditService", "grpc_method": "Append", "grpc_code": "OK"}, 1},
		{"keyguard/grpc", "credmatrix_grpc_server_requests_total", map[string]string{"grpc_service": "credmatrix.keyguard.v1.KeyguardService", "grpc_method": "Encrypt"}, 3},
		{"process/go-runtime", "go_goroutines", nil, 1},
	}
	all := map[string]map[string]*dto.MetricFamily{"audit": af, "keyguard": kf, "process": af}
	for _, c := range minimums {
		fams := all[strings.SplitN(c.name, "/", 2)[0]]
		if got := value(fams, c.metric, c.labels); got < c.min {
			t.Errorf("%s: %s%v = %v, want at least %v", c.name, c.metric, c.labels, got, c.min)
		}
	}
	if age := value(af, "credmatrix_audit_checkpoint_age_seconds", nil); age > 3600 {
		t.Errorf("checkpoint age %v s after a fresh start", age)
	}

	// Attacks: nothing a caller chooses and nothing secret is a label or
	// appears anywhere in a scrape.
	secrets := []string{tok, "not-a-jwt-at-all", attackerAccount, "attacker-class-5678", "repo:acme/app", "acme/app", "iban", "customers", "ASIA"}
	for svc, text := range map[string]string{"broker": btext, "keyguard": ktext, "audit": atext} {
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("%s scrape contains %q", svc, s)
			}
		}
	}
	for _, lv := range append(append(labelValues(bf), labelValues(kf)...), labelValues(af)...) {
		if len(lv) > 80 {
			t.Errorf("suspiciously long label %q", lv)
		}
	}

	// Fail closed: with audit down, requests fail UNAVAILABLE; the
	// metrics count the failed appends and no issuance or key operation.
	stack.StopAudit()
	if got := issue(tok, "deploy", "sandbox"); got != codes.Unavailable {
		t.Fatalf("issue with audit down: %v, want Unavailable", got)
	}
	if _, _, err := kg.Encrypt(ctx, "confidential", "eu-west-1", []byte("x"), encCtx); status.Code(err) != codes.Unavailable {
		t.Fatalf("encrypt with audit down: %v, want Unavailable", err)
	}
	bf2, _ := scrape(t, brokerURL)
	kf2, _ := scrape(t, keyguardURL)
	closed := []check{
		{"fail-closed/broker-audit-errors", bf2, "credmatrix_broker_audit_append_errors_total", nil, 1},
		{"fail-closed/broker-no-new-issuance", bf2, "credmatrix_broker_issuances_total", nil, 2},
		{"fail-closed/broker-grpc-unavailable", bf2, "credmatrix_grpc_server_requests_total", with(issueMethod, "grpc_code", "Unavailable"), 1},
		{"fail-closed/keyguard-audit-errors", kf2, "credmatrix_keyguard_audit_append_errors_total", nil, 1},
		{"fail-closed/keyguard-no-new-encrypt", kf2, "credmatrix_keyguard_key_operations_total", map[string]string{"data_class": "confidential", "region": "eu-west-1", "op": "encrypt", "decision": "allow"}, 1},
	}
	for _, c := range closed {
		if got := value(c.fams, c.metric, c.labels); got != c.want {
			t.Errorf("%s: %s%v = %v, want %v", c.name, c.metric, c.labels, got, c.want)
		}
	}
	if got := value(bf, "credmatrix_broker_audit_append_duration_seconds", nil); got < 6 {
		t.Errorf("broker audit append latency samples = %v, want at least 6", got)
	}
}
