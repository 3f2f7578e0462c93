package server

import (
	"context"
	"io"
	"path/filepath"
	"testing"

	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	"github.com/credmatrix/credmatrix/platform/pkitest"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestIdentityThroughServer presents, on the audit service as New wires
// it, client certificates from its own CA whose URI SANs are not exactly
// one SPIFFE ID — including the broker's (an appender) or the operator's
// (a reader) beside another. Append, Query and Subscribe are refused
// Unauthenticated and nothing is written; the proper certificates work.
func TestIdentityThroughServer(t *testing.T) {
	const appender, reader = "spiffe://credmatrix.dev/broker", "spiffe://credmatrix.dev/cli"
	dir := t.TempDir()
	ca := pkitest.New(t)
	leaf := ca.Issue(t, "audit", "spiffe://credmatrix.dev/audit")
	cfg := DefaultConfig()
	cfg.Server.ListenAddr = "127.0.0.1:0"
	cfg.Server.TLS = grpcserver.TLSFiles{CertFile: leaf.CertFile, KeyFile: leaf.KeyFile, ClientCAFile: ca.File}
	cfg.DBPath = filepath.Join(dir, "audit.db")
	cfg.Checkpoint.KeyFile = filepath.Join(dir, "checkpoint.key")
	cfg.Checkpoint.GenerateKey = true
	cfg.AppendPrincipals = []string{appender}
	cfg.ReadPrincipals = []string{reader}
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
	client := func(l pkitest.Leaf) auditv1.AuditServiceClient {
		conn, err := grpcclient.Dial(grpcclient.Config{Target: srv.Addr().String(), CAFile: ca.File, CertFile: l.CertFile, KeyFile: l.KeyFile})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return auditv1.NewAuditServiceClient(conn)
	}
	readerClient := client(ca.Issue(t, "reader", reader))
	size := func() int {
		q, err := readerClient.Query(context.Background(), &auditv1.QueryRequest{})
		if err != nil {
			t.Fatalf("Query as reader: %v", err)
		}
		return len(q.GetEvents())
	}
	if _, err := client(ca.Issue(t, "appender", appender)).Append(context.Background(), &auditv1.AppendRequest{Events: []*auditv1.Event{event("ok")}}); err != nil {
		t.Fatalf("Append as the appender: %v", err)
	}
	for _, good := range []string{appender, reader} {
		for _, bad := range pkitest.BadIdentities(good) {
			t.Run("refuse/"+filepath.Base(good)+"/"+bad.Name, func(t *testing.T) {
				before := size()
				c := client(ca.Issue(t, "bad", bad.URIs...))
				_, aerr := c.Append(context.Background(), &auditv1.AppendRequest{Events: []*auditv1.Event{event("forged-" + bad.Name)}})
				_, qerr := c.Query(context.Background(), &auditv1.QueryRequest{})
				var serr error
				if s, err := c.Subscribe(context.Background(), &auditv1.SubscribeRequest{}); err != nil {
					serr = err
				} else {
					_, serr = s.Recv()
				}
				for name, err := range map[string]error{"Append": aerr, "Query": qerr, "Subscribe": serr} {
					if status.Code(err) != codes.Unauthenticated {
						t.Errorf("%s = %v, want Unauthenticated", name, err)
					}
				}
				if after := size(); after != before {
					t.Errorf("log grew from %d to %d events", before, after)
				}
			})
		}
	}
}
