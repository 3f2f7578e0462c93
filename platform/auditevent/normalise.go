package auditevent

import (
	"fmt"
	"slices"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// SecretHasher names a secret by a keyed HMAC of it; *Hasher is one.
type SecretHasher interface {
	Ref(name string, secret []byte) *auditv1.SecretRef
}

// Limits Normalise applies to the text of an event.
const (
	// MaxTextBytes bounds one string field, list element or map value.
	MaxTextBytes = 1024
	// MaxLongTextBytes bounds the free-text fields that explain a
	// decision: Event.reason and PolicyDetail.error.
	MaxLongTextBytes = 4096
	// MaxKeyBytes bounds one map key.
	MaxKeyBytes = 256
	// MaxTextSecretRefs bounds the SecretRefs Normalise adds to one
	// event; further secret-shaped values are replaced by a marker only.
	MaxTextSecretRefs = 32
	// EventBudget is the serialised size Normalise keeps an event within:
	// the audit service's 64 KiB limit less room for the fields it sets
	// itself (sequence, recorded_time, source_service).
	EventBudget = 64<<10 - 1024
)

// Markers Normalise writes. They are plain ASCII apart from the ellipsis
// and can never look like a secret.
const (
	// TruncatedMarker ends a shortened string; %d is the number of bytes
	// of the original that are not recorded.
	TruncatedMarker = "…[truncated %d bytes]"
	// SecretMarker stands for a secret-shaped value; %d is the index of
	// its SecretRef in the event's secret_refs.
	SecretMarker = "[secret: secret_refs[%d]]"
	// SecretOverflowMarker stands for a secret-shaped value beyond
	// MaxTextSecretRefs: not recorded at all, not even as an HMAC.
	SecretOverflowMarker = "[secret: not referenced, too many in one event]"
	// MoreEntriesMarker replaces the entries of an oversized map or list
	// when even the smallest text limits leave the event too large.
	MoreEntriesMarker = "[%d more entries not recorded]"
)

// Fields Normalise leaves alone: the producer sets them itself and the
// audit service checks them (ids, trace context), or a Hasher made them.
// Descriptors are compared, not names: this runs for every field.
var (
	eventFields = (&auditv1.Event{}).ProtoReflect().Descriptor().Fields()
	idField     = eventFields.ByName("id")
	traceField  = eventFields.ByName("trace_id")
	spanField   = eventFields.ByName("span_id")
	refsField   = eventFields.ByName("secret_refs")
	// The fields allowed MaxLongTextBytes.
	reasonField      = eventFields.ByName("reason")
	policyErrorField = (&auditv1.PolicyDetail{}).ProtoReflect().Descriptor().Fields().ByName("error")
)

func untouched(fd protoreflect.FieldDescriptor) bool {
	return fd == idField || fd == traceField || fd == spanField || fd == refsField
}

// Normalise makes every string of ev recordable whatever a caller put in
// it, so that no request can make its own event, or the events batched
// with it, unrecordable. For each string field, list element, map key and
// map value at any depth (except the event's id, trace and span ids and
// secret_refs, which the producer makes):
//
//   - each secret-shaped value (see ContainsSecret) is replaced by
//     SecretMarker and kept as a SecretRef named by its field path (e.g.
//     "actor.request_reason") holding h's HMAC of the value: never stored
//     raw, never silently dropped;
//   - bytes that are not UTF-8 become \xNN, control characters (C0, DEL,
//     C1) become \n, \t, \r or \xNN / \u0085, and bidirectional and line
//     separator controls become \uNNNN, so the text cannot forge lines or
//     reorder what a terminal shows;
//   - text longer than its limit (MaxTextBytes, MaxLongTextBytes for
//     reasons and policy errors, MaxKeyBytes for map keys) is cut at a
//     character boundary and ends with TruncatedMarker;
//   - map keys that become equal are kept apart with a "~2", "~3" suffix.
//
// If the event would still exceed EventBudget serialised, the limits are
// divided by 4, 16 and 64 in turn, and as a last resort maps and lists
// keep their first 16 entries and a MoreEntriesMarker. Text that needs
// none of this is left as it is, without allocating.
//
// Normalise is the one normaliser every producer calls on every event
// before appending it; Check is what the audit service enforces.
func Normalise(ev *auditv1.Event, h SecretHasher) {
	if ev == nil {
		return
	}
	// Below an eighth of the budget no outcome of one pass can exceed it
	// (escaping at most quadruples text, markers and refs are bounded), so
	// only larger events keep a copy for the shrinking passes.
	var orig *auditv1.Event
	if proto.Size(ev) > EventBudget/8 {
		orig = proto.CloneOf(ev)
	}
	(&normaliser{ev: ev, h: h, div: 1}).run()
	if orig == nil || proto.Size(ev) <= EventBudget {
		return
	}
	for _, pass := range []normaliser{{div: 4}, {div: 16}, {div: 64}, {div: 64, maxEntries: 16}} {
		c := proto.CloneOf(orig)
		pass.ev, pass.h = c, h
		pass.run()
		if proto.Size(c) <= EventBudget || pass.maxEntries > 0 {
			proto.Reset(ev)
			proto.Merge(ev, c)
			return
		}
	}
}

// normaliser is one pass of Normalise over one event.
type normaliser struct {
	ev         *auditv1.Event
	h          SecretHasher
	div        int // limits are divided by div
	maxEntries int // > 0: maps and lists keep at most this many entries
	refs       int // SecretRefs added so far
}

func (n *normaliser) run() {
	var segs [8]seg
	p := path{segs: segs[:0]}
	n.message(n.ev.ProtoReflect(), &p)
}

func (n *normaliser) limit(fd protoreflect.FieldDescriptor) int {
	if fd == reasonField || fd == policyErrorField {
		return MaxLongTextBytes / n.div
	}
	return MaxTextBytes / n.div
}

// message normalises the fields of m in declaration order, so that refs
// are numbered the same way every time.
func (n *normaliser) message(m protoreflect.Message, p *path) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if untouched(fd) || !m.Has(fd) {
			continue
		}
		p.push(seg{name: fd.Name()})
		switch {
		case fd.IsMap():
			n.mapField(fd, m.Mutable(fd).Map(), p)
		case fd.IsList():
			n.list(fd, m.Mutable(fd).List(), p)
		case fd.Kind() == protoreflect.StringKind:
			if out, changed := n.text(m.Get(fd).String(), n.limit(fd), p); changed {
				m.Set(fd, protoreflect.ValueOfString(out))
			}
		case fd.Kind() == protoreflect.MessageKind:
			n.message(m.Mutable(fd).Message(), p)
		}
		p.pop()
	}
}

