// Command keyguard runs credmatrix keyguard: envelope encryption by
// data class and region, every operation audited first.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/credmatrix/credmatrix/platform/daemon"
	"github.com/credmatrix/credmatrix/services/keyguard/server"
	"github.com/hashicorp/go-hclog"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := daemon.Main(ctx, daemon.Spec[server.Config]{
		Name:      "keyguard",
		EnvPrefix: "CREDMATRIX_KEYGUARD",
		Defaults:  server.DefaultConfig(),
		LogLevel:  func(c *server.Config) string { return c.LogLevel },
		Start: func(ctx context.Context, cfg server.Config, log hclog.Logger) (daemon.Service, error) {
			return server.New(ctx, cfg, log)
		},
	}, os.Args, os.Getenv, os.Stderr)
	stop()
	os.Exit(code)
}
