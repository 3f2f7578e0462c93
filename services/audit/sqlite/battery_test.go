package sqlite_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/sqlite"
	"github.com/credmatrix/credmatrix/services/audit/tampertest"
)

// TestDatabaseWriterBattery runs the database-writer battery on SQLite:
// every edit is detected by verify, start-up and the running service.
func TestDatabaseWriterBattery(t *testing.T) {
	tampertest.Run(t, tampertest.Backend{
		Name: "sqlite",
		Fresh: func(t *testing.T) (func(*testing.T) audit.Store, tampertest.Exec, tampertest.QueryBytes) {
			path := filepath.Join(t.TempDir(), "audit.db")
			open := func(t *testing.T) audit.Store {
				s, err := sqlite.Open(context.Background(), path)
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				return s
			}
			// The attacker's own connection to the file.
			db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			exec := func(t *testing.T, q string, args ...any) {
				t.Helper()
				if _, err := db.Exec(q, args...); err != nil {
					t.Fatalf("tamper %q: %v", q, err)
				}
			}
			query := func(t *testing.T, q string, args ...any) []byte {
				t.Helper()
				var b []byte
				if err := db.QueryRow(q, args...).Scan(&b); err != nil {
					t.Fatalf("read %q: %v", q, err)
				}
				return b
			}
			return open, exec, query
		},
	})
}
