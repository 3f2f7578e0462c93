package server

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/credmatrix/credmatrix/platform/auditevent"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/keyfile"
	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/awskms/kmstest"
	"github.com/credmatrix/credmatrix/services/keyguard/sqlite"
)

func TestLoadKeyrings(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "kg.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	k, err := LoadKeyrings(write(`
rings:
  - {data_class: confidential, region: eu-west-1, rotation_period: 720h, max_encryptions: 1000000, min_decrypt_version: 1}
grants:
  - principal: spiffe://credmatrix.dev/app
    data_class: confidential
    operations: [encrypt, decrypt]
    regions: [eu-west-1]
    required_context: {tenant: acme}
    expire_time: 2030-01-01T00:00:00Z
`))
	if err != nil {
		t.Fatal(err)
	}
	rings, grants := k.Rings, k.Grants
	if len(rings) != 1 || len(grants) != 1 || len(grants[0].Operations) != 2 || grants[0].RequiredContext["tenant"] != "acme" || grants[0].ExpireTime.Year() != 2030 {
		t.Fatalf("rings %v grants %v", rings, grants)
	}
	if p := k.Policies[0]; p.RotationPeriod != 720*time.Hour || p.MaxEncryptions != 1000000 || p.MinDecryptVersion != 1 {
		t.Fatalf("policy %+v", p)
	}
	// One spelling (the CLI's) documented and written, the old one read.
	for _, spelling := range []string{"generate-data-key", "generate_data_key"} {
		k, err := LoadKeyrings(write("grants:\n  - {principal: p, data_class: c, operations: [" + spelling + "], regions: [r]}\n"))
		if err != nil || len(k.Grants) != 1 || k.Grants[0].Operations[0] != keyguard.OpGenerateDataKey {
			t.Fatalf("operation %s: %v %+v", spelling, err, k.Grants)
		}
	}
	for _, tc := range []struct{ name, body, want string }{
		{"unknown-field", "rings:\n  - {data_class: x, region: y, colour: red}\n", "colour"},
		{"unknown-operation", "grants:\n  - {principal: p, data_class: c, operations: [shred], regions: [r]}\n", "grants[0].operations[0]: unknown operation \"shred\" (want encrypt, decrypt, generate-data-key, rewrap or describe)"},
		{"not-yaml", "rings: [", "kg.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadKeyrings(write(tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	c := DefaultConfig()
	c.Backend = "hsm"
	c.RotationCheck = 0
	c.Admins = []string{"spiffe://x/*"}
	err := c.Validate()
	for _, field := range []string{"keyring_file", "state.sqlite_path", "audit_hmac_key_file", "backend", "rotation_check", "admins[0]"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("Validate() = %v, want it to name %s", err, field)
		}
	}
}

// TestAWSKMSBackend starts keyguard with the awskms backend against
// local-kms: every ring's key is resolved at start-up, and a ring without
// kms_key, or KMS unreachable, stops it with a message naming the cause.
func TestAWSKMSBackend(t *testing.T) {
	endpoint, client := kmstest.Start(t, "eu-west-1")
	kmstest.CreateKey(t, client, "alias/credmatrix-confidential-eu-west-1")
	t.Setenv("AWS_ACCESS_KEY_ID", kmstest.AccessKeyID)
	t.Setenv("AWS_SECRET_ACCESS_KEY", kmstest.SecretAccessKey)
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "kg.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := DefaultConfig()
	cfg.Server.ListenAddr = "127.0.0.1:0"
	cfg.Server.DevPlaintext = true
	cfg.Audit = grpcclient.Config{Target: "127.0.0.1:1", DevPlaintext: true}
	cfg.State.SQLitePath = filepath.Join(dir, "state.db")
	cfg.AuditHMACKeyFile = hmacKeyFile(t)
	cfg.Backend = "awskms"
	macKey := filepath.Join(dir, "mac.key")
	if err := os.WriteFile(macKey, []byte(strings.Repeat("ab", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.AWSKMS = AWSKMSConfig{MACKeyFile: macKey, Endpoint: endpoint}
	log := hclog.NewNullLogger()
	ctx := context.Background()

	for _, tc := range []struct {
		name, yaml, endpoint, want string
	}{
		{"ok", "rings:\n  - {data_class: confidential, region: eu-west-1, kms_key: alias/credmatrix-confidential-eu-west-1}\n", endpoint, ""},
		{"missing-kms-key", "rings:\n  - {data_class: confidential, region: eu-west-1}\n", endpoint, "ring confidential/eu-west-1: kms_key required with backend awskms"},
		{"unknown-alias", "rings:\n  - {data_class: confidential, region: eu-west-1, kms_key: alias/nope}\n", endpoint, "key not found"},
		{"kms-down", "rings:\n  - {data_class: confidential, region: eu-west-1, kms_key: alias/credmatrix-confidential-eu-west-1}\n", "http://127.0.0.1:1", "key backend unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			c.KeyringFile = write(tc.yaml)
			c.AWSKMS.Endpoint = tc.endpoint
			c.State.SQLitePath = filepath.Join(t.TempDir(), "state.db")
			s, err := New(ctx, c, log)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				s.Stop()
				st, err := sqlite.Open(ctx, c.State.SQLitePath)
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				vs, err := st.KeyVersions(ctx)
				if ring := (keyguard.Ring{DataClass: "confidential", Region: "eu-west-1"}); err != nil || len(vs[ring]) != 1 || len(vs[ring][0].MAC) == 0 {
					t.Fatalf("key versions in the state store: %+v, %v; want version 1 with its MAC", vs, err)
				}
				return
			}
			if err == nil {
				s.Stop()
				t.Fatalf("New succeeded, want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// hmacKeyFile writes a fresh audit HMAC key file.
func hmacKeyFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "audit-hmac.key")
	if _, err := keyfile.Ensure(p, auditevent.MinKeyBytes); err != nil {
		t.Fatal(err)
	}
	return p
}
