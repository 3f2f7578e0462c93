package broker

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/broker/policy"
)

// Enforcement says how far a revocation reaches for one role.
type Enforcement int

const (
	// EnforcedInIAM: sessions already issued stop working too; the
	// role's IAM policy denies them on every selector.
	EnforcedInIAM Enforcement = iota + 1
	// IssuanceBlockedOnly: only further issuance is refused; sessions
	// already issued keep working until they expire.
	IssuanceBlockedOnly
)

// String names the enforcement.
func (e Enforcement) String() string {
	switch e {
	case EnforcedInIAM:
		return "enforced in IAM"
	case IssuanceBlockedOnly:
		return "issuance blocked only"
	default:
		return "unknown"
	}
}

// RoleRevocation reports a revocation's reach for one role.
type RoleRevocation struct {
	// Role is the role.
	Role RoleRef
	// Enforcement says how far the revocation reaches.
	Enforcement Enforcement
	// Reason says why the revocation is issuance-only, or qualifies the
	// IAM deny (a selector whose tag value differs from it, a
	// compaction).
	Reason string
	// Policy is the role's IAM policy as put (or as it would be put).
	Policy string
	// CompactedBefore is set when the role's revocations were compacted
	// into a deny of every session issued before it.
	CompactedBefore time.Time
}

// claimTag maps a claim selector to the session tag that carries the
// claim, if any.
func claimTag(claim string) (string, bool) {
	switch claim {
	case "sub":
		return TagSubject, true
	case "iss":
		return TagIssuer, true
	}
	return claim, slices.Contains(tagClaims, claim)
}

// planRevocation translates revocation r into what a deny on role can match: the
// SessionMatch, or why it cannot be expressed (then issuance alone is
// blocked), and notes on selectors whose tag value differs from them (a
// deny on such a tag also covers other values with that tag). It uses
// exactly the tags buildSpec sets: TagValue of the claims, overridden by
// the role's static session tags.
func planRevocation(r Revocation, role policy.Role, sup RevocationSupport) (m SessionMatch, blocked []string, notes []string) {
	m = SessionMatch{RevocationID: r.ID, IssuedBefore: r.IssuedBefore, Tags: map[string]string{}}
	if r.SessionID != "" {
		if sup.SourceIdentity {
			m.SourceIdentity = "cm-" + r.SessionID
		} else {
			blocked = append(blocked, "session_id: the provider's sessions carry no SourceIdentity of the broker's")
		}
	}
	tag := func(selector, key, value string) {
		_, static := role.SessionTags[key]
		switch {
		case !sup.Tags:
			blocked = append(blocked, selector+": the provider's sessions carry no session tags of the broker's (web-identity mode)")
		case static:
			blocked = append(blocked, fmt.Sprintf("%s: the role sets session tag %q itself", selector, key))
		case value == "":
			blocked = append(blocked, selector+": an empty value is never a session tag")
		default:
			tv := TagValue(value)
			if prev, dup := m.Tags[key]; dup && prev != tv {
				// Two selectors on one tag with different values: no
				// session matches both; deny nothing rather than guess.
				blocked = append(blocked, fmt.Sprintf("%s: contradicts another selector on tag %q", selector, key))
				return
			}
			m.Tags[key] = tv
			if tv != value {
				notes = append(notes, fmt.Sprintf("%s: the session tag holds %q (sanitised to AWS's tag characters and 256 bytes), so the deny also covers other values with that tag", selector, truncate(tv, 64)))
			}
		}
	}
	if r.Subject != "" {
		tag("subject", TagSubject, r.Subject)
	}
	if r.Issuer != "" {
		tag("issuer", TagIssuer, r.Issuer)
	}
	for _, k := range slices.Sorted(maps.Keys(r.Claims)) {
		key, ok := claimTag(k)
		if !ok {
			blocked = append(blocked, fmt.Sprintf("claims.%s: not carried by sessions (the session tags are sub, iss, %s)", truncate(k, 64), strings.Join(tagClaims, ", ")))
			continue
		}
		tag("claims."+truncate(k, 64), key, r.Claims[k])
	}
	return m, blocked, notes
}

// covers reports whether r selects role (by name and account).
func (r Revocation) covers(role policy.Role) bool {
	return (r.Role == "" || r.Role == role.Name) && (r.AccountID == "" || r.AccountID == role.AccountID)
}

// matchingRoles lists the policy's roles a revocation covers.
func (s *Service) matchingRoles(r Revocation) []policy.Role {
	var out []policy.Role
	for _, role := range s.Policy().Roles() {
		if r.covers(role) {
			out = append(out, role)
		}
	}
	return out
}

func roleRef(r policy.Role) RoleRef { return RoleRef{AccountID: r.AccountID, Name: r.Name, ARN: r.ARN} }

// maxEnforceRounds bounds how often a role's policy is rewritten when
// revocations made at other replicas keep arriving meanwhile.
const maxEnforceRounds = 4

