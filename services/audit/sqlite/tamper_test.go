package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/audittest"
	"github.com/credmatrix/credmatrix/services/audit/sqlite"
)

const logSize = 20

// buildLog appends logSize events to a SQLite log in dir in commit
// batches of `every` events (each batch signed), closes it and returns
// the signer and the last checkpoint (the one an operator would keep).
func buildLog(t *testing.T, dir string, every uint64) (*checkpoint.Signer, []byte) {
	t.Helper()
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(dir, "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	signer := audittest.NewSigner(t)
	log, err := audit.Open(ctx, store, audit.WithSigner(signer))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < logSize; i += int(every) {
		var batch []*auditv1Event
		for j := i; j < min(logSize, i+int(every)); j++ {
			batch = append(batch, audittest.BenchEvent(fmt.Sprintf("ev-%02d", j)))
		}
		if _, err := log.Append(ctx, "spiffe://credmatrix.dev/broker", batch); err != nil {
			t.Fatal(err)
		}
	}
	log.Close()
	cp, ok, err := store.LatestCheckpoint(ctx)
	if err != nil || !ok || cp.Size != logSize {
		t.Fatalf("latest checkpoint = %v, %v, %v; want size %d", cp.Size, ok, err, logSize)
	}
	store.Close()
	return signer, cp.Note
}

// tamper edits the SQLite file directly, as an attacker with file access
// would.
func tamper(t *testing.T, dir string, stmts ...func(db *sql.DB) error) {
	t.Helper()
	db, err := sql.Open("sqlite", filepath.Join(dir, "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, f := range stmts {
		if err := f(db); err != nil {
			t.Fatalf("tamper: %v", err)
		}
	}
}

func exec(q string, args ...any) func(db *sql.DB) error {
	return func(db *sql.DB) error { _, err := db.Exec(q, args...); return err }
}

func flipByte(seq, offsetFromEnd int) func(db *sql.DB) error {
	return func(db *sql.DB) error {
		var data []byte
		if err := db.QueryRow("SELECT data FROM events WHERE sequence = ?", seq).Scan(&data); err != nil {
			return err
		}
		data[len(data)-offsetFromEnd] ^= 0x01
		_, err := db.Exec("UPDATE events SET data = ? WHERE sequence = ?", data, seq)
		return err
	}
}

func swap(a, b int) func(db *sql.DB) error {
	return func(db *sql.DB) error {
		var da, db2 []byte
		if err := db.QueryRow("SELECT data FROM events WHERE sequence = ?", a).Scan(&da); err != nil {
			return err
		}
		if err := db.QueryRow("SELECT data FROM events WHERE sequence = ?", b).Scan(&db2); err != nil {
			return err
		}
		if _, err := db.Exec("UPDATE events SET data = ? WHERE sequence = ?", db2, a); err != nil {
			return err
		}
		_, err := db.Exec("UPDATE events SET data = ? WHERE sequence = ?", da, b)
		return err
	}
}

// forgeCheckpoint replaces the note of the checkpoint at size with one
// signed by another key that claims the same origin.
func forgeCheckpoint(t *testing.T, size int) func(db *sql.DB) error {
	return func(db *sql.DB) error {
		var note []byte
		if err := db.QueryRow("SELECT note FROM checkpoints WHERE tree_size = ?", size).Scan(&note); err != nil {
			return err
		}
		var c checkpointBody
		if err := c.parse(note); err != nil {
			return err
		}
		forged, err := audittest.NewSigner(t).Sign(uint64(size), c.root)
		if err != nil {
			return err
		}
		_, err = db.Exec("UPDATE checkpoints SET note = ? WHERE tree_size = ?", forged, size)
		return err
	}
}

type want struct {
	kind     verify.ProblemKind
	sequence uint64
}

// TestTamperBattery tampers with a real SQLite store in every way the
// issue lists and checks that (1) the service refuses to open it where it
// can tell, and (2) verify of an export pinpoints the sequence number.
func TestTamperBattery(t *testing.T) {
	for _, tc := range []struct {
		name        string
		every       uint64 // checkpoint spacing
		tamper      func(t *testing.T) []func(*sql.DB) error
		useTrusted  bool
		want        want
		wantEnd     uint64 // for interval findings
		openRefused bool
	}{
		{"ok/untouched", 1, func(*testing.T) []func(*sql.DB) error { return nil }, true, want{}, 0, false},
		{"modify/one-byte-in-a-string", 1, func(*testing.T) []func(*sql.DB) error { return []func(*sql.DB) error{flipByte(7, 3)} }, true,
			want{verify.Modified, 7}, 8, true},
		{"modify/one-byte-sparse-checkpoints", 5, func(*testing.T) []func(*sql.DB) error { return []func(*sql.DB) error{flipByte(7, 3)} }, true,
			want{verify.Modified, 5}, 10, true}, // checkpoints at 5, 10, 15, 20
		{"delete/one-event", 1, func(*testing.T) []func(*sql.DB) error {
			return []func(*sql.DB) error{exec("DELETE FROM events WHERE sequence = 7")}
		}, true, want{verify.Missing, 7}, 0, true},
		{"swap/two-events", 1, func(*testing.T) []func(*sql.DB) error { return []func(*sql.DB) error{swap(7, 8)} }, true,
			want{verify.Reordered, 7}, 0, true},
		{"truncate/tail", 1, func(*testing.T) []func(*sql.DB) error {
			return []func(*sql.DB) error{exec("DELETE FROM events WHERE sequence >= 15")}
		}, true, want{verify.Truncated, 15}, 0, true},
		{"rollback/to-older-checkpoint", 1, func(*testing.T) []func(*sql.DB) error {
			return []func(*sql.DB) error{exec("DELETE FROM events WHERE sequence >= 15"), exec("DELETE FROM checkpoints WHERE tree_size > 15")}
		}, true, want{verify.Rollback, 15}, 0, false},
		{"checkpoint/replaced-signature", 1, func(t *testing.T) []func(*sql.DB) error {
			return []func(*sql.DB) error{forgeCheckpoint(t, 10)}
		}, true, want{verify.BadSignature, 10}, 0, false},
		{"checkpoint/replaced-latest-signature", 1, func(t *testing.T) []func(*sql.DB) error {
			return []func(*sql.DB) error{forgeCheckpoint(t, logSize)}
		}, true, want{verify.BadSignature, logSize}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			signer, kept := buildLog(t, dir, tc.every)
			tamper(t, dir, tc.tamper(t)...)

			store, err := sqlite.Open(ctx, filepath.Join(dir, "audit.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			log, err := audit.Open(ctx, store, audit.WithSigner(signer))
			if refused := errors.Is(err, audit.ErrStoreMismatch); refused != tc.openRefused {
				t.Errorf("audit.Open refused = %v (%v), want %v", refused, err, tc.openRefused)
			}
			if err == nil {
				log.Close()
			}

			b, _, err := audit.ExportBundle(ctx, store, signer.Origin(), signer.PublicKey())
			if err != nil {
				t.Fatalf("FromStore: %v", err)
			}
			opts := verify.Options{Key: signer.Verifier()}
			if tc.useTrusted {
				opts.Trusted = kept
			}
			r := verify.Bundle(b, opts)
			var got want
			var gotEnd uint64
			if r.Problem != nil {
				got = want{r.Problem.Kind, r.Problem.Sequence}
				if r.Problem.Kind == verify.Modified {
					gotEnd = r.Problem.End
				}
				t.Logf("verify: %s", r.Problem)
			}
			if diff := cmp.Diff(got, tc.want, cmp.AllowUnexported(want{})); diff != "" {
				t.Errorf("problem (-got +want):\n%s", diff)
			}
			if gotEnd != tc.wantEnd {
				t.Errorf("modified interval end = %d, want %d", gotEnd, tc.wantEnd)
			}
		})
	}
}
