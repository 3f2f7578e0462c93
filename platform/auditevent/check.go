package auditevent

import (
	"fmt"
	"strconv"
	"strings"
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
func Check(m proto.Message) error {
	var p path
	return checkMessage(m.ProtoReflect(), &p)
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
