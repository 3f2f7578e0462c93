package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestTelemetryEnvironment checks that the CLI takes its exporter settings
// from the standard OTEL_* variables and refuses bad ones as usage errors
// naming the variable, before doing anything else.
func TestTelemetryEnvironment(t *testing.T) {
	args := []string{"policy", "lint", "../../devstack/policy.yaml"}
	baseline := run(context.Background(), args, streams{in: strings.NewReader(""), out: &bytes.Buffer{}, err: &bytes.Buffer{}}, func(string) string { return "" })
	tests := []struct {
		name     string
		env      map[string]string
		wantCode int
		wantErr  string
	}{
		{name: "ok/no-variables", wantCode: baseline},
		{name: "ok/exporter-none", env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, wantCode: baseline},
		{name: "ok/sdk-disabled", env: map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, wantCode: baseline},
		{name: "refuse/unknown-exporter", env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, wantCode: exitUsage, wantErr: "OTEL_TRACES_EXPORTER"},
		{name: "refuse/unknown-protocol", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, wantCode: exitUsage, wantErr: "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{name: "refuse/bad-endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://collector"}, wantCode: exitUsage, wantErr: "OTEL_EXPORTER_OTLP_ENDPOINT"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var errb bytes.Buffer
			code := run(context.Background(), args, streams{in: strings.NewReader(""), out: &bytes.Buffer{}, err: &errb}, func(k string) string { return tc.env[k] })
			got := []any{code, tc.wantErr == "" || strings.Contains(errb.String(), tc.wantErr)}
			if diff := cmp.Diff(got, []any{tc.wantCode, true}); diff != "" {
				t.Errorf("(exit code, stderr names the variable) (-got +want):\n%s\nstderr: %s", diff, errb.String())
			}
		})
	}
}
