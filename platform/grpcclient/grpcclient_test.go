package grpcclient_test

import (
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/credmatrix/credmatrix/platform/config"
	"github.com/credmatrix/credmatrix/platform/devpki"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  grpcclient.Config
		want []string
	}{
		{name: "ok/tls-system-roots", cfg: grpcclient.Config{Target: "audit.example:8443"}},
		{name: "ok/mtls", cfg: grpcclient.Config{Target: "dns:///audit:8443", CAFile: "ca", CertFile: "c", KeyFile: "k"}},
		{name: "ok/plaintext-ipv4", cfg: grpcclient.Config{Target: "127.0.0.1:8443", DevPlaintext: true}},
		{name: "ok/plaintext-ipv6", cfg: grpcclient.Config{Target: "[::1]:8443", DevPlaintext: true}},
		{name: "ok/plaintext-localhost", cfg: grpcclient.Config{Target: "localhost:8443", DevPlaintext: true}},
		{name: "ok/plaintext-dns-scheme", cfg: grpcclient.Config{Target: "dns:///127.0.0.1:8443", DevPlaintext: true}},
		{name: "ok/plaintext-passthrough", cfg: grpcclient.Config{Target: "passthrough:///localhost:1", DevPlaintext: true}},
		{name: "ok/plaintext-list", cfg: grpcclient.Config{Target: "127.0.0.1:1,localhost:2", DevPlaintext: true}},
		{name: "ok/list-with-health", cfg: grpcclient.Config{Target: "a.example:1, b.example:2", HealthService: "x"}},
		{name: "refuse/target-missing", cfg: grpcclient.Config{}, want: []string{"config: target: required"}},
		{
			name: "refuse/plaintext-list-with-a-remote",
			cfg:  grpcclient.Config{Target: "127.0.0.1:1,audit.internal:8443", DevPlaintext: true},
			want: []string{`config: dev_plaintext: refused: target "audit.internal:8443" is not a loopback host:port (use 127.0.0.1, ::1 or localhost)`},
		},
		{
			name: "refuse/list-entry-not-host-port",
			cfg:  grpcclient.Config{Target: "a.example:1,dns:///b:2"},
			want: []string{`config: target: list entry "dns:///b:2": want host:port`},
		},
		{
			name: "refuse/plaintext-remote",
			cfg:  grpcclient.Config{Target: "audit.internal:8443", DevPlaintext: true},
			want: []string{`config: dev_plaintext: refused: target "audit.internal:8443" is not a loopback host:port (use 127.0.0.1, ::1 or localhost)`},
		},
		{
			name: "refuse/plaintext-dns-authority-remote",
			cfg:  grpcclient.Config{Target: "dns://8.8.8.8/audit:8443", DevPlaintext: true},
			want: []string{`config: dev_plaintext: refused: target "dns://8.8.8.8/audit:8443" is not a loopback host:port (use 127.0.0.1, ::1 or localhost)`},
		},
		{
			name: "refuse/plaintext-unix-socket",
			cfg:  grpcclient.Config{Target: "unix:///run/audit.sock", DevPlaintext: true},
			want: []string{`config: dev_plaintext: refused: target "unix:///run/audit.sock" is not a loopback host:port (use 127.0.0.1, ::1 or localhost)`},
		},
		{
			name: "refuse/plaintext-with-tls-settings",
			cfg:  grpcclient.Config{Target: "127.0.0.1:1", DevPlaintext: true, CAFile: "ca"},
			want: []string{"config: dev_plaintext: conflicts with TLS settings; set one or the other"},
		},
		{
			name: "refuse/cert-without-key",
			cfg:  grpcclient.Config{Target: "a:1", CertFile: "c"},
			want: []string{"config: key_file: required when cert_file is set"},
		},
		{
			name: "refuse/key-without-cert",
			cfg:  grpcclient.Config{Target: "a:1", KeyFile: "k"},
			want: []string{"config: cert_file: required when key_file is set"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, fe := range config.FieldErrors(tc.cfg.Validate()) {
				got = append(got, fe.Error())
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("Validate mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestDialErrors(t *testing.T) {
	dir := t.TempDir()
	pki, err := devpki.Generate(filepath.Join(dir, "pki"), "broker")
	if err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	tests := []struct {
		name string
		cfg  grpcclient.Config
		want string
	}{
		{
			name: "plaintext-remote",
			cfg:  grpcclient.Config{Target: "10.0.0.1:8443", DevPlaintext: true},
			want: `config: dev_plaintext: refused: target "10.0.0.1:8443" is not a loopback host:port (use 127.0.0.1, ::1 or localhost)`,
		},
		{
			name: "ca-missing",
			cfg:  grpcclient.Config{Target: "127.0.0.1:1", CAFile: missing},
			want: "grpcclient: server CA: read CA bundle: open " + missing + ": no such file or directory",
		},
		{
			name: "ca-not-pem",
			cfg:  grpcclient.Config{Target: "127.0.0.1:1", CAFile: pki.Files("broker").KeyFile},
			want: "grpcclient: server CA: CA bundle " + pki.Files("broker").KeyFile + " holds no PEM certificate",
		},
		{
			name: "client-key-missing",
			cfg:  grpcclient.Config{Target: "127.0.0.1:1", CAFile: pki.CAFile, CertFile: pki.Files("broker").CertFile, KeyFile: missing},
			want: "grpcclient: load client key pair (" + pki.Files("broker").CertFile + ", " + missing + "): open " + missing + ": no such file or directory",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := grpcclient.Dial(tc.cfg)
			if err == nil {
				_ = conn.Close()
				t.Fatal("Dial succeeded, want error")
			}
			if diff := cmp.Diff(err.Error(), tc.want); diff != "" {
				t.Errorf("error mismatch (-got +want):\n%s", diff)
			}
		})
	}
}
