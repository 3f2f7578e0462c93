// Command audit runs the credmatrix audit service: the append-only,
// tamper-evident log of every issuance, denial and key operation.
//
// Two forensic commands read a store directly (read-only), where the
// service runs, even when the service refuses to start on it:
//
//	audit export (--db FILE | --postgres-dsn-file F) --out BUNDLE --public-key-file KEY
//	audit verify (--db FILE | --postgres-dsn-file F) --public-key-file KEY [--checkpoint-file KEPT]
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/credmatrix/credmatrix/platform/daemon"
	"github.com/credmatrix/credmatrix/services/audit/server"
	"github.com/hashicorp/go-hclog"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if len(os.Args) > 1 && (os.Args[1] == "export" || os.Args[1] == "verify") {
		code := forensics(ctx, os.Args[1], os.Args[2:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	code := daemon.Main(ctx, daemon.Spec[server.Config]{
		Name:      "audit",
		EnvPrefix: "CREDMATRIX_AUDIT",
		Defaults:  server.DefaultConfig(),
		LogLevel:  func(c *server.Config) string { return c.LogLevel },
		Start: func(ctx context.Context, cfg server.Config, log hclog.Logger) (daemon.Service, error) {
			return server.New(ctx, cfg, log)
		},
	}, os.Args, os.Getenv, os.Stderr)
	stop()
	os.Exit(code)
}
