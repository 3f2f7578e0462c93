package main_test

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/audittest"
	"github.com/credmatrix/credmatrix/services/audit/sqlite"
)

// hashFiles returns the SHA-256 of every file in dir, by name.
func hashFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			t.Fatal(err)
		}
		f.Close()
		out[e.Name()] = hex.EncodeToString(h.Sum(nil))
	}
	return out
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestForensicOpenIsReadOnly seizes a live store — the database file and
// its WAL, with events that are only in the WAL — and runs 'audit verify
// --db' and 'audit export --db' of the built binary on it: both read the
// WAL's events, and the evidence directory is byte-identical afterwards
// (same files, same SHA-256), with the WAL present, with and without its
// shared-memory file, and with the evidence read-only on disk.
func TestForensicOpenIsReadOnly(t *testing.T) {
	bin := buildAudit(t)
	ctx := context.Background()
	live := t.TempDir()
	db := filepath.Join(live, "audit.db")
	store, err := sqlite.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	signer := audittest.NewSigner(t)
	log, err := audit.Open(ctx, store, audit.WithSigner(signer))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	appendN := func(prefix string, n int) {
		for i := 0; i < n; i += 5 {
			var batch []*auditv1.Event
			for j := i; j < i+5; j++ {
				batch = append(batch, audittest.BenchEvent(fmt.Sprintf("%s-%02d", prefix, j)))
			}
			if _, err := log.Append(ctx, "spiffe://credmatrix.dev/broker", batch); err != nil {
				t.Fatal(err)
			}
		}
	}
	appendN("before", 10)
	// A reader holding a snapshot keeps the WAL checkpointer from copying
	// later frames into the database file: the next events exist only in
	// the WAL.
	reader, err := sql.Open("sqlite", db)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	tx, err := reader.Begin()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRow("SELECT COUNT(*) FROM events").Scan(&n); err != nil || n != 10 {
		t.Fatalf("reader snapshot: %d events, %v", n, err)
	}
	appendN("wal-only", 10)
	pub := filepath.Join(t.TempDir(), "audit.pub")
	if err := os.WriteFile(pub, []byte(signer.PublicKey()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name     string
		withShm  bool
		readOnly bool // the evidence files and directory are read-only on disk
	}{
		{"wal-and-shm", true, false},
		{"wal-without-shm", false, false},
		{"read-only-evidence", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evidence := t.TempDir()
			for _, suffix := range []string{"", "-wal", "-shm"} {
				if suffix == "-shm" && !tc.withShm {
					continue
				}
				copyFile(t, db+suffix, filepath.Join(evidence, "audit.db"+suffix))
			}
			if fi, err := os.Stat(filepath.Join(evidence, "audit.db-wal")); err != nil || fi.Size() == 0 {
				t.Fatalf("the seized WAL is empty or missing: %v", err)
			}
			if tc.readOnly {
				for name := range hashFiles(t, evidence) {
					os.Chmod(filepath.Join(evidence, name), 0o400)
				}
				os.Chmod(evidence, 0o500)
				t.Cleanup(func() { os.Chmod(evidence, 0o700) })
			}
			before := hashFiles(t, evidence)
			out := filepath.Join(t.TempDir(), "out.bundle")
			for _, args := range [][]string{
				{"verify", "--db", filepath.Join(evidence, "audit.db"), "--public-key-file", pub},
				{"export", "--db", filepath.Join(evidence, "audit.db"), "--public-key-file", pub, "--out", out},
			} {
				cmd := exec.Command(bin, args...)
				got, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("audit %s: %v\n%s", strings.Join(args, " "), err, got)
				}
				if !strings.Contains(string(got), "20 events") {
					t.Errorf("audit %s did not read the WAL's events:\n%s", args[0], got)
				}
			}
			after := hashFiles(t, evidence)
			if fmt.Sprint(sorted(after)) != fmt.Sprint(sorted(before)) {
				t.Errorf("the evidence changed:\nbefore %v\nafter  %v", sorted(before), sorted(after))
			}
		})
	}
	tx.Rollback()

	// A store closed cleanly has no WAL: it is opened immutable, and
	// nothing appears beside it.
	t.Run("closed-store-without-wal", func(t *testing.T) {
		evidence := t.TempDir()
		closedDB, closedPub, _ := writeStore(t, evidence)
		if _, err := os.Stat(closedDB + "-wal"); err == nil {
			t.Fatalf("a closed store left a WAL behind")
		}
		before := hashFiles(t, evidence)
		cmd := exec.Command(bin, "verify", "--db", closedDB, "--public-key-file", closedPub)
		got, _ := cmd.CombinedOutput()
		if !strings.Contains(string(got), "20 events") {
			t.Errorf("audit verify of a closed store:\n%s", got)
		}
		if after := hashFiles(t, evidence); fmt.Sprint(sorted(after)) != fmt.Sprint(sorted(before)) {
			t.Errorf("the evidence changed:\nbefore %v\nafter  %v", sorted(before), sorted(after))
		}
	})
}

func sorted(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}
