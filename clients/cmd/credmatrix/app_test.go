package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/clients/brokerclient"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		code int
		msg  string
	}{
		{"usage", usagef("--role is required"), exitUsage, "--role is required"},
		{"invalid-argument", status.Error(codes.InvalidArgument, "targets[0].role: required"), exitUsage, "--role: required"},
		{"denied-with-detail", &brokerclient.DeniedError{Rule: "no-prod", Reason: "prod needs a tag", AuditEventID: "e-1", Hint: "credmatrix policy test"}, exitDenied, "reproduce locally"},
		{"unauthenticated", status.Error(codes.Unauthenticated, "token verification failed"), exitDenied, "token verification failed"},
		{"unavailable", status.Error(codes.Unavailable, "audit log unavailable"), exitUnavailable, "retry later"},
		{"exhausted", status.Error(codes.ResourceExhausted, "slow down"), exitUnavailable, "slow down"},
		{"internal", status.Error(codes.Internal, "internal error"), exitError, "Internal"},
		{"plain", errors.New("disk full"), exitError, "disk full"},
		{"wrapped-usage", fmt.Errorf("ctx: %w", usagef("bad")), exitUsage, "bad"},
		{"invalid-argument/flag-named", status.Error(codes.InvalidArgument, "targets[0].duration: must be between 15m and 12h"), exitUsage, "invalid request: --duration: must be"},
		{"setup-is-not-transient", &setupError{svc: brokerService, addr: "b:1", problem: "requires a client certificate", fix: "use the public listener"}, exitUsage, "configuration error: cannot use the broker at b:1"},
		{"unreachable-is-transient", &unavailableError{svc: auditService, problem: "nothing is listening", st: status.New(codes.Unavailable, "x")}, exitUnavailable, "retry later): the audit service is unreachable: nothing is listening"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := classify(tc.err)
			if code != tc.code || !strings.Contains(msg, tc.msg) {
				t.Fatalf("classify = %d %q, want %d containing %q", code, msg, tc.code, tc.msg)
			}
		})
	}
}

func TestParsePairs(t *testing.T) {
	got, err := parsePairs("context", []string{"a=1", "b=x=y", "c="})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, map[string]string{"a": "1", "b": "x=y", "c": ""}); diff != "" {
		t.Fatal(diff)
	}
	for _, bad := range [][]string{{"noequals"}, {"=v"}, {"a=1", "a=2"}} {
		if _, err := parsePairs("context", bad); err == nil {
			t.Errorf("parsePairs(%q) accepted", bad)
		}
	}
}

func session() *brokerv1.Session {
	return &brokerv1.Session{
		Credentials: &brokerv1.Credentials{
			AccessKeyId: "ASIAEXAMPLEEXAMPLE12", SecretAccessKey: "se'cret", SessionToken: "tok$en",
			Expiration: timestamppb.New(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)),
		},
		AccountId: "111111111111", Role: "deploy", Region: "eu-west-1",
	}
}

func TestWriteSessionCredentialProcess(t *testing.T) {
	var b bytes.Buffer
	if err := writeSession(&b, "credential-process", session(), func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"Version": float64(1), "AccessKeyId": "ASIAEXAMPLEEXAMPLE12", "SecretAccessKey": "se'cret", "SessionToken": "tok$en", "Expiration": "2026-11-27T10:00:00Z"}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Fatalf("credential_process JSON (-got +want):\n%s", diff)
	}
}

// TestWriteSessionEnvIsShellSafe evaluates the env output in a real shell:
// quotes and dollars in values must come through unchanged.
func TestWriteSessionEnvIsShellSafe(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh on PATH")
	}
	var b bytes.Buffer
	if err := writeSession(&b, "env", session(), func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(context.Background(), sh, "-c", b.String()+`printf '%s|%s|%s' "$AWS_SECRET_ACCESS_KEY" "$AWS_SESSION_TOKEN" "$AWS_REGION"`).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(out); got != "se'cret|tok$en|eu-west-1" {
		t.Fatalf("shell saw %q", got)
	}
}