// enforce plans r for every role it covers and, for the roles where it
// can be expressed, rewrites the role's IAM policy from every revocation
// in effect for it (so expired ones are pruned). With dryRun, r is not in
// the store: it is added to what would be put, and nothing is put.
func (s *Service) enforce(ctx context.Context, r Revocation, roles []policy.Role, now time.Time, dryRun bool) ([]RoleRevocation, int, error) {
	rv, hasIAM := s.provider.(SessionRevoker)
	out := make([]RoleRevocation, len(roles))
	var sup RevocationSupport
	if hasIAM {
		sup = rv.RevocationSupport()
	}
	for i, role := range roles {
		out[i] = RoleRevocation{Role: roleRef(role), Enforcement: IssuanceBlockedOnly}
		if !hasIAM {
			out[i].Reason = fmt.Sprintf("provider %s puts no IAM policy: sessions already issued keep working until they expire (GetSession reports them revoked)", s.provider.Name())
			continue
		}
		_, blocked, notes := planRevocation(r, role, sup)
		if len(blocked) > 0 {
			out[i].Reason = strings.Join(blocked, "; ")
			continue
		}
		out[i].Enforcement = EnforcedInIAM
		out[i].Reason = strings.Join(notes, "; ")
	}
	// Roles are written in parallel (the provider paces each account's
	// IAM calls), so a revocation covering many roles takes about as long
	// as the slowest account, not the sum of all.
	errs := make([]error, len(roles))
	sem := make(chan struct{}, maxParallelRoles)
	var wg sync.WaitGroup
	for i, role := range roles {
		if out[i].Enforcement != EnforcedInIAM {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			put, err := s.putRoleRevocations(ctx, rv, sup, role, r, now, dryRun)
			if err != nil {
				errs[i] = fmt.Errorf("role %s: %w", role.ARN, err)
				return
			}
			out[i].Policy = put.Document
			out[i].CompactedBefore = put.CompactedBefore
			if !put.CompactedBefore.IsZero() {
				note := fmt.Sprintf("older revocations compacted to fit IAM's size limit: every session of this role issued before %s is denied", put.CompactedBefore.UTC().Format(time.RFC3339))
				out[i].Reason = strings.TrimPrefix(out[i].Reason+"; "+note, "; ")
			}
		}()
	}
	wg.Wait()
	updated := 0
	var first error
	for i := range roles {
		switch {
		case errs[i] != nil && first == nil:
			first = errs[i]
		case errs[i] == nil && out[i].Enforcement == EnforcedInIAM:
			updated++
		}
	}
	return out, updated, first
}

// maxParallelRoles bounds the roles whose IAM policy one revocation writes
// at once.
const maxParallelRoles = 32

// putRoleRevocations rewrites role's IAM policy from the revocations in
// effect for it. Replicas revoking at once may each write: after
// writing, a replica reads the store again and rewrites while it finds
// revocations it did not write, so the last writer includes them all.
func (s *Service) putRoleRevocations(ctx context.Context, rv SessionRevoker, sup RevocationSupport, role policy.Role, extra Revocation, now time.Time, dryRun bool) (RevocationPolicy, error) {
	var put RevocationPolicy
	var wrote []string
	for range maxEnforceRounds {
		revs, err := s.store.Revocations(ctx, now)
		if err != nil {
			return put, err
		}
		if dryRun {
			revs = append(revs, extra)
		}
		matches := activeMatches(revs, role, sup, now)
		ids := make([]string, len(matches))
		for i, m := range matches {
			ids[i] = m.RevocationID
		}
		if wrote != nil && slices.Equal(ids, wrote) {
			return put, nil
		}
		if put, err = rv.PutRevocations(ctx, roleRef(role), matches, dryRun); err != nil {
			return put, err
		}
		if dryRun {
			return put, nil
		}
		wrote = ids
	}
	return put, fmt.Errorf("revocations kept changing while the role's policy was written (%d rounds)", maxEnforceRounds)
}

// activeMatches are the denies a role needs now: every revocation that
// covers it, can be expressed for it, and may still have live sessions
// (issued before it within the longest session). Older ones are pruned.
func activeMatches(revs []Revocation, role policy.Role, sup RevocationSupport, now time.Time) []SessionMatch {
	var out []SessionMatch
	for _, r := range revs {
		if !r.covers(role) || !r.IssuedBefore.After(now.Add(-MaxSessionDuration)) {
			continue
		}
		m, blocked, _ := planRevocation(r, role, sup)
		if len(blocked) == 0 {
			out = append(out, m)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].IssuedBefore.Before(out[j].IssuedBefore) })
	return out
}

// ListRevocations lists the revocations in effect and the frozen
// scopes, read from the store. Administrators only.
func (s *Service) ListRevocations(ctx context.Context, peer string) ([]Revocation, []string, error) {
	if err := s.requireAdmin(ctx, peer, auditv1.Kind_KIND_SESSION_REVOKE, "list revocations"); err != nil {
		return nil, nil, err
	}
	now := s.now()
	revs, err := s.store.Revocations(ctx, now)
	if err != nil {
		return nil, nil, s.stateUnavailable(ctx, err)
	}
	frozen, err := s.store.Freezes(ctx)
	if err != nil {
		return nil, nil, s.stateUnavailable(ctx, err)
	}
	return revs, frozen, nil
}
