package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/credmatrix/credmatrix/clients/credcache"
	"github.com/credmatrix/credmatrix/clients/credserver"
	"github.com/spf13/cobra"
)

func (a *app) serveCredentialsCommand() *cobra.Command {
	var (
		tf     tokenFlags
		t      target
		listen string
		window time.Duration
		reason string
	)
	cmd := &cobra.Command{
		Use:   "serve-credentials [-- command [args...]]",
		Short: "Serve refreshing AWS credentials to any SDK over a loopback credentials endpoint",
		Long: `serve-credentials serves the session on 127.0.0.1 as an AWS container
credentials endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI with a random
AWS_CONTAINER_AUTHORIZATION_TOKEN) and re-mints it from a fresh OIDC token
before it expires, so jobs longer than one session keep working with any AWS
SDK, the AWS CLI or Terraform.

With a command after --, it runs the command with those two variables set and
exits with its exit code. Without one, it prints the exports and serves until
interrupted.`,
		Example: `  credmatrix serve-credentials --role deploy --account prod -- terraform apply
  eval "$(credmatrix serve-credentials --role deploy --account prod &)"   # background`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if t.Role == "" || t.Account == "" {
				return usagef("--role and --account are required")
			}
			src, err := a.tokenSource(&tf)
			if err != nil {
				return err
			}
			fetch := func(ctx context.Context) (credcache.Entry, error) {
				ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
				defer cancel()
				sessions, err := a.issue(ctx, src, reason, []target{t})
				if err != nil {
					return credcache.Entry{}, err
				}
				c := sessions[0].GetCredentials()
				return credcache.Entry{
					AccessKeyID: c.GetAccessKeyId(), SecretAccessKey: c.GetSecretAccessKey(), SessionToken: c.GetSessionToken(),
					Expiration: c.GetExpiration().AsTime(), Region: sessions[0].GetRegion(),
				}, nil
			}
			srv, err := credserver.New(fetch, credserver.WithWindow(window), credserver.WithLogf(func(f string, args ...any) {
				fmt.Fprintf(a.err, f+"\n", args...)
			}))
			if err != nil {
				return err
			}
			// Mint once up front: a denial or an outage shows here, not in
			// the middle of the job.
			if err := srv.Prime(cmd.Context()); err != nil {
				return err
			}
			url, err := srv.Start(listen)
			if err != nil {
				return usageError{err}
			}
			defer srv.Close()
			env := srv.Env(url)
			if len(args) == 0 {
				for _, kv := range env {
					k, v, _ := cutEnv(kv)
					fmt.Fprintf(a.out, "export %s=%s\n", k, shellQuote(v))
				}
				<-cmd.Context().Done()
				return nil
			}
			child := exec.CommandContext(cmd.Context(), args[0], args[1:]...)
			child.Env = append(os.Environ(), env...)
			child.Stdin, child.Stdout, child.Stderr = a.in, a.out, a.err
			err = child.Run()
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				return childExit{code: exit.ExitCode()}
			}
			return err
		},
	}
	tf.register(cmd)
	f := cmd.Flags()
	f.StringVar(&t.Role, "role", "", "role name in the trust policy (required)")
	f.StringVar(&t.Account, "account", "", "account id or name (required)")
	f.StringVar(&t.Region, "region", "", "region (default: the account's home region)")
	f.DurationVar(&t.Duration, "duration", 0, "session duration (default: the role's maximum)")
	f.StringVar(&listen, "listen", "127.0.0.1:0", "loopback address to serve on")
	f.DurationVar(&window, "refresh-window", credcache.DefaultWindow, "re-mint this long before expiry")
	f.StringVar(&reason, "reason", "", "why you need the session (recorded in the audit log)")
	return cmd
}

func cutEnv(kv string) (string, string, bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return kv, "", false
}

// childExit carries a wrapped command's exit code through to run.
type childExit struct{ code int }

func (c childExit) Error() string { return fmt.Sprintf("command exited with code %d", c.code) }