func (n *normaliser) list(fd protoreflect.FieldDescriptor, l protoreflect.List, p *path) {
	if n.maxEntries > 0 && l.Len() > n.maxEntries && fd.Kind() == protoreflect.StringKind {
		more := l.Len() - (n.maxEntries - 1)
		l.Truncate(n.maxEntries - 1)
		l.Append(protoreflect.ValueOfString(fmt.Sprintf(MoreEntriesMarker, more)))
	}
	for i := 0; i < l.Len(); i++ {
		p.push(seg{index: i, isIndex: true})
		switch fd.Kind() {
		case protoreflect.StringKind:
			if out, changed := n.text(l.Get(i).String(), n.limit(fd), p); changed {
				l.Set(i, protoreflect.ValueOfString(out))
			}
		case protoreflect.MessageKind:
			n.message(l.Get(i).Message(), p)
		}
		p.pop()
	}
}

// mapField normalises keys and values in key order and rebuilds the map
// when a key changed.
func (n *normaliser) mapField(fd protoreflect.FieldDescriptor, m protoreflect.Map, p *path) {
	if n.maxEntries == 0 || m.Len() <= n.maxEntries {
		clean := true
		m.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
			clean = n.clean(k.String(), MaxKeyBytes/n.div) && (fd.MapValue().Kind() != protoreflect.StringKind || n.clean(v.String(), n.limit(fd)))
			return clean
		})
		if clean && fd.MapValue().Kind() == protoreflect.StringKind {
			return
		}
	}
	type entry struct {
		mk        protoreflect.MapKey
		orig, key string
		val       protoreflect.Value
	}
	entries := make([]entry, 0, m.Len())
	m.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
		entries = append(entries, entry{k, k.String(), k.String(), v})
		return true
	})
	all := entries
	slices.SortFunc(entries, func(a, b entry) int {
		switch {
		case a.key < b.key:
			return -1
		case a.key > b.key:
			return 1
		}
		return 0
	})
	stringKeys := fd.MapKey().Kind() == protoreflect.StringKind
	stringValues := fd.MapValue().Kind() == protoreflect.StringKind
	rebuild := false
	var more int
	if n.maxEntries > 0 && len(entries) > n.maxEntries && stringKeys && stringValues {
		more = len(entries) - (n.maxEntries - 1)
		entries = entries[:n.maxEntries-1]
		rebuild = true
	}
	seen := make(map[string]bool, len(entries))
	for i := range entries {
		e := &entries[i]
		if stringKeys {
			p.push(seg{name: "(map key)"})
			key, changed := n.text(e.key, MaxKeyBytes/n.div, p)
			p.pop()
			if base := key; seen[key] {
				for j := 2; seen[key]; j++ {
					key = base + "~" + strconv.Itoa(j)
				}
				changed = true
			}
			if changed {
				e.key, rebuild = key, true
			}
			seen[e.key] = true
		}
		p.push(seg{key: e.key, isKey: true})
		switch fd.MapValue().Kind() {
		case protoreflect.StringKind:
			if out, changed := n.text(e.val.String(), n.limit(fd), p); changed {
				e.val, rebuild = protoreflect.ValueOfString(out), true
			}
		case protoreflect.MessageKind:
			n.message(e.val.Message(), p)
		}
		p.pop()
	}
	if !rebuild {
		return
	}
	for _, e := range all {
		m.Clear(e.mk)
	}
	for _, e := range entries {
		k := e.mk
		if stringKeys {
			k = protoreflect.ValueOfString(e.key).MapKey()
		}
		m.Set(k, e.val)
	}
	if more > 0 {
		key := "…"
		for seen[key] {
			key += "…"
		}
		m.Set(protoreflect.ValueOfString(key).MapKey(), protoreflect.ValueOfString(fmt.Sprintf(MoreEntriesMarker, more)))
	}
}

