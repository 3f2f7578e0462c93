// Package awssts is the broker's production provider: AWS STS through
// aws-sdk-go-v2. It assumes the target role from the broker's own
// identity (IRSA, instance role), optionally through a hub role, at the
// regional STS endpoint of the session's region; or passes the caller's
// OIDC token through with AssumeRoleWithWebIdentity.
//
// Throttling and transient failures are retried with jittered
// exponential backoff inside the caller's deadline; identical concurrent
// requests are coalesced (single flight) so a burst of parallel CI jobs
// costs one STS call. Upstream error text never leaves this package in a
// message a caller sees: errors wrap broker.ErrProviderUnavailable
// (retryable) or broker.ErrProviderRefused, with the AWS error as a cause
// for logs.
//
// Revocation keeps one inline policy per role, credmatrix-revocations,
// put through IAM PutRolePolicy: a Deny statement per revocation in
// effect, conditioned on aws:TokenIssueTime (sessions issued before the
// revocation) and on exactly the session tags and SourceIdentity the
// broker sets. Revocations whose sessions have all expired are pruned;
// when the statements exceed the size budget, the oldest are compacted
// into one deny of every session issued before a cutoff.
package awssts

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	ststypes "github.com/aws/aws-sdk-go-v2/service/sts/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/credmatrix/credmatrix/services/broker"
	"golang.org/x/sync/singleflight"
)

// Name is the provider's name in audit events.
const Name = "aws"

// Modes.
const (
	// ModeAssumeRole calls AssumeRole with the broker's identity.
	ModeAssumeRole = "assume-role"
	// ModeWebIdentity passes the caller's token to
	// AssumeRoleWithWebIdentity; the role must trust the issuer.
	ModeWebIdentity = "web-identity"
)

// Limits of STS.
const (
	// MaxDuration is the longest role session.
	MaxDuration = 12 * time.Hour
	// ChainedMaxDuration is the longest session of a role assumed with
	// role-chained credentials (through a hub role).
	ChainedMaxDuration = time.Hour
)

// STSClient is the part of the STS client the provider calls.
type STSClient interface {
	AssumeRole(ctx context.Context, in *sts.AssumeRoleInput, optFns ...func(*sts.Options)) (*sts.AssumeRoleOutput, error)
	AssumeRoleWithWebIdentity(ctx context.Context, in *sts.AssumeRoleWithWebIdentityInput, optFns ...func(*sts.Options)) (*sts.AssumeRoleWithWebIdentityOutput, error)
}

// IAMClient is the part of the IAM client revocation calls.
type IAMClient interface {
	PutRolePolicy(ctx context.Context, in *iam.PutRolePolicyInput, optFns ...func(*iam.Options)) (*iam.PutRolePolicyOutput, error)
	DeleteRolePolicy(ctx context.Context, in *iam.DeleteRolePolicyInput, optFns ...func(*iam.Options)) (*iam.DeleteRolePolicyOutput, error)
}

// Config configures the provider.
type Config struct {
	// Mode is ModeAssumeRole (default) or ModeWebIdentity.
	Mode string
	// HubRoleARN, when set, is assumed first; target roles are assumed
	// with its credentials (role chaining: sessions of at most 1h).
	HubRoleARN string
	// RevokerRoleName, when set, is the role assumed in each target
	// account to call IAM PutRolePolicy; empty uses the broker's own
	// credentials (single-account setups).
	RevokerRoleName string
	// STSEndpoint overrides the regional STS endpoint
	// (https://sts.<region>.amazonaws.com); for tests and VPC endpoints.
	STSEndpoint string
	// IAMEndpoint overrides the IAM endpoint.
	IAMEndpoint string
	// MaxAttempts bounds the calls per request (default 5).
	MaxAttempts int
	// BaseDelay is the first backoff (default 100ms); it doubles up to
	// MaxDelay (default 2s), with full jitter.
	BaseDelay, MaxDelay time.Duration
	// CallTimeout bounds one STS or IAM call (default 5s).
	CallTimeout time.Duration
	// MaxRevocationPolicyBytes bounds the inline revocation policy of a
	// role (default DefaultMaxRevocationPolicyBytes); IAM allows 10,240
	// characters for all of a role's inline policies together.
	MaxRevocationPolicyBytes int
}

