package audit

import (
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/credmatrix/credmatrix/platform/auditevent"
	"github.com/credmatrix/credmatrix/platform/domainerr"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// Bounds of a producer time: stores keep it as int64 Unix nanoseconds.
var (
	minEventTime = time.Unix(0, math.MinInt64)
	maxEventTime = time.Unix(0, math.MaxInt64)
)

// validateBatchSize checks what is wrong with a batch as a whole.
func validateBatchSize(events []*auditv1.Event) error {
	switch {
	case len(events) == 0:
		return domainerr.Errorf(domainerr.Invalid, "events: at least 1 required")
	case len(events) > MaxBatch:
		return domainerr.Errorf(domainerr.Invalid, "events: at most %d per batch, got %d", MaxBatch, len(events))
	}
	return nil
}

// validateEvent returns the problem of e as ".field: problem" (or ": problem"
// for the whole event), to be prefixed with the event's position.
//
// It runs in time linear in the size of e, and checks the size first, so
// an oversized event costs no more than reading it: the checks that look
// at every string (UTF-8, secret shapes) run only on events of at most
// MaxEventBytes.
func validateEvent(e *auditv1.Event) error {
	if err := validateFields(e); err != nil {
		return err
	}
	// Every string: valid UTF-8 (what serialisation needs) and no secret
	// shape, with the same detector the producers' normaliser uses.
	return auditevent.Check(e)
}

// validateFields is validateEvent without the check of every string
// (auditevent.Check), which prepare runs on the serialised event.
func validateFields(e *auditv1.Event) error {
	if e == nil {
		return fmt.Errorf(": required")
	}
	if n := proto.Size(e); n > MaxEventBytes {
		return fmt.Errorf(": %d bytes serialised, at most %d", n, MaxEventBytes)
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
	if z := e.GetResidencyZone(); z != "" && !auditevent.ValidZone(z) {
		return fmt.Errorf(".residency_zone: must be empty or a zone name (1 to 32 of [a-z0-9-], starting with a letter)")
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
