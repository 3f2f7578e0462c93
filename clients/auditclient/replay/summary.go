package replay

import (
	"fmt"
	"strings"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// ShortKind is the kind without its prefix, lower case: "session_issue".
func ShortKind(k auditv1.Kind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "KIND_"))
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
