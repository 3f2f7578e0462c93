package server

import (
	"context"
	"database/sql"
	"fmt"
	"github.com/credmatrix/credmatrix/platform/auditappend"
	"google.golang.org/grpc"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/platform/devpki"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/pgtest"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// start runs an audit server over mTLS with the dev PKI and returns a client
// factory per identity.
func start(t *testing.T, dbPath string, pki *devpki.Bundle) (*Server, func(name string) auditv1.AuditServiceClient) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Server.ListenAddr = "127.0.0.1:0"
	cfg.Server.TLS = pki.Files("audit")
	cfg.DBPath = dbPath
	cfg.Checkpoint.KeyFile = filepath.Join(filepath.Dir(dbPath), "checkpoint.key")
	cfg.Checkpoint.GenerateKey = true
	cfg.AppendPrincipals = []string{devpki.SPIFFEID("broker")}
	cfg.ReadPrincipals = []string{devpki.SPIFFEID("cli")}
	srv, err := New(context.Background(), cfg, hclog.New(&hclog.LoggerOptions{Output: io.Discard}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	client := func(name string) auditv1.AuditServiceClient {
		conn, err := grpcclient.Dial(pki.Client(name, srv.Addr().String()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return auditv1.NewAuditServiceClient(conn)
	}
	return srv, client
}

func event(id string) *auditv1.Event {
	return &auditv1.Event{
		Id: id, Time: timestamppb.New(time.Unix(1_800_000_000, 0)),
		Kind: auditv1.Kind_KIND_SESSION_ISSUE, Decision: auditv1.Decision_DECISION_ALLOW,
	}
}

func TestMTLSRolesAndRestart(t *testing.T) {
	dir := t.TempDir()
	pki, err := devpki.Generate(filepath.Join(dir, "pki"), "audit", "broker", "cli")
	if err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "audit.db")
	ctx := context.Background()

	_, client := start(t, db, pki)
	broker, cli := client("broker"), client("cli")
	resp, err := broker.Append(ctx, &auditv1.AppendRequest{Events: []*auditv1.Event{event("a"), event("b")}})
	if err != nil {
		t.Fatalf("broker Append: %v", err)
	}
	if got := resp.GetResults()[1].GetSequence(); got != 1 {
		t.Fatalf("second sequence = %d, want 1", got)
	}
	if _, err := cli.Append(ctx, &auditv1.AppendRequest{Events: []*auditv1.Event{event("c")}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("cli Append: got %v, want PermissionDenied", err)
	}
	if _, err := broker.Query(ctx, &auditv1.QueryRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("broker Query: got %v, want PermissionDenied", err)
	}
	q, err := cli.Query(ctx, &auditv1.QueryRequest{})
	if err != nil {
		t.Fatalf("cli Query: %v", err)
	}
	if len(q.GetEvents()) != 2 || q.GetEvents()[0].GetSourceService() != devpki.SPIFFEID("broker") {
		t.Fatalf("Query returned %v", q.GetEvents())
	}

	// A second server on the same file continues the sequence.
	_, client2 := start(t, db, pki)
	resp, err = client2("broker").Append(ctx, &auditv1.AppendRequest{Events: []*auditv1.Event{event("d")}})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetResults()[0].GetSequence(); got != 2 {
		t.Fatalf("sequence after reopen = %d, want 2", got)
	}
}

func TestConfigValidate(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DBPath = ""
	err := cfg.Validate()
	for _, field := range []string{"db_path", "append_principals", "read_principals"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("Validate() = %v, want an error naming %s", err, field)
		}
	}
	for _, tc := range []struct {
		name  string
		edit  func(c *Config)
		field string
	}{
		{"store/unknown", func(c *Config) { c.Store = "mysql" }, "store"},
		{"store/postgres-without-dsn", func(c *Config) { c.Store = "postgres" }, "postgres.dsn"},
		{"store/postgres-two-dsns", func(c *Config) { c.Store = "postgres"; c.Postgres.DSN, c.Postgres.DSNFile = "x", "y" }, "postgres.dsn"},
		{"checkpoint/no-key-file", func(c *Config) { c.Checkpoint.KeyFile = "" }, "checkpoint.key_file"},
		{"checkpoint/bad-origin", func(c *Config) { c.Checkpoint.Origin = "a b" }, "checkpoint.origin"},
		{"checkpoint/kept-interval-zero", func(c *Config) { c.Checkpoint.KeptEvery = 0 }, "checkpoint.kept_interval"},
		{"postgres/follow-interval-zero", func(c *Config) { c.Postgres.FollowInterval = 0 }, "postgres.follow_interval"},
		{"commit/queue-below-batch", func(c *Config) { c.Commit.QueueLimit = 10 }, "commit.queue_limit"},
		{"commit/window-too-long", func(c *Config) { c.Commit.Window = time.Minute }, "commit.window"},
		{"commit/no-retry-advice", func(c *Config) { c.Commit.RetryAfter = 0 }, "commit.retry_after"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Server.DevPlaintext = true
			tc.edit(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("Validate() = %v, want an error naming %s", err, tc.field)
			}
		})
	}
}

func TestKeyFileRequiredUnlessGenerated(t *testing.T) {
	cfg := CheckpointConfig{KeyFile: filepath.Join(t.TempDir(), "missing.key")}
	if _, err := LoadSigner(cfg); err == nil || !strings.Contains(err.Error(), "checkpoint.key_file") {
		t.Errorf("LoadSigner without the key file = %v, want an error naming checkpoint.key_file", err)
	}
	cfg.GenerateKey, cfg.Origin = true, "example.com/audit"
	s, err := LoadSigner(cfg)
	if err != nil {
		t.Fatalf("LoadSigner generating: %v", err)
	}
	again, err := LoadSigner(CheckpointConfig{KeyFile: cfg.KeyFile})
	if err != nil || again.KeyID() != s.KeyID() || s.Origin() != "example.com/audit" {
		t.Fatalf("reloading the generated key = %v, %v", again, err)
	}
	if _, err := LoadSigner(CheckpointConfig{KeyFile: cfg.KeyFile, Origin: "other.example/audit"}); err == nil || !strings.Contains(err.Error(), "checkpoint.origin") {
		t.Errorf("LoadSigner with another origin = %v, want an error naming checkpoint.origin", err)
	}
}

// TestRefusesTamperedStore edits one event in the SQLite file behind the
// service's back: the next start refuses the store with a clear error.
func TestRefusesTamperedStore(t *testing.T) {
	dir := t.TempDir()
	pki, err := devpki.Generate(filepath.Join(dir, "pki"), "audit", "broker", "cli")
	if err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "audit.db")
	srv, client := start(t, db, pki)
	if _, err := client("broker").Append(context.Background(), &auditv1.AppendRequest{Events: []*auditv1.Event{event("a"), event("b")}}); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	raw, err := sql.Open("sqlite", db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec("UPDATE events SET data = CAST(replace(CAST(data AS TEXT), 'b', 'c') AS BLOB) WHERE sequence = 1"); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	cfg := DefaultConfig()
	cfg.Server.ListenAddr = "127.0.0.1:0"
	cfg.Server.DevPlaintext = true
	cfg.DBPath = db
	cfg.Checkpoint.KeyFile = filepath.Join(dir, "checkpoint.key")
	_, err = New(context.Background(), cfg, hclog.New(&hclog.LoggerOptions{Output: io.Discard}))
	if err == nil || !strings.Contains(err.Error(), "do not hash to the latest signed checkpoint") {
		t.Fatalf("New on a tampered store = %v, want a refusal naming the checkpoint", err)
	}
}

// TestPostgresStore runs the service on PostgreSQL, configured the way the
// Helm chart does it (store=postgres, the DSN in a file).
func TestPostgresStore(t *testing.T) {
	dir := t.TempDir()
	dsnFile := filepath.Join(dir, "dsn")
	if err := os.WriteFile(dsnFile, []byte(pgtest.Start(t).NewDatabase(t)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Server.ListenAddr = "127.0.0.1:0"
	cfg.Server.DevPlaintext = true
	cfg.Store, cfg.Postgres.DSNFile = "postgres", dsnFile
	cfg.Checkpoint.KeyFile, cfg.Checkpoint.GenerateKey = filepath.Join(dir, "checkpoint.key"), true
	srv, err := New(context.Background(), cfg, hclog.New(&hclog.LoggerOptions{Output: io.Discard}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	conn, err := grpcclient.Dial(grpcclient.Config{Target: srv.Addr().String(), DevPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := auditv1.NewAuditServiceClient(conn)
	// Appends answer UNAVAILABLE until this replica holds the sequencer
	// lock (a moment after start): poll with a deadline.
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
poll:
	for {
		_, err = client.Append(context.Background(), &auditv1.AppendRequest{Events: []*auditv1.Event{event("pg-1")}})
		if err == nil || status.Code(err) != codes.Unavailable {
			break
		}
		select {
		case <-tick.C:
		case <-deadline:
			break poll
		}
	}
	if err != nil {
		t.Fatalf("Append on postgres: %v", err)
	}
	cp, err := client.GetCheckpoint(context.Background(), &auditv1.GetCheckpointRequest{})
	if err != nil || cp.GetTreeSize() != 1 {
		t.Fatalf("GetCheckpoint = %v, %v; want tree size 1", cp, err)
	}
}

// TestReplicasRouteAppendsToTheSequencer runs two replicas on one
// PostgreSQL database behind one client that lists both and checks the
// append health service (as broker and keyguard do): every append goes to
// the sequencer, and when the sequencer stops, appends follow the replica
// that takes over.
func TestReplicasRouteAppendsToTheSequencer(t *testing.T) {
	dir := t.TempDir()
	dsn := pgtest.Start(t).NewDatabase(t)
	keyFile := filepath.Join(dir, "checkpoint.key")
	startReplica := func() (*Server, context.CancelFunc, chan error) {
		cfg := DefaultConfig()
		cfg.Server.ListenAddr = "127.0.0.1:0"
		cfg.Server.DevPlaintext = true
		cfg.Store, cfg.Postgres.DSN = "postgres", dsn
		cfg.Checkpoint.KeyFile, cfg.Checkpoint.GenerateKey = keyFile, true
		srv, err := New(context.Background(), cfg, hclog.New(&hclog.LoggerOptions{Output: io.Discard}))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ctx) }()
		return srv, cancel, done
	}
	a, cancelA, doneA := startReplica()
	b, cancelB, doneB := startReplica()
	defer func() { cancelB(); <-doneB }()
	conn, err := grpcclient.Dial(grpcclient.Config{Target: a.Addr().String() + "," + b.Addr().String(), DevPlaintext: true,
		HealthService: auditappend.AppendHealthService})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := auditv1.NewAuditServiceClient(conn)
	appendOne := func(id string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := client.Append(ctx, &auditv1.AppendRequest{Events: []*auditv1.Event{event(id)}}, grpc.WaitForReady(true))
		return err
	}
	for i := range 20 {
		if err := appendOne(fmt.Sprintf("before-%d", i)); err != nil {
			t.Fatalf("append %d with both replicas up: %v", i, err)
		}
	}
	// Stop whichever is the sequencer; the other takes over.
	first, second := a, b
	if !a.raw.(sequencer).IsSequencer() {
		first, second = b, a
	}
	if first == a {
		cancelA()
		<-doneA
	} else {
		cancelB()
		<-doneB
		defer func() { cancelA(); <-doneA }()
	}
	for i := range 20 {
		if err := appendOne(fmt.Sprintf("after-%d", i)); err != nil {
			t.Fatalf("append %d after the sequencer stopped: %v", i, err)
		}
	}
	if !second.raw.(sequencer).IsSequencer() {
		t.Error("the remaining replica is not the sequencer")
	}
	cp, err := client.GetCheckpoint(context.Background(), &auditv1.GetCheckpointRequest{})
	if err != nil || cp.GetTreeSize() != 40 {
		t.Fatalf("GetCheckpoint = %v, %v; want 40 events", cp, err)
	}
}
