package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/credmatrix/credmatrix/clients/devstack"
	"github.com/credmatrix/credmatrix/platform/telemetry"
	"github.com/spf13/cobra"
)

func (a *app) devCommand() *cobra.Command {
	var (
		stateDir  string
		ephemeral bool
		logLevel  string
	)
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the local stack: dev CA and mTLS, dev OIDC issuer, audit, broker, keyguard",
		Long: `dev starts the whole credmatrix stack in one process on loopback, with
embedded defaults: a generated development CA and mTLS certificates, a
development OIDC issuer, the audit log in SQLite, the broker with the local
STS provider and a sample trust policy, and keyguard with a local key ring.
Each service serves Prometheus metrics on its own loopback port
(7411 broker, 7412 keyguard, 7413 audit; CREDMATRIX_*_METRICS_URL).
It writes the connection settings to <state-dir>/env (source it) and runs
until interrupted. Nothing here is for production.`,
		Example: `  credmatrix dev --state-dir .dev &
  source .dev/env
  export CREDMATRIX_OIDC_TOKEN=$(credmatrix dev token --repository acme/app --ref refs/heads/main)
  credmatrix creds --role deploy --account sandbox`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if stateDir == "" {
				return usagef("--state-dir is required")
			}
			// Traces get ids (stored in audit events and logs) and are
			// exported when the standard OTEL_* variables ask for it.
			shutdown, err := telemetry.Setup(cmd.Context(), "credmatrix-dev", a.getenv)
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
			fmt.Fprintf(a.out, "credmatrix dev stack is up; connection settings:\n\n  source %s\n\n", envFile)
			for _, kv := range stack.Env() {
				fmt.Fprintf(a.out, "  export %s\n", kv)
			}
			fmt.Fprintln(a.out, "\nCtrl-C stops it.")
			<-cmd.Context().Done()
			return stack.Close()
		},
	}
	f := cmd.Flags()
	f.StringVar(&stateDir, "state-dir", ".dev", "directory for certificates, keys, the audit database and the env file")
	f.BoolVar(&ephemeral, "ephemeral-ports", false, "listen on free ports instead of 7401-7404 (and metrics on 7411-7413)")
	f.StringVar(&logLevel, "log-level", "info", "service log level")
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
		Example: `  export CREDMATRIX_OIDC_TOKEN=$(credmatrix dev token --repository acme/app --ref refs/heads/main)
  credmatrix dev token --claim environment=production --event pull_request`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			issuer := a.getenv("CREDMATRIX_DEV_ISSUER")
			secretFile := a.getenv("CREDMATRIX_DEV_MINT_SECRET_FILE")
			if issuer == "" || secretFile == "" {
				return usagef("no dev stack: start 'credmatrix dev' and source its env file (CREDMATRIX_DEV_ISSUER and CREDMATRIX_DEV_MINT_SECRET_FILE are unset)")
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
		return "", fmt.Errorf("dev issuer unreachable (is 'credmatrix dev' running?): %w", err)
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
