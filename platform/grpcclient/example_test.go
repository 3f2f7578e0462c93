package grpcclient_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credmatrix/credmatrix/platform/devpki"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
)

// Dial the audit service as the broker over mutual TLS, with certificates
// from a development CA, and ask whether it is serving.
func ExampleDial() {
	dir, err := os.MkdirTemp("", "credmatrix-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	pki, err := devpki.Generate(filepath.Join(dir, "pki"), "audit", "broker")
	if err != nil {
		fmt.Println(err)
		return
	}

	srv, err := grpcserver.New(grpcserver.Config{ListenAddr: "127.0.0.1:0", TLS: pki.Files("audit")}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	defer func() { stop(); <-served }()

	conn, err := grpcclient.Dial(pki.Client("broker", srv.Addr().String()))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(resp.GetStatus())
	// Output: SERVING
}
