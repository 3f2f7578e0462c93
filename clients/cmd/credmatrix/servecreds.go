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
		bg     background
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
interrupted.

With --background it starts a copy of itself that serves in the background,
waits until that copy has minted the first session and is serving, prints the
exports (and CREDMATRIX_SERVE_PID, to stop it) and exits 0. If the first
session is denied or the broker is unreachable, it prints nothing on standard
output and exits non-zero (3 denied, 4 unavailable, …), so a script that
checks the exit code stops there. The copy's log goes to --log-file.

Never eval a command substitution directly: eval ignores the command's exit
code, so a denial would let the script go on without credentials (and on to
whatever ambient credentials the machine has). Assign first, stop on
failure, then eval, as in the example.`,
		Example: `  # Run one command with refreshing credentials:
  credmatrix serve-credentials --role deploy --account prod -- terraform apply

  # Serve in the background for the rest of a script (fails closed):
  creds=$(credmatrix serve-credentials --role deploy --account prod --background) || exit $?
  eval "$creds"
  trap 'kill "$CREDMATRIX_SERVE_PID"' EXIT
  terraform apply`,
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			if bg.readyFD != 0 {
				// The background copy: whatever stops it before it serves
				// goes to the process waiting in the foreground.
				defer func() {
					if err != nil && !bg.reported {
						err = bg.failed(a, err)
					}
				}()
			}
			if t.Role == "" || t.Account == "" {
				return usagef("--role and --account are required")
			}
			if bg.enabled && bg.readyFD == 0 {
				if len(args) > 0 {
					return usagef("--background serves for the rest of a script; to run one command, drop --background and give it after --")
				}
				return a.startInBackground(cmd.Context(), bg.logFile)
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
			if bg.readyFD != 0 {
				if err := bg.ready(env); err != nil {
					return err
				}
				fmt.Fprintf(a.err, "credmatrix: serving credentials for %s at %s until stopped (SIGTERM)\n", t, url)
				<-cmd.Context().Done()
				return nil
			}
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
	f.BoolVar(&bg.enabled, "background", false, "serve from a background copy; print the exports once it serves (exit non-zero, printing nothing, if it cannot)")
	f.StringVar(&bg.logFile, "log-file", "", "with --background: the background copy's log (default: a file in the temporary directory)")
	f.IntVar(&bg.readyFD, readyFDFlag, 0, "internal: file descriptor on which the background copy reports it is serving")
	_ = f.MarkHidden(readyFDFlag)
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
