// Command credmatrix-bench measures the real binaries: it starts audit,
// broker and keyguard as separate processes with the local stack's
// embedded defaults (see package procstack), drives them over mTLS gRPC
// from this process and prints what it measured. `make bench` and
// `make soak` run it.
//
//	credmatrix-bench [flags]        throughput and latency of each figure
//	credmatrix-bench soak [flags]   sustained mixed load; resources at start and end
//
// Figures are printed one per line as
//
//	BENCH <name> ops_per_s=<n> p50_ms=<n> p99_ms=<n> rss_mib=<n> baseline_ratio=<n>
//
// then as a table. Nothing is asserted about speed; the exit status is
// non-zero when a call failed or the stack did not run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// common are the flags of both modes.
type common struct {
	binDir   string
	stateDir string
	keep     bool
	logLevel string
}

func (c *common) register(fs *flag.FlagSet) {
	self, _ := os.Executable()
	fs.StringVar(&c.binDir, "bin-dir", filepath.Dir(self), "directory holding the audit, broker and keyguard binaries (make build: bin/)")
	fs.StringVar(&c.stateDir, "state-dir", "", "state directory of the stack (default: a new temporary directory, removed at the end)")
	fs.BoolVar(&c.keep, "keep", false, "keep the state directory (databases, configurations, the services' logs)")
	fs.StringVar(&c.logLevel, "log-level", "warn", "the services' log level (their logs go to <state-dir>/<service>.log)")
}

// stateDir returns the state directory and how to clean it up.
func (c *common) prepare() (string, func(), error) {
	if c.stateDir != "" {
		return c.stateDir, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "credmatrix-bench-")
	if err != nil {
		return "", nil, err
	}
	return dir, func() {
		if !c.keep {
			os.RemoveAll(dir)
		}
	}, nil
}

func run(ctx context.Context, args []string, out, errw io.Writer, getenv func(string) string) int {
	mode := "bench"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		mode, args = args[0], args[1:]
	}
	var err error
	switch mode {
	case "bench":
		err = runBench(ctx, args, out, errw, getenv)
	case "soak":
		err = runSoak(ctx, args, out, errw, getenv)
	default:
		fmt.Fprintf(errw, "credmatrix-bench: unknown mode %q (want bench or soak)\n", mode)
		return 2
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(errw, "credmatrix-bench: %v\n", err)
		return 2
	default:
		fmt.Fprintf(errw, "credmatrix-bench: %v\n", err)
		return 1
	}
}

type usageError struct{ error }

// durationFlag reads a duration from a flag, falling back to an
// environment variable, then to def.
func envDuration(getenv func(string) string, name string, def time.Duration) (time.Duration, error) {
	v := getenv(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, usageError{fmt.Errorf("%s=%q: want a positive duration such as 20s or 10m", name, v)}
	}
	return d, nil
}