// DefaultMaxRevocationPolicyBytes leaves a third of IAM's 10,240
// characters of inline role policy for policies of the role's own.
const DefaultMaxRevocationPolicyBytes = 6144

// RevocationPolicyName is the name of the inline policy that revokes a
// role's sessions.
const RevocationPolicyName = "credmatrix-revocations"

// Provider mints sessions with AWS STS. It is safe for concurrent use.
type Provider struct {
	cfg     Config
	base    aws.Config
	hub     aws.CredentialsProvider
	mu      sync.Mutex
	clients map[string]STSClient // by region and credentials ("hub"/"base"/"anon")
	newSTS  func(region string, creds aws.CredentialsProvider) STSClient
	newIAM  func(creds aws.CredentialsProvider) IAMClient
	flight  singleflight.Group
	jitter  func() float64

	pmu    sync.Mutex
	pacers map[string]*pacer // IAM calls, by account
}

var (
	_ broker.Provider       = (*Provider)(nil)
	_ broker.SessionRevoker = (*Provider)(nil)
)

// Option configures a Provider.
type Option func(*Provider)

// WithClients replaces the SDK clients (tests use fakes or clients
// pointed at an httptest server).
func WithClients(newSTS func(region string, creds aws.CredentialsProvider) STSClient, newIAM func(creds aws.CredentialsProvider) IAMClient) Option {
	return func(p *Provider) { p.newSTS, p.newIAM = newSTS, newIAM }
}

// WithJitter replaces the random source of the backoff (in [0, 1)).
func WithJitter(f func() float64) Option { return func(p *Provider) { p.jitter = f } }

// New returns a provider acting as base (the broker's own AWS identity,
// e.g. from config.LoadDefaultConfig).
func New(base aws.Config, cfg Config, opts ...Option) (*Provider, error) {
	switch cfg.Mode {
	case "":
		cfg.Mode = ModeAssumeRole
	case ModeAssumeRole, ModeWebIdentity:
	default:
		return nil, fmt.Errorf("awssts: mode %q: want %s or %s", cfg.Mode, ModeAssumeRole, ModeWebIdentity)
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 5
	}
	if cfg.BaseDelay <= 0 {
		cfg.BaseDelay = 100 * time.Millisecond
	}
	if cfg.MaxDelay <= 0 {
		cfg.MaxDelay = 2 * time.Second
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 5 * time.Second
	}
	if cfg.MaxRevocationPolicyBytes <= 0 {
		cfg.MaxRevocationPolicyBytes = DefaultMaxRevocationPolicyBytes
	}
	p := &Provider{cfg: cfg, base: base, clients: map[string]STSClient{}, jitter: rand.Float64}
	p.newSTS = func(region string, creds aws.CredentialsProvider) STSClient {
		return sts.NewFromConfig(base, func(o *sts.Options) {
			o.Region = region
			o.Credentials = creds
			o.Retryer = aws.NopRetryer{} // we retry, inside the deadline
			if cfg.STSEndpoint != "" {
				o.BaseEndpoint = aws.String(cfg.STSEndpoint)
			}
		})
	}
	p.newIAM = func(creds aws.CredentialsProvider) IAMClient {
		return iam.NewFromConfig(base, func(o *iam.Options) {
			o.Credentials = creds
			o.Retryer = aws.NopRetryer{}
			if cfg.IAMEndpoint != "" {
				o.BaseEndpoint = aws.String(cfg.IAMEndpoint)
			}
		})
	}
	for _, opt := range opts {
		opt(p)
	}
	if cfg.HubRoleARN != "" {
		region := base.Region
		if region == "" {
			region = "us-east-1"
		}
		hubSTS := p.newSTS(region, base.Credentials)
		p.hub = aws.NewCredentialsCache(stscreds.NewAssumeRoleProvider(hubSTS, cfg.HubRoleARN, func(o *stscreds.AssumeRoleOptions) {
			o.RoleSessionName = "credmatrix-broker"
			o.Duration = time.Hour
		}))
	}
	return p, nil
}

// Name returns "aws".
func (p *Provider) Name() string { return Name }

