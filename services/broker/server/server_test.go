package server

import (
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	c := DefaultConfig()
	c.Provider = "vault"
	c.Audit.Target = ""
	err := c.Validate()
	for _, field := range []string{"policy_file", "audit.target", "audit_hmac_key_file", "provider"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("Validate() = %v, want it to name %s", err, field)
		}
	}
}
