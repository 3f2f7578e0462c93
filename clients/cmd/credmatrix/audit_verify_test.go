package main

import (
	"bufio"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/credmatrix/credmatrix/clients/auditclient/auditclienttest"
)

// golden is the golden audit log the audit service generates (see
// services/audit/internal/goldenlog).
const golden = "../../auditclient/verify/testdata/golden/"

// tamperBundle flips one byte near the end of the leaf bytes of event seq
// in a bundle file.
func tamperBundle(t *testing.T, in, out string, seq int) {
	t.Helper()
	raw, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	sc.Buffer(nil, 1<<20)
	n := 0
	for sc.Scan() {
		line := sc.Text()
		if b64, ok := strings.CutPrefix(line, "event "); ok {
			if n == seq {
				data, err := base64.StdEncoding.DecodeString(b64)
				if err != nil {
					t.Fatal(err)
				}
				data[len(data)-3] ^= 1
				line = "event " + base64.StdEncoding.EncodeToString(data)
			}
			n++
		}
		lines = append(lines, line)
	}
	if err := os.WriteFile(out, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// dropLastCheckpoint copies a bundle without its last checkpoint line.
func dropLastCheckpoint(t *testing.T, in, out string) {
	t.Helper()
	raw, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	last := -1
	for i, l := range lines {
		if strings.HasPrefix(l, "checkpoint ") {
			last = i
		}
	}
	if last < 0 {
		t.Fatal("no checkpoint in the bundle")
	}
	lines = append(lines[:last], lines[last+1:]...)
	if err := os.WriteFile(out, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestAuditVerifyOffline runs verify and replay on the golden bundle and
// on tampered copies, without any service.
func TestAuditVerifyOffline(t *testing.T) {
	dir := t.TempDir()
	c := &cli{t: t, env: map[string]string{"CREDMATRIX_AUDIT_PUBLIC_KEY_FILE": golden + "log.pub"}, transcript: &syncBuffer{}}
	kept := filepath.Join(dir, "kept")
	keptRaw, err := os.ReadFile(golden + "kept.checkpoint")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(kept, keptRaw, 0o600)
	tampered := filepath.Join(dir, "tampered.bundle")
	tamperBundle(t, golden+"log.bundle", tampered, 6)
	// Without its last checkpoint (tree size 13), event 12 is unsigned.
	unsigned := filepath.Join(dir, "unsigned.bundle")
	dropLastCheckpoint(t, golden+"log.bundle", unsigned)

	for _, tc := range []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{"verify/golden", []string{"audit", "verify", "--bundle", golden + "log.bundle", "--checkpoint-file", kept}, exitOK, "verified: 13 events"},
		{"verify/tampered", []string{"audit", "verify", "--bundle", tampered}, exitError, "one of sequences 4 to 7"},
		{"verify/no-key", []string{"audit", "verify", "--bundle", golden + "log.bundle", "--public-key-file", ""}, exitUsage, ""},
		{"verify/wrong-key", []string{"audit", "verify", "--bundle", golden + "log.bundle", "--public-key-file", golden + "kept.checkpoint"}, exitUsage, ""},
		{"replay/sessions", []string{"audit", "replay", "sessions", "--bundle", golden + "log.bundle", "--at", "2026-11-01T09:38:00Z", "--subject", auditclienttest.Alice}, exitOK, "2 session(s) live"},
		{"replay/refuses-tampered", []string{"audit", "replay", "sessions", "--bundle", tampered, "--at", "now"}, exitError, ""},
		{"replay/timeline", []string{"audit", "replay", "timeline", "--bundle", golden + "log.bundle", "--subject", auditclienttest.Billing}, exitOK, "4 event(s)"},
		{"replay/key-ops", []string{"audit", "replay", "key-ops", "--bundle", golden + "log.bundle", "--data-class", "confidential", "--region", "eu-west-1"}, exitOK, "4 event(s)"},
		{"replay/grants", []string{"audit", "replay", "grants", "--bundle", golden + "log.bundle", "--at", "2026-11-01T09:30:00Z"}, exitOK, "1 grant(s) in force"},
		{"replay/bad-time", []string{"audit", "replay", "grants", "--bundle", golden + "log.bundle", "--at", "yesterday"}, exitUsage, ""},
		{"verify/unsigned-tail", []string{"audit", "verify", "--bundle", unsigned}, exitError, "NOT VERIFIED: UNSIGNED events 12 to 12"},
		{"replay/refuses-unsigned", []string{"audit", "replay", "timeline", "--bundle", unsigned, "--subject", auditclienttest.Billing}, exitError, ""},
		{"replay/include-unsigned", []string{"audit", "replay", "timeline", "--bundle", unsigned, "--subject", auditclienttest.Billing, "--include-unsigned"}, exitOK, "4 event(s)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := c.run("", tc.args...)
			if r.code != tc.code || !strings.Contains(r.stdout, tc.contains) {
				t.Errorf("exit %d, want %d; stdout:\n%s\nstderr:\n%s", r.code, tc.code, r.stdout, r.stderr)
			}
			switch tc.name {
			case "replay/refuses-unsigned":
				if !strings.Contains(r.stderr, "--include-unsigned") {
					t.Errorf("the refusal does not say how to include unsigned events:\n%s", r.stderr)
				}
			case "replay/include-unsigned":
				if !strings.Contains(r.stderr, "1 UNSIGNED event(s), 12 to 12") {
					t.Errorf("replay does not say it included unsigned events:\n%s", r.stderr)
				}
			}
		})
	}
	// A successful verify keeps the newest checkpoint.
	got, _ := os.ReadFile(kept)
	if string(got) == string(keptRaw) {
		t.Errorf("--checkpoint-file was not advanced to the newest checkpoint")
	}
}