// MaxDuration is the longest session the provider can mint: 1h through a
// hub role (role chaining), 12h otherwise.
func (p *Provider) MaxDuration() time.Duration {
	if p.cfg.HubRoleARN != "" && p.cfg.Mode == ModeAssumeRole {
		return ChainedMaxDuration
	}
	return MaxDuration
}

// Endpoint is the STS endpoint sessions in region come from.
func (p *Provider) Endpoint(region string) string {
	if p.cfg.STSEndpoint != "" {
		return p.cfg.STSEndpoint
	}
	return "https://sts." + region + ".amazonaws.com"
}

func (p *Provider) client(region, kind string) STSClient {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := kind + "\x00" + region
	if c, ok := p.clients[key]; ok {
		return c
	}
	var creds aws.CredentialsProvider
	switch kind {
	case "hub":
		creds = p.hub
	case "anon":
		creds = aws.AnonymousCredentials{}
	default:
		creds = p.base.Credentials
	}
	c := p.newSTS(region, creds)
	p.clients[key] = c
	return c
}

// Issue implements broker.Provider. Identical concurrent requests (same
// everything but the session id) share one STS call; the credentials
// then carry the SourceIdentity of the call that ran.
func (p *Provider) Issue(ctx context.Context, spec broker.SessionSpec) (broker.Credentials, error) {
	if spec.Duration > p.MaxDuration() {
		spec.Duration = p.MaxDuration()
	}
	key := p.flightKey(spec)
	ch := p.flight.DoChan(key, func() (any, error) {
		// The shared call runs to its own deadline, not the first
		// caller's cancellation.
		cctx := context.WithoutCancel(ctx)
		if dl, ok := ctx.Deadline(); ok {
			var cancel context.CancelFunc
			cctx, cancel = context.WithDeadline(cctx, dl)
			defer cancel()
		}
		return p.issue(cctx, spec)
	})
	select {
	case <-ctx.Done():
		return broker.Credentials{}, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return broker.Credentials{}, r.Err
		}
		return r.Val.(broker.Credentials), nil
	}
}

