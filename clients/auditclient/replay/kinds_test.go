package replay

import (
	"strings"
	"testing"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

func TestKindNames(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want auditv1.Kind
	}{
		{"session-issue", auditv1.Kind_KIND_SESSION_ISSUE},
		{"session_issue", auditv1.Kind_KIND_SESSION_ISSUE},
		{"KIND_SESSION_ISSUE", auditv1.Kind_KIND_SESSION_ISSUE},
		{"Key-Generate-Data-Key", auditv1.Kind_KIND_KEY_GENERATE_DATA_KEY},
	} {
		got, err := ParseKind(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseKind(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "unspecified", "KIND_UNSPECIFIED", "session", "session issue"} {
		if _, err := ParseKind(bad); err == nil || !strings.Contains(err.Error(), "session-issue") {
			t.Errorf("ParseKind(%q) = %v, want an error listing the kinds", bad, err)
		}
	}
	names := KindNames()
	if len(names) < 15 || names[0] != "session-issue" {
		t.Fatalf("KindNames() = %q", names)
	}
	for _, n := range names {
		k, err := ParseKind(n)
		if err != nil || ShortKind(k) != n || strings.Contains(n, "_") {
			t.Errorf("kind name %q does not round-trip (%v, %v)", n, k, err)
		}
	}
}
