// Command credmatrix is the one CLI of credmatrix: AWS credentials for CI
// jobs (creds), envelope encryption (encrypt, decrypt), the audit log
// (audit) and the local development stack (dev).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], streams{in: os.Stdin, out: os.Stdout, err: os.Stderr}, os.Getenv)
	stop()
	os.Exit(code)
}