// flightKey identifies what a request would get from STS, ignoring the
// per-session ids (and the caller's token, unless it is passed through).
func (p *Provider) flightKey(spec broker.SessionSpec) string {
	spec.SessionID, spec.SourceIdentity = "", ""
	if p.cfg.Mode != ModeWebIdentity {
		spec.WebIdentityToken = ""
	}
	b, _ := json.Marshal(spec) // a struct of strings, maps and slices
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func (p *Provider) issue(ctx context.Context, spec broker.SessionSpec) (broker.Credentials, error) {
	secs := int32(spec.Duration / time.Second)
	var policyARNs []ststypes.PolicyDescriptorType
	for _, arn := range spec.PolicyARNs {
		policyARNs = append(policyARNs, ststypes.PolicyDescriptorType{Arn: aws.String(arn)})
	}
	var policy *string
	if spec.Policy != "" {
		policy = aws.String(spec.Policy)
	}
	if p.cfg.Mode == ModeWebIdentity {
		in := &sts.AssumeRoleWithWebIdentityInput{
			RoleArn: aws.String(spec.RoleARN), RoleSessionName: aws.String(spec.SessionName),
			WebIdentityToken: aws.String(spec.WebIdentityToken), DurationSeconds: aws.Int32(secs),
			Policy: policy, PolicyArns: policyARNs,
		}
		c := p.client(spec.Region, "anon")
		return retry(ctx, p, "AssumeRoleWithWebIdentity", func(cctx context.Context) (broker.Credentials, error) {
			out, err := c.AssumeRoleWithWebIdentity(cctx, in)
			if err != nil {
				return broker.Credentials{}, err
			}
			return p.credentials(out.Credentials, spec.Region, aws.ToString(out.SourceIdentity))
		})
	}
	keys := make([]string, 0, len(spec.Tags))
	for k := range spec.Tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var tags []ststypes.Tag
	for _, k := range keys {
		tags = append(tags, ststypes.Tag{Key: aws.String(k), Value: aws.String(spec.Tags[k])})
	}
	in := &sts.AssumeRoleInput{
		RoleArn: aws.String(spec.RoleARN), RoleSessionName: aws.String(spec.SessionName),
		DurationSeconds: aws.Int32(secs), Policy: policy, PolicyArns: policyARNs, Tags: tags,
		TransitiveTagKeys: slices.Clone(spec.TransitiveTagKeys), SourceIdentity: aws.String(spec.SourceIdentity),
	}
	if spec.ExternalID != "" {
		in.ExternalId = aws.String(spec.ExternalID)
	}
	kind := "base"
	if p.hub != nil {
		kind = "hub"
	}
	c := p.client(spec.Region, kind)
	return retry(ctx, p, "AssumeRole", func(cctx context.Context) (broker.Credentials, error) {
		out, err := c.AssumeRole(cctx, in)
		if err != nil {
			return broker.Credentials{}, err
		}
		return p.credentials(out.Credentials, spec.Region, aws.ToString(out.SourceIdentity))
	})
}

func (p *Provider) credentials(c *ststypes.Credentials, region, sourceIdentity string) (broker.Credentials, error) {
	if c == nil || c.AccessKeyId == nil || c.SecretAccessKey == nil || c.SessionToken == nil || c.Expiration == nil {
		return broker.Credentials{}, errors.New("awssts: response without credentials")
	}
	return broker.Credentials{
		AccessKeyID: *c.AccessKeyId, SecretAccessKey: *c.SecretAccessKey, SessionToken: *c.SessionToken,
		Expiration: *c.Expiration, Endpoint: p.Endpoint(region), SourceIdentity: sourceIdentity,
	}, nil
}

// retry calls f until it succeeds, fails for good, or the next attempt
// would not fit in ctx's deadline; retryable failures sleep a jittered,
// exponentially growing delay first.
func retry[T any](ctx context.Context, p *Provider, op string, f func(context.Context) (T, error)) (T, error) {
	var zero T
	var last error
	for attempt := 0; attempt < p.cfg.MaxAttempts; attempt++ {
		if attempt > 0 {
			d := p.cfg.BaseDelay << (attempt - 1)
			if d > p.cfg.MaxDelay || d <= 0 {
				d = p.cfg.MaxDelay
			}
			d = time.Duration(p.jitter() * float64(d))
			if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
				break // no time left to wait and try again
			}
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return zero, fmt.Errorf("%w: sts %s: %w", broker.ErrProviderUnavailable, op, ctx.Err())
			case <-t.C:
			}
		}
		cctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
		v, err := f(cctx)
		cancel()
		if err == nil {
			return v, nil
		}
		last = err
		if !retryable(err) {
			return zero, classify(op, err)
		}
	}
	return zero, fmt.Errorf("%w: %s: gave up after retries: %w", broker.ErrProviderUnavailable, op, last)
}

// throttleCodes are the AWS error codes of throttling.
var throttleCodes = map[string]bool{
	"Throttling": true, "ThrottlingException": true, "ThrottledException": true, "RequestThrottledException": true,
	"TooManyRequestsException": true, "RequestLimitExceeded": true, "SlowDown": true, "PriorRequestNotComplete": true,
	"IDPCommunicationError": true, "ServiceUnavailable": true, "InternalFailure": true, "InternalError": true,
}

func retryable(err error) bool {
	var ae smithy.APIError
	if errors.As(err, &ae) && throttleCodes[ae.ErrorCode()] {
		return true
	}
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) && re.HTTPStatusCode() >= 500 {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded)
}

// classify wraps a final, non-retryable error: AWS refusals (access
// denied, a role that does not trust the broker, a policy too large)
// are ErrProviderRefused; anything else is a plain error (Internal).
func classify(op string, err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "AccessDenied", "AccessDeniedException", "RegionDisabledException", "ExpiredTokenException",
			"InvalidIdentityToken", "PackedPolicyTooLarge", "MalformedPolicyDocument":
			return fmt.Errorf("%w: %s: %w", broker.ErrProviderRefused, op, err)
		}
	}
	return fmt.Errorf("%s: %w", op, err)
}

// RevocationSupport implements broker.SessionRevoker: with AssumeRole
// the sessions carry the broker's tags and SourceIdentity; with the
// caller's token passed through they carry the token's.
func (p *Provider) RevocationSupport() broker.RevocationSupport {
	own := p.cfg.Mode != ModeWebIdentity
	return broker.RevocationSupport{Tags: own, SourceIdentity: own}
}

