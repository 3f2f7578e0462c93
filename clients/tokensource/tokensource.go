// Package tokensource finds the OIDC ID token a CI job or workload holds:
// GitHub Actions (requested from the runner's token endpoint for an
// audience), GitLab CI (an id_tokens variable), a file (Kubernetes projected
// service-account token, re-read on every use), an environment variable or
// the output of a command. Detect picks the source from the environment.
//
// Tokens are secrets: errors name the source, never the token.
package tokensource

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"time"
)

// MaxTokenBytes bounds what a source accepts; the broker refuses larger
// tokens anyway.
const MaxTokenBytes = 16 << 10

// Source returns a current OIDC token.
type Source interface {
	// Token returns the token. Sources that can refresh (GitHub, file,
	// exec) return a fresh one on every call.
	Token(ctx context.Context) (string, error)
	// Name says where tokens come from, for messages.
	Name() string
}

// ErrNoToken means no source could find a token.
var ErrNoToken = errors.New("no OIDC token")

// GitHubActions requests an ID token from the runner
// (ACTIONS_ID_TOKEN_REQUEST_URL with ACTIONS_ID_TOKEN_REQUEST_TOKEN as
// bearer; the job needs `permissions: id-token: write`).
type GitHubActions struct {
	RequestURL   string
	RequestToken string
	Audience     string
	Client       *http.Client
}

// Name implements Source.
func (GitHubActions) Name() string { return "github-actions" }

// Token implements Source.
func (g GitHubActions) Token(ctx context.Context) (string, error) {
	if g.RequestURL == "" || g.RequestToken == "" {
		return "", fmt.Errorf("github-actions: ACTIONS_ID_TOKEN_REQUEST_URL/ACTIONS_ID_TOKEN_REQUEST_TOKEN unset (does the job have `permissions: id-token: write`?): %w", ErrNoToken)
	}
	u, err := url.Parse(g.RequestURL)
	if err != nil {
		return "", fmt.Errorf("github-actions: ACTIONS_ID_TOKEN_REQUEST_URL is not a URL")
	}
	if g.Audience != "" {
		q := u.Query()
		q.Set("audience", g.Audience)
		u.RawQuery = q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", fmt.Errorf("github-actions: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+g.RequestToken)
	req.Header.Set("Accept", "application/json")
	client := g.Client
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("github-actions: token request failed: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxTokenBytes+1024))
	if err != nil {
		return "", fmt.Errorf("github-actions: read token response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		// The body of an error response is not a token: show a little of it.
		return "", fmt.Errorf("github-actions: token endpoint answered %s: %.200s", resp.Status, bytes.TrimSpace(body))
	}
	var out struct {
		Value string `json:"value"`
	}
	if err := json.Unmarshal(body, &out); err != nil || out.Value == "" {
		return "", fmt.Errorf("github-actions: token endpoint answered without a token (want JSON {\"value\": …})")
	}
	return check("github-actions", out.Value)
}

// GitLab reads an ID token from a CI variable declared under `id_tokens:`
// in .gitlab-ci.yml.
type GitLab struct {
	Variable string
	Getenv   func(string) string
}

// Name implements Source.
func (g GitLab) Name() string { return "gitlab" }

// Token implements Source.
func (g GitLab) Token(context.Context) (string, error) {
	v := strings.TrimSpace(g.Getenv(g.Variable))
	if v == "" {
		return "", fmt.Errorf("gitlab: variable %s is empty (declare it under id_tokens: in .gitlab-ci.yml): %w", g.Variable, ErrNoToken)
	}
	return check("gitlab", v)
}

// File reads the token from a file on every call, so a rotated Kubernetes
// projected token is always current.
type File struct{ Path string }

// Name implements Source.
func (f File) Name() string { return "file" }

// Token implements Source.
func (f File) Token(context.Context) (string, error) {
	fh, err := os.Open(f.Path)
	if err != nil {
		return "", fmt.Errorf("file: %w", err)
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, MaxTokenBytes+1))
	if err != nil {
		return "", fmt.Errorf("file %s: %w", f.Path, err)
	}
	return check("file "+f.Path, strings.TrimSpace(string(b)))
}

// Env reads the token from an environment variable.
type Env struct {
	Variable string
	Getenv   func(string) string
}

// Name implements Source.
func (e Env) Name() string { return "env" }

// Token implements Source.
func (e Env) Token(context.Context) (string, error) {
	v := strings.TrimSpace(e.Getenv(e.Variable))
	if v == "" {
		return "", fmt.Errorf("env: %s is empty: %w", e.Variable, ErrNoToken)
	}
	return check("env "+e.Variable, v)
}

// Exec runs a command and takes its standard output as the token.
type Exec struct {
	Command []string
	Timeout time.Duration
}

// Name implements Source.
func (e Exec) Name() string { return "exec" }

// Token implements Source.
func (e Exec) Token(ctx context.Context) (string, error) {
	if len(e.Command) == 0 {
		return "", fmt.Errorf("exec: no command: %w", ErrNoToken)
	}
	timeout := e.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.Command[0], e.Command[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &limitWriter{w: &stdout, n: MaxTokenBytes + 1}
	cmd.Stderr = &limitWriter{w: &stderr, n: 1024}
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("exec %s: %w: %.200s", e.Command[0], err, bytes.TrimSpace(stderr.Bytes()))
	}
	return check("exec "+e.Command[0], strings.TrimSpace(stdout.String()))
}

type limitWriter struct {
	w io.Writer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) > l.n {
		p = p[:l.n]
	}
	l.n -= len(p)
	if _, err := l.w.Write(p); err != nil {
		return 0, err
	}
	return n, nil
}

