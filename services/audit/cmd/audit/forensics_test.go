package main_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/audittest"
	"github.com/credmatrix/credmatrix/services/audit/sqlite"
)

// writeStore makes a SQLite audit store of 20 events in commit batches of
// 5 (a signed checkpoint each), and the log's public key file.
func writeStore(t *testing.T, dir string) (db, pub string, signer *checkpoint.Signer) {
	t.Helper()
	ctx := context.Background()
	db = filepath.Join(dir, "audit.db")
	store, err := sqlite.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	signer = audittest.NewSigner(t)
	log, err := audit.Open(ctx, store, audit.WithSigner(signer))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i += 5 {
		var batch []*auditv1.Event
		for j := i; j < i+5; j++ {
			batch = append(batch, audittest.BenchEvent(fmt.Sprintf("ev-%02d", j)))
		}
		if _, err := log.Append(ctx, "spiffe://credmatrix.dev/broker", batch); err != nil {
			t.Fatal(err)
		}
	}
	log.Close()
	store.Close()
	pub = filepath.Join(dir, "audit.pub")
	if err := os.WriteFile(pub, []byte(signer.PublicKey()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return db, pub, signer
}

// TestForensicCommands runs `audit verify --db` and `audit export --db` of
// the built binary on a store file, intact and tampered.
func TestForensicCommands(t *testing.T) {
	bin := buildAudit(t)
	dir := t.TempDir()
	db, pub, signer := writeStore(t, dir)
	run := func(args ...string) (int, string) {
		var out bytes.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		err := cmd.Run()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode(), out.String()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, out.String()
	}

	out := filepath.Join(dir, "out.bundle")
	for _, tc := range []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{"verify/intact", []string{"verify", "--db", db, "--public-key-file", pub}, 0, "verified: 20 events"},
		{"export/intact", []string{"export", "--db", db, "--public-key-file", pub, "--out", out}, 0, "exported 20 events and 4 checkpoints"},
		{"verify/no-key", []string{"verify", "--db", db}, 2, "--public-key-file: required"},
		{"verify/no-db", []string{"verify", "--public-key-file", pub}, 2, "--db: required"},
		{"verify/missing-db", []string{"verify", "--db", filepath.Join(dir, "nope.db"), "--public-key-file", pub}, 2, "--db"},
		{"export/no-out", []string{"export", "--db", db, "--public-key-file", pub}, 2, "--out: required"},
		{"verify/bad-output", []string{"verify", "--db", db, "--public-key-file", pub, "--output", "xml"}, 2, "--output"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, got := run(tc.args...)
			if code != tc.code || !strings.Contains(got, tc.contains) {
				t.Errorf("audit %s: exit %d, want %d containing %q:\n%s", strings.Join(tc.args, " "), code, tc.code, tc.contains, got)
			}
		})
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundle.Read(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if r := verify.Bundle(b, verify.Options{Key: signer.Verifier()}); !r.OK() || r.Events != 20 {
		t.Fatalf("exported bundle: ok=%v events=%d problem=%v", r.OK(), r.Events, r.Problem)
	}

	// Flip one byte of event 7's leaf: verify names its commit batch (5..9).
	sdb, err := sql.Open("sqlite", db)
	if err != nil {
		t.Fatal(err)
	}
	var data []byte
	if err := sdb.QueryRow("SELECT data FROM events WHERE sequence = 7").Scan(&data); err != nil {
		t.Fatal(err)
	}
	data[len(data)-3] ^= 1
	if _, err := sdb.Exec("UPDATE events SET data = ? WHERE sequence = 7", data); err != nil {
		t.Fatal(err)
	}
	sdb.Close()
	code, got := run("verify", "--db", db, "--public-key-file", pub)
	if code != 1 || !strings.Contains(got, "NOT VERIFIED") || !strings.Contains(got, "the modified event is one of sequences 5 to 9") {
		t.Errorf("verify of a tampered store: exit %d:\n%s", code, got)
	}
}
