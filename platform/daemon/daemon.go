// Package daemon is the main function shared by the three credmatrix
// services: load the typed config (file + env + flags), set up logging and
// telemetry, start the service, serve until SIGINT/SIGTERM, drain, exit with
// one code. Each cmd/ main is then a few lines, and the services' own
// server packages stay reusable by the local stack and end-to-end tests.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/credmatrix/credmatrix/platform/config"
	"github.com/credmatrix/credmatrix/platform/logging"
	"github.com/credmatrix/credmatrix/platform/telemetry"
	"github.com/hashicorp/go-hclog"
)

// Exit codes of a service binary.
const (
	ExitOK     = 0
	ExitFailed = 1 // start-up or serving failed
	ExitConfig = 2 // the configuration is invalid
)

// version is the release the binary was built as: release builds set it
// with -ldflags "-X github.com/credmatrix/credmatrix/platform/daemon.version=v0.1.0"
// (make dist does). Every service prints it with --version and logs it at
// start.
var version = "dev"

// Service is a started service.
type Service interface {
	// Addr is where it listens.
	Addr() net.Addr
	// Serve serves until ctx is cancelled, then drains and releases its
	// resources.
	Serve(ctx context.Context) error
}

// Spec describes one service binary.
type Spec[C any] struct {
	// Name is the program and service name ("audit").
	Name string
	// EnvPrefix prefixes its environment variables ("CREDMATRIX_AUDIT").
	EnvPrefix string
	// Defaults is the config before the file, env and flags apply.
	Defaults C
	// LogLevel picks the log level out of the loaded config.
	LogLevel func(*C) string
	// Start builds the service from a valid config.
	Start func(ctx context.Context, cfg C, log hclog.Logger) (Service, error)
}

// Main runs the service described by spec with the process's arguments
// (args[0] is the program name) and returns the exit code.
func Main[C any](ctx context.Context, spec Spec[C], args []string, getenv func(string) string, stderr io.Writer) int {
	if len(args) == 2 && (args[1] == "--version" || args[1] == "-version") {
		// On the diagnostics stream, as --help.
		fmt.Fprintf(stderr, "%s %s\n", spec.Name, version)
		return ExitOK
	}
	cfg := spec.Defaults
	err := config.Load(&cfg, config.Options{
		Name: spec.Name, EnvPrefix: spec.EnvPrefix, Args: args[1:], Getenv: getenv, Usage: stderr,
	})
	if errors.Is(err, config.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: invalid configuration:\n%v\n", spec.Name, err)
		return ExitConfig
	}
	level := "info"
	if spec.LogLevel != nil {
		level = spec.LogLevel(&cfg)
	}
	log := logging.New(stderr, spec.Name, level)

	shutdown, err := telemetry.Setup(ctx, "credmatrix-"+spec.Name, getenv, telemetry.WithLogger(log))
	if err != nil {
		log.Error("telemetry setup failed", "error", err)
		return ExitConfig
	}
	defer func() {
		// The serving context is gone by now; flushing spans gets its own.
		if err := shutdown(context.WithoutCancel(ctx)); err != nil {
			log.Warn("telemetry shutdown", "error", err)
		}
	}()

	svc, err := spec.Start(ctx, cfg, log)
	if err != nil {
		log.Error("start failed", "error", err)
		return ExitFailed
	}
	log.Info("started", "addr", svc.Addr().String(), "version", version)
	if err := svc.Serve(ctx); err != nil {
		log.Error("serve failed", "error", err)
		return ExitFailed
	}
	return ExitOK
}