// check rejects empty, oversized and obviously non-JWT tokens early, with a
// message that names the source and not the value.
func check(source, tok string) (string, error) {
	switch {
	case tok == "":
		return "", fmt.Errorf("%s: empty token: %w", source, ErrNoToken)
	case len(tok) > MaxTokenBytes:
		return "", fmt.Errorf("%s: token exceeds %d bytes", source, MaxTokenBytes)
	case strings.Count(tok, ".") != 2 || strings.ContainsAny(tok, " \t\n"):
		return "", fmt.Errorf("%s: not a JWT (want header.payload.signature)", source)
	}
	return tok, nil
}

// Options configures Detect and New.
type Options struct {
	// Kind forces a source: auto, github, gitlab, file, env, exec.
	Kind string
	// Audience to request from GitHub Actions.
	Audience string
	// GitLabVariable is the id_tokens variable (default CREDMATRIX_ID_TOKEN).
	GitLabVariable string
	// File is the token file (default: AWS_WEB_IDENTITY_TOKEN_FILE, then the
	// Kubernetes service-account token path when it exists).
	File string
	// EnvVariable is the variable for the env source (default
	// CREDMATRIX_OIDC_TOKEN).
	EnvVariable string
	// Exec is the command for the exec source.
	Exec []string
	// Getenv reads the environment.
	Getenv func(string) string
	// Stat checks whether a file exists (os.Stat by default).
	Stat func(string) error
	// Client is the HTTP client for GitHub Actions.
	Client *http.Client
}

// KubernetesTokenPath is where a pod's projected service-account token is.
const KubernetesTokenPath = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// New returns the source o.Kind names, or detects one for "auto"/"".
// Detection order: explicit file or exec options, the env variable when
// set, GitHub Actions (ACTIONS_ID_TOKEN_REQUEST_URL), GitLab CI
// (GITLAB_CI with the id_tokens variable), AWS_WEB_IDENTITY_TOKEN_FILE, the
// Kubernetes service-account token file.
func New(o Options) (Source, error) {
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	if o.Stat == nil {
		o.Stat = func(p string) error { _, err := os.Stat(p); return err }
	}
	if o.GitLabVariable == "" {
		o.GitLabVariable = "CREDMATRIX_ID_TOKEN"
	}
	if o.EnvVariable == "" {
		o.EnvVariable = "CREDMATRIX_OIDC_TOKEN"
	}
	github := GitHubActions{
		RequestURL: o.Getenv("ACTIONS_ID_TOKEN_REQUEST_URL"), RequestToken: o.Getenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN"),
		Audience: o.Audience, Client: o.Client,
	}
	file := o.File
	if file == "" {
		file = o.Getenv("AWS_WEB_IDENTITY_TOKEN_FILE")
	}
	switch o.Kind {
	case "github":
		return github, nil
	case "gitlab":
		return GitLab{Variable: o.GitLabVariable, Getenv: o.Getenv}, nil
	case "env":
		return Env{Variable: o.EnvVariable, Getenv: o.Getenv}, nil
	case "exec":
		if len(o.Exec) == 0 {
			return nil, errors.New("token source exec needs a command (--token-exec)")
		}
		return Exec{Command: o.Exec}, nil
	case "file":
		if file == "" {
			file = KubernetesTokenPath
		}
		return File{Path: file}, nil
	case "", "auto":
	default:
		return nil, fmt.Errorf("unknown token source %q (want auto, github, gitlab, file, env or exec)", o.Kind)
	}
	switch {
	case o.File != "":
		return File{Path: o.File}, nil
	case len(o.Exec) > 0:
		return Exec{Command: o.Exec}, nil
	case o.Getenv(o.EnvVariable) != "":
		return Env{Variable: o.EnvVariable, Getenv: o.Getenv}, nil
	case github.RequestURL != "":
		return github, nil
	case o.Getenv("GITLAB_CI") != "":
		return GitLab{Variable: o.GitLabVariable, Getenv: o.Getenv}, nil
	case file != "":
		return File{Path: file}, nil
	case o.Stat(KubernetesTokenPath) == nil:
		return File{Path: KubernetesTokenPath}, nil
	}
	return nil, fmt.Errorf("%w: no token source detected; in GitHub Actions grant `permissions: id-token: write`, in GitLab declare id_tokens: %s, in Kubernetes mount a projected token and pass --token-file, or set %s", ErrNoToken, o.GitLabVariable, o.EnvVariable)
}
