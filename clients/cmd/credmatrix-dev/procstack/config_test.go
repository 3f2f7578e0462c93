package procstack

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/platform/config"
	"github.com/credmatrix/credmatrix/platform/devpki"
)

// TestMarshalConfigRoundTrip: each service loads the file MarshalConfig
// writes into exactly the configuration the in-process stack runs.
func TestMarshalConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	pki := &devpki.Bundle{Dir: filepath.Join(dir, "pki"), CAFile: filepath.Join(dir, "pki", "ca.pem")}
	ports := devstack.Ports{
		Audit: "127.0.0.1:1001", Broker: "127.0.0.1:1002", Keyguard: "127.0.0.1:1003",
		AuditMetrics: "127.0.0.1:1011", BrokerMetrics: "127.0.0.1:1012", KeyguardMetrics: "127.0.0.1:1013",
		BrokerPublic: "127.0.0.1:1005",
	}
	cfgs := devstack.NewConfigs(dir, pki, ports, "http://127.0.0.1:1004", ports.Audit)
	cfgs.Broker.AuditBatch.MaxEvents = 17 // a changed int
	cfgs.Audit.Commit.Window = 0          // a duration at its default: not written
	for _, tc := range []struct {
		name      string
		want, got any
	}{
		{"audit", cfgs.Audit, ptr(defaultsOf("audit"))},
		{"broker", cfgs.Broker, ptr(defaultsOf("broker"))},
		{"keyguard", cfgs.Keyguard, ptr(defaultsOf("keyguard"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := MarshalConfig(tc.want, defaultsOf(tc.name))
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(t.TempDir(), tc.name+".yaml")
			if err := os.WriteFile(file, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := config.Load(tc.got, config.Options{Name: tc.name, Args: []string{"--config=" + file}}); err != nil {
				t.Fatalf("load:\n%s\n%v", b, err)
			}
			if diff := cmp.Diff(deref(tc.got), tc.want); diff != "" {
				t.Errorf("loaded config differs (-got +want):\n%s\nfile:\n%s", diff, b)
			}
		})
	}
}

func TestMarshalConfigRefusesMismatchedTypes(t *testing.T) {
	if _, err := MarshalConfig(defaultsOf("audit"), defaultsOf("broker")); err == nil {
		t.Fatal("MarshalConfig of two different config types: no error")
	}
}

// ptr returns a pointer to a copy of v (a struct), for config.Load.
func ptr(v any) any {
	p := reflect.New(reflect.TypeOf(v))
	p.Elem().Set(reflect.ValueOf(v))
	return p.Interface()
}

// deref returns the struct p points to.
func deref(p any) any { return reflect.ValueOf(p).Elem().Interface() }
