package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/credmatrix/credmatrix/clients/brokerclient"
	"github.com/google/go-cmp/cmp"
)

// The admin commands against a running broker are tested in the
// credmatrix-dev module (e2e/admin_test.go); these are their local parts.

func TestConfirm(t *testing.T) {
	tests := []struct {
		name, stdin string
		yes         bool
		want        error
	}{
		{"yes-flag", "", true, nil},
		{"typed-yes", "yes\n", false, nil},
		{"typed-yes-no-newline", "yes", false, nil},
		{"typed-y", "y\n", false, errNotConfirmed},
		{"typed-no", "no\n", false, errNotConfirmed},
		{"no-input", "", false, errNotConfirmed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var errOut bytes.Buffer
			a := &app{streams: streams{in: strings.NewReader(tc.stdin), out: &bytes.Buffer{}, err: &errOut}}
			if err := a.confirm("Freeze?", tc.yes); !errors.Is(err, tc.want) {
				t.Errorf("confirm = %v, want %v", err, tc.want)
			}
			if asked := strings.Contains(errOut.String(), "Type yes to proceed"); asked == tc.yes {
				t.Errorf("asked = %v with --yes %v", asked, tc.yes)
			}
		})
	}
	// Not confirmed is exit 1 with the message, not a usage error.
	code, msg := classify(errNotConfirmed)
	if diff := cmp.Diff([]any{code, strings.Contains(msg, "--yes")}, []any{exitError, true}); diff != "" {
		t.Errorf("(-got +want):\n%s", diff)
	}
}

func TestLocalHint(t *testing.T) {
	server := "credmatrix policy test --token-env CREDMATRIX_OIDC_TOKEN --policy /etc/credmatrix/policy.yaml --role deploy --account dev --region us-east-1"
	tests := []struct {
		name string
		tf   tokenFlags
		want string
	}{
		{"default", tokenFlags{source: "auto", envVar: "CREDMATRIX_OIDC_TOKEN"}, server},
		{"token-file", tokenFlags{source: "file", file: "/var/run/secrets/tokens/credmatrix", envVar: "CREDMATRIX_OIDC_TOKEN"},
			strings.Replace(server, "--token-env CREDMATRIX_OIDC_TOKEN", "--token-file /var/run/secrets/tokens/credmatrix", 1)},
		{"other-env", tokenFlags{source: "env", envVar: "MY TOKEN"},
			strings.Replace(server, "--token-env CREDMATRIX_OIDC_TOKEN", "--token-env 'MY TOKEN'", 1)},
		{"gitlab", tokenFlags{source: "gitlab", envVar: "CREDMATRIX_OIDC_TOKEN", gitlabVar: "CREDMATRIX_ID_TOKEN"},
			strings.Replace(server, "--token-env CREDMATRIX_OIDC_TOKEN", "--token-env CREDMATRIX_ID_TOKEN", 1)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(localHint(&brokerclient.DeniedError{Hint: server}, &tc.tf), tc.want); diff != "" {
				t.Errorf("(-got +want):\n%s", diff)
			}
		})
	}
}

func TestPrintable(t *testing.T) {
	if got := printable("ok\x1b[31mred\u0085\x7f"); got != "ok?[31mred??" {
		t.Errorf("printable = %q", got)
	}
}
