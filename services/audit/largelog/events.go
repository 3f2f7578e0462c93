// Package largelog makes large audit logs for measurement: realistic
// events (the mix the broker and keyguard produce), bulk-loaded through a
// real store with a real Merkle tree (tiles) and signed checkpoints, fast
// enough to build 10 million events by hand and a small log in CI.
package largelog

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// Start is the producer time of event 0; event i is about i milliseconds
// later.
var Start = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

// Generator makes a deterministic stream of realistic events: the same
// seed gives the same events, so a log can be rebuilt and compared.
type Generator struct {
	rng *rand.Rand
}

// NewGenerator returns a Generator seeded with seed.
func NewGenerator(seed uint64) *Generator {
	return &Generator{rng: rand.New(rand.NewPCG(seed, 0x6c61726765))}
}

const (
	apps     = 200  // keyguard callers
	repos    = 1000 // CI repositories
	accounts = 60
)

var (
	dataClasses = []string{"public", "internal", "confidential", "restricted"}
	regions     = []string{"eu-west-1", "eu-central-1", "us-east-1", "ap-southeast-2"}
	roles       = []string{"deploy", "read-only", "terraform-plan", "terraform-apply", "migrate"}
	denials     = []string{"denied by guardrail no-prod-from-pull-request", "no rule allows this role", "account is frozen", "token expired", "denied: no grant for this data class in this region"}
	source      = map[bool]string{true: "spiffe://credmatrix.dev/broker", false: "spiffe://credmatrix.dev/keyguard"}
)

// Event returns event seq of the stream, sequence and recorded_time set as
// the audit service sets them.
func (g *Generator) Event(seq uint64) *auditv1.Event {
	r := g.rng
	t := Start.Add(time.Duration(seq)*time.Millisecond + time.Duration(r.IntN(1000))*time.Microsecond)
	e := &auditv1.Event{
		Sequence:     seq,
		Id:           g.uuid(),
		Time:         timestamppb.New(t),
		RecordedTime: timestamppb.New(t.Add(time.Duration(1+r.IntN(5)) * time.Millisecond)),
		TraceId:      g.hex(16),
		SpanId:       g.hex(8),
	}
	switch p := r.IntN(100); {
	case p < 45:
		g.keyEvent(e)
	case p < 85:
		g.sessionEvent(e, auditv1.Decision_DECISION_ALLOW)
	case p < 95:
		g.sessionEvent(e, auditv1.Decision_DECISION_DENY)
	default:
		g.adminEvent(e)
	}
	return e
}

func (g *Generator) keyEvent(e *auditv1.Event) {
	r := g.rng
	app := r.IntN(apps)
	e.Kind = []auditv1.Kind{auditv1.Kind_KIND_KEY_ENCRYPT, auditv1.Kind_KIND_KEY_DECRYPT, auditv1.Kind_KIND_KEY_GENERATE_DATA_KEY}[r.IntN(3)]
	e.Decision = auditv1.Decision_DECISION_ALLOW
	e.SourceService = source[false]
	e.Actor = &auditv1.Actor{Principal: fmt.Sprintf("spiffe://credmatrix.dev/app/service-%03d", app)}
	class := dataClasses[app%len(dataClasses)]
	grant := fmt.Sprintf("grant-%03d-%s", app, class)
	e.Rule = grant
	if r.IntN(50) == 0 {
		e.Decision = auditv1.Decision_DECISION_DENY
		e.Reason = denials[4]
		grant = ""
		e.Rule = ""
	}
	e.Detail = &auditv1.Event_Key{Key: &auditv1.KeyDetail{
		DataClass:         class,
		Region:            regions[app%len(regions)],
		KeyVersion:        uint32(1 + r.IntN(4)),
		GrantId:           grant,
		EncryptionContext: map[string]string{"tenant": "tenant-" + strconv.Itoa(r.IntN(5000)), "purpose": []string{"invoice", "profile", "payment", "export"}[r.IntN(4)]},
		PlaintextBytes:    uint64(64 + r.IntN(4096)),
		Backend:           "awskms",
	}}
}

