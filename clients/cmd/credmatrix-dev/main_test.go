package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"token/no-stack", []string{"token"}, nil, "no dev stack"},
		{"token/bad-claim", []string{"token", "--claim", "novalue"}, map[string]string{"CREDMATRIX_DEV_ISSUER": "http://127.0.0.1:1", "CREDMATRIX_DEV_MINT_SECRET_FILE": "x"}, "key=value"},
		{"run/no-state-dir", []string{"--state-dir", ""}, nil, "--state-dir"},
		{"run/unknown-flag", []string{"--nope"}, nil, "unknown flag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), tc.args, &out, &errb, func(k string) string { return tc.env[k] })
			if code != exitUsage || !strings.Contains(errb.String(), tc.want) {
				t.Errorf("exit %d, stderr %q; want %d containing %q", code, errb.String(), exitUsage, tc.want)
			}
		})
	}
}
