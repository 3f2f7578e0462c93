package replay

import (
	"fmt"
	"slices"
	"strings"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// ShortKind is the name of a kind for people, as the credmatrix CLI
// prints it and takes it in --kind: lower case, without the prefix, words
// joined by hyphens ("session-issue" for KIND_SESSION_ISSUE). ParseKind
// reads it back, and also the protobuf spellings.
func ShortKind(k auditv1.Kind) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(k.String(), "KIND_")), "_", "-")
}

// ParseKind reads a kind in any of its spellings — "session-issue",
// "session_issue", "SESSION_ISSUE", "KIND_SESSION_ISSUE" — and refuses
// unknown names and KIND_UNSPECIFIED.
func ParseKind(name string) (auditv1.Kind, error) {
	n := strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(name), "-", "_"))
	if !strings.HasPrefix(n, "KIND_") {
		n = "KIND_" + n
	}
	if v, ok := auditv1.Kind_value[n]; ok && v != 0 {
		return auditv1.Kind(v), nil
	}
	return 0, fmt.Errorf("unknown event kind %q: want one of %s", name, strings.Join(KindNames(), ", "))
}

// KindNames lists every kind's ShortKind, in enum order.
func KindNames() []string {
	nums := make([]int32, 0, len(auditv1.Kind_name))
	for v := range auditv1.Kind_name {
		if v != 0 {
			nums = append(nums, v)
		}
	}
	slices.Sort(nums)
	out := make([]string, len(nums))
	for i, v := range nums {
		out[i] = ShortKind(auditv1.Kind(v))
	}
	return out
}

// ShortDecision is "allow", "deny" or "error".
func ShortDecision(d auditv1.Decision) string {
	return strings.ToLower(strings.TrimPrefix(d.String(), "DECISION_"))
}

// Summary describes the kind-specific part of an event in a few words.
func Summary(e *auditv1.Event) string {
	switch d := e.GetDetail().(type) {
	case *auditv1.Event_Session:
		s := d.Session
		out := fmt.Sprintf("%s@%s/%s", s.GetRoleName(), firstNonEmpty(s.GetAccountName(), s.GetAccountId()), s.GetRegion())
		if s.GetSessionId() != "" {
			out += " session " + s.GetSessionId()
		}
		return out
	case *auditv1.Event_Key:
		k := d.Key
		out := fmt.Sprintf("%s/%s", k.GetDataClass(), k.GetRegion())
		if k.GetKeyVersion() > 0 {
			out += fmt.Sprintf(" v%d", k.GetKeyVersion())
		}
		if k.GetGrantId() != "" {
			out += " grant " + k.GetGrantId()
		}
		return out
	case *auditv1.Event_Policy:
		return "policy " + d.Policy.GetSha256()
	case *auditv1.Event_Admin:
		return d.Admin.GetAction()
	}
	return e.GetReason()
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
