package server

import (
	"strings"
	"testing"
)

// TestConfigValidateMetricsAddr: metrics are plain HTTP and may never
// share the gRPC address.
func TestConfigValidateMetricsAddr(t *testing.T) {
	grpcAddr := DefaultConfig().Server.ListenAddr
	tests := []struct {
		name, addr string
		wantErr    bool
	}{
		{"ok/off", "", false},
		{"ok/own-port", "127.0.0.1:9090", false},
		{"attack/grpc-address", grpcAddr, true},
		{"attack/wildcard-on-grpc-port", ":" + grpcAddr[strings.LastIndexByte(grpcAddr, ':')+1:], true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Metrics.ListenAddr = tc.addr
			err := c.Validate()
			got := err != nil && strings.Contains(err.Error(), "metrics.listen_addr")
			if got != tc.wantErr {
				t.Errorf("Validate() = %v; names metrics.listen_addr: %v, want %v", err, got, tc.wantErr)
			}
		})
	}
}