// PutRevocations implements broker.SessionRevoker: it puts the inline
// policy credmatrix-revocations on the role, denying every action to the
// sessions any match selects, or deletes it when there is no match. It
// acts in the role's account through aws.revoker_role_name when set.
func (p *Provider) PutRevocations(ctx context.Context, role broker.RoleRef, matches []broker.SessionMatch, dryRun bool) (broker.RevocationPolicy, error) {
	doc, cutoff, err := RevocationPolicy(matches, p.cfg.MaxRevocationPolicyBytes)
	if err != nil {
		return broker.RevocationPolicy{}, err
	}
	out := broker.RevocationPolicy{Document: doc, CompactedBefore: cutoff}
	if dryRun {
		return out, nil
	}
	creds := p.base.Credentials
	if p.cfg.RevokerRoleName != "" {
		region := p.base.Region
		if region == "" {
			region = "us-east-1"
		}
		creds = aws.NewCredentialsCache(stscreds.NewAssumeRoleProvider(p.client(region, "base"),
			fmt.Sprintf("arn:aws:iam::%s:role/%s", role.AccountID, p.cfg.RevokerRoleName), func(o *stscreds.AssumeRoleOptions) {
				o.RoleSessionName = "credmatrix-revoke"
			}))
	}
	client := p.newIAM(creds)
	name := roleName(role.ARN)
	pace := p.pacer(role.AccountID)
	if doc == "" {
		_, err = retry(ctx, p, "DeleteRolePolicy", func(cctx context.Context) (struct{}, error) {
			if err := pace.wait(cctx); err != nil {
				return struct{}{}, err
			}
			_, err := client.DeleteRolePolicy(cctx, &iam.DeleteRolePolicyInput{RoleName: aws.String(name), PolicyName: aws.String(RevocationPolicyName)})
			pace.observe(err)
			var ae smithy.APIError
			if errors.As(err, &ae) && ae.ErrorCode() == "NoSuchEntity" {
				return struct{}{}, nil // nothing to remove
			}
			return struct{}{}, err
		})
	} else {
		_, err = retry(ctx, p, "PutRolePolicy", func(cctx context.Context) (struct{}, error) {
			if err := pace.wait(cctx); err != nil {
				return struct{}{}, err
			}
			_, err := client.PutRolePolicy(cctx, &iam.PutRolePolicyInput{
				RoleName: aws.String(name), PolicyName: aws.String(RevocationPolicyName), PolicyDocument: aws.String(doc),
			})
			pace.observe(err)
			return struct{}{}, err
		})
	}
	if err != nil {
		return out, fmt.Errorf("revoke sessions of %s: %w", role.ARN, err)
	}
	return out, nil
}

// pacer returns the pacer of IAM calls in account.
func (p *Provider) pacer(account string) *pacer {
	p.pmu.Lock()
	defer p.pmu.Unlock()
	if p.pacers == nil {
		p.pacers = map[string]*pacer{}
	}
	pc := p.pacers[account]
	if pc == nil {
		pc = &pacer{rate: iamStartRate}
		p.pacers[account] = pc
	}
	return pc
}

// IAM throttles each account's calls; revocations that put policies on
// many roles at once (in parallel, see broker.Service) pace each
// account's calls to what IAM accepts: additive increase, multiplicative
// decrease, as AWS recommends for throttled clients.
const (
	iamStartRate = 20.0 // calls per second per account at first
	iamMinRate   = 1.0
	iamMaxRate   = 100.0
	iamRateStep  = 1.0 // added per accepted call
)

// pacer spaces the IAM calls of one account.
type pacer struct {
	mu   sync.Mutex
	rate float64   // calls per second
	next time.Time // earliest start of the next call
}

