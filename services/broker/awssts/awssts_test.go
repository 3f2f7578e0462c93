package awssts_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/awssts"
	"github.com/google/go-cmp/cmp"
)

// fakeAWS is an in-process STS and IAM query-protocol endpoint: it parses
// the form posts aws-sdk-go-v2 sends, records them, and answers with
// real-format XML, or with the errors queued in fail.
type fakeAWS struct {
	mu    sync.Mutex
	calls []url.Values
	auth  []string
	fail  []fakeError // served first, one per call
	gate  chan struct{}
	n     atomic.Int32
	// arrived, when set, receives once per call that reached the endpoint
	// (before the gate), so a test can wait for a call instead of polling.
	arrived chan struct{}

	// now is the clock of sessions' aws:TokenIssueTime (time.Now when
	// nil); keyPerAccount makes AssumeRole answer an access key naming
	// the role's account, so IAM calls signed with it are attributed to
	// that account.
	now           func() time.Time
	keyPerAccount bool
	sessions      []stsSession                 // every AssumeRole answered
	policies      map[string]map[string]string // "account/role" → policy name → document
}

// stsSession is what the fake STS saw when it issued a session.
type stsSession struct {
	form   url.Values
	issued time.Time
}

type fakeError struct {
	status        int
	code, message string
}

