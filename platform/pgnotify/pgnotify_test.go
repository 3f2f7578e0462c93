package pgnotify_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credmatrix/credmatrix/platform/pgnotify"
	"github.com/credmatrix/credmatrix/platform/pgtest"
)

func TestListenDeliversAndReportsReconnects(t *testing.T) {
	c := pgtest.Start(t)
	dsn := c.NewDatabase(t)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan string, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		pgnotify.Listen(ctx, cfg, "Odd Channel", func(p string) { got <- p }, nil)
	}()
	next := func() string {
		t.Helper()
		select {
		case p := <-got:
			return p
		case <-time.After(30 * time.Second):
			t.Fatal("no notification within 30s")
			return ""
		}
	}
	if p := next(); p != pgnotify.Reconnected {
		t.Fatalf("first call = %q, want Reconnected", p)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `SELECT pg_notify('Odd Channel', 'v42')`); err != nil {
		t.Fatal(err)
	}
	if p := next(); p != "v42" {
		t.Errorf("payload = %q, want v42", p)
	}

	// Kill the listening session: Listen reconnects and says so.
	if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE pid <> pg_backend_pid() AND datname = current_database() AND query LIKE 'LISTEN%'`); err != nil {
		t.Fatal(err)
	}
	if p := next(); p != pgnotify.Reconnected {
		t.Fatalf("after the session was terminated = %q, want Reconnected", p)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_notify('Odd Channel', 'v43')`); err != nil {
		t.Fatal(err)
	}
	if p := next(); p != "v43" {
		t.Errorf("payload after reconnect = %q, want v43", p)
	}
	cancel()
	<-done
}
