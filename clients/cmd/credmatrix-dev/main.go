// Command credmatrix-dev runs the whole credmatrix stack on one machine with
// embedded defaults — a generated development CA and mTLS certificates, a
// development OIDC issuer, the audit log in SQLite, the broker with the
// local STS provider, keyguard with a local key ring — and mints
// development tokens for it. `make run` and `make demo` use it. Nothing in
// it is for production. It is a binary of its own so that the user CLI,
// credmatrix, links no server code.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/platform/telemetry"
	"github.com/spf13/cobra"
)

// version is set by the linker (-X main.version=...).
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// Exit codes: 0 ok, 1 error, 2 bad usage.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

type app struct {
	out, err io.Writer
	getenv   func(string) string
}

// usageError marks errors caused by the caller's input.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func run(ctx context.Context, args []string, out, errw io.Writer, getenv func(string) string) int {
	a := &app{out: out, err: errw, getenv: getenv}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(out)
	root.SetErr(errw)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(errw, "credmatrix-dev: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitError
}

// parsePairs parses repeated k=v flags into a map.
func parsePairs(flag string, pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, usagef("--%s %q: want key=value", flag, p)
		}
		if _, dup := m[k]; dup {
			return nil, usagef("--%s: key %q given twice", flag, k)
		}
		m[k] = v
	}
	return m, nil
}

func (a *app) rootCommand() *cobra.Command {
	var (
		stateDir  string
		ephemeral bool
		logLevel  string
	)
	cmd := &cobra.Command{
		Use:   "credmatrix-dev",
		Short: "Run the local credmatrix stack: dev CA and mTLS, dev OIDC issuer, audit, broker, keyguard",
		Long: `credmatrix-dev starts the whole credmatrix stack in one process on loopback, with
embedded defaults: a generated development CA and mTLS certificates, a
development OIDC issuer, the audit log in SQLite, the broker with the local
STS provider and a sample trust policy, and keyguard with a local key ring.
The broker and keyguard also open public listeners (7405 broker, 7406
keyguard; CREDMATRIX_*_PUBLIC_ADDR): TLS without client certificates,
where the OIDC token is the credential, as CI runners use them.
Each service serves Prometheus metrics on its own loopback port
(7411 broker, 7412 keyguard, 7413 audit; CREDMATRIX_*_METRICS_URL).
It writes the connection settings to <state-dir>/env (source it) and runs
until interrupted. Nothing here is for production.`,
		Example: `  credmatrix-dev --state-dir .dev &
  source .dev/env
  export CREDMATRIX_OIDC_TOKEN=$(credmatrix-dev token --repository acme/app --ref refs/heads/main)
  credmatrix creds --role deploy --account sandbox`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if stateDir == "" {
				return usagef("--state-dir is required")
			}
			// Traces get ids (stored in audit events and logs) and are
			// exported when the standard OTEL_* variables ask for it,
			// each span under its own service's name.
			names := devstack.NewServiceNames()
			shutdown, err := telemetry.Setup(cmd.Context(), "credmatrix-dev", a.getenv,
				telemetry.WithSpanProcessor(names), telemetry.WrapExporter(names.Wrap))
			if err != nil {
				return usagef("telemetry: %v", err)
			}
			defer shutdown(context.WithoutCancel(cmd.Context()))
			ports := devstack.DefaultPorts()
			if ephemeral {
				ports = devstack.EphemeralPorts()
			}
			stack, err := devstack.Start(cmd.Context(), devstack.Config{
				StateDir: stateDir, Ports: ports, Log: a.err, LogLevel: logLevel,
			})
			if err != nil {
				return err
			}
			envFile := filepath.Join(stateDir, "env")
			if err := stack.WriteEnvFile(envFile); err != nil {
				stack.Close()
				return err
			}
			fmt.Fprintf(a.out, "credmatrix-dev stack is up; connection settings:\n\n  source %s\n\n", envFile)
			for _, kv := range stack.Env() {
				fmt.Fprintf(a.out, "  export %s\n", kv)
			}
			fmt.Fprintln(a.out, "\nAs a CI runner (public listeners, CA bundle only, the OIDC token as the credential):")
			fmt.Fprintln(a.out, "")
			fmt.Fprintf(a.out, "  env -u CREDMATRIX_CERT_FILE -u CREDMATRIX_KEY_FILE %s credmatrix creds …\n", strings.Join(stack.RunnerEnv(), " "))
			fmt.Fprintln(a.out, "\nCtrl-C stops it.")
			<-cmd.Context().Done()
			return stack.Close()
		},
	}
	f := cmd.Flags()
	f.StringVar(&stateDir, "state-dir", ".dev", "directory for certificates, keys, the audit database and the env file")
	f.BoolVar(&ephemeral, "ephemeral-ports", false, "listen on free ports instead of 7401-7406 (and metrics on 7411-7413)")
	f.StringVar(&logLevel, "log-level", "info", "service log level")
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	cmd.AddCommand(a.devTokenCommand())
	return cmd
}

func (a *app) devTokenCommand() *cobra.Command {
	var (
		repository, ref, event, subject, audience string
		ttl                                       time.Duration
		claims                                    []string
	)
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Mint an OIDC token from the dev stack's issuer (GitHub Actions-style claims)",
		Example: `  export CREDMATRIX_OIDC_TOKEN=$(credmatrix-dev token --repository acme/app --ref refs/heads/main)
  credmatrix-dev token --claim environment=production --event pull_request`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			issuer := a.getenv("CREDMATRIX_DEV_ISSUER")
			secretFile := a.getenv("CREDMATRIX_DEV_MINT_SECRET_FILE")
			if issuer == "" || secretFile == "" {
				return usagef("no dev stack: start 'credmatrix-dev' and source its env file (CREDMATRIX_DEV_ISSUER and CREDMATRIX_DEV_MINT_SECRET_FILE are unset)")
			}
			extra, err := parsePairs("claim", claims)
			if err != nil {
				return err
			}
			req := devstack.MintRequest{
				Repository: repository, Ref: ref, EventName: event, Subject: subject, Audience: audience,
				TTL: ttl.String(), Claims: extra,
			}
			tok, err := mint(cmd.Context(), issuer, secretFile, req)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(a.out, tok)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&repository, "repository", "acme/app", "repository claim (owner/name)")
	f.StringVar(&ref, "ref", "refs/heads/main", "ref claim")
	f.StringVar(&event, "event", "push", "event_name claim")
	f.StringVar(&subject, "sub", "", "sub claim (default: GitHub's repo:<repository>:ref:<ref>)")
	f.StringVar(&audience, "audience", "credmatrix", "aud claim")
	f.DurationVar(&ttl, "ttl", 5*time.Minute, "token lifetime")
	f.StringArrayVar(&claims, "claim", nil, "extra claim key=value (repeatable)")
	return cmd
}

// mint asks the dev issuer's loopback mint endpoint for a token.
func mint(ctx context.Context, issuer, secretFile string, req devstack.MintRequest) (string, error) {
	secret, err := os.ReadFile(secretFile)
	if err != nil {
		return "", usagef("read dev mint secret: %v", err)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return "", err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(issuer, "/")+devstack.MintPath, bytes.NewReader(body))
	if err != nil {
		return "", usagef("CREDMATRIX_DEV_ISSUER: %v", err)
	}
	hreq.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(secret)))
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		return "", fmt.Errorf("dev issuer unreachable (is 'credmatrix-dev' running?): %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("dev issuer: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return strings.TrimSpace(string(b)), nil
}
