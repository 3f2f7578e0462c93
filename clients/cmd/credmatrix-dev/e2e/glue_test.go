package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// The CI glue is run here as CI runs it: the template's or action's own
// script text, in a real shell, against the real local stack, with the real
// CLI binary on PATH. Each must stop the job on a denial, an outage or a
// setup error, with no AWS_* variable set, and the job's own script must
// never run.

// repoFile reads a file of the repository.
func repoFile(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// shellRun runs script in shell with exactly env, and returns the exit code
// and the combined output.
func shellRun(t *testing.T, shell []string, script string, env map[string]string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	f := filepath.Join(t.TempDir(), "job.sh")
	if err := os.WriteFile(f, []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, shell[0], append(shell[1:], f)...)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s did not finish in time (hung?):\n%s", strings.Join(shell, " "), out)
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %s: %v", shell[0], err)
	}
	return code, string(out)
}

// awsVars returns the AWS_* lines of an `env` dump.
func awsVars(dump string) []string {
	var out []string
	for _, l := range strings.Split(dump, "\n") {
		if strings.HasPrefix(l, "AWS_") {
			k, _, _ := strings.Cut(l, "=")
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// shells are the shells GitLab runners use: bash with the runner's
// `set -eo pipefail`, POSIX sh (dash here) with `set -e`, and sh with no
// option at all, where only the template's own guard stops the job.
var shells = []struct {
	name     string
	cmd      []string
	preamble string
}{
	{"bash-runner", []string{"/bin/bash", "--noprofile", "--norc"}, "set -eo pipefail\n"},
	{"dash-runner", []string{"/bin/dash"}, "set -e\n"},
	{"dash-plain", []string{"/bin/dash"}, ""},
}

func TestGitLabTemplateFailsClosed(t *testing.T) {
	stack, _, _ := startStack(t)
	var tpl map[string]struct {
		Variables    map[string]string `yaml:"variables"`
		BeforeScript []string          `yaml:"before_script"`
	}
	if err := yaml.Unmarshal(repoFile(t, "clients/gitlab/credmatrix.gitlab-ci.yml"), &tpl); err != nil {
		t.Fatal(err)
	}
	job, ok := tpl[".credmatrix-aws"]
	if !ok || len(job.BeforeScript) == 0 {
		t.Fatalf("the template has no .credmatrix-aws before_script: %+v", tpl)
	}
	c := &cli{t: t, env: envMap(stack.Env())}
	mainToken := strings.TrimSpace(c.devOK("token", "--repository", "acme/app", "--ref", "refs/heads/main"))
	bin := binaries(t).dir

	// As a runner is set up: the public listener, the CA bundle, the
	// job's ID token in the id_tokens variable — no client certificate.
	runner := func(role, account string) map[string]string {
		env := map[string]string{
			"PATH": bin + ":/usr/bin:/bin", "HOME": t.TempDir(),
			"CI_PROJECT_PATH": "acme/app", "CI_PIPELINE_ID": "4242",
			"CREDMATRIX_ID_TOKEN": mainToken,
		}
		for k, v := range job.Variables {
			env[k] = v
		}
		for k, v := range envMap(stack.RunnerEnv()) {
			env[k] = v
		}
		env["CREDMATRIX_ROLE"], env["CREDMATRIX_ACCOUNT"] = role, account
		return env
	}
	for _, tc := range []struct {
		name   string
		env    func() map[string]string
		code   int
		stderr string
	}{
		{"denied", func() map[string]string { return runner("deploy", "prod") }, exitDenied, "access denied"},
		{"denied-with-ambient-credentials", func() map[string]string {
			env := runner("deploy", "prod")
			env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = "AKIAAMBIENTRUNNERKEY", "ambient-secret"
			return env
		}, exitDenied, "access denied"},
		{"broker-down", func() map[string]string {
			env := runner("deploy", "sandbox")
			env["CREDMATRIX_BROKER_ADDR"] = "127.0.0.1:1"
			return env
		}, exitUnavailable, "nothing is listening"},
		{"no-ca-bundle", func() map[string]string {
			env := runner("deploy", "sandbox")
			delete(env, "CREDMATRIX_CA_FILE")
			return env
		}, exitUsage, "configuration error"},
		{"no-role", func() map[string]string { return runner("", "") }, exitUsage, "--role and --account"},
		{"no-id-token", func() map[string]string {
			env := runner("deploy", "sandbox")
			delete(env, "CREDMATRIX_ID_TOKEN")
			return env
		}, exitUsage, "CREDMATRIX_ID_TOKEN"},
		{"allowed", func() map[string]string { return runner("deploy", "sandbox") }, exitOK, ""},
	} {
		for _, sh := range shells {
			t.Run(tc.name+"/"+sh.name, func(t *testing.T) {
				t.Parallel()
				out := t.TempDir()
				env := tc.env()
				env["OUT"] = out
				script := "trap 'env > \"$OUT/exit-env\"' EXIT\n" + sh.preamble +
					strings.Join(job.BeforeScript, "\n") + "\n" +
					"# the job's script\necho ran > \"$OUT/ran\"\nenv > \"$OUT/job-env\"\n"
				code, output := shellRun(t, sh.cmd, script, env)
				if code != tc.code || !strings.Contains(output, tc.stderr) {
					t.Fatalf("exit %d (want %d), output:\n%s", code, tc.code, output)
				}
				exitEnv, err := os.ReadFile(filepath.Join(out, "exit-env"))
				if err != nil {
					t.Fatal(err)
				}
				_, ranErr := os.Stat(filepath.Join(out, "ran"))
				if tc.code != exitOK {
					if ranErr == nil {
						t.Fatal("the job's script ran after credmatrix failed")
					}
					want := []string(nil)
					if env["AWS_ACCESS_KEY_ID"] != "" {
						want = []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} // the runner's own, untouched
					}
					if got := awsVars(string(exitEnv)); strings.Join(got, ",") != strings.Join(want, ",") {
						t.Fatalf("AWS variables at exit: %v, want %v", got, want)
					}
					if strings.Contains(output, "export AWS_") || strings.Contains(output, "ASIA") {
						t.Fatalf("credentials in the job log:\n%s", output)
					}
					return
				}
				if ranErr != nil {
					t.Fatalf("the job's script did not run:\n%s", output)
				}
				jobEnv, _ := os.ReadFile(filepath.Join(out, "job-env"))
				for _, want := range []string{"AWS_ACCESS_KEY_ID=ASIA", "AWS_SECRET_ACCESS_KEY=", "AWS_SESSION_TOKEN=", "AWS_REGION=eu-west-1"} {
					if !strings.Contains(string(jobEnv), want) {
						t.Errorf("the job's environment lacks %s", want)
					}
				}
				if strings.Contains(string(jobEnv), "credmatrix_env=") {
					t.Error("the template leaves its credmatrix_env variable behind")
				}
			})
		}
	}
}

// TestGitHubActionFailsClosed runs the action's credentials step (its
// `run:` script, with the inputs substituted as Actions does) in bash as
// Actions runs it, with the GitHub OIDC token endpoint served here.
func TestGitHubActionFailsClosed(t *testing.T) {
	stack, _, _ := startStack(t)
	var action struct {
		Runs struct {
			Steps []struct {
				ID    string            `yaml:"id"`
				Shell string            `yaml:"shell"`
				Env   map[string]string `yaml:"env"`
				Run   string            `yaml:"run"`
			} `yaml:"steps"`
		} `yaml:"runs"`
	}
	if err := yaml.Unmarshal(repoFile(t, "clients/github-action/action.yml"), &action); err != nil {
		t.Fatal(err)
	}
	var step = action.Runs.Steps[0]
	for _, s := range action.Runs.Steps {
		if s.ID == "creds" {
			step = s
		}
	}
	if step.ID != "creds" || step.Shell != "bash" {
		t.Fatalf("action.yml has no bash step with id creds: %+v", action.Runs.Steps)
	}
	c := &cli{t: t, env: envMap(stack.Env())}
	token := strings.TrimSpace(c.devOK("token", "--repository", "acme/app", "--ref", "refs/heads/main"))
	const requestToken = "actions-request-token"
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+requestToken || r.URL.Query().Get("audience") != "credmatrix" {
			http.Error(w, "bad token request", http.StatusUnauthorized)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"value": token})
	}))
	t.Cleanup(idp.Close)
	expr := regexp.MustCompile(`\$\{\{\s*inputs\.([a-z-]+)\s*\}\}`)
	runner := envMap(stack.RunnerEnv())

	for _, tc := range []struct {
		name    string
		account string
		broker  string
		code    int
	}{
		{"allowed", "sandbox", runner["CREDMATRIX_BROKER_ADDR"], exitOK},
		{"denied", "prod", runner["CREDMATRIX_BROKER_ADDR"], exitDenied},
		{"broker-down", "sandbox", "127.0.0.1:1", exitUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			inputs := map[string]string{
				"broker-addr": tc.broker, "ca-file": runner["CREDMATRIX_CA_FILE"], "role": "deploy", "account": tc.account,
				"audience": "credmatrix",
			}
			env := map[string]string{
				"PATH": binaries(t).dir + ":/usr/bin:/bin", "HOME": dir, "RUNNER_TEMP": dir,
				"GITHUB_ENV": filepath.Join(dir, "github_env"), "GITHUB_OUTPUT": filepath.Join(dir, "github_output"),
				"ACTIONS_ID_TOKEN_REQUEST_URL": idp.URL, "ACTIONS_ID_TOKEN_REQUEST_TOKEN": requestToken,
			}
			for k, v := range step.Env {
				env[k] = expr.ReplaceAllStringFunc(v, func(m string) string { return inputs[expr.FindStringSubmatch(m)[1]] })
			}
			code, output := shellRun(t, []string{"/bin/bash", "--noprofile", "--norc", "-eo", "pipefail"}, step.Run, env)
			ghEnv, _ := os.ReadFile(env["GITHUB_ENV"])
			ghOut, _ := os.ReadFile(env["GITHUB_OUTPUT"])
			if code != tc.code {
				t.Fatalf("exit %d, want %d:\n%s", code, tc.code, output)
			}
			if tc.code != exitOK {
				if len(awsVars(string(ghEnv))) != 0 || strings.Contains(string(ghOut), "access-key-id") {
					t.Fatalf("a failed step left credentials for the next steps:\nGITHUB_ENV:\n%s\nGITHUB_OUTPUT:\n%s", ghEnv, ghOut)
				}
				return
			}
			if !strings.Contains(string(ghEnv), "AWS_ACCESS_KEY_ID=ASIA") || !strings.Contains(string(ghOut), "access-key-id=ASIA") {
				t.Fatalf("allowed step: GITHUB_ENV:\n%s\nGITHUB_OUTPUT:\n%s\noutput:\n%s", ghEnv, ghOut, output)
			}
			if !strings.Contains(output, "::add-mask::") {
				t.Fatalf("the secrets are not masked in the log:\n%s", output)
			}
		})
	}
}

