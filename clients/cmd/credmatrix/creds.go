package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"time"

	"github.com/credmatrix/credmatrix/clients/brokerclient"
	"github.com/credmatrix/credmatrix/clients/credcache"
	"github.com/credmatrix/credmatrix/clients/tokensource"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/spf13/cobra"
)

// tokenFlags choose where the OIDC token comes from.
type tokenFlags struct {
	source, audience, file, envVar, gitlabVar, execCmd string
}

func (f *tokenFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.source, "token-source", "auto", "where the OIDC token comes from: auto, github, gitlab, file, env or exec")
	fl.StringVar(&f.audience, "audience", "credmatrix", "audience to request (GitHub Actions)")
	fl.StringVar(&f.file, "token-file", "", "read the token from this file on every use (Kubernetes projected token)")
	fl.StringVar(&f.envVar, "token-env", "CREDMATRIX_OIDC_TOKEN", "environment variable holding the token (source env)")
	fl.StringVar(&f.gitlabVar, "gitlab-token-var", "CREDMATRIX_ID_TOKEN", "GitLab id_tokens variable holding the token (source gitlab)")
	fl.StringVar(&f.execCmd, "token-exec", "", "command whose output is the token (source exec), e.g. 'vault read -field=token …'")
}

// args returns the flags that reproduce this token choice in a
// credential_process command line (no secrets: names and paths only).
func (f *tokenFlags) args() []string {
	out := []string{"--token-source", f.source, "--audience", f.audience}
	if f.file != "" {
		out = append(out, "--token-file", f.file)
	}
	if f.envVar != "CREDMATRIX_OIDC_TOKEN" {
		out = append(out, "--token-env", f.envVar)
	}
	if f.gitlabVar != "CREDMATRIX_ID_TOKEN" {
		out = append(out, "--gitlab-token-var", f.gitlabVar)
	}
	if f.execCmd != "" {
		out = append(out, "--token-exec", f.execCmd)
	}
	return out
}

func (a *app) tokenSource(f *tokenFlags) (tokensource.Source, error) {
	src, err := tokensource.New(tokensource.Options{
		Kind: f.source, Audience: f.audience, File: f.file, EnvVariable: f.envVar,
		GitLabVariable: f.gitlabVar, Exec: strings.Fields(f.execCmd), Getenv: a.getenv,
	})
	if err != nil {
		return nil, usageError{err}
	}
	return src, nil
}

// target is one --target (or --role/--account) with the profile it goes to.
type target struct {
	brokerclient.Target
	profile string
}

// parseTarget reads role@account[/region][=profile].
func parseTarget(s string) (target, error) {
	var t target
	spec, profile, _ := strings.Cut(s, "=")
	role, rest, ok := strings.Cut(spec, "@")
	if !ok || role == "" || rest == "" {
		return t, usagef("--target %q: want role@account[/region][=profile]", s)
	}
	account, region, _ := strings.Cut(rest, "/")
	t.Role, t.Account, t.Region, t.profile = role, account, region, profile
	return t, nil
}

func (t target) String() string {
	s := t.Role + "@" + t.Account
	if t.Region != "" {
		s += "/" + t.Region
	}
	return s
}

