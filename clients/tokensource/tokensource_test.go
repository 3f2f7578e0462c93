package tokensource

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

// fakeGitHub is the Actions runner's token endpoint.
func fakeGitHub(t *testing.T, status int, body string) (*httptest.Server, *http.Request) {
	t.Helper()
	seen := &http.Request{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		*seen = *r.Clone(context.Background())
		w.WriteHeader(status)
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv, seen
}

func TestGitHubActionsRequestShape(t *testing.T) {
	srv, seen := fakeGitHub(t, 200, `{"count":1,"value":"`+jwt+`"}`)
	src := GitHubActions{RequestURL: srv.URL + "/token?api-version=2.0", RequestToken: "runner-secret", Audience: "credmatrix"}
	tok, err := src.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if tok != jwt {
		t.Fatalf("token %q", tok)
	}
	if got := seen.Header.Get("Authorization"); got != "Bearer runner-secret" {
		t.Errorf("Authorization %q", got)
	}
	if got := seen.URL.Query().Get("audience"); got != "credmatrix" {
		t.Errorf("audience %q", got)
	}
	if got := seen.URL.Query().Get("api-version"); got != "2.0" {
		t.Errorf("the request URL's own query was lost: %q", seen.URL.RawQuery)
	}
}

func TestGitHubActionsErrors(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
		status           int
	}{
		{"http-403", `{"message":"Unable to get ACTIONS_ID_TOKEN_REQUEST_URL env variable"}`, "403", 403},
		{"no-value", `{"count":0}`, "without a token", 200},
		{"not-json", `<html>`, "without a token", 200},
		{"not-a-jwt", `{"value":"abc"}`, "not a JWT", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := fakeGitHub(t, tc.status, tc.body)
			_, err := GitHubActions{RequestURL: srv.URL, RequestToken: "runner-secret"}.Token(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "runner-secret") {
				t.Fatal("error leaks the request token")
			}
		})
	}
	_, err := GitHubActions{}.Token(context.Background())
	if !errors.Is(err, ErrNoToken) || !strings.Contains(err.Error(), "id-token: write") {
		t.Fatalf("unset env: %v", err)
	}
}

func TestFileRereadsEveryCall(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	os.WriteFile(path, []byte(jwt+"\n"), 0o600)
	src := File{Path: path}
	if tok, err := src.Token(context.Background()); err != nil || tok != jwt {
		t.Fatalf("%q %v", tok, err)
	}
	rotated := strings.Replace(jwt, "c2ln", "bmV3", 1)
	os.WriteFile(path, []byte(rotated), 0o600)
	if tok, _ := src.Token(context.Background()); tok != rotated {
		t.Fatalf("rotated token not re-read: %q", tok)
	}
	os.WriteFile(path, []byte(strings.Repeat("a", MaxTokenBytes+10)), 0o600)
	if _, err := src.Token(context.Background()); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("oversized: %v", err)
	}
	if _, err := (File{Path: path + ".missing"}).Token(context.Background()); err == nil {
		t.Fatal("missing file accepted")
	}
}

func TestExec(t *testing.T) {
	tok, err := Exec{Command: []string{"sh", "-c", "echo " + jwt}}.Token(context.Background())
	if err != nil || tok != jwt {
		t.Fatalf("%q %v", tok, err)
	}
	_, err = Exec{Command: []string{"sh", "-c", "echo boom >&2; exit 3"}}.Token(context.Background())
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("failing command: %v", err)
	}
	_, err = Exec{Command: []string{"sh", "-c", "echo not-a-token"}}.Token(context.Background())
	if err == nil || strings.Contains(err.Error(), "not-a-token") {
		t.Fatalf("bad output must fail without echoing it: %v", err)
	}
}

func TestDetect(t *testing.T) {
	noFile := func(string) error { return os.ErrNotExist }
	hasFile := func(string) error { return nil }
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"github", Options{Getenv: env("ACTIONS_ID_TOKEN_REQUEST_URL", "http://x", "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "t"), Stat: noFile}, "github-actions"},
		{"gitlab", Options{Getenv: env("GITLAB_CI", "true", "CREDMATRIX_ID_TOKEN", jwt), Stat: noFile}, "gitlab"},
		{"env-beats-ci", Options{Getenv: env("CREDMATRIX_OIDC_TOKEN", jwt, "GITLAB_CI", "true"), Stat: noFile}, "env"},
		{"web-identity-file", Options{Getenv: env("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"), Stat: noFile}, "file"},
		{"kubernetes", Options{Getenv: env(), Stat: hasFile}, "file"},
		{"forced-exec", Options{Kind: "exec", Exec: []string{"x"}, Getenv: env("ACTIONS_ID_TOKEN_REQUEST_URL", "http://x")}, "exec"},
		{"forced-gitlab", Options{Kind: "gitlab", Getenv: env()}, "gitlab"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, err := New(tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if src.Name() != tc.want {
				t.Fatalf("detected %s, want %s", src.Name(), tc.want)
			}
		})
	}
	if _, err := New(Options{Getenv: env(), Stat: noFile}); !errors.Is(err, ErrNoToken) {
		t.Fatalf("nothing to detect: %v", err)
	}
	if _, err := New(Options{Kind: "vault", Getenv: env()}); err == nil {
		t.Fatal("unknown kind accepted")
	}
}
