package devstack

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMintEndpointNeedsSecret(t *testing.T) {
	dir := t.TempDir()
	s, err := Start(context.Background(), Config{StateDir: dir, Ports: EphemeralPorts()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	secret, err := os.ReadFile(filepath.Join(dir, "mint-secret"))
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := os.Stat(filepath.Join(dir, "mint-secret")); info.Mode().Perm() != 0o600 {
		t.Fatalf("mint secret mode %v", info.Mode().Perm())
	}
	post := func(auth, body string) int {
		req, _ := http.NewRequest(http.MethodPost, s.IssuerURL()+MintPath, strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		name, auth, body string
		want             int
	}{
		{"ok", strings.TrimSpace(string(secret)), `{}`, http.StatusOK},
		{"no-secret", "", `{}`, http.StatusUnauthorized},
		{"wrong-secret", strings.Repeat("0", 64), `{}`, http.StatusUnauthorized},
		{"issuer-claim-refused", strings.TrimSpace(string(secret)), `{"claims":{"iss":"https://evil"}}`, http.StatusBadRequest},
		{"ttl-too-long", strings.TrimSpace(string(secret)), `{"ttl":"48h"}`, http.StatusBadRequest},
		{"malformed", strings.TrimSpace(string(secret)), `{`, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := post(tc.auth, tc.body); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
		})
	}
}

func TestEnvFile(t *testing.T) {
	dir := t.TempDir()
	s, err := Start(context.Background(), Config{StateDir: dir, Ports: EphemeralPorts()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	path := filepath.Join(dir, "env")
	if err := s.WriteEnvFile(path); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	for _, want := range []string{"export CREDMATRIX_BROKER_ADDR=\"127.0.0.1:", "export CREDMATRIX_CERT_FILE=", "export CREDMATRIX_DEV_ISSUER=\"http://127.0.0.1:"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("env file lacks %q:\n%s", want, b)
		}
	}
}
