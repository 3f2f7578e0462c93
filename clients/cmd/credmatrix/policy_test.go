package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// policySHA is the SHA-256 of testdata/policy.yaml.
var policySHA = func() string {
	b, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		panic(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}()

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
		// The broker's decision, offline: duration asked, caps, scope-down.
		{"test/duration-asked", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--claims", "testdata/claims-main.json", "--role", "deploy", "--account", "dev", "--duration", "20m"}, "", exitOK,
			"duration 20m0s (max duration 1h0m0s)"},
		{"test/duration-capped", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--claims", "testdata/claims-main.json", "--role", "deploy", "--account", "prod", "--duration", "12h"}, "", exitOK,
			"duration 15m0s (max duration 15m0s)"},
		{"test/provider-cap", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--claims", "testdata/claims-main.json", "--role", "deploy", "--account", "dev", "--provider-max", "30m"}, "", exitOK,
			"duration 30m0s"},
		{"test/duration-invalid", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--claims", "testdata/claims-main.json", "--role", "deploy", "--account", "dev", "--duration", "5m"}, "", exitUsage,
			"invalid request: duration: must be between 15m and 12h"},
		{"test/scope-down", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--claims", "testdata/claims-main.json", "--role", "deploy", "--account", "dev", "--scope-down", "testdata/scope-down-allow.json"}, "", exitOK,
			`{"Action":"s3:GetObject","Effect":"Allow","Resource":"*"}`},
		{"test/scope-down-strict", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--claims", "testdata/claims-main.json", "--role", "deploy", "--account", "dev", "--scope-down", "testdata/scope-down-duplicate.json"}, "", exitUsage,
			`invalid request: policy: Statement[0].effect: duplicate key (same as "Effect" but for case)`},
		{"test/policy-digest-matches", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--policy-sha256", policySHA, "--claims", "testdata/claims-main.json", "--role", "deploy", "--account", "dev"}, "", exitOK, "ALLOW"},
		{"test/policy-digest-differs", []string{"policy", "test", "--policy", "testdata/policy.yaml", "--policy-sha256", strings.Repeat("0", 64), "--claims", "testdata/claims-main.json", "--role", "deploy", "--account", "dev"}, "", exitUsage,
			"not " + strings.Repeat("0", 64) + " as the policy that decided"},
		// A denial hint's command line, as the broker prints it for a
		// residency denial: it answers DENY, as the broker did.
		{"test/hint-reproduces-residency", []string{"policy", "test", "--token-env", "TOKEN", "--policy", "testdata/policy.yaml", "--policy-sha256", policySHA,
			"--role", "deploy", "--account", "dev", "--region", "us-east-1", "--time", "2026-11-27T09:00:00Z"}, "", exitDenied,
			`decided by residency: region "us-east-1" is outside residency zone "eu" of account "dev"`},
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
