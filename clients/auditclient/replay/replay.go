// Package replay reconstructs state from audit events: which sessions were
// live at a time T (for a subject, account or role), a subject's timeline,
// every key operation for a data class and region, and the grants in
// force at T. It reads events in log order, once, and answers from
// in-memory indexes, so an investigator can ask many questions of one
// verified export.
//
// The rules it applies are the broker's and keyguard's: a session is live
// from its issue time until its expiration unless a revocation recorded
// before T matches it (by session id, subject, issuer, role, account and
// claims, every given field matching) and it was issued before the
// revocation's issued_before; a grant is in force from its creation until
// it is revoked or expires; a static grant (keyguard's key-ring file,
// recorded at each start) is in force from the first load that has it
// until a later load does not.
package replay

import (
	"maps"
	"slices"
	"time"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// Session is one issued session, as its KIND_SESSION_ISSUE event
// recorded it (fields named as in SessionDetail and Actor).
type Session struct {
	// Log names the audit log the event came from when several were
	// replayed together (ApplyIn): a residency zone, or "global".
	Log         string    `json:"log,omitempty"`
	Sequence    uint64    `json:"sequence"`
	SessionID   string    `json:"session_id"`
	Principal   string    `json:"principal"`
	Subject     string    `json:"subject"`
	Issuer      string    `json:"issuer,omitempty"`
	AccountID   string    `json:"account_id"`
	AccountName string    `json:"account_name,omitempty"`
	RoleName    string    `json:"role_name"`
	Region      string    `json:"region,omitempty"`
	AccessKeyID string    `json:"access_key_id,omitempty"`
	Issued      time.Time `json:"issued"`
	Expires     time.Time `json:"expires"`
	// RevokedAt is when a revocation ended it, if one did (zero if not).
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	// RevokedBy is the sequence of that revocation.
	RevokedBy uint64 `json:"revoked_by,omitempty"`

	claims map[string]string
}

// Grant is one keyguard grant, from its KIND_GRANT_CREATE event (fields
// named as in KeyDetail), with the time a KIND_GRANT_REVOKE ended it.
type Grant struct {
	Log        string            `json:"log,omitempty"` // as Session.Log
	Sequence   uint64            `json:"sequence"`
	GrantID    string            `json:"grant_id"`
	Grantee    string            `json:"grantee"`
	DataClass  string            `json:"data_class"`
	Regions    []string          `json:"regions,omitempty"`
	Operations []string          `json:"operations,omitempty"`
	Context    map[string]string `json:"required_context,omitempty"`
	Created    time.Time         `json:"created"`
	Expires    time.Time         `json:"expires,omitzero"`
	RevokedAt  time.Time         `json:"revoked_at,omitzero"`
	// Static grants come from keyguard's key-ring file (recorded at each
	// start), not from the API; a later load without one ends it.
	Static bool `json:"static,omitempty"`
}

// Entry is one event in a timeline or a key-operation list: its position,
// producer time, kind, decision, actor subject and a one-line summary.
type Entry struct {
	Log      string    `json:"log,omitempty"` // as Session.Log
	Sequence uint64    `json:"sequence"`
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"`
	Decision string    `json:"decision"`
	Subject  string    `json:"subject,omitempty"`
	Summary  string    `json:"summary"`
}

type revocation struct {
	seq                                             uint64
	at, issuedBefore                                time.Time
	sessionID, subject, issuer, roleName, accountID string
	claims                                          map[string]string
}

// Replayer holds the reconstructed state. Feed it every event in log order
// with Apply, then ask.
type Replayer struct {
	sessions    []Session
	revocations []revocation
	grants      []Grant
	grantByID   map[string]int
	loads       map[string]*staticLoad // static-grant loads not yet complete
	events      []item
	logs        []string         // the log of each event (ApplyIn)
	bySubject   map[string][]int // subject or principal -> indexes into events
	keyOps      []int
}

// New returns an empty Replayer.
func New() *Replayer {
	return &Replayer{grantByID: map[string]int{}, bySubject: map[string][]int{}, loads: map[string]*staticLoad{}}
}

// Apply adds one event. Events must come in sequence order.
func (r *Replayer) Apply(e *auditv1.Event) { r.ApplyIn("", e) }

// ApplyIn adds one event of the audit log named log, when the logs of
// several residency zones are replayed together: every answer built from
// the event names its log. Each log's events must come in its sequence
// order; events of different logs are interleaved by time, so that what
// one log records (a revocation, a static-grant load recorded across
// zones) applies to what another recorded before it.
func (r *Replayer) ApplyIn(log string, e *auditv1.Event) {
	i := len(r.events)
	r.events = append(r.events, item{decoded: e})
	r.logs = append(r.logs, log)
	a := e.GetActor()
	r.index(i, a.GetSubject(), a.GetPrincipal(), e.GetKind())
	t := e.GetTime().AsTime()
	allowed := e.GetDecision() == auditv1.Decision_DECISION_ALLOW
	switch k := e.GetKind(); {
	case k == auditv1.Kind_KIND_SESSION_ISSUE && allowed:
		s := e.GetSession()
		r.sessions = append(r.sessions, Session{
			Log: log, Sequence: e.GetSequence(), SessionID: s.GetSessionId(), Principal: a.GetPrincipal(), Subject: a.GetSubject(),
			Issuer: a.GetIssuer(), AccountID: s.GetAccountId(), AccountName: s.GetAccountName(), RoleName: s.GetRoleName(),
			Region: s.GetRegion(), AccessKeyID: s.GetAccessKeyId(), Issued: t, Expires: s.GetExpiration().AsTime(),
			claims: a.GetClaims(),
		})
	case k == auditv1.Kind_KIND_SESSION_REVOKE && allowed:
		d := e.GetAdmin()
		rv := revocation{
			seq: e.GetSequence(), at: t, issuedBefore: t,
			sessionID: d.GetSessionId(), subject: d.GetSubject(), issuer: d.GetIssuer(),
			roleName: d.GetRoleName(), accountID: d.GetAccountId(), claims: d.GetClaims(),
		}
		if d.GetIssuedBefore() != nil {
			rv.issuedBefore = d.GetIssuedBefore().AsTime()
		}
		r.revocations = append(r.revocations, rv)
		for j := range r.sessions {
			s := &r.sessions[j]
			if s.RevokedAt.IsZero() && s.Issued.Before(rv.issuedBefore) && rv.matches(s) && s.Expires.After(t) {
				s.RevokedAt, s.RevokedBy = t, rv.seq
			}
		}
	case (k == auditv1.Kind_KIND_GRANT_CREATE || k == auditv1.Kind_KIND_GRANT_REVOKE) && allowed && e.GetKey().GetOperation() == StaticGrantOperation:
		r.applyStatic(log, e)
	case k == auditv1.Kind_KIND_GRANT_CREATE && allowed:
		d := e.GetKey()
		g := Grant{
			Log: log, Sequence: e.GetSequence(), GrantID: d.GetGrantId(), Grantee: d.GetGrantee(), DataClass: d.GetDataClass(),
			Regions: d.GetGrantRegions(), Operations: d.GetGrantOperations(), Context: d.GetGrantRequiredContext(), Created: t,
		}
		if d.GetGrantExpireTime() != nil {
			g.Expires = d.GetGrantExpireTime().AsTime()
		}
		r.grantByID[g.GrantID] = len(r.grants)
		r.grants = append(r.grants, g)
	case k == auditv1.Kind_KIND_GRANT_REVOKE && allowed:
		if j, ok := r.grantByID[e.GetKey().GetGrantId()]; ok && r.grants[j].RevokedAt.IsZero() {
			r.grants[j].RevokedAt = t
		}
	}
}

// index adds event i to the timeline of its actor and, for a key
// operation, to the key operations.
func (r *Replayer) index(i int, subject, principal string, k auditv1.Kind) {
	for _, s := range uniq(subject, principal) {
		r.bySubject[s] = append(r.bySubject[s], i)
	}
	if k >= auditv1.Kind_KIND_KEY_ENCRYPT && k <= auditv1.Kind_KIND_KEY_ROTATE {
		r.keyOps = append(r.keyOps, i)
	}
}

// StaticGrantOperation marks the events that record keyguard's static
// grants (KeyDetail.operation).
const StaticGrantOperation = "static-grant"

// staticLoad is one recording of the key-ring file's static grants,
// complete once it holds want grants.
type staticLoad struct {
	at     time.Time
	want   int
	grants []Grant
}

// applyStatic adds one event of a static-grant load; a complete load
// replaces the static grants in force: identical ones stay as they were
// (created at their first load), others end at this load and the new ones
// start.
func (r *Replayer) applyStatic(log string, e *auditv1.Event) {
	d := e.GetKey()
	id := d.GetStaticLoad()
	l := r.loads[id]
	if l == nil {
		l = &staticLoad{at: e.GetTime().AsTime(), want: int(d.GetItemCount())}
		r.loads[id] = l
	}
	if e.GetKind() == auditv1.Kind_KIND_GRANT_CREATE {
		g := Grant{
			Log: log, Sequence: e.GetSequence(), GrantID: d.GetGrantId(), Grantee: d.GetGrantee(), DataClass: d.GetDataClass(),
			Regions: d.GetGrantRegions(), Operations: d.GetGrantOperations(), Context: d.GetGrantRequiredContext(),
			Created: l.at, Static: true,
		}
		if d.GetGrantExpireTime() != nil {
			g.Expires = d.GetGrantExpireTime().AsTime()
		}
		l.grants = append(l.grants, g)
	}
	if len(l.grants) < l.want {
		return
	}
	delete(r.loads, id)
	kept := map[string]bool{}
	for j := range r.grants {
		old := &r.grants[j]
		if !old.Static || !old.RevokedAt.IsZero() {
			continue
		}
		same := false
		for _, g := range l.grants {
			if sameGrant(*old, g) {
				same = true
			}
		}
		if same {
			kept[old.GrantID] = true
		} else {
			old.RevokedAt = l.at
		}
	}
	for _, g := range l.grants {
		if kept[g.GrantID] {
			continue
		}
		r.grantByID[g.GrantID] = len(r.grants)
		r.grants = append(r.grants, g)
	}
}

// sameGrant reports whether two grants say the same (their sequence and
// times aside).
func sameGrant(a, b Grant) bool {
	return a.GrantID == b.GrantID && a.Grantee == b.Grantee && a.DataClass == b.DataClass &&
		slices.Equal(a.Regions, b.Regions) && slices.Equal(a.Operations, b.Operations) &&
		maps.Equal(a.Context, b.Context) && a.Expires.Equal(b.Expires)
}

func (rv revocation) matches(s *Session) bool {
	switch {
	case rv.sessionID != "" && rv.sessionID != s.SessionID,
		rv.subject != "" && rv.subject != s.Subject && rv.subject != s.Principal,
		rv.issuer != "" && rv.issuer != s.Issuer,
		rv.roleName != "" && rv.roleName != s.RoleName,
		rv.accountID != "" && rv.accountID != s.AccountID:
		return false
	}
	for k, v := range rv.claims {
		if s.claims[k] != v {
			return false
		}
	}
	return true
}

// SessionFilter narrows SessionsAt; empty fields match anything.
type SessionFilter struct {
	Subject, AccountID, RoleName string
}

// SessionsAt returns the sessions live at t (issued at or before t, not
// expired, not revoked by then) that match f, in issue order.
func (r *Replayer) SessionsAt(t time.Time, f SessionFilter) []Session {
	var out []Session
	for _, s := range r.sessions {
		switch {
		case s.Issued.After(t), !s.Expires.After(t),
			!s.RevokedAt.IsZero() && !s.RevokedAt.After(t),
			f.Subject != "" && f.Subject != s.Subject && f.Subject != s.Principal,
			f.AccountID != "" && f.AccountID != s.AccountID && f.AccountID != s.AccountName,
			f.RoleName != "" && f.RoleName != s.RoleName:
			continue
		}
		out = append(out, s)
	}
	return out
}

// Timeline returns every event whose actor subject or principal is
// subject, in log order.
func (r *Replayer) Timeline(subject string) []Entry {
	var out []Entry
	for _, i := range r.bySubject[subject] {
		out = append(out, r.entry(i, r.events[i].event()))
	}
	return out
}

// KeyOps returns the key operations (encrypt, decrypt, generate data key,
// rewrap, rotate) on dataClass in region (empty: any) with from <= time <
// to (zero: unbounded), in log order.
func (r *Replayer) KeyOps(dataClass, region string, from, to time.Time) []Entry {
	var out []Entry
	for _, i := range r.keyOps {
		e := r.events[i].event()
		k := e.GetKey()
		t := e.GetTime().AsTime()
		switch {
		case dataClass != "" && k.GetDataClass() != dataClass,
			region != "" && k.GetRegion() != region,
			!from.IsZero() && t.Before(from),
			!to.IsZero() && !t.Before(to):
			continue
		}
		out = append(out, r.entry(i, e))
	}
	return out
}

// GrantsAt returns the grants in force at t (created at or before t, not
// revoked or expired by then), optionally only for dataClass.
func (r *Replayer) GrantsAt(t time.Time, dataClass string) []Grant {
	var out []Grant
	for _, g := range r.grants {
		switch {
		case g.Created.After(t),
			!g.RevokedAt.IsZero() && !g.RevokedAt.After(t),
			!g.Expires.IsZero() && !g.Expires.After(t),
			dataClass != "" && g.DataClass != dataClass:
			continue
		}
		g.Regions, g.Operations, g.Context = slices.Clone(g.Regions), slices.Clone(g.Operations), maps.Clone(g.Context)
		out = append(out, g)
	}
	return out
}

// Events is the number of events applied.
func (r *Replayer) Events() int { return len(r.events) }

func (r *Replayer) entry(i int, e *auditv1.Event) Entry {
	return Entry{
		Log: r.logs[i], Sequence: e.GetSequence(), Time: e.GetTime().AsTime(), Kind: ShortKind(e.GetKind()),
		Decision: ShortDecision(e.GetDecision()), Subject: e.GetActor().GetSubject(), Summary: Summary(e),
	}
}

func uniq(a, b string) []string {
	switch {
	case a == "" && b == "":
		return nil
	case a == "" || a == b:
		return []string{b}
	case b == "":
		return []string{a}
	}
	return []string{a, b}
}