// clean reports whether s needs no change within limit.
func (n *normaliser) clean(s string, limit int) bool {
	return len(s) <= limit && plainASCII(s) && !mayHoldSecret(s)
}

// text returns s made recordable, and whether it differs from s.
func (n *normaliser) text(s string, limit int, p *path) (string, bool) {
	if n.clean(s, limit) {
		return s, false
	}
	spans := SecretSpans(s)
	out := make([]byte, 0, min(len(s), limit)+32)
	cut := -1 // offset in s where the output stopped, or -1
	for i, next := 0, 0; i < len(s); {
		if next < len(spans) && i == spans[next][0] {
			marker := n.secret(s[spans[next][0]:spans[next][1]], p)
			if cut < 0 && len(out)+len(marker) > limit {
				cut = i
			}
			if cut < 0 {
				out = append(out, marker...)
			}
			i = spans[next][1]
			next++
			continue
		}
		if cut >= 0 {
			// Past the limit only the secrets left need their refs.
			if next < len(spans) {
				i = spans[next][0]
				continue
			}
			break
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		var buf [8]byte
		piece := appendEscaped(buf[:0], r, size, s[i])
		if len(out)+len(piece) > limit {
			cut = i
			continue
		}
		out = append(out, piece...)
		i += size
	}
	if cut >= 0 {
		out = fmt.Appendf(out, TruncatedMarker, len(s)-cut)
	}
	return string(out), true
}

// secret records one secret-shaped value as a SecretRef named by its field
// path and returns the marker that replaces it.
func (n *normaliser) secret(value string, p *path) string {
	if n.refs >= MaxTextSecretRefs || n.h == nil {
		return SecretOverflowMarker
	}
	name := p.String()[1:] // without the leading dot
	if len(name) > maxRefName {
		end := maxRefName
		for end > 0 && !utf8.RuneStart(name[end]) {
			end--
		}
		name = name[:end]
	}
	n.ev.SecretRefs = append(n.ev.SecretRefs, n.h.Ref(name, []byte(value)))
	n.refs++
	return fmt.Sprintf(SecretMarker, len(n.ev.SecretRefs)-1)
}

// maxRefName is the audit contract's limit on SecretRef.name.
const maxRefName = 64

// plainASCII reports whether s is printable ASCII only (the common case,
// which needs no escaping).
func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// appendEscaped appends the rune r (size bytes of input starting with
// byte b; utf8.RuneError of size 1 for an invalid byte) as it is recorded.
func appendEscaped(dst []byte, r rune, size int, b byte) []byte {
	const hex = "0123456789abcdef"
	switch {
	case r == utf8.RuneError && size == 1:
		return append(dst, '\\', 'x', hex[b>>4], hex[b&0xf])
	case r == '\n':
		return append(dst, '\\', 'n')
	case r == '\t':
		return append(dst, '\\', 't')
	case r == '\r':
		return append(dst, '\\', 'r')
	case r < 0x20 || r == 0x7f:
		return append(dst, '\\', 'x', hex[r>>4], hex[r&0xf])
	case r >= 0x80 && r <= 0x9f, invisibleControl(r):
		return append(dst, '\\', 'u', hex[r>>12&0xf], hex[r>>8&0xf], hex[r>>4&0xf], hex[r&0xf])
	}
	return utf8.AppendRune(dst, r)
}

// invisibleControl reports the format characters that reorder or break
// displayed text: bidirectional marks, embeddings, overrides and isolates,
// line and paragraph separators, and the byte-order mark.
func invisibleControl(r rune) bool {
	switch {
	case r == 0x061c, r == 0x200e, r == 0x200f, r == 0xfeff:
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x2028, r == 0x2029:
		return true
	}
	return false
}