func (g *Generator) sessionEvent(e *auditv1.Event, d auditv1.Decision) {
	r := g.rng
	repo := r.IntN(repos)
	acct := r.IntN(accounts)
	ref := []string{"refs/heads/main", "refs/heads/release", "refs/pull/" + strconv.Itoa(1+r.IntN(9000)) + "/merge"}[r.IntN(3)]
	sub := fmt.Sprintf("repo:acme/service-%04d:ref:%s", repo, ref)
	issuer := "https://token.actions.githubusercontent.com"
	e.Kind = auditv1.Kind_KIND_SESSION_ISSUE
	e.Decision = d
	e.SourceService = source[true]
	e.Actor = &auditv1.Actor{
		Principal: issuer + "#" + sub,
		Issuer:    issuer,
		Subject:   sub,
		Claims: map[string]string{
			"repository": fmt.Sprintf("acme/service-%04d", repo),
			"ref":        ref,
			"run_id":     strconv.Itoa(1_000_000 + r.IntN(9_000_000)),
			"sha":        g.hex(20),
			"workflow":   "deploy",
		},
	}
	role := roles[r.IntN(len(roles))]
	id := fmt.Sprintf("%012d", 100000000000+acct*7919)
	s := &auditv1.SessionDetail{
		AccountId:   id,
		AccountName: "acct-" + strconv.Itoa(acct),
		RoleName:    role,
		RoleArn:     "arn:aws:iam::" + id + ":role/" + role,
		Region:      regions[acct%len(regions)],
		Residency:   []string{"eu", "us", "apac"}[acct%3],
		OuPath:      "/root/workloads/" + []string{"prod", "staging", "sandbox"}[acct%3],
		Provider:    "aws",
	}
	e.SecretRefs = []*auditv1.SecretRef{{Name: "oidc_token", HmacSha256: g.bytes(32), KeyId: "hmac-2026-06"}}
	if d == auditv1.Decision_DECISION_ALLOW {
		e.Rule = "ci-" + role
		e.Reason = "allowed by rule ci-" + role
		sid := g.hex(8)
		s.SessionName = fmt.Sprintf("gha-service-%04d-%s", repo, sid[:6])
		s.SourceIdentity = "credmatrix-" + sid
		s.SessionId = "s-" + sid
		s.AccessKeyId = "ASIA" + g.upper(16)
		s.Expiration = timestamppb.New(e.GetTime().AsTime().Add(time.Hour))
		s.Duration = durationpb.New(time.Hour)
		s.SessionTags = map[string]string{"repository": fmt.Sprintf("acme/service-%04d", repo), "ref": ref}
		s.SessionPolicySha256 = g.hex(32)
		e.SecretRefs = append(e.SecretRefs, &auditv1.SecretRef{Name: "session_token", HmacSha256: g.bytes(32), KeyId: "hmac-2026-06"})
	} else {
		e.Reason = denials[r.IntN(4)]
	}
	e.Detail = &auditv1.Event_Session{Session: s}
}

func (g *Generator) adminEvent(e *auditv1.Event) {
	r := g.rng
	e.Kind = []auditv1.Kind{auditv1.Kind_KIND_POLICY_RELOAD, auditv1.Kind_KIND_SESSION_REVOKE, auditv1.Kind_KIND_KEY_ROTATE}[r.IntN(3)]
	e.Decision = auditv1.Decision_DECISION_ALLOW
	e.SourceService = source[e.Kind != auditv1.Kind_KIND_KEY_ROTATE]
	e.Actor = &auditv1.Actor{Principal: "spiffe://credmatrix.dev/operator/oncall-" + strconv.Itoa(r.IntN(20))}
	switch e.Kind {
	case auditv1.Kind_KIND_POLICY_RELOAD:
		e.Detail = &auditv1.Event_Policy{Policy: &auditv1.PolicyDetail{Sha256: g.hex(32), Source: "/etc/credmatrix/policy.yaml", RuleCount: uint32(40 + r.IntN(20))}}
	case auditv1.Kind_KIND_SESSION_REVOKE:
		e.Detail = &auditv1.Event_Admin{Admin: &auditv1.AdminDetail{AccountId: fmt.Sprintf("%012d", 100000000000+r.IntN(accounts)*7919), RoleName: roles[r.IntN(len(roles))], Action: "revoke sessions", RevocationId: "rev-" + g.hex(8), IssuedBefore: e.GetTime()}}
	default:
		e.Detail = &auditv1.Event_Key{Key: &auditv1.KeyDetail{DataClass: dataClasses[r.IntN(4)], Region: regions[r.IntN(4)], KeyVersion: uint32(2 + r.IntN(5)), Backend: "awskms", Operation: "rotate"}}
	}
}

func (g *Generator) bytes(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], g.rng.Uint64())
		copy(b[i:], w[:])
	}
	return b
}

const hexDigits = "0123456789abcdef"

func (g *Generator) hex(n int) string {
	b := g.bytes(n)
	out := make([]byte, 2*n)
	for i, c := range b {
		out[2*i], out[2*i+1] = hexDigits[c>>4], hexDigits[c&15]
	}
	return string(out)
}

func (g *Generator) upper(n int) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
	out := make([]byte, n)
	for i := range out {
		out[i] = alphabet[g.rng.IntN(len(alphabet))]
	}
	return string(out)
}

func (g *Generator) uuid() string {
	b := g.bytes(16)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
