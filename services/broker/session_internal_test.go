package broker

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/credmatrix/credmatrix/services/broker/oidc"
	"github.com/google/go-cmp/cmp"
)

func TestSessionName(t *testing.T) {
	claims := func(kv ...string) *oidc.Claims {
		c := &oidc.Claims{Raw: map[string]any{}}
		for i := 0; i < len(kv); i += 2 {
			if kv[i] == "sub" {
				c.Subject = kv[i+1]
			}
			c.Raw[kv[i]] = kv[i+1]
		}
		return c
	}
	tests := []struct {
		name   string
		claims *oidc.Claims
		want   string
	}{
		{"github", claims("sub", "repo:acme/app:ref:refs/heads/main", "repository", "acme/app", "run_id", "42"), "acme-app@42"},
		{"no-run", claims("sub", "x", "repository", "acme/app"), "acme-app"},
		{"kubernetes-subject", claims("sub", "system:serviceaccount:ci:builder"), "system-serviceaccount-ci-builder"},
		{"injection", claims("sub", `a"b;c<d>e f`), "a-b-c-d-e-f"},
		{"unicode", claims("sub", "dépl✓y"), "d-pl-y"},
		{"long", claims("sub", strings.Repeat("x", 100)), strings.Repeat("x", 64)},
		{"too-short", claims("sub", "x"), "credmatrix"},
		{"numeric-run-id", &oidc.Claims{Subject: "s", Raw: map[string]any{"repository": "a/b", "run_id": json.Number("12345678901234567")}}, "a-b@12345678901234567"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(sessionName(tc.claims), tc.want); diff != "" {
				t.Errorf("sessionName (-got +want):\n%s", diff)
			}
		})
	}
}

func TestNewUUID(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := newUUID()
		if len(id) != 36 || id[14] != '4' || !strings.ContainsRune("89ab", rune(id[19])) || seen[id] {
			t.Fatalf("bad or repeated UUIDv4 %q", id)
		}
		seen[id] = true
	}
}

func TestSessionSpecRedactsToken(t *testing.T) {
	s := SessionSpec{RoleARN: "arn:aws:iam::111111111111:role/deploy", WebIdentityToken: "eyJ.secret.token"}
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%+v", s), fmt.Sprintf("%#v", s)} {
		if strings.Contains(out, "secret") || !strings.Contains(out, "role/deploy") {
			t.Errorf("SessionSpec printed as %q", out)
		}
	}
}
