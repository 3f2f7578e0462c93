// Command broker runs the credmatrix broker: it swaps OIDC tokens for
// short-lived AWS sessions as the trust policy allows, auditing each first.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/credmatrix/credmatrix/platform/daemon"
	"github.com/credmatrix/credmatrix/services/broker/server"
	"github.com/hashicorp/go-hclog"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := daemon.Main(ctx, daemon.Spec[server.Config]{
		Name:      "broker",
		EnvPrefix: "CREDMATRIX_BROKER",
		Defaults:  server.DefaultConfig(),
		LogLevel:  func(c *server.Config) string { return c.LogLevel },
		Start: func(ctx context.Context, cfg server.Config, log hclog.Logger) (daemon.Service, error) {
			return server.New(ctx, cfg, log)
		},
	}, os.Args, os.Getenv, os.Stderr)
	stop()
	os.Exit(code)
}