// TestServeCredentialsExample runs the background recipe of
// `credmatrix serve-credentials --help`, as printed, in sh: it must
// serve credentials to the rest of the script (read here by the AWS CLI
// when installed, and over HTTP), stop with the script, and fail closed
// when the session is denied or the broker is down.
func TestServeCredentialsExample(t *testing.T) {
	stack, _, _ := startStack(t)
	c := &cli{t: t, env: envMap(stack.Env())}
	help := c.ok("", "serve-credentials", "--help")
	_, after, ok := strings.Cut(help, "# Serve in the background")
	if !ok {
		t.Fatalf("the help has no background example:\n%s", help)
	}
	var recipe []string
	for _, l := range strings.Split(after, "\n")[1:] {
		if strings.TrimSpace(l) == "" {
			break
		}
		recipe = append(recipe, strings.TrimPrefix(l, "  "))
	}
	if len(recipe) < 3 || !strings.Contains(recipe[0], "--background") || recipe[len(recipe)-1] != "terraform apply" {
		t.Fatalf("unexpected example %q", recipe)
	}
	// The script's own work instead of terraform: read the credentials
	// as every AWS SDK does, from the container endpoint.
	work := `echo ran > "$OUT/ran"
printf '%s\n%s\n%s\n' "$AWS_CONTAINER_CREDENTIALS_FULL_URI" "$AWS_CONTAINER_AUTHORIZATION_TOKEN" "$CREDMATRIX_SERVE_PID" > "$OUT/served"
if [ -x /usr/bin/aws ]; then /usr/bin/aws configure export-credentials --format process > "$OUT/aws.json"; fi`
	script := strings.Join(recipe[:len(recipe)-1], "\n") + "\n" + work + "\n"
	tagToken := strings.TrimSpace(c.devOK("token", "--repository", "acme/app", "--ref", "refs/tags/v1.4.0"))
	mainToken := strings.TrimSpace(c.devOK("token", "--repository", "acme/app", "--ref", "refs/heads/main"))
	runner := envMap(stack.RunnerEnv())

	for _, tc := range []struct {
		name, token, broker string
		code                int
	}{
		{"serves", tagToken, runner["CREDMATRIX_BROKER_ADDR"], exitOK},
		{"denied", mainToken, runner["CREDMATRIX_BROKER_ADDR"], exitDenied},
		{"broker-down", tagToken, "127.0.0.1:1", exitUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			env := map[string]string{
				"PATH": binaries(t).dir + ":/usr/bin:/bin", "HOME": out, "OUT": out, "TMPDIR": out,
				"CREDMATRIX_OIDC_TOKEN": tc.token, "CREDMATRIX_BROKER_ADDR": tc.broker, "CREDMATRIX_CA_FILE": runner["CREDMATRIX_CA_FILE"],
			}
			code, output := shellRun(t, []string{"/bin/sh"}, script, env)
			if code != tc.code {
				t.Fatalf("exit %d, want %d:\n%s", code, tc.code, output)
			}
			_, ranErr := os.Stat(filepath.Join(out, "ran"))
			if tc.code != exitOK {
				if ranErr == nil || strings.Contains(output, "export ") {
					t.Fatalf("the script went on after a failure:\n%s", output)
				}
				return
			}
			served, err := os.ReadFile(filepath.Join(out, "served"))
			if err != nil {
				t.Fatalf("the script did not run: %v\n%s", err, output)
			}
			lines := strings.Split(strings.TrimSpace(string(served)), "\n")
			if len(lines) != 3 || !strings.HasPrefix(lines[0], "http://127.0.0.1:") || len(lines[1]) < 32 {
				t.Fatalf("served variables %q", lines)
			}
			pid, err := strconv.Atoi(lines[2])
			if err != nil {
				t.Fatalf("CREDMATRIX_SERVE_PID %q", lines[2])
			}
			if _, err := os.Stat("/usr/bin/aws"); err == nil {
				var cp credentialProcess
				b, _ := os.ReadFile(filepath.Join(out, "aws.json"))
				if err := json.Unmarshal(b, &cp); err != nil || !strings.HasPrefix(cp.AccessKeyID, "ASIA") {
					t.Fatalf("the AWS CLI did not get the served credentials: %v %q\n%s", err, b, output)
				}
			}
			// The trap stopped the server with the script.
			deadline := time.Now().Add(20 * time.Second)
			for alive(pid) {
				if time.Now().After(deadline) {
					t.Fatalf("the background server (pid %d) still runs after the script ended", pid)
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(stat), ") ")
	return !strings.HasPrefix(rest, "Z")
}
