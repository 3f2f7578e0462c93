package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPolicyCommands(t *testing.T) {
	claims, err := os.ReadFile("testdata/claims-main.json")
	if err != nil {
		t.Fatal(err)
	}
	token := "e30." + base64.RawURLEncoding.EncodeToString(claims) + ".c2ln"
	tests := []struct {
		name   string
		args   []string
		stdin  string
		code   int
		output string // a line the output (stdout and stderr) must contain
	}{
		{"lint/clean", []string{"policy", "lint", "testdata/policy.yaml"}, "", exitOK, "testdata/policy.yaml: ok"},
		{"lint/invalid", []string{"policy", "lint", "testdata/policy-invalid.yaml"}, "", exitError,
			"testdata/policy-invalid.yaml:3: error: bogus: unknown field [invalid]"},
		{"lint/warning-passes", []string{"policy", "lint", "testdata/policy-broad.yaml"}, "", exitOK,
			"testdata/policy-broad.yaml:19: warning: rules[0].claims.sub: glob repo:* matches subjects of any repository or namespace"},
		{"lint/warning-fails-strict", []string{"policy", "lint", "--strict", "testdata/policy-broad.yaml"}, "", exitError, "[broad-subject]"},
		{"lint/no-file", []string{"policy", "lint"}, "", exitUsage, "name at least one policy file"},
		{"test/allow", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--claims", "testdata/claims-main.json", "--role", "deploy", "--account", "dev"}, "", exitOK,
			`ALLOW  deploy in dev (111111111111, eu-west-1)`},
		{"test/ou-cap", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--claims", "testdata/claims-main.json", "--role", "deploy", "--account", "prod"}, "", exitOK,
			"max duration 15m0s"},
		{"test/residency-scope-down", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--claims", "testdata/claims-main.json", "--role", "deploy", "--account", "dev"}, "", exitOK,
			`"Condition":{"StringNotLike":{"aws:RequestedRegion":["eu-*"]}}`},
		{"test/deny-guardrail", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--claims", "testdata/claims-pr.json", "--role", "deploy", "--account", "prod"}, "", exitDenied,
			"decided by no-prod-from-pull-requests: denied by guardrail"},
		{"test/every-account", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--claims", "-", "--role", "deploy"}, string(claims), exitOK,
			"ALLOW  deploy in prod (222222222222, eu-central-1)"},
		{"test/token-env", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--token-env", "TOKEN", "--role", "deploy", "--account", "dev"}, "", exitOK,
			"caller https://token.actions.githubusercontent.com  sub repo:acme/app:ref:refs/heads/main"},
		{"test/outside-residency", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--claims", "testdata/claims-main.json", "--role", "deploy", "--account", "dev", "--region", "us-east-1"}, "", exitDenied,
			`region "us-east-1" is outside residency zone "eu"`},
		{"test/no-role", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--claims", "testdata/claims-main.json"}, "", exitUsage, "--role is required"},
		{"test/undeclared-role", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--claims", "testdata/claims-main.json", "--role", "admin"}, "", exitUsage, `role "admin" is not declared`},
		{"test/two-claim-sources", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--claims", "x", "--token-env", "TOKEN", "--role", "deploy"}, "", exitUsage, "exactly one of"},
		{"test/bad-policy", []string{"policy", "test", "--policy", "testdata/policy-invalid.yaml", "--claims", "testdata/claims-main.json", "--role", "deploy"}, "", exitUsage, "bogus: unknown field"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			getenv := func(k string) string {
				if k == "TOKEN" {
					return token
				}
				return ""
			}
			code := run(context.Background(), tc.args, streams{in: strings.NewReader(tc.stdin), out: &out, err: &errOut}, getenv)
			all := out.String() + errOut.String()
			if diff := cmp.Diff([]any{code, strings.Contains(all, tc.output)}, []any{tc.code, true}); diff != "" {
				t.Errorf("(exit code, output has %q) (-got +want):\n%s\noutput:\n%s", tc.output, diff, all)
			}
		})
	}
}
