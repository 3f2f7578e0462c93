package server

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/platform/devpki"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
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
}