func TestUsageErrors(t *testing.T) {
	noenv := func(string) string { return "" }
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"creds/no-role", []string{"creds", "--account", "a"}, "--role and --account go together"},
		{"creds/no-target", []string{"creds"}, "are required"},
		{"creds/bad-target", []string{"creds", "--target", "deploy"}, "role@account"},
		{"creds/env-with-two-targets", []string{"creds", "--target", "a@b", "--target", "c@d", "--output", "env"}, "one target"},
		{"creds/profile-without-name", []string{"creds", "--target", "a@b", "--output", "aws-profile"}, "name its profile"},
		{"creds/github-env-outside-actions", []string{"creds", "--target", "a@b", "--output", "github-env", "--token-source", "env"}, "no OIDC token"},
		{"serve-credentials/no-role", []string{"serve-credentials"}, "--role and --account are required"},
		{"creds/bad-output", []string{"creds", "--role", "r", "--account", "a", "--output", "xml"}, "--output"},
		{"creds/no-token", []string{"creds", "--role", "r", "--account", "a"}, "no OIDC token"},
		{"unknown-flag", []string{"creds", "--nope"}, "unknown flag"},
		{"audit/bad-kind", []string{"audit", "query", "--kind", "nope"}, "--kind"},
		{"audit/bad-since", []string{"audit", "query", "--since", "yesterday"}, "RFC 3339"},
		{"encrypt/bad-context", []string{"encrypt", "--context", "novalue"}, "key=value"},
		{"unknown-command", []string{"nosuchcmd"}, `unknown command "nosuchcmd"`},
		{"unknown-subcommand", []string{"audit", "nosuch"}, `unknown command "nosuch" for "credmatrix audit"`},
		{"unknown-subcommand/suggestion", []string{"policy", "lnit"}, "did you mean lint?"},
		{"extra-argument", []string{"creds", "extra"}, `unknown command "extra"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), tc.args, streams{in: strings.NewReader(""), out: &out, err: &errb}, noenv)
			if code != exitUsage || !strings.Contains(errb.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want %d containing %q", code, errb.String(), exitUsage, tc.want)
			}
			if out.Len() != 0 {
				t.Fatalf("stdout not empty: %q", out.String())
			}
		})
	}
}

func TestGitHubEnvMasksEverySecret(t *testing.T) {
	path := filepath.Join(t.TempDir(), "github_env")
	var out bytes.Buffer
	s := session()
	if err := writeSession(&out, "github-env", s, func(k string) string {
		if k == "GITHUB_ENV" {
			return path
		}
		return ""
	}); err != nil {
		t.Fatal(err)
	}
	file, _ := os.ReadFile(path)
	for _, want := range []string{"AWS_ACCESS_KEY_ID=ASIAEXAMPLEEXAMPLE12\n", "AWS_SECRET_ACCESS_KEY=se'cret\n", "AWS_SESSION_TOKEN=tok$en\n", "AWS_REGION=eu-west-1\n"} {
		if !strings.Contains(string(file), want) {
			t.Errorf("GITHUB_ENV lacks %q:\n%s", want, file)
		}
	}
	// Every secret is masked before anything else mentions it, and stdout
	// mentions secrets only in ::add-mask:: commands.
	for _, secret := range []string{"se'cret", "tok$en", "ASIAEXAMPLEEXAMPLE12"} {
		if !strings.Contains(out.String(), "::add-mask::"+secret+"\n") {
			t.Errorf("%q not masked", secret)
		}
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "::add-mask::") {
			continue
		}
		if strings.Contains(line, "se'cret") || strings.Contains(line, "tok$en") {
			t.Errorf("unmasked secret on stdout: %q", line)
		}
	}
	if info, _ := os.Stat(path); info.Mode().Perm()&0o077 != 0 {
		t.Errorf("GITHUB_ENV created with mode %v", info.Mode().Perm())
	}
}

func TestSetProfile(t *testing.T) {
	old := "[default]\nregion = us-east-1\n\n[profile prod]\ncredential_process = old\nregion = x\n\n[profile other]\noutput = json\n"
	got := setProfile(old, "prod", []string{"credential_process = new", "region = eu-west-1"})
	want := "[default]\nregion = us-east-1\n\n[profile prod]\ncredential_process = new\nregion = eu-west-1\n[profile other]\noutput = json\n"
	if diff := cmp.Diff(got, want); diff != "" {
		t.Fatalf("replace (-got +want):\n%s", diff)
	}
	got = setProfile("", "dev", []string{"credential_process = x"})
	if got != "[profile dev]\ncredential_process = x\n" {
		t.Fatalf("append to empty: %q", got)
	}
	if got := commandLine([]string{"/opt/my tools/credmatrix", "creds", "--token-exec", `echo "$T"`}); got != `"/opt/my tools/credmatrix" creds --token-exec "echo \"\$T\""` {
		t.Fatalf("commandLine: %s", got)
	}
}

func TestFlagNamesIn(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"targets[0].duration: must be between 15m and 12h", "--duration: must be between 15m and 12h"},
		{"targets[2].region: not in the account's zone", "--region (target 3): not in the account's zone"},
		{"targets[0].unknown_field: x", "targets[0].unknown_field: x"},
		{"data_class: required", "--data-class: required"},
		{"token: exceeds 16384 bytes", "the OIDC token: exceeds 16384 bytes"},
		{"no field here", "no field here"},
	} {
		if got := flagNamesIn(tc.in); got != tc.want {
			t.Errorf("flagNamesIn(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
