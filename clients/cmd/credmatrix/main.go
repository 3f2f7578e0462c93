// Command credmatrix is the user CLI of credmatrix: AWS credentials for CI
// jobs (creds, serve-credentials), envelope encryption (encrypt, decrypt),
// key administration (keyguard), the audit log (audit) and the trust
// policy (policy lint, policy test). It links only the client libraries and
// the contracts — no store, cloud SDK or server (a test guards it) — so it
// starts fast enough to run as an AWS credential_process. The local
// development stack is a separate binary, credmatrix-dev.
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
