package server

import (
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	c := DefaultConfig()
	c.Provider = "vault"
	c.Audit.Target = ""
	c.State.Driver = "mysql"
	c.AdminPrincipals = []string{"cli"}
	c.Limits.PerRole = -1
	err := c.Validate()
	for _, field := range []string{"policy_file", "audit.target", "audit_hmac_key_file", "provider", "state.driver", "admin_principals[0]", "limits"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("Validate() = %v, want it to name %s", err, field)
		}
	}
}

func TestConfigValidateStatePaths(t *testing.T) {
	tests := []struct {
		name, driver, field string
	}{
		{"sqlite-needs-path", "sqlite", "state.sqlite_path"},
		{"postgres-needs-dsn", "postgres", "state.postgres_dsn"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.State.Driver = tc.driver
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("Validate() = %v, want it to name %s", err, tc.field)
			}
		})
	}
}
