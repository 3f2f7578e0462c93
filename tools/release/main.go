// Command release builds what a release of credmatrix is made of, from the
// working tree, and checks that it installs as a user outside this
// repository would install it.
//
//	release proxy -version v0.1.0 -out DIR
//	    a file-system Go module proxy holding every module of go.work at
//	    that version (golang.org/x/mod/zip), siblings required at it.
//	release check -version v0.1.0
//	    builds that proxy, then with GOWORK=off and GOPROXY=file://…:
//	    go install …/clients/cmd/credmatrix@VERSION, runs it, builds an
//	    external module that imports brokerclient, keyguardclient and
//	    auditclient, and runs the client packages' examples from the proxy.
//	release dist -version v0.1.0 [-out dist]
//	    the release binaries (the CLI for linux, darwin and windows, the
//	    services for linux; amd64 and arm64): static, -trimpath, stripped,
//	    version-stamped; SHA256SUMS and a CycloneDX SBOM of the modules each
//	    binary links; then verify-dist on the result.
//	release verify-dist -version v0.1.0 [-dir dist]
//	    checks a dist: every file, checksum, build setting and SBOM entry.
//
// Run it from the repository root (make release-check does).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: release proxy|check|tidy|dist|verify-dist [flags]")
		return 2
	}
	var err error
	switch args[0] {
	case "proxy":
		err = proxyCmd(args[1:])
	case "tidy":
		err = tidyCmd(ctx, args[1:])
	case "check":
		err = checkCmd(ctx, args[1:])
	case "dist":
		err = distCmd(ctx, args[1:])
	case "verify-dist":
		err = verifyDistCmd(ctx, args[1:])
	default:
		fmt.Fprintf(os.Stderr, "release: unknown command %q (want proxy, check, tidy, dist or verify-dist)\n", args[0])
		return 2
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue), errors.Is(err, flag.ErrHelp):
		fmt.Fprintln(os.Stderr, "release:", err)
		return 2
	default:
		fmt.Fprintln(os.Stderr, "release:", err)
		return 1
	}
}

type usageError struct{ error }
