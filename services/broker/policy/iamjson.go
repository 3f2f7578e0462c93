package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode/utf8"
)

// IAM policy JSON is read one way only: strictly. Go's decoder keeps the
// last of duplicate keys and matches names case-insensitively; IAM reads
// the document its own way. A document that two readers could
// understand differently ("Effect": "Allow" … "effect": "Deny") is
// refused, naming the field, and what goes to STS is the canonical
// re-serialisation of what was checked, never the caller's bytes.

// JSONError is a policy document refused by the strict reader. Field is
// the path of the offending element ("Statement[0].Effect").
type JSONError struct {
	// Field is the element's path; "" for the document itself.
	Field string
	// Msg says what is wrong.
	Msg string
}

// Error returns "field: msg".
func (e *JSONError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

// maxJSONDepth bounds nesting: an IAM policy nests four deep at most
// (document, statement, condition operator, key), lists add one.
const maxJSONDepth = 16

// parseStrictJSON reads exactly one JSON value. Objects become
// map[string]any, arrays []any, numbers json.Number. Two keys of one
// object that are equal ignoring case are refused: IAM compares
// condition keys case-insensitively and Go's decoder matches struct
// fields that way, so either would silently pick one of them.
func parseStrictJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := readValue(dec, "", 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, &JSONError{Msg: "not one JSON value: trailing data after it"}
	}
	return v, nil
}

func readValue(dec *json.Decoder, path string, depth int) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, syntaxError(path, err)
	}
	return readFrom(dec, tok, path, depth)
}

func readFrom(dec *json.Decoder, tok json.Token, path string, depth int) (any, error) {
	if depth > maxJSONDepth {
		return nil, &JSONError{Field: path, Msg: fmt.Sprintf("nested more than %d deep", maxJSONDepth)}
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			obj := map[string]any{}
			seen := map[string]string{} // lower-case → as written
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, syntaxError(path, err)
				}
				key := kt.(string) // the decoder only yields string keys here
				field := joinPath(path, key)
				if first, dup := seen[strings.ToLower(key)]; dup {
					if first == key {
						return nil, &JSONError{Field: field, Msg: "duplicate key"}
					}
					return nil, &JSONError{Field: field, Msg: fmt.Sprintf("duplicate key (same as %q but for case)", first)}
				}
				seen[strings.ToLower(key)] = key
				v, err := readValue(dec, field, depth+1)
				if err != nil {
					return nil, err
				}
				obj[key] = v
			}
			if _, err := dec.Token(); err != nil { // '}'
				return nil, syntaxError(path, err)
			}
			return obj, nil
		case '[':
			list := []any{}
			for i := 0; dec.More(); i++ {
				v, err := readValue(dec, fmt.Sprintf("%s[%d]", path, i), depth+1)
				if err != nil {
					return nil, err
				}
				list = append(list, v)
			}
			if _, err := dec.Token(); err != nil { // ']'
				return nil, syntaxError(path, err)
			}
			return list, nil
		default:
			return nil, &JSONError{Field: path, Msg: "malformed JSON"}
		}
	default:
		return t, nil // string, json.Number, bool, nil
	}
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func syntaxError(path string, err error) error {
	if errors.Is(err, io.EOF) {
		return &JSONError{Field: path, Msg: "malformed JSON: unexpected end"}
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return &JSONError{Field: path, Msg: fmt.Sprintf("malformed JSON at byte %d", se.Offset)}
	}
	return &JSONError{Field: path, Msg: "malformed JSON"}
}

// IAM policy grammar: element names are case-sensitive.
var (
	documentKeys  = []string{"Version", "Id", "Statement"}
	statementKeys = []string{"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition"}
	// principalKeys never belong in a session policy.
	principalKeys = []string{"Principal", "NotPrincipal"}
)

// checkKeys refuses keys outside want, naming a key that differs from
// an allowed one only by case.
func checkKeys(obj map[string]any, path string, want []string) error {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if slices.Contains(want, k) {
			continue
		}
		field := joinPath(path, k)
		if i := slices.IndexFunc(want, func(w string) bool { return strings.EqualFold(w, k) }); i >= 0 {
			return &JSONError{Field: field, Msg: fmt.Sprintf("wrong case: IAM policy elements are case-sensitive, want %q", want[i])}
		}
		if slices.ContainsFunc(principalKeys, func(p string) bool { return strings.EqualFold(p, k) }) {
			return &JSONError{Field: field, Msg: "not allowed in a session policy"}
		}
		return &JSONError{Field: field, Msg: "unknown IAM policy element"}
	}
	return nil
}

