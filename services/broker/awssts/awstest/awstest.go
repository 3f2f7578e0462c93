// Package awstest is an in-process AWS STS and IAM endpoint for tests and
// the cluster harness, since neither service can run locally: it parses the
// query-protocol form posts aws-sdk-go-v2 sends, answers in STS's and IAM's
// XML, and throttles the way AWS does, per account: beyond a token bucket
// of requests per second it answers HTTP 400 "Throttling: Rate exceeded".
//
// Every session AssumeRole issues gets an access key naming its role's
// account, so the IAM calls it signs are attributed (and throttled) per
// account, as IAM does for a revoker role assumed in each account.
package awstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// Options shape an Endpoint. Rates are requests per second per account;
// zero means unthrottled.
type Options struct {
	// IAMRate and IAMBurst throttle IAM calls (PutRolePolicy,
	// DeleteRolePolicy) per account.
	IAMRate  float64
	IAMBurst int
	// STSRate and STSBurst throttle AssumeRole per account of the role.
	STSRate  float64
	STSBurst int
	// BaseAccount is the account of requests signed with any key the
	// endpoint did not issue (the broker's own identity).
	BaseAccount string
	// Clock refills the buckets; nil means time.Now.
	Clock func() time.Time
}

// Endpoint is the STS and IAM endpoint. It is safe for concurrent use.
type Endpoint struct {
	opts Options

	mu        sync.Mutex
	keys      map[string]string // issued access key → account
	buckets   map[string]*bucket
	calls     map[string]int // by action
	throttled map[string]int // by action
	policies  map[string]string
	sessions  int
	assumed   []Request // every AssumeRole answered
}

// Request is one request as the endpoint received it.
type Request struct {
	// Form is the query-protocol form (Action, RoleArn, Policy, Tags…).
	Form url.Values
	// Region is the region the request was signed for (SigV4 credential
	// scope): the regional endpoint the client meant to call.
	Region string
}

// New returns an Endpoint; serve it with httptest.NewServer or any
// http.Server and point the SDK's STS and IAM endpoints at it.
func New(opts Options) *Endpoint {
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.BaseAccount == "" {
		opts.BaseAccount = "000000000000"
	}
	return &Endpoint{opts: opts, keys: map[string]string{}, buckets: map[string]*bucket{},
		calls: map[string]int{}, throttled: map[string]int{}, policies: map[string]string{}}
}

// bucket is a token bucket.
type bucket struct {
	tokens float64
	last   time.Time
}

