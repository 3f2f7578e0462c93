package sqlite_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"testing"

	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/sqlite"
	"github.com/credmatrix/credmatrix/services/audit/storetest"
)

func open(t *testing.T, dir string) audit.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(dir, "audit.db"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, open)
}

// TestWALOnDisk checks, through an independent connection, that the file
// is in WAL mode (a persistent property of the database file).
func TestWALOnDisk(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	if err := storetest.Append(context.Background(), s, storetest.Events(0, 1, "wal")); err != nil {
		t.Fatalf("Append: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	db, err := sql.Open("sqlite", filepath.Join(dir, "audit.db"))
	if err != nil {
		t.Fatalf("sql.Open: %v", err)
	}
	defer db.Close()
	var mode string
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil {
		t.Fatalf("PRAGMA journal_mode: %v", err)
	}
	if mode != "wal" {
		t.Errorf("journal_mode = %q, want \"wal\"", mode)
	}
	var n int
	if err := db.QueryRow("SELECT count(*) FROM events").Scan(&n); err != nil || n != 1 {
		t.Errorf("events in the file = %d, %v; want 1, nil", n, err)
	}
}

func TestOpenRejectsNonFilePaths(t *testing.T) {
	for _, path := range []string{"", ":memory:", "file:x.db", "x.db?mode=ro"} {
		if s, err := sqlite.Open(context.Background(), path); err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded, want an error", path)
		}
	}
}

func TestOpenRejectsNewerSchema(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.db")
	open(t, dir).Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatalf("sql.Open: %v", err)
	}
	if _, err := db.Exec("PRAGMA user_version = 99"); err != nil {
		t.Fatalf("set user_version: %v", err)
	}
	db.Close()
	if s, err := sqlite.Open(context.Background(), path); err == nil {
		s.Close()
		t.Errorf("Open of a schema newer than the binary succeeded, want an error")
	}
}

// TestOpenReadOnlyRelativePath: the forensic open takes a path relative
// to the working directory ("dir/audit.db" is not a URI host).
func TestOpenReadOnlyRelativePath(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(ctx, filepath.Join(dir, "sub", "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := storetest.Append(ctx, st, storetest.Events(0, 3, "rel")); err != nil {
		t.Fatal(err)
	}
	st.Close()
	t.Chdir(dir)
	ro, err := sqlite.OpenReadOnly(ctx, filepath.Join("sub", "audit.db"))
	if err != nil {
		t.Fatalf("OpenReadOnly of a relative path: %v", err)
	}
	defer ro.Close()
	if h, err := ro.Head(ctx); h != 3 || err != nil {
		t.Fatalf("Head = %d, %v; want 3", h, err)
	}
}
