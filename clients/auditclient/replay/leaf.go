package replay

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// Leaf is one event as its leaf bytes (the serialised event a verified
// log holds) with the few fields replay needs of every event, read
// without decoding the rest. Most events (key operations, denials) change
// no state replay keeps: ApplyLeaf indexes them from these fields and
// decodes them only when an answer includes them, so replaying a log
// costs little more than reading it.
type Leaf struct {
	Data      []byte
	Sequence  uint64
	Time      time.Time
	Kind      auditv1.Kind
	Decision  auditv1.Decision
	Subject   string // actor.subject
	Principal string // actor.principal
}

// Field numbers ReadLeaf reads (audit.proto's Event, Actor, Timestamp).
const (
	fieldSequence  = 1
	fieldTime      = 3
	fieldKind      = 5
	fieldDecision  = 6
	fieldActor     = 9
	actorPrincipal = 1
	actorSubject   = 3
	tsSeconds      = 1
	tsNanos        = 2
)

var errLeaf = errors.New("the event does not decode")

// ReadLeaf reads the fields of Leaf from the leaf bytes data (which Leaf
// keeps, not copies).
func ReadLeaf(data []byte) (Leaf, error) {
	l := Leaf{Data: data}
	var secs, nanos int64
	err := walk(data, func(num protowire.Number, typ protowire.Type, v uint64, b []byte) error {
		switch {
		case num == fieldSequence && typ == protowire.VarintType:
			l.Sequence = v
		case num == fieldKind && typ == protowire.VarintType:
			l.Kind = auditv1.Kind(int32(v))
		case num == fieldDecision && typ == protowire.VarintType:
			l.Decision = auditv1.Decision(int32(v))
		case num == fieldTime && typ == protowire.BytesType:
			// Repeated message fields merge, as proto.Unmarshal does.
			return walk(b, func(num protowire.Number, typ protowire.Type, v uint64, _ []byte) error {
				switch {
				case num == tsSeconds && typ == protowire.VarintType:
					secs = int64(v)
				case num == tsNanos && typ == protowire.VarintType:
					nanos = int64(int32(v))
				}
				return nil
			})
		case num == fieldActor && typ == protowire.BytesType:
			return walk(b, func(num protowire.Number, typ protowire.Type, _ uint64, s []byte) error {
				switch {
				case num == actorPrincipal && typ == protowire.BytesType:
					l.Principal = string(s)
				case num == actorSubject && typ == protowire.BytesType:
					l.Subject = string(s)
				default:
					return nil
				}
				if !utf8.Valid(s) {
					return errLeaf
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return Leaf{}, fmt.Errorf("sequence %d: %w", l.Sequence, err)
	}
	l.Time = time.Unix(secs, nanos).UTC()
	return l, nil
}

// walk calls f with every field of the wire-format message data: its
// value for varints, its bytes for length-delimited fields.
func walk(data []byte, f func(num protowire.Number, typ protowire.Type, v uint64, b []byte) error) error {
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return errLeaf
		}
		data = data[n:]
		var v uint64
		var b []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(data)
		case protowire.BytesType:
			b, n = protowire.ConsumeBytes(data)
		default:
			n = protowire.ConsumeFieldValue(num, typ, data)
		}
		if n < 0 {
			return errLeaf
		}
		data = data[n:]
		if err := f(num, typ, v, b); err != nil {
			return err
		}
	}
	return nil
}

// More field numbers readSession reads (Event, Actor, SessionDetail).
const (
	fieldSession    = 20
	fieldKey        = 21
	fieldPolicy     = 22
	fieldAdmin      = 23
	actorIssuer     = 2
	actorClaims     = 4
	sessAccountID   = 1
	sessAccountName = 2
	sessRoleName    = 3
	sessRegion      = 5
	sessSessionID   = 8
	sessAccessKeyID = 9
	sessExpiration  = 10
	mapEntryKey     = 1
	mapEntryValue   = 2
)

// readSession reads from an allowed KIND_SESSION_ISSUE leaf the Session
// Apply would record, without decoding the rest of the event.
func readSession(log string, l Leaf) (Session, error) {
	s := Session{Log: log, Sequence: l.Sequence, Principal: l.Principal, Subject: l.Subject, Issued: l.Time}
	var expSecs, expNanos int64
	str := func(dst *string, b []byte) error {
		if !utf8.Valid(b) {
			return errLeaf
		}
		*dst = string(b)
		return nil
	}
	err := walk(l.Data, func(num protowire.Number, typ protowire.Type, _ uint64, b []byte) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fieldActor:
			return walk(b, func(num protowire.Number, typ protowire.Type, _ uint64, b []byte) error {
				switch {
				case typ != protowire.BytesType:
				case num == actorIssuer:
					return str(&s.Issuer, b)
				case num == actorClaims:
					var k, v string
					err := walk(b, func(num protowire.Number, typ protowire.Type, _ uint64, b []byte) error {
						switch {
						case typ != protowire.BytesType:
						case num == mapEntryKey:
							return str(&k, b)
						case num == mapEntryValue:
							return str(&v, b)
						}
						return nil
					})
					if err != nil {
						return err
					}
					if s.claims == nil {
						s.claims = map[string]string{}
					}
					s.claims[k] = v
				}
				return nil
			})
		case fieldKey, fieldPolicy, fieldAdmin:
			// Another member of the detail oneof replaces the session.
			s = Session{Log: log, Sequence: s.Sequence, Principal: s.Principal, Subject: s.Subject, Issuer: s.Issuer, Issued: s.Issued, claims: s.claims}
			expSecs, expNanos = 0, 0
		case fieldSession:
			return walk(b, func(num protowire.Number, typ protowire.Type, _ uint64, b []byte) error {
				if typ != protowire.BytesType {
					return nil
				}
				switch num {
				case sessAccountID:
					return str(&s.AccountID, b)
				case sessAccountName:
					return str(&s.AccountName, b)
				case sessRoleName:
					return str(&s.RoleName, b)
				case sessRegion:
					return str(&s.Region, b)
				case sessSessionID:
					return str(&s.SessionID, b)
				case sessAccessKeyID:
					return str(&s.AccessKeyID, b)
				case sessExpiration:
					return walk(b, func(num protowire.Number, typ protowire.Type, v uint64, _ []byte) error {
						switch {
						case num == tsSeconds && typ == protowire.VarintType:
							expSecs = int64(v)
						case num == tsNanos && typ == protowire.VarintType:
							expNanos = int64(int32(v))
						}
						return nil
					})
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return Session{}, fmt.Errorf("sequence %d: %w", l.Sequence, err)
	}
	s.Expires = time.Unix(expSecs, expNanos).UTC()
	return s, nil
}

// changesState reports whether replay keeps state from an event of kind
// and decision (sessions, revocations, grants): those are decoded whole.
func changesState(k auditv1.Kind, d auditv1.Decision) bool {
	if d != auditv1.Decision_DECISION_ALLOW {
		return false
	}
	switch k {
	case auditv1.Kind_KIND_SESSION_ISSUE, auditv1.Kind_KIND_SESSION_REVOKE, auditv1.Kind_KIND_GRANT_CREATE, auditv1.Kind_KIND_GRANT_REVOKE:
		return true
	}
	return false
}

// ApplyLeaf adds one event given as a Leaf (see ReadLeaf), exactly as
// Apply would add it decoded.
func (r *Replayer) ApplyLeaf(l Leaf) error { return r.ApplyLeafIn("", l) }

// ApplyLeafIn is ApplyIn for an event given as a Leaf. An issued session
// is read from the leaf's session and actor fields; a revocation or a
// grant event is decoded whole; every event is kept as its bytes and
// decoded again only when an answer (Timeline, KeyOps) includes it. A
// leaf that does not decode where replay reads it is an error.
func (r *Replayer) ApplyLeafIn(log string, l Leaf) error {
	if l.Kind == auditv1.Kind_KIND_SESSION_ISSUE && l.Decision == auditv1.Decision_DECISION_ALLOW {
		// The commonest state change: read the session from the leaf.
		s, err := readSession(log, l)
		if err != nil {
			return err
		}
		r.sessions = append(r.sessions, s)
	} else if changesState(l.Kind, l.Decision) {
		e := new(auditv1.Event)
		if err := proto.Unmarshal(l.Data, e); err != nil {
			return fmt.Errorf("sequence %d: %w", l.Sequence, errLeaf)
		}
		r.ApplyIn(log, e)
		return nil
	}
	i := len(r.events)
	r.events = append(r.events, item{leaf: l.Data})
	r.logs = append(r.logs, log)
	r.index(i, l.Subject, l.Principal, l.Kind)
	return nil
}

// item is one applied event: decoded, or its leaf bytes (decoded when
// needed).
type item struct {
	decoded *auditv1.Event
	leaf    []byte
}

// event returns the decoded event of it. Leaves come from a verified log
// and were read by ReadLeaf; one that does not decode yields an empty
// event rather than a guess.
func (it item) event() *auditv1.Event {
	if it.decoded != nil {
		return it.decoded
	}
	e := new(auditv1.Event)
	if err := proto.Unmarshal(it.leaf, e); err != nil {
		return &auditv1.Event{}
	}
	return e
}