// take reports whether a request fits the bucket of key at rate/burst.
// The caller holds e.mu.
func (e *Endpoint) take(key string, rate float64, burst int) bool {
	if rate <= 0 {
		return true
	}
	now := e.opts.Clock()
	b := e.buckets[key]
	if b == nil {
		b = &bucket{tokens: float64(burst), last: now}
		e.buckets[key] = b
	}
	b.tokens = min(float64(burst), b.tokens+now.Sub(b.last).Seconds()*rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

var (
	credentialRE = regexp.MustCompile(`Credential=([A-Z0-9]+)/`)
	scopeRE      = regexp.MustCompile(`Credential=[A-Z0-9]+/[0-9]+/([a-z0-9-]+)/`)
)

// signingRegion is the region of r's SigV4 credential scope.
func signingRegion(r *http.Request) string {
	if m := scopeRE.FindStringSubmatch(r.Header.Get("Authorization")); m != nil {
		return m[1]
	}
	return ""
}

// accountOfRequest is the account of the key that signed r.
func (e *Endpoint) accountOfRequest(r *http.Request) string {
	if m := credentialRE.FindStringSubmatch(r.Header.Get("Authorization")); m != nil {
		if acct, ok := e.keys[m[1]]; ok {
			return acct
		}
	}
	return e.opts.BaseAccount
}

// accountOfARN is the account of a role ARN.
func accountOfARN(arn string) string {
	parts := strings.Split(arn, ":")
	if len(parts) < 5 {
		return ""
	}
	return parts[4]
}

// ServeHTTP implements http.Handler.
func (e *Endpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.ParseForm() != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	action := r.PostForm.Get("Action")
	w.Header().Set("Content-Type", "text/xml")
	e.mu.Lock()
	e.calls[action]++
	var ok bool
	var ns string
	switch action {
	case "AssumeRole", "AssumeRoleWithWebIdentity":
		ns = "https://sts.amazonaws.com/doc/2011-06-15/"
		ok = e.take("sts/"+accountOfARN(r.PostForm.Get("RoleArn")), e.opts.STSRate, e.opts.STSBurst)
	case "PutRolePolicy", "DeleteRolePolicy":
		ns = "https://iam.amazonaws.com/doc/2010-05-08/"
		ok = e.take("iam/"+e.accountOfRequest(r), e.opts.IAMRate, e.opts.IAMBurst)
	default:
		e.mu.Unlock()
		http.Error(w, "unknown action", http.StatusBadRequest)
		return
	}
	if !ok {
		e.throttled[action]++
		e.mu.Unlock()
		writeError(w, ns, http.StatusBadRequest, "Throttling", "Rate exceeded")
		return
	}
	switch action {
	case "PutRolePolicy", "DeleteRolePolicy":
		role := e.accountOfRequest(r) + "/" + r.PostForm.Get("RoleName") + "/" + r.PostForm.Get("PolicyName")
		_, exists := e.policies[role]
		if action == "PutRolePolicy" {
			e.policies[role] = r.PostForm.Get("PolicyDocument")
		} else {
			delete(e.policies, role)
		}
		e.mu.Unlock()
		if action == "DeleteRolePolicy" && !exists {
			writeError(w, ns, http.StatusNotFound, "NoSuchEntity", "The role policy with name "+xmlEscape(r.PostForm.Get("PolicyName"))+" cannot be found.")
			return
		}
		fmt.Fprintf(w, `<%[1]sResponse xmlns="%[2]s">
  <ResponseMetadata><RequestId>%[3]s</RequestId></ResponseMetadata>
</%[1]sResponse>`, action, ns, requestID())
	default:
		acct := accountOfARN(r.PostForm.Get("RoleArn"))
		key := "ASIA" + acct + randomHex(2)
		e.keys[key] = acct
		e.sessions++
		e.assumed = append(e.assumed, Request{Form: r.PostForm, Region: signingRegion(r)})
		e.mu.Unlock()
		fmt.Fprintf(w, `<%[1]sResponse xmlns="%[2]s">
  <%[1]sResult>
    <SourceIdentity>%[3]s</SourceIdentity>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::%[4]s:assumed-role/%[5]s/%[6]s</Arn>
      <AssumedRoleId>AROA3XFRBF535PLBIFPI4:%[6]s</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>%[7]s</AccessKeyId>
      <SecretAccessKey>%[8]s</SecretAccessKey>
      <SessionToken>%[9]s</SessionToken>
      <Expiration>%[10]s</Expiration>
    </Credentials>
    <PackedPolicySize>12</PackedPolicySize>
  </%[1]sResult>
  <ResponseMetadata><RequestId>%[11]s</RequestId></ResponseMetadata>
</%[1]sResponse>`, action, ns, xmlEscape(r.PostForm.Get("SourceIdentity")), acct, xmlEscape(roleName(r.PostForm.Get("RoleArn"))),
			xmlEscape(r.PostForm.Get("RoleSessionName")), key, randomHex(20), "FwoGZXIvYXdz"+randomHex(32),
			e.opts.Clock().Add(time.Hour).UTC().Format(time.RFC3339), requestID())
	}
}

func writeError(w http.ResponseWriter, ns string, status int, code, msg string) {
	w.WriteHeader(status)
	fmt.Fprintf(w, `<ErrorResponse xmlns="%s">
  <Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error>
  <RequestId>%s</RequestId>
</ErrorResponse>`, ns, code, msg, requestID())
}

func roleName(arn string) string {
	_, after, _ := strings.Cut(arn, ":role/")
	if i := strings.LastIndexByte(after, '/'); i >= 0 {
		return after[i+1:]
	}
	return after
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&apos;").Replace(s)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return strings.ToUpper(hex.EncodeToString(b))
}

func requestID() string {
	return strings.ToLower(randomHex(4) + "-" + randomHex(2) + "-" + randomHex(2) + "-" + randomHex(2) + "-" + randomHex(6))
}

// Calls returns how many requests of action arrived (throttled included).
func (e *Endpoint) Calls(action string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.calls[action]
}

// Throttled returns how many requests of action were throttled.
func (e *Endpoint) Throttled(action string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.throttled[action]
}

// Policy returns the inline policy name of role roleName in account, as
// last put ("" when none).
func (e *Endpoint) Policy(account, roleName, name string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.policies[account+"/"+roleName+"/"+name]
}

// Assumed returns the request of every session issued, in order: what
// the broker asked STS (role, duration, session policy, tags,
// SourceIdentity) and of which region.
func (e *Endpoint) Assumed() []Request {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.assumed)
}

// Sessions returns how many sessions AssumeRole issued.
func (e *Endpoint) Sessions() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.sessions
}