func (f *fakeAWS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.n.Add(1)
	if f.arrived != nil {
		select {
		case f.arrived <- struct{}{}:
		default:
		}
	}
	if f.gate != nil {
		<-f.gate
	}
	if err := r.ParseForm(); err != nil || r.Method != http.MethodPost {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.calls = append(f.calls, r.PostForm)
	f.auth = append(f.auth, r.Header.Get("Authorization"))
	var fe *fakeError
	if len(f.fail) > 0 {
		fe = &f.fail[0]
		f.fail = f.fail[1:]
	}
	f.mu.Unlock()
	w.Header().Set("Content-Type", "text/xml")
	if fe != nil {
		w.WriteHeader(fe.status)
		fmt.Fprintf(w, `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error>
  <RequestId>4ec3c3b3-f1c5-4b9c-9d1e-7d9c1d1b8f00</RequestId>
</ErrorResponse>`, fe.code, fe.message)
		return
	}
	switch r.PostForm.Get("Action") {
	case "AssumeRole", "AssumeRoleWithWebIdentity":
		action := r.PostForm.Get("Action")
		now := time.Now()
		if f.now != nil {
			now = f.now()
		}
		key := "ASIAIOSFODNN7EXAMPLE"
		if f.keyPerAccount {
			key = "ASIA" + accountOf(r.PostForm.Get("RoleArn"))
		}
		f.mu.Lock()
		f.sessions = append(f.sessions, stsSession{form: r.PostForm, issued: now})
		f.mu.Unlock()
		fmt.Fprintf(w, `<%[1]sResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <%[1]sResult>
    <SourceIdentity>%[2]s</SourceIdentity>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::111111111111:assumed-role/deploy/%[3]s</Arn>
      <AssumedRoleId>AROA3XFRBF535PLBIFPI4:%[3]s</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>%[4]s</AccessKeyId>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>
      <SessionToken>FwoGZXIvYXdzEXAMPLETOKEN</SessionToken>
      <Expiration>2030-01-02T03:04:05Z</Expiration>
    </Credentials>
    <PackedPolicySize>12</PackedPolicySize>
  </%[1]sResult>
  <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>
</%[1]sResponse>`, action, r.PostForm.Get("SourceIdentity"), r.PostForm.Get("RoleSessionName"), key)
	case "PutRolePolicy", "DeleteRolePolicy":
		action := r.PostForm.Get("Action")
		role := accountOfKey(r.Header.Get("Authorization")) + "/" + r.PostForm.Get("RoleName")
		name := r.PostForm.Get("PolicyName")
		f.mu.Lock()
		if f.policies == nil {
			f.policies = map[string]map[string]string{}
		}
		_, exists := f.policies[role][name]
		if action == "PutRolePolicy" {
			if f.policies[role] == nil {
				f.policies[role] = map[string]string{}
			}
			f.policies[role][name] = r.PostForm.Get("PolicyDocument")
		} else {
			delete(f.policies[role], name)
		}
		f.mu.Unlock()
		if action == "DeleteRolePolicy" && !exists {
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">
  <Error><Type>Sender</Type><Code>NoSuchEntity</Code><Message>The role policy with name credmatrix-revocations cannot be found.</Message></Error>
  <RequestId>9b4d2c1e-EXAMPLE</RequestId>
</ErrorResponse>`)
			return
		}
		fmt.Fprintf(w, `<%[1]sResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">
  <ResponseMetadata><RequestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</RequestId></ResponseMetadata>
</%[1]sResponse>`, action)
	default:
		http.Error(w, "unknown action", http.StatusBadRequest)
	}
}

// accountOf is the account of a role ARN.
func accountOf(arn string) string {
	parts := strings.Split(arn, ":")
	if len(parts) < 5 {
		return ""
	}
	return parts[4]
}

// accountOfKey is the account named by the access key that signed a
// request (keyPerAccount), "" for any other key.
func accountOfKey(authorization string) string {
	_, after, ok := strings.Cut(authorization, "Credential=ASIA")
	if !ok || len(after) < 12 {
		return ""
	}
	if acct := after[:12]; strings.Trim(acct, "0123456789") == "" {
		return acct
	}
	return ""
}

// policy returns the inline policy name of role ("account/role", account
// "" without keyPerAccount).
func (f *fakeAWS) policy(role, name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.policies[role][name]
}

func (f *fakeAWS) recorded() ([]url.Values, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]url.Values(nil), f.calls...), append([]string(nil), f.auth...)
}

func newProvider(t *testing.T, f *fakeAWS, cfg awssts.Config) *awssts.Provider {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	cfg.STSEndpoint, cfg.IAMEndpoint = srv.URL, srv.URL
	if cfg.BaseDelay == 0 {
		cfg.BaseDelay, cfg.MaxDelay = time.Millisecond, 5*time.Millisecond
	}
	base := aws.Config{
		Region:      "us-east-1",
		Credentials: credentials.NewStaticCredentialsProvider("AKIDBROKEREXAMPLE", "broker-secret", ""),
		HTTPClient:  srv.Client(),
	}
	p, err := awssts.New(base, cfg, awssts.WithJitter(func() float64 { return 0.5 }))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func spec() broker.SessionSpec {
	return broker.SessionSpec{
		SessionID: "0b7c9f3e-1d2a-4c5b-8e6f-7a8b9c0d1e2f", AccountID: "111111111111",
		RoleARN: "arn:aws:iam::111111111111:role/ci/deploy", RoleName: "deploy", Region: "eu-central-1",
		SessionName: "acme-app@42", SourceIdentity: "cm-0b7c9f3e-1d2a-4c5b-8e6f-7a8b9c0d1e2f",
		Subject: "repo:acme/app:ref:refs/heads/main", Duration: 30 * time.Minute,
		Tags:              map[string]string{"repository": "acme/app", "sub": "repo:acme/app:ref:refs/heads/main"},
		TransitiveTagKeys: []string{"repository"},
		Policy:            `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}`,
		PolicyARNs:        []string{"arn:aws:iam::aws:policy/ReadOnlyAccess"},
		ExternalID:        "ext-123",
		WebIdentityToken:  "header.payload.signature",
	}
}

func TestAssumeRoleSendsEveryParameter(t *testing.T) {
	f := &fakeAWS{}
	p := newProvider(t, f, awssts.Config{})
	creds, err := p.Issue(context.Background(), spec())
	if err != nil {
		t.Fatal(err)
	}
	calls, auth := f.recorded()
	if len(calls) != 1 {
		t.Fatalf("%d calls, want 1", len(calls))
	}
	want := url.Values{
		"Action": {"AssumeRole"}, "Version": {"2011-06-15"},
		"RoleArn": {"arn:aws:iam::111111111111:role/ci/deploy"}, "RoleSessionName": {"acme-app@42"},
		"DurationSeconds": {"1800"}, "ExternalId": {"ext-123"},
		"SourceIdentity":          {"cm-0b7c9f3e-1d2a-4c5b-8e6f-7a8b9c0d1e2f"},
		"Policy":                  {`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}`},
		"PolicyArns.member.1.arn": {"arn:aws:iam::aws:policy/ReadOnlyAccess"},
		"Tags.member.1.Key":       {"repository"}, "Tags.member.1.Value": {"acme/app"},
		"Tags.member.2.Key": {"sub"}, "Tags.member.2.Value": {"repo:acme/app:ref:refs/heads/main"},
		"TransitiveTagKeys.member.1": {"repository"},
	}
	if diff := cmp.Diff(calls[0], want); diff != "" {
		t.Errorf("AssumeRole form (-got +want):\n%s", diff)
	}
	// Signed by the broker's identity for the session's region (the
	// regional endpoint).
	if !strings.Contains(auth[0], "Credential=AKIDBROKEREXAMPLE/") || !strings.Contains(auth[0], "/eu-central-1/sts/aws4_request") {
		t.Errorf("Authorization = %q, want SigV4 by the broker for eu-central-1 sts", auth[0])
	}
	wantCreds := broker.Credentials{
		AccessKeyID: "ASIAIOSFODNN7EXAMPLE", SecretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY",
		SessionToken: "FwoGZXIvYXdzEXAMPLETOKEN", Expiration: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC),
		Endpoint: p.Endpoint("eu-central-1"), SourceIdentity: "cm-0b7c9f3e-1d2a-4c5b-8e6f-7a8b9c0d1e2f",
	}
	if diff := cmp.Diff(creds, wantCreds); diff != "" {
		t.Errorf("credentials (-got +want):\n%s", diff)
	}
}

func TestRegionalEndpoint(t *testing.T) {
	p, err := awssts.New(aws.Config{Region: "us-east-1"}, awssts.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Endpoint("eu-central-1"); got != "https://sts.eu-central-1.amazonaws.com" {
		t.Errorf("Endpoint = %q", got)
	}
}

func TestWebIdentityPassThrough(t *testing.T) {
	f := &fakeAWS{}
	p := newProvider(t, f, awssts.Config{Mode: awssts.ModeWebIdentity})
	if _, err := p.Issue(context.Background(), spec()); err != nil {
		t.Fatal(err)
	}
	calls, auth := f.recorded()
	want := url.Values{
		"Action": {"AssumeRoleWithWebIdentity"}, "Version": {"2011-06-15"},
		"RoleArn": {"arn:aws:iam::111111111111:role/ci/deploy"}, "RoleSessionName": {"acme-app@42"},
		"DurationSeconds": {"1800"}, "WebIdentityToken": {"header.payload.signature"},
		"Policy":                  {`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}`},
		"PolicyArns.member.1.arn": {"arn:aws:iam::aws:policy/ReadOnlyAccess"},
	}
	if diff := cmp.Diff(calls[0], want); diff != "" {
		t.Errorf("AssumeRoleWithWebIdentity form (-got +want):\n%s", diff)
	}
	if auth[0] != "" {
		t.Errorf("AssumeRoleWithWebIdentity was signed (%q); it must be anonymous", auth[0])
	}
}

func TestHubRoleChaining(t *testing.T) {
	f := &fakeAWS{}
	p := newProvider(t, f, awssts.Config{HubRoleARN: "arn:aws:iam::999999999999:role/credmatrix-hub"})
	s := spec()
	s.Duration = 4 * time.Hour
	if _, err := p.Issue(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	calls, auth := f.recorded()
	var got []string
	for i, c := range calls {
		got = append(got, c.Get("Action")+" "+c.Get("RoleArn")+" "+c.Get("DurationSeconds")+" "+fmt.Sprint(strings.Contains(auth[i], "ASIAIOSFODNN7EXAMPLE")))
	}
	want := []string{
		"AssumeRole arn:aws:iam::999999999999:role/credmatrix-hub 3600 false",
		"AssumeRole arn:aws:iam::111111111111:role/ci/deploy 3600 true", // chained: 1h cap, signed by the hub session
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("calls (-got +want):\n%s", diff)
	}
}

func TestErrors(t *testing.T) {
	throttle := fakeError{status: 400, code: "Throttling", message: "Rate exceeded"}
	denied := fakeError{status: 403, code: "AccessDenied", message: "User: arn:aws:sts::999999999999:assumed-role/broker is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::111111111111:role/ci/deploy"}
	internal := fakeError{status: 500, code: "InternalFailure", message: "oops"}
	invalid := fakeError{status: 400, code: "ValidationError", message: "1 validation error detected: Value at 'roleSessionName'"}
	tests := []struct {
		name     string
		fail     []fakeError
		attempts int
		calls    int32
		kind     string
	}{
		{"retry/throttled-then-ok", []fakeError{throttle, throttle}, 5, 3, "ok"},
		{"retry/5xx-then-ok", []fakeError{internal}, 5, 2, "ok"},
		{"unavailable/throttled-throughout", []fakeError{throttle, throttle, throttle}, 3, 3, "unavailable"},
		{"refused/access-denied-not-retried", []fakeError{denied}, 5, 1, "refused"},
		{"internal/validation-not-retried", []fakeError{invalid}, 5, 1, "internal"},
	}
	kind := func(err error) string {
		switch {
		case err == nil:
			return "ok"
		case errors.Is(err, broker.ErrProviderUnavailable):
			return "unavailable"
		case errors.Is(err, broker.ErrProviderRefused):
			return "refused"
		default:
			return "internal"
		}
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeAWS{fail: tc.fail}
			p := newProvider(t, f, awssts.Config{MaxAttempts: tc.attempts})
			_, err := p.Issue(context.Background(), spec())
			if diff := cmp.Diff([]any{f.n.Load(), kind(err)}, []any{tc.calls, tc.kind}); diff != "" {
				t.Errorf("(calls, error kind) (-got +want):\n%s\nerr: %v", diff, err)
			}
		})
	}
}

func TestRetryStaysInsideTheDeadline(t *testing.T) {
	f := &fakeAWS{fail: []fakeError{{status: 400, code: "Throttling", message: "Rate exceeded"}, {status: 400, code: "Throttling"}, {status: 400, code: "Throttling"}}}
	p := newProvider(t, f, awssts.Config{MaxAttempts: 10, BaseDelay: time.Hour, MaxDelay: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := p.Issue(ctx, spec())
	if !errors.Is(err, broker.ErrProviderUnavailable) || f.n.Load() != 1 {
		t.Errorf("err = %v after %d calls; want unavailable after 1 call (no backoff fits the deadline)", err, f.n.Load())
	}
}

func TestSingleFlight(t *testing.T) {
	f := &fakeAWS{gate: make(chan struct{}), arrived: make(chan struct{}, 1)}
	p := newProvider(t, f, awssts.Config{})
	const n = 8
	var wg, started sync.WaitGroup
	results := make(chan string, n)
	for i := range n {
		wg.Add(1)
		started.Add(1)
		go func() {
			defer wg.Done()
			started.Done()
			s := spec()
			s.SessionID = fmt.Sprintf("session-%d", i) // per-session ids do not split the flight
			s.SourceIdentity = "cm-" + s.SessionID
			creds, err := p.Issue(context.Background(), s)
			if err != nil {
				results <- err.Error()
				return
			}
			results <- creds.AccessKeyID
		}()
	}
	// Hold the first call at the endpoint until every caller has started
	// and a call has reached the endpoint (waits, not a poll that could
	// give up); then answer it.
	started.Wait()
	<-f.arrived
	close(f.gate)
	wg.Wait()
	close(results)
	for r := range results {
		if r != "ASIAIOSFODNN7EXAMPLE" {
			t.Errorf("caller got %q", r)
		}
	}
	if got := f.n.Load(); got >= n {
		t.Errorf("%d STS calls for %d identical concurrent requests, want them coalesced", got, n)
	}
}

func TestPutRevocations(t *testing.T) {
	f := &fakeAWS{keyPerAccount: true}
	p := newProvider(t, f, awssts.Config{RevokerRoleName: "credmatrix-revoker"})
	before := time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)
	role := broker.RoleRef{AccountID: "111111111111", Name: "deploy", ARN: "arn:aws:iam::111111111111:role/ci/deploy"}
	matches := []broker.SessionMatch{
		{RevocationID: "0b7c9f3e-1d2a-4c5b-8e6f-7a8b9c0d1e2f", IssuedBefore: before, Tags: map[string]string{"repository": "acme/app", "sub": "repo:acme/app:ref:refs/heads/main"}},
		{RevocationID: "r-2", IssuedBefore: before.Add(1500 * time.Millisecond), SourceIdentity: "cm-s1"},
	}
	ctx := context.Background()
	dry, err := p.PutRevocations(ctx, role, matches, true)
	if err != nil {
		t.Fatal(err)
	}
	if calls, _ := f.recorded(); len(calls) != 0 {
		t.Fatalf("a dry run made %d calls", len(calls))
	}
	put, err := p.PutRevocations(ctx, role, matches, false)
	if err != nil {
		t.Fatal(err)
	}
	doc := `{"Statement":[` +
		`{"Action":"*","Condition":{"DateLessThan":{"aws:TokenIssueTime":"2026-11-27T09:00:00Z"},` +
		`"StringEquals":{"aws:PrincipalTag/repository":"acme/app","aws:PrincipalTag/sub":"repo:acme/app:ref:refs/heads/main"}},` +
		`"Effect":"Deny","Resource":"*","Sid":"Revocation0b7c9f3e1d2a4c5b8e6f7a8b9c0d1e2f"},` +
		// Rounded up: a session issued in the revocation's second is covered.
		`{"Action":"*","Condition":{"DateLessThan":{"aws:TokenIssueTime":"2026-11-27T09:00:02Z"},"StringEquals":{"aws:SourceIdentity":"cm-s1"}},` +
		`"Effect":"Deny","Resource":"*","Sid":"Revocationr2"}],"Version":"2012-10-17"}`
	if diff := cmp.Diff([]string{dry.Document, put.Document, f.policy("111111111111/deploy", awssts.RevocationPolicyName)}, []string{doc, doc, doc}); diff != "" {
		t.Errorf("(dry run, put, as IAM holds it) (-got +want):\n%s", diff)
	}
	// No match left (all pruned): the policy is removed; removing it
	// again is not an error.
	for range 2 {
		if _, err := p.PutRevocations(ctx, role, nil, false); err != nil {
			t.Fatal(err)
		}
	}
	calls, _ := f.recorded()
	var got []string
	for _, c := range calls {
		got = append(got, c.Get("Action")+" "+c.Get("RoleArn")+c.Get("RoleName")+" "+c.Get("PolicyName"))
	}
	want := []string{
		"AssumeRole arn:aws:iam::111111111111:role/credmatrix-revoker ",
		"PutRolePolicy deploy credmatrix-revocations",
		"AssumeRole arn:aws:iam::111111111111:role/credmatrix-revoker ",
		"DeleteRolePolicy deploy credmatrix-revocations",
		"AssumeRole arn:aws:iam::111111111111:role/credmatrix-revoker ",
		"DeleteRolePolicy deploy credmatrix-revocations",
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("calls (-got +want):\n%s", diff)
	}
	if d := f.policy("111111111111/deploy", awssts.RevocationPolicyName); d != "" {
		t.Errorf("policy left: %s", d)
	}
}

// TestRevocationPolicyCompacts fills a role's revocation policy past the
// size budget: the oldest statements become one deny of every session
// issued before the newest of them, and the document fits.
func TestRevocationPolicyCompacts(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)
	var matches []broker.SessionMatch
	for i := range 40 {
		matches = append(matches, broker.SessionMatch{
			RevocationID: fmt.Sprintf("r%02d", i), IssuedBefore: t0.Add(time.Duration(i) * time.Minute),
			Tags: map[string]string{"sub": fmt.Sprintf("repo:acme/app-%02d:ref:refs/heads/main", i), "repository": fmt.Sprintf("acme/app-%02d", i)},
		})
	}
	const budget = 2048
	doc, cutoff, err := awssts.RevocationPolicy(matches, budget)
	if err != nil {
		t.Fatal(err)
	}
	var parsed struct {
		Statement []struct {
			Sid       string
			Condition map[string]map[string]string
		}
	}
	if err := json.Unmarshal([]byte(doc), &parsed); err != nil {
		t.Fatal(err)
	}
	first, last := parsed.Statement[0], parsed.Statement[len(parsed.Statement)-1]
	kept := len(parsed.Statement) - 1
	got := []any{len(doc) <= budget, first.Sid, first.Condition["DateLessThan"]["aws:TokenIssueTime"], cutoff.Format(time.RFC3339), last.Sid, kept > 0}
	wantCut := t0.Add(time.Duration(39-kept) * time.Minute).Format(time.RFC3339)
	want := []any{true, "CredmatrixCompacted", wantCut, wantCut, "Revocationr39", true}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("(fits, first sid, its cutoff, cutoff returned, last sid, statements kept) (-got +want):\n%s\n%s", diff, doc)
	}
	// Under the budget nothing is compacted.
	if _, cutoff, _ := awssts.RevocationPolicy(matches[:2], budget); !cutoff.IsZero() {
		t.Errorf("two statements compacted at %s", cutoff)
	}
}
