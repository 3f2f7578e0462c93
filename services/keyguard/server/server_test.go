package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	rings, grants, err := LoadKeyrings(write(`
rings:
  - {data_class: confidential, region: eu-west-1}
grants:
  - principal: spiffe://credmatrix.dev/app
    data_class: confidential
    operations: [encrypt, decrypt]
    regions: [eu-west-1]
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(rings) != 1 || len(grants) != 1 || len(grants[0].Operations) != 2 {
		t.Fatalf("rings %v grants %v", rings, grants)
	}
	for _, tc := range []struct{ name, body, want string }{
		{"unknown-field", "rings:\n  - {data_class: x, region: y, colour: red}\n", "colour"},
		{"unknown-operation", "grants:\n  - {principal: p, data_class: c, operations: [shred], regions: [r]}\n", "grants[0].operations[0]"},
		{"not-yaml", "rings: [", "kg.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := LoadKeyrings(write(tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	c := DefaultConfig()
	c.Backend = "hsm"
	err := c.Validate()
	for _, field := range []string{"keyring_file", "backend"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("Validate() = %v, want it to name %s", err, field)
		}
	}
}
