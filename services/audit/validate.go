package audit

import (
	"fmt"
	"math"
	"time"
	"unicode/utf8"

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