func (a *app) credsCommand() *cobra.Command {
	var (
		tf            tokenFlags
		single        target
		targetSpecs   []string
		output        string
		reason        string
		profile       string
		awsConfig     string
		cache         string
		cacheDir      string
		refreshWindow time.Duration
	)
	cmd := &cobra.Command{
		Use:   "creds",
		Short: "Swap this job's OIDC token for short-lived AWS credentials",
		Long: `creds finds the job's OIDC token, sends it to the broker and prints the AWS
session the trust policy allows, in the chosen format. Secrets go to standard
output only (or, for github-env, to $GITHUB_ENV, masked in the log).

Token sources (--token-source auto picks the first that applies): a file
(--token-file or AWS_WEB_IDENTITY_TOKEN_FILE), an exec command, the variable
named by --token-env, GitHub Actions (needs permissions: id-token: write),
GitLab CI (an id_tokens variable, --gitlab-token-var), the Kubernetes
service-account token file.

On any failure nothing is printed on standard output and the exit code says
why (2 usage or setup, 3 denied, 4 unavailable): a script must check it
before using the output.

Outputs: env (shell exports), json, credential-process (AWS's Version 1 JSON,
cached between calls), aws-profile (writes a profile whose credential_process
runs this command, with the account's home region unless --region or the
target names one; never a secret. It asks the broker first which roles the
token may assume, and writes nothing for a target it may not), github-env
(appends to $GITHUB_ENV and masks the secrets).`,
		Example: `  # GitHub Actions (job needs: permissions: id-token: write)
  credmatrix creds --role deploy --account prod --output github-env

  # GitLab CI (.gitlab-ci.yml: id_tokens: { CREDMATRIX_ID_TOKEN: { aud: credmatrix } }).
  # Assign, stop on failure, then eval: eval of a command substitution
  # ignores the exit code, and the job would go on without credentials.
  creds=$(credmatrix creds --token-source gitlab --role deploy --account prod) || exit $?
  eval "$creds"

  # Kubernetes: projected service-account token, AWS CLI profile
  credmatrix creds --token-file /var/run/secrets/tokens/credmatrix \
      --target deploy@prod=prod --target deploy@staging/eu-west-1=staging --output aws-profile
  aws --profile prod s3 ls

  # Several accounts at once, all or nothing
  credmatrix creds --target deploy@eu-prod --target deploy@us-prod --output json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			targets, err := collectTargets(single, targetSpecs, profile)
			if err != nil {
				return err
			}
			switch output {
			case "env", "credential-process", "github-env":
				if len(targets) != 1 {
					return usagef("--output %s takes one target; use json or aws-profile for several", output)
				}
			case "json", "aws-profile":
			default:
				return usagef("--output %q: want env, json, credential-process, aws-profile or github-env", output)
			}
			if output == "aws-profile" {
				return a.writeProfiles(cmd.Context(), targets, &tf, awsConfig, refreshWindow)
			}
			src, err := a.tokenSource(&tf)
			if err != nil {
				return err
			}
			useCache := cache == "true" || (cache == "auto" && output == "credential-process")
			if cache != "auto" && cache != "true" && cache != "false" {
				return usagef("--cache %q: want auto, true or false", cache)
			}
			if useCache {
				if len(targets) != 1 {
					return usagef("--cache takes one target")
				}
				e, err := a.cachedSession(cmd.Context(), src, targets[0], reason, cacheDir, refreshWindow)
				if err != nil {
					return withLocalHint(err, &tf)
				}
				return writeSession(a.out, output, sessionFromEntry(targets[0], e), a.getenv)
			}
			sessions, err := a.issue(cmd.Context(), src, reason, targets)
			if err != nil {
				return withLocalHint(err, &tf)
			}
			if output == "json" {
				return writeSessionsJSON(a.out, sessions)
			}
			return writeSession(a.out, output, sessions[0], a.getenv)
		},
	}
	tf.register(cmd)
	f := cmd.Flags()
	f.StringVar(&single.Role, "role", "", "role name in the trust policy")
	f.StringVar(&single.Account, "account", "", "account id or name")
	f.StringVar(&single.Region, "region", "", "region (default: the account's home region)")
	f.DurationVar(&single.Duration, "duration", 0, "session duration (default: the role's maximum)")
	f.StringArrayVar(&targetSpecs, "target", nil, "role@account[/region][=profile] (repeatable; instead of --role/--account)")
	f.StringVarP(&output, "output", "o", "env", "env, json, credential-process, aws-profile or github-env")
	f.StringVar(&reason, "reason", "", "why you need the session (recorded in the audit log)")
	f.StringVar(&profile, "profile", "", "profile name for --output aws-profile with --role/--account")
	f.StringVar(&awsConfig, "aws-config", "", "AWS config file for aws-profile (default $AWS_CONFIG_FILE or ~/.aws/config)")
	f.StringVar(&cache, "cache", "auto", "cache credentials between calls: auto (for credential-process), true or false")
	f.StringVar(&cacheDir, "cache-dir", "", "credential cache directory (default $CREDMATRIX_CACHE_DIR, else the user cache dir)")
	f.DurationVar(&refreshWindow, "refresh-window", credcache.DefaultWindow, "refresh cached credentials this long before they expire")
	return cmd
}

func collectTargets(single target, specs []string, profile string) ([]target, error) {
	var targets []target
	if single.Role != "" || single.Account != "" {
		if single.Role == "" || single.Account == "" {
			return nil, usagef("--role and --account go together")
		}
		single.profile = profile
		targets = append(targets, single)
	}
	for _, s := range specs {
		t, err := parseTarget(s)
		if err != nil {
			return nil, err
		}
		t.Duration = single.Duration
		targets = append(targets, t)
	}
	if len(targets) == 0 {
		return nil, usagef("--role and --account (or --target) are required")
	}
	return targets, nil
}

// issue asks the broker for every target at once (all or nothing).
func (a *app) issue(ctx context.Context, src tokensource.Source, reason string, targets []target) ([]*brokerv1.Session, error) {
	token, err := src.Token(ctx)
	if err != nil {
		return nil, usageError{err}
	}
	conn, err := a.dial(a.brokerAddr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	bt := make([]brokerclient.Target, len(targets))
	for i, t := range targets {
		bt[i] = t.Target
	}
	return brokerclient.New(conn).IssueSession(ctx, token, reason, bt...)
}

// cachedSession serves credential_process from the cache, asking the broker
// only when the cached session is missing or about to expire.
func (a *app) cachedSession(ctx context.Context, src tokensource.Source, t target, reason, dir string, window time.Duration) (credcache.Entry, error) {
	if dir == "" {
		dir = a.getenv("CREDMATRIX_CACHE_DIR")
	}
	if dir == "" {
		var err error
		if dir, err = credcache.DefaultDir(); err != nil {
			return credcache.Entry{}, err
		}
	}
	cache, err := credcache.New(dir, credcache.WithWindow(window))
	if err != nil {
		return credcache.Entry{}, err
	}
	token, err := src.Token(ctx)
	if err != nil {
		return credcache.Entry{}, usageError{err}
	}
	iss, sub := unverifiedIssuerSubject(token)
	key := credcache.Key(a.brokerAddr, iss, sub, t.Role, t.Account, t.Region, t.Duration.String())
	e, _, err := cache.GetOrFetch(ctx, key, func(ctx context.Context) (credcache.Entry, error) {
		sessions, err := a.issueWithToken(ctx, token, reason, t)
		if err != nil {
			return credcache.Entry{}, err
		}
		c := sessions[0].GetCredentials()
		return credcache.Entry{
			AccessKeyID: c.GetAccessKeyId(), SecretAccessKey: c.GetSecretAccessKey(), SessionToken: c.GetSessionToken(),
			Expiration: c.GetExpiration().AsTime(), Region: sessions[0].GetRegion(),
		}, nil
	})
	return e, err
}

func (a *app) issueWithToken(ctx context.Context, token, reason string, t target) ([]*brokerv1.Session, error) {
	conn, err := a.dial(a.brokerAddr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return brokerclient.New(conn).IssueSession(ctx, token, reason, t.Target)
}

// unverifiedIssuerSubject reads iss and sub from a JWT without verifying it:
// only to key the local cache by who the token is for (the broker verifies
// it when it is used).
func unverifiedIssuerSubject(token string) (string, string) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "", ""
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", ""
	}
	var c struct {
		Iss string `json:"iss"`
		Sub string `json:"sub"`
	}
	if json.Unmarshal(payload, &c) != nil {
		return "", ""
	}
	return c.Iss, c.Sub
}

func sessionFromEntry(t target, e credcache.Entry) *brokerv1.Session {
	return &brokerv1.Session{
		Role: t.Role, Region: e.Region,
		Credentials: &brokerv1.Credentials{
			AccessKeyId: e.AccessKeyID, SecretAccessKey: e.SecretAccessKey, SessionToken: e.SessionToken,
			Expiration: timestamp(e.Expiration),
		},
	}
}

// readToken takes a raw OIDC token from a file or an environment variable,
// for commands that do not need the full token-source detection.
func (a *app) readToken(file, envName string) (string, error) {
	var src tokensource.Source = tokensource.Env{Variable: envName, Getenv: a.getenv}
	if file != "" {
		src = tokensource.File{Path: file}
	}
	tok, err := src.Token(context.Background())
	if err != nil {
		return "", usageError{err}
	}
	return tok, nil
}
