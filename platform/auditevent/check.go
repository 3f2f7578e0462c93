package auditevent

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// TextError is a string of an event that cannot be recorded.
type TextError struct {
	// Path names the field from the event, e.g. ".actor.request_reason" or
	// `.key.encryption_context["env"]`. Map keys that are long, not
	// printable or secret-shaped are not quoted.
	Path string
	// Problem says what is wrong; it never quotes the text.
	Problem string
}

func (e *TextError) Error() string { return e.Path + ": " + e.Problem }

// Problems Check reports.
const (
	ProblemUTF8   = "not valid UTF-8"
	ProblemSecret = "looks like a secret (a raw token or private key); record secrets only as secret_refs HMACs"
)

// Check returns a *TextError for the first string of m (fields, list
// elements, map keys and values, at any depth) that is not valid UTF-8 or
// holds a secret-shaped value (see ContainsSecret), or nil. Within a map
// the smallest bad key is reported, so the answer does not depend on map
// order. It runs in time linear in the size of m.
//
// Most events are clean, and for them Check costs one serialisation: the
// wire form holds every string of m verbatim, and serialising a proto3
// message fails on a string that is not valid UTF-8, so a message that
// serialises and whose bytes contain neither mark every secret shape
// starts with ("eyJ", "-----BEGIN ") has no bad string. Anything else
// (including a mark that only bytes fields or numbers hold) is walked
// field by field, which finds and names the bad string.
func Check(m proto.Message) error {
	if clean(m) {
		return nil
	}
	var p path
	return checkMessage(m.ProtoReflect(), &p)
}

// CleanWire reports whether wire, the serialised form of a message that
// serialised without error and whose strings are all proto3 (as every
// credmatrix message's), provably holds no string Check refuses: it
// contains neither mark a secret shape starts with. When it reports
// false, Check the message itself: it finds and names the bad string, or
// finds none (the mark was in bytes or numbers).
func CleanWire(wire []byte) bool {
	return !bytes.Contains(wire, []byte(jwsMark)) && !bytes.Contains(wire, []byte(pemBegin))
}

// wireBufs recycles the buffers clean serialises into.
var wireBufs = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledWire is the largest buffer wireBufs keeps.
const maxPooledWire = 64 << 10

// clean reports whether m provably holds no bad string (see Check).
func clean(m proto.Message) bool {
	if !utf8Enforced(m.ProtoReflect().Descriptor()) {
		return false
	}
	bp := wireBufs.Get().(*[]byte)
	b, err := proto.MarshalOptions{}.MarshalAppend((*bp)[:0], m)
	ok := err == nil && CleanWire(b)
	if cap(b) <= maxPooledWire {
		*bp = b
		wireBufs.Put(bp)
	}
	return ok
}

// enforced memoises utf8Enforced per message type. Descriptors never
// change, so this is a cache of facts, not state.
var enforced sync.Map // protoreflect.MessageDescriptor -> bool

// utf8Enforced reports whether serialising a message of type md fails on
// any string that is not valid UTF-8: every string field it can reach
// (map keys and values, nested messages) is proto3.
func utf8Enforced(md protoreflect.MessageDescriptor) bool {
	if v, ok := enforced.Load(md); ok {
		return v.(bool)
	}
	ok := walkEnforced(md, map[protoreflect.FullName]bool{})
	enforced.Store(md, ok)
	return ok
}

func walkEnforced(md protoreflect.MessageDescriptor, seen map[protoreflect.FullName]bool) bool {
	if seen[md.FullName()] {
		return true // being checked higher up the walk
	}
	seen[md.FullName()] = true
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.IsMap() {
			if !walkField(fd.MapKey(), seen) || !walkField(fd.MapValue(), seen) {
				return false
			}
			continue
		}
		if !walkField(fd, seen) {
			return false
		}
	}
	return true
}

func walkField(fd protoreflect.FieldDescriptor, seen map[protoreflect.FullName]bool) bool {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return fd.Syntax() == protoreflect.Proto3
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return walkEnforced(fd.Message(), seen)
	}
	return true
}

func checkText(s string) string {
	switch {
	case !utf8.ValidString(s):
		return ProblemUTF8
	case ContainsSecret(s):
		return ProblemSecret
	}
	return ""
}

// checkMessage checks the fields of m in declaration order.
func checkMessage(m protoreflect.Message, p *path) error {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		v := m.Get(fd)
		p.push(seg{name: fd.Name()})
		var err error
		switch {
		case fd.IsMap():
			err = checkMap(fd, v.Map(), p)
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				p.push(seg{index: i, isIndex: true})
				err = checkValue(fd, l.Get(i), p)
				p.pop()
			}
		default:
			err = checkValue(fd, v, p)
		}
		p.pop()
		if err != nil {
			return err
		}
	}
	return nil
}

func checkValue(fd protoreflect.FieldDescriptor, v protoreflect.Value, p *path) error {
	switch fd.Kind() {
	case protoreflect.StringKind:
		if problem := checkText(v.String()); problem != "" {
			return &TextError{Path: p.String(), Problem: problem}
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return checkMessage(v.Message(), p)
	}
	return nil
}

// checkMap checks every entry and reports the bad entry of smallest key.
func checkMap(fd protoreflect.FieldDescriptor, m protoreflect.Map, p *path) error {
	var worst *TextError
	var worstKey string
	m.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
		key := k.String()
		if worst != nil && key >= worstKey {
			return true
		}
		p.push(seg{key: key, isKey: true})
		defer p.pop()
		var err error
		if fd.MapKey().Kind() == protoreflect.StringKind {
			if problem := checkText(key); problem != "" {
				err = &TextError{Path: p.String(), Problem: "key " + problem}
			}
		}
		if err == nil {
			err = checkValue(fd.MapValue(), v, p)
		}
		if err != nil {
			worst, worstKey = err.(*TextError), key
		}
		return true
	})
	if worst == nil {
		return nil
	}
	return worst
}

// seg is one step of a field path: a field, a list index or a map key.
type seg struct {
	name    protoreflect.Name
	index   int
	isIndex bool
	key     string
	isKey   bool
}

// path is the field path being walked, rendered only when needed.
type path struct{ segs []seg }

func (p *path) push(s seg) { p.segs = append(p.segs, s) }
func (p *path) pop()       { p.segs = p.segs[:len(p.segs)-1] }

// String renders the path as ".a.b[2][\"k\"]".
func (p *path) String() string {
	var b strings.Builder
	for _, s := range p.segs {
		switch {
		case s.isIndex:
			fmt.Fprintf(&b, "[%d]", s.index)
		case s.isKey:
			b.WriteString("[" + keyLabel(s.key) + "]")
		default:
			b.WriteString("." + string(s.name))
		}
	}
	return b.String()
}

// maxQuotedKey is the longest map key a path quotes.
const maxQuotedKey = 40

// keyLabel renders a map key for a path: quoted when it is short, printable
// and not secret-shaped, else only its length, so a path never carries a
// secret or an oversized or hostile key.
func keyLabel(k string) string {
	if len(k) <= maxQuotedKey && utf8.ValidString(k) && !ContainsSecret(k) {
		printable := true
		for _, r := range k {
			if !unicode.IsPrint(r) {
				printable = false
				break
			}
		}
		if printable {
			return strconv.Quote(k)
		}
	}
	return fmt.Sprintf("<key of %d bytes>", len(k))
}
