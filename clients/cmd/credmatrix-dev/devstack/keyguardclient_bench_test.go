package devstack_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/clients/keyguardclient"
	"github.com/credmatrix/credmatrix/platform/benchload"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
	"google.golang.org/grpc"
)

// benchStack starts the local stack (audit with its SQLite log, keyguard,
// mTLS over loopback) and returns a keyguard client per caller: each its
// own connection, as separate app instances would have.
func benchStack(b *testing.B) []keyguardv1.KeyguardServiceClient {
	b.Helper()
	dir, err := os.MkdirTemp("", "credmatrix-bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	stack, err := devstack.Start(context.Background(), devstack.Config{StateDir: dir, Ports: devstack.EphemeralPorts()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stack.Close() })
	_, _, addr := stack.Addrs()
	clients := make([]keyguardv1.KeyguardServiceClient, benchCallers)
	for i := range clients {
		conn, err := grpcclient.Dial(stack.PKI().Client("cli", addr))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		clients[i] = keyguardclient.New(conn).RPC()
	}
	return clients
}

// runConcurrent runs b.N calls of call spread over benchCallers goroutines
// and reports ops/s (and items/s when items > 1) and the p50 and p99
// latency of one call.
func runConcurrent(b *testing.B, items int, call func(c keyguardv1.KeyguardServiceClient) error) {
	clients := benchStack(b)
	// Warm up connections and caches.
	for _, c := range clients {
		if err := call(c); err != nil {
			b.Fatal(err)
		}
	}
	start := time.Now()
	benchload.Run(b, benchCallers, "ops", func(i int) error { return call(clients[i]) })
	if items > 1 {
		b.ReportMetric(float64(b.N*items)/time.Since(start).Seconds(), "records/s")
	}
}

// BenchmarkEncrypt1KiB: Encrypt of 1 KiB over mTLS gRPC, every call audited
// durably by the real audit service, 16 concurrent callers.
func BenchmarkEncrypt1KiB(b *testing.B) {
	req := &keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1", Plaintext: make([]byte, 1024), EncryptionContext: map[string]string{"table": "bench"}}
	runConcurrent(b, 1, func(c keyguardv1.KeyguardServiceClient) error {
		_, err := c.Encrypt(context.Background(), req)
		return err
	})
}

// BenchmarkBatchEncrypt1KiB: BatchEncrypt of 100 records of 1 KiB (one
// audit append per batch), 16 concurrent callers.
func BenchmarkBatchEncrypt1KiB(b *testing.B) {
	const n = 100
	req := &keyguardv1.BatchEncryptRequest{}
	for range n {
		req.Items = append(req.Items, &keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1", Plaintext: make([]byte, 1024), EncryptionContext: map[string]string{"table": "bench"}})
	}
	runConcurrent(b, n, func(c keyguardv1.KeyguardServiceClient) error {
		_, err := c.BatchEncrypt(context.Background(), req, grpc.MaxCallRecvMsgSize(8<<20))
		return err
	})
}