// wait blocks until the caller's turn, or ctx ends.
func (pc *pacer) wait(ctx context.Context) error {
	pc.mu.Lock()
	now := time.Now()
	at := pc.next
	if at.Before(now) {
		at = now
	}
	pc.next = at.Add(time.Duration(float64(time.Second) / pc.rate))
	pc.mu.Unlock()
	if d := time.Until(at); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// observe adapts the rate to a call's outcome.
func (pc *pacer) observe(err error) {
	var ae smithy.APIError
	throttled := errors.As(err, &ae) && throttleCodes[ae.ErrorCode()]
	pc.mu.Lock()
	defer pc.mu.Unlock()
	switch {
	case throttled:
		pc.rate = max(iamMinRate, pc.rate/2)
	case err == nil:
		pc.rate = min(iamMaxRate, pc.rate+iamRateStep)
	}
}

// roleName is the name of a role ARN (its path dropped).
func roleName(arn string) string {
	_, after, _ := strings.Cut(arn, ":role/")
	if i := strings.LastIndexByte(after, '/'); i >= 0 {
		return after[i+1:]
	}
	return after
}

// RevocationPolicy renders matches (oldest first) as the inline policy
// that revokes them: one Deny statement each, on aws:TokenIssueTime
// before the revocation (rounded up to the second, so a session issued
// in the revocation's second is covered), the session tags
// (aws:PrincipalTag/KEY) and the SourceIdentity. When the document would
// exceed maxBytes, the oldest statements are replaced by one denying
// every session issued before the newest of them, which is returned as
// the cutoff. No match gives "".
func RevocationPolicy(matches []broker.SessionMatch, maxBytes int) (string, time.Time, error) {
	if len(matches) == 0 {
		return "", time.Time{}, nil
	}
	stmts := make([]any, len(matches))
	for i, m := range matches {
		cond := map[string]map[string]string{
			"DateLessThan": {"aws:TokenIssueTime": ceilSecond(m.IssuedBefore).Format(time.RFC3339)},
		}
		eq := map[string]string{}
		if m.SourceIdentity != "" {
			eq["aws:SourceIdentity"] = m.SourceIdentity
		}
		for k, v := range m.Tags {
			eq["aws:PrincipalTag/"+k] = v
		}
		if len(eq) > 0 {
			cond["StringEquals"] = eq
		}
		stmts[i] = map[string]any{"Sid": sid(m.RevocationID), "Effect": "Deny", "Action": "*", "Resource": "*", "Condition": cond}
	}
	render := func(stmts []any) (string, error) {
		b, err := json.Marshal(map[string]any{"Version": "2012-10-17", "Statement": stmts})
		if err != nil {
			return "", fmt.Errorf("revocation policy: %w", err)
		}
		return string(b), nil
	}
	doc, err := render(stmts)
	if err != nil || len(doc) <= maxBytes {
		return doc, time.Time{}, err
	}
	// Compact the oldest k into one cutoff, dropping every later
	// statement the cutoff already covers, until the document fits.
	for k := 1; k <= len(matches); k++ {
		cutoff := matches[0].IssuedBefore
		for _, m := range matches[:k] {
			if m.IssuedBefore.After(cutoff) {
				cutoff = m.IssuedBefore
			}
		}
		cutoff = ceilSecond(cutoff)
		kept := []any{map[string]any{"Sid": "CredmatrixCompacted", "Effect": "Deny", "Action": "*", "Resource": "*",
			"Condition": map[string]map[string]string{"DateLessThan": {"aws:TokenIssueTime": cutoff.Format(time.RFC3339)}}}}
		for i, m := range matches[k:] {
			if ceilSecond(m.IssuedBefore).After(cutoff) {
				kept = append(kept, stmts[k+i])
			}
		}
		if doc, err = render(kept); err != nil || len(doc) <= maxBytes {
			return doc, cutoff, err
		}
	}
	return "", time.Time{}, fmt.Errorf("revocation policy: even one statement exceeds %d bytes", maxBytes)
}

// sid is a statement id for a revocation id: IAM allows only letters
// and digits.
func sid(id string) string {
	var b strings.Builder
	b.WriteString("Revocation")
	for _, r := range id {
		if r < 0x80 && (r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			b.WriteRune(r)
		}
	}
	return b.String()
}

func ceilSecond(t time.Time) time.Time {
	t = t.UTC()
	if c := t.Truncate(time.Second); !c.Equal(t) {
		return c.Add(time.Second)
	}
	return t
}