// policyDoc is a strictly read IAM policy: its statements, each a
// checked object.
type policyDoc struct {
	statements []map[string]any
}

// parsePolicyDoc reads an IAM policy document strictly: one JSON object
// with Version, Id and Statement only (exact case), Statement a
// statement object or a non-empty list of them, each statement with the
// IAM statement elements only and Effect exactly Allow or Deny.
func parsePolicyDoc(data []byte) (*policyDoc, error) {
	v, err := parseStrictJSON(data)
	if err != nil {
		return nil, err
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, &JSONError{Msg: "not an IAM policy JSON object"}
	}
	if err := checkKeys(obj, "", documentKeys); err != nil {
		return nil, err
	}
	if ver, ok := obj["Version"]; ok {
		if s, _ := ver.(string); s != "2012-10-17" && s != "2008-10-17" {
			return nil, &JSONError{Field: "Version", Msg: `want "2012-10-17"`}
		}
	}
	var list []any
	switch st := obj["Statement"].(type) {
	case nil:
		return nil, &JSONError{Field: "Statement", Msg: "required"}
	case map[string]any:
		list = []any{st}
	case []any:
		list = st
	default:
		return nil, &JSONError{Field: "Statement", Msg: "must be a statement object or a list of them"}
	}
	if len(list) == 0 {
		return nil, &JSONError{Field: "Statement", Msg: "is empty"}
	}
	doc := &policyDoc{}
	for i, s := range list {
		path := fmt.Sprintf("Statement[%d]", i)
		st, ok := s.(map[string]any)
		if !ok {
			return nil, &JSONError{Field: path, Msg: "must be an object"}
		}
		if err := checkKeys(st, path, statementKeys); err != nil {
			return nil, err
		}
		switch e, _ := st["Effect"].(string); e {
		case "Allow", "Deny":
		default:
			return nil, &JSONError{Field: path + ".Effect", Msg: "must be Allow or Deny"}
		}
		doc.statements = append(doc.statements, st)
	}
	return doc, nil
}

// canonicalJSON serialises v with object keys sorted, no insignificant
// whitespace and no HTML escaping: the one form a policy is sent and
// hashed in.
func canonicalJSON(v any) []byte {
	var b bytes.Buffer
	writeCanonical(&b, v)
	return b.Bytes()
}

func writeCanonical(b *bytes.Buffer, v any) {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			writeString(b, k)
			b.WriteByte(':')
			writeCanonical(b, x[k])
		}
		b.WriteByte('}')
	case []any:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			writeCanonical(b, e)
		}
		b.WriteByte(']')
	case string:
		writeString(b, x)
	case json.Number:
		b.WriteString(x.String())
	case bool:
		if x {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case nil:
		b.WriteString("null")
	default:
		// Only the types parseStrictJSON produces, and the strings and
		// lists this package builds, reach here.
		panic(fmt.Sprintf("policy: canonical JSON of %T", v))
	}
}

// writeString writes s as a JSON string as encoding/json does without
// HTML escaping: quotes, backslashes and control characters escaped,
// U+2028 and U+2029 escaped, invalid UTF-8 replaced by U+FFFD.
func writeString(b *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	b.WriteByte('"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b.WriteString(s[start:i])
			switch c {
			case '"', '\\':
				b.WriteByte('\\')
				b.WriteByte(c)
			case '\n':
				b.WriteString(`\n`)
			case '\r':
				b.WriteString(`\r`)
			case '\t':
				b.WriteString(`\t`)
			case '\b':
				b.WriteString(`\b`)
			case '\f':
				b.WriteString(`\f`)
			default:
				b.WriteString(`\u00`)
				b.WriteByte(hex[c>>4])
				b.WriteByte(hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b.WriteString(s[start:i])
			b.WriteString(`\ufffd`)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b.WriteString(s[start:i])
			b.WriteString(`\u202`)
			b.WriteByte(hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b.WriteString(s[start:])
	b.WriteByte('"')
}

// CheckPolicyJSON reads an IAM policy document as SessionPolicy will:
// strictly, refusing duplicate and wrong-case keys. Errors are *JSONError
// values naming the field.
func CheckPolicyJSON(doc string) error {
	_, err := parsePolicyDoc([]byte(doc))
	return err
}

// document rebuilds the policy as a value with the statements as a list.
func (d *policyDoc) document() map[string]any {
	stmts := make([]any, len(d.statements))
	for i, s := range d.statements {
		stmts[i] = s
	}
	return map[string]any{"Version": "2012-10-17", "Statement": stmts}
}
