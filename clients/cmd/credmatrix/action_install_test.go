package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/credmatrix/credmatrix/platform/pgtest"
	"gopkg.in/yaml.v3"
)

// fakeCLI stands in for a release binary: it answers --version as the real
// CLI does (cobra: "credmatrix version V").
func fakeCLI(version string) string {
	return "#!/bin/sh\necho 'credmatrix version " + version + "'\n"
}

// release writes a release directory root/VERSION holding files and a
// SHA256SUMS of them (sums, when not nil, replaces the computed file).
func release(t *testing.T, root, version string, files map[string]string, sums *string) {
	t.Helper()
	dir := filepath.Join(root, version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var names []string
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, name := range names {
		sum := sha256.Sum256([]byte(files[name]))
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(sum[:]), name)
	}
	content := b.String()
	if sums != nil {
		content = *sums
	}
	if content != "-" {
		if err := os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// allPlatforms is a release's CLI files, each reporting version.
func allPlatforms(version string) map[string]string {
	files := map[string]string{}
	for _, n := range []string{"credmatrix-linux-amd64", "credmatrix-linux-arm64", "credmatrix-darwin-amd64", "credmatrix-darwin-arm64", "credmatrix-windows-amd64.exe"} {
		files[n] = fakeCLI(version)
	}
	return files
}

// TestGitHubActionInstall runs the action's install step (its `run:` with
// its env, the inputs substituted as Actions does) in bash against a
// release served over loopback HTTP or read from file://: the binary for
// the runner's OS and architecture is installed only when SHA256SUMS has
// exactly one matching checksum for it; every other case fails the step and
// installs nothing.
func TestGitHubActionInstall(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "sha256sum"} {
		if _, err := exec.LookPath(tool); err != nil {
			pgtest.MissingDependency(t, tool, "apt-get install "+map[string]string{"sha256sum": "coreutils"}[tool]+tool)
		}
	}
	var action struct {
		Inputs map[string]struct {
			Default string `yaml:"default"`
		} `yaml:"inputs"`
		Runs struct {
			Steps []struct {
				ID    string            `yaml:"id"`
				Shell string            `yaml:"shell"`
				Env   map[string]string `yaml:"env"`
				Run   string            `yaml:"run"`
			} `yaml:"steps"`
		} `yaml:"runs"`
	}
	b, err := os.ReadFile("../../github-action/action.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &action); err != nil {
		t.Fatal(err)
	}
	step := action.Runs.Steps[0]
	if step.ID != "install" || step.Shell != "bash" {
		t.Fatalf("the action's first step is not the bash install step: %+v", step)
	}
	actionPath, err := filepath.Abs("../../github-action")
	if err != nil {
		t.Fatal(err)
	}
	expr := regexp.MustCompile(`\$\{\{\s*(inputs\.[a-z-]+|github\.action_ref)\s*\}\}`)

	const v = "v1.2.3"
	tampered := allPlatforms(v)
	tampered["credmatrix-linux-amd64"] += "# and something else\n"
	sumsOf := func(files map[string]string) string {
		root := t.TempDir()
		release(t, root, v, files, nil)
		b, _ := os.ReadFile(filepath.Join(root, v, "SHA256SUMS"))
		return string(b)
	}
	goodSums := sumsOf(allPlatforms(v))
	withoutLinux := regexp.MustCompile(`(?m)^.*  credmatrix-linux-amd64\n`).ReplaceAllString(goodSums, "")
	doubled := goodSums + regexp.MustCompile(`(?m)^.*  credmatrix-linux-amd64\n`).FindString(goodSums)
	strp := func(s string) *string { return &s }
	older := allPlatforms(v)
	older["credmatrix-linux-amd64"] = fakeCLI("v1.2.2")

	for _, tc := range []struct {
		name      string
		runnerOS  string
		arch      string
		inputs    map[string]string
		actionRef string
		files     map[string]string
		sums      *string // nil: the right SHA256SUMS; "-": none
		fileURL   bool
		wantExe   string // installed file; "" when the step must fail
		wantErr   string
	}{
		{name: "ok/linux-x64-at-release-ref", runnerOS: "Linux", arch: "X64", actionRef: v, files: allPlatforms(v), wantExe: "credmatrix"},
		{name: "ok/linux-arm64", runnerOS: "Linux", arch: "ARM64", actionRef: v, files: allPlatforms(v), wantExe: "credmatrix"},
		{name: "ok/macos-arm64-version-input", runnerOS: "macOS", arch: "ARM64", inputs: map[string]string{"version": v}, actionRef: "main", files: allPlatforms(v), wantExe: "credmatrix"},
		{name: "ok/macos-x64", runnerOS: "macOS", arch: "X64", actionRef: v, files: allPlatforms(v), wantExe: "credmatrix"},
		{name: "ok/windows-x64", runnerOS: "Windows", arch: "X64", actionRef: v, files: allPlatforms(v), wantExe: "credmatrix.exe"},
		{name: "ok/file-url", runnerOS: "Linux", arch: "X64", actionRef: v, files: allPlatforms(v), fileURL: true, wantExe: "credmatrix"},
		{name: "deny/tampered-binary", runnerOS: "Linux", arch: "X64", actionRef: v, files: tampered, sums: &goodSums, wantErr: "SHA256SUMS says"},
		{name: "deny/tampered-binary-file-url", runnerOS: "Linux", arch: "X64", actionRef: v, files: tampered, sums: &goodSums, fileURL: true, wantErr: "SHA256SUMS says"},
		{name: "deny/no-checksum-for-it", runnerOS: "Linux", arch: "X64", actionRef: v, files: allPlatforms(v), sums: &withoutLinux, wantErr: "no single checksum"},
		{name: "deny/two-checksums-for-it", runnerOS: "Linux", arch: "X64", actionRef: v, files: allPlatforms(v), sums: &doubled, wantErr: "no single checksum"},
		{name: "deny/checksum-not-hex", runnerOS: "Linux", arch: "X64", actionRef: v, files: allPlatforms(v), sums: strp("zz  credmatrix-linux-amd64\n"), wantErr: "is not a SHA-256"},
		{name: "deny/no-SHA256SUMS", runnerOS: "Linux", arch: "X64", actionRef: v, files: allPlatforms(v), sums: strp("-"), wantErr: "SHA256SUMS failed"},
		{name: "deny/no-binary-for-platform", runnerOS: "Linux", arch: "X64", actionRef: v, files: map[string]string{"credmatrix-linux-arm64": fakeCLI(v)}, wantErr: "credmatrix-linux-amd64 failed"},
		{name: "deny/another-release-binary", runnerOS: "Linux", arch: "X64", actionRef: v, files: older, wantErr: "reports 'credmatrix version v1.2.2'"},
		{name: "deny/ref-not-a-release", runnerOS: "Linux", arch: "X64", actionRef: "main", files: allPlatforms(v), wantErr: "not a release tag"},
		{name: "deny/hostile-version", runnerOS: "Linux", arch: "X64", inputs: map[string]string{"version": "../../etc"}, files: allPlatforms(v), wantErr: "not a release tag"},
		{name: "deny/unknown-arch", runnerOS: "Linux", arch: "ARM", actionRef: v, files: allPlatforms(v), wantErr: "architecture 'ARM'"},
		{name: "deny/windows-arm64", runnerOS: "Windows", arch: "ARM64", actionRef: v, files: allPlatforms(v), wantErr: "windows/arm64"},
		{name: "deny/plain-http", runnerOS: "Linux", arch: "X64", actionRef: v, inputs: map[string]string{"release-url": "http://releases.example.com"}, wantErr: "want https://"},
		{name: "deny/build-from-source-typo", runnerOS: "Linux", arch: "X64", actionRef: v, inputs: map[string]string{"build-from-source": "yes"}, wantErr: "want true or false"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			if tc.files != nil {
				release(t, root, v, tc.files, tc.sums)
			}
			url := "file://" + root
			if !tc.fileURL {
				srv := httptest.NewServer(http.FileServer(http.Dir(root)))
				t.Cleanup(srv.Close)
				url = srv.URL
			}
			inputs := map[string]string{}
			for k, in := range action.Inputs {
				inputs[k] = in.Default
			}
			inputs["release-url"] = url
			for k, val := range tc.inputs {
				inputs[k] = val
			}
			runnerTemp := t.TempDir()
			githubPath := filepath.Join(runnerTemp, "github_path")
			env := []string{
				"PATH=/usr/bin:/bin", "HOME=" + t.TempDir(),
				"RUNNER_OS=" + tc.runnerOS, "RUNNER_ARCH=" + tc.arch, "RUNNER_TEMP=" + runnerTemp,
				"GITHUB_PATH=" + githubPath, "GITHUB_ACTION_PATH=" + actionPath,
			}
			for k, val := range step.Env {
				env = append(env, k+"="+expr.ReplaceAllStringFunc(val, func(m string) string {
					ref := expr.FindStringSubmatch(m)[1]
					if ref == "github.action_ref" {
						return tc.actionRef
					}
					return inputs[strings.TrimPrefix(ref, "inputs.")]
				}))
			}
			cmd := exec.Command("bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step.Run)
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			installed, _ := filepath.Glob(filepath.Join(runnerTemp, "credmatrix-bin", "*"))
			ghPath, _ := os.ReadFile(githubPath)
			leftovers, _ := filepath.Glob(filepath.Join(runnerTemp, "credmatrix-download.*"))
			if len(leftovers) != 0 {
				t.Errorf("the download directory is left behind: %v", leftovers)
			}
			if tc.wantExe == "" {
				if err == nil {
					t.Fatalf("the step succeeded, want it to fail with %q:\n%s", tc.wantErr, out)
				}
				if !strings.Contains(string(out), tc.wantErr) || !strings.Contains(string(out), "::error") {
					t.Errorf("output lacks an ::error with %q:\n%s", tc.wantErr, out)
				}
				if len(installed) != 0 || len(ghPath) != 0 {
					t.Fatalf("a failed step installed %v, GITHUB_PATH %q", installed, ghPath)
				}
				return
			}
			if err != nil {
				t.Fatalf("step: %v\n%s", err, out)
			}
			exe := filepath.Join(runnerTemp, "credmatrix-bin", tc.wantExe)
			if len(installed) != 1 || installed[0] != exe {
				t.Fatalf("installed %v, want %s", installed, exe)
			}
			if got := strings.TrimSpace(string(ghPath)); got != filepath.Dir(exe) {
				t.Errorf("GITHUB_PATH = %q, want %q", got, filepath.Dir(exe))
			}
			if got, err := exec.Command(exe, "--version").Output(); err != nil || strings.TrimSpace(string(got)) != "credmatrix version "+v {
				t.Errorf("installed binary: %v %q", err, got)
			}
		})
	}
}
