package audit

import (
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/reflect/protoreflect"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// Bounds of a producer time: stores keep it as int64 Unix nanoseconds.
var (
	minEventTime = time.Unix(0, math.MinInt64)
	maxEventTime = time.Unix(0, math.MaxInt64)
)

// validateBatch checks a batch against the contract before anything is
// sequenced, so that a bad event rejects the whole batch.
func validateBatch(events []*auditv1.Event) error {
	switch {
	case len(events) == 0:
		return Errorf(Invalid, "events: at least 1 required")
	case len(events) > MaxBatch:
		return Errorf(Invalid, "events: at most %d per batch, got %d", MaxBatch, len(events))
	}
	for i, e := range events {
		if err := validateEvent(e); err != nil {
			return Errorf(Invalid, "events[%d]%s", i, err)
		}
	}
	return nil
}

// validateEvent returns the problem of e as ".field: problem" (or ": problem"
// for the whole event), to be prefixed with the event's position.
func validateEvent(e *auditv1.Event) error {
	if e == nil {
		return fmt.Errorf(": required")
	}
	switch id := e.GetId(); {
	case id == "":
		return fmt.Errorf(".id: required")
	case len(id) > MaxIDBytes:
		return fmt.Errorf(".id: at most %d bytes", MaxIDBytes)
	case !utf8.ValidString(id):
		return fmt.Errorf(".id: not valid UTF-8")
	}
	switch ts := e.GetTime(); {
	case ts == nil:
		return fmt.Errorf(".time: required")
	case ts.CheckValid() != nil:
		return fmt.Errorf(".time: not a valid timestamp")
	case ts.AsTime().Before(minEventTime) || ts.AsTime().After(maxEventTime):
		return fmt.Errorf(".time: out of range (years 1678 to 2262)")
	}
	if err := checkEnum(".kind", int32(e.GetKind()), auditv1.Kind_name); err != nil {
		return err
	}
	if err := checkEnum(".decision", int32(e.GetDecision()), auditv1.Decision_name); err != nil {
		return err
	}
	if !isLowerHex(e.GetTraceId(), 32) {
		return fmt.Errorf(".trace_id: must be empty or 32 lowercase hex digits")
	}
	if !isLowerHex(e.GetSpanId(), 16) {
		return fmt.Errorf(".span_id: must be empty or 16 lowercase hex digits")
	}
	for i, ref := range e.GetSecretRefs() {
		switch {
		case ref.GetName() == "" || len(ref.GetName()) > 64:
			return fmt.Errorf(".secret_refs[%d].name: required, at most 64 bytes", i)
		case len(ref.GetHmacSha256()) != 32:
			return fmt.Errorf(".secret_refs[%d].hmac_sha256: must be the 32-byte HMAC-SHA256 of the secret, never the secret itself", i)
		case ref.GetKeyId() == "":
			return fmt.Errorf(".secret_refs[%d].key_id: required: name the HMAC key so investigators can recompute it", i)
		}
	}
	if path := findRawToken(e.ProtoReflect(), ""); path != "" {
		return fmt.Errorf("%s: looks like a raw token (a JWT); record secrets only as secret_refs HMACs", path)
	}
	b, err := MarshalEvent(e)
	if err != nil {
		return fmt.Errorf(": cannot be serialised (invalid UTF-8 in a string field?)")
	}
	if len(b) > MaxEventBytes {
		return fmt.Errorf(": %d bytes serialised, at most %d", len(b), MaxEventBytes)
	}
	return nil
}

func checkEnum(field string, v int32, names map[int32]string) error {
	if v == 0 {
		return fmt.Errorf("%s: required", field)
	}
	if _, ok := names[v]; !ok {
		return fmt.Errorf("%s: unknown value %d", field, v)
	}
	return nil
}

// isLowerHex reports whether s is empty or exactly n lowercase hex digits.
func isLowerHex(s string, n int) bool {
	if s == "" {
		return true
	}
	if len(s) != n {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// findRawToken returns the path of the first string field in m that holds
// what looks like a raw JWT (an OIDC token), or "". Producers must never
// put a secret in an event; this catches the likeliest mistake, a bearer
// token copied into a reason, a claim or a context value.
func findRawToken(m protoreflect.Message, prefix string) string {
	var found string
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		path := prefix + "." + string(fd.Name())
		switch {
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				p := fmt.Sprintf("%s[%q]", path, k.String())
				if looksLikeJWT(k.String()) {
					found = p
				} else if fd.MapValue().Kind() == protoreflect.StringKind && looksLikeJWT(mv.String()) {
					found = p
				} else if fd.MapValue().Kind() == protoreflect.MessageKind {
					found = findRawToken(mv.Message(), p)
				}
				return found == ""
			})
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && found == ""; i++ {
				p := fmt.Sprintf("%s[%d]", path, i)
				switch fd.Kind() {
				case protoreflect.StringKind:
					if looksLikeJWT(l.Get(i).String()) {
						found = p
					}
				case protoreflect.MessageKind:
					found = findRawToken(l.Get(i).Message(), p)
				}
			}
		case fd.Kind() == protoreflect.StringKind:
			if looksLikeJWT(v.String()) {
				found = path
			}
		case fd.Kind() == protoreflect.MessageKind:
			found = findRawToken(v.Message(), path)
		}
		return found == ""
	})
	return found
}

// looksLikeJWT reports whether s contains a compact JWS/JWT: a base64url
// JSON header ("eyJ") followed by two more dot-separated base64url parts.
func looksLikeJWT(s string) bool {
	for {
		i := strings.Index(s, "eyJ")
		if i < 0 {
			return false
		}
		s = s[i:]
		parts := strings.SplitN(s, ".", 4)
		if len(parts) >= 3 && isB64URL(parts[0], 10) && isB64URL(parts[1], 10) && isB64URL(leadingB64URL(parts[2]), 16) {
			return true
		}
		s = s[3:]
	}
}

func isB64URL(s string, min int) bool {
	if len(s) < min {
		return false
	}
	return len(leadingB64URL(s)) == len(s)
}

func leadingB64URL(s string) string {
	for i, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return s[:i]
		}
	}
	return s
}
