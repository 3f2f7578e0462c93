package postgres_test

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/credmatrix/credmatrix/platform/pgtest"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/tampertest"
)

// tables maps the battery's SQLite table names to PostgreSQL's.
var tables = regexp.MustCompile(`\b(events|checkpoints|event_index|index_state)\b`)

// pgSQL turns a battery statement (SQLite names, ? placeholders) into
// PostgreSQL's.
func pgSQL(q string) string {
	q = tables.ReplaceAllString(q, "audit_$1")
	for i := 1; strings.Contains(q, "?"); i++ {
		q = strings.Replace(q, "?", fmt.Sprintf("$%d", i), 1)
	}
	return q
}

// TestDatabaseWriterBattery runs the database-writer battery on
// PostgreSQL: every edit is detected by verify, start-up and the running
// service.
func TestDatabaseWriterBattery(t *testing.T) {
	c := pgtest.Start(t)
	tampertest.Run(t, tampertest.Backend{
		Name: "postgres",
		Fresh: func(t *testing.T) (func(*testing.T) audit.Store, tampertest.Exec, tampertest.QueryBytes) {
			dsn := c.NewDatabase(t)
			open := func(t *testing.T) audit.Store {
				s := open(t, dsn)
				waitSequencer(t, s)
				return s
			}
			// The attacker's own session.
			conn, err := pgx.Connect(context.Background(), dsn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close(context.Background()) })
			exec := func(t *testing.T, q string, args ...any) {
				t.Helper()
				if _, err := conn.Exec(context.Background(), pgSQL(q), args...); err != nil {
					t.Fatalf("tamper %q: %v", pgSQL(q), err)
				}
			}
			query := func(t *testing.T, q string, args ...any) []byte {
				t.Helper()
				var b []byte
				if err := conn.QueryRow(context.Background(), pgSQL(q), args...).Scan(&b); err != nil {
					t.Fatalf("read %q: %v", pgSQL(q), err)
				}
				return b
			}
			return open, exec, query
		},
	})
}
