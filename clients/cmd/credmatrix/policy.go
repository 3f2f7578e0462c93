package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/credmatrix/credmatrix/clients/brokerclient"
	"github.com/credmatrix/credmatrix/services/broker/oidc"
	"github.com/credmatrix/credmatrix/services/broker/policy"
	"github.com/spf13/cobra"
)

// errPolicyFindings fails `policy lint` without another message: the
// findings are the message.
var errPolicyFindings = errors.New("policy lint failed: fix the findings above")

func (a *app) policyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Check and simulate a trust policy offline (pull-request checks)",
		Long: `policy lint and policy test read a trust policy file and work offline: no
broker, no token verification, nothing sent anywhere. Use them in the pull
request that changes the policy.

Exit codes: lint 0 clean (warnings allowed unless --strict), 1 findings;
test 0 allowed, 3 denied; both 2 on bad usage.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(a.policyLintCommand(), a.policyTestCommand())
	return cmd
}

func (a *app) policyLintCommand() *cobra.Command {
	var strict bool
	cmd := &cobra.Command{
		Use:   "lint [flags] FILE...",
		Short: "Validate a trust policy and report risky rules",
		Long: `lint validates each policy file as the broker would load it (errors name
file:line: field) and reports risky or dead constructs as warnings:

  broad-subject      a sub wildcard that covers other repositories or namespaces
  sibling-glob       a wildcard inside a name in sub, repository, ref or environment
                     (repo:acme/app* also matches repo:acme/app-evil)
  generic-audience   an audience other relying parties accept (sts.amazonaws.com)
  mutable-name       a rule binding a renameable name without its immutable id
                     (repository without repository_id, project_path without project_id)
  unreachable-rule   an allow rule that can never grant: its roles are not in its
                     accounts, an unconditional guardrail denies it, or an earlier
                     rule grants everything it does
  invalid            anything the broker would refuse (unknown roles or accounts,
                     missing audience, unknown fields, bad durations …)`,
		Example: `  credmatrix policy lint policy.yaml
  credmatrix policy lint --strict deploy/policy.yaml   # warnings fail too`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("lint: name at least one policy file")
			}
			return nil
		},
		RunE: func(_ *cobra.Command, args []string) error {
			fail := false
			for _, path := range args {
				data, err := os.ReadFile(path)
				if err != nil {
					return usagef("read %s: %v", path, err)
				}
				findings := policy.Lint(path, data)
				for _, f := range findings {
					if f.Severity == policy.SeverityError || strict {
						fail = true
					}
				}
				if len(findings) == 0 {
					fmt.Fprintf(a.out, "%s: ok\n", path)
					continue
				}
				fmt.Fprintln(a.out, policy.FormatFindings(path, findings))
			}
			if fail {
				return errPolicyFindings
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&strict, "strict", false, "fail on warnings too")
	return cmd
}

func (a *app) policyTestCommand() *cobra.Command {
	var (
		file, claimsFile, tokenEnv, tokenFile string
		scopeDownFile, wantSHA                string
		target                                policy.Target
		duration, providerMax                 time.Duration
		at                                    string
	)
	cmd := &cobra.Command{
		Use:   "test",
		Short: "Simulate the broker's decision for a token or a set of claims",
		Long: `test makes the broker's decision offline — the same decision function the
broker runs for IssueSession and ExplainDecision: the deciding rule, why
every other rule did or did not match, the duration that would be granted
and the session policy that would be sent (or why it cannot be rendered).

Claims come from a token (--token-env / --token-file), whose payload is
decoded WITHOUT verifying it — this is a simulation — or from a JSON file
(--claims, "-" for stdin). --region, --duration and --scope-down (the
scope-down policy a request sends) decide as they do at the broker;
--provider-max applies the provider's cap (1h through a hub role).

A denial from the broker prints the command line that reproduces it, with
--policy-sha256: test refuses a policy file whose digest differs from the
policy that decided. Freezes and revocations live in the broker and are not
simulated; ExplainDecision asks the broker itself.`,
		Example: `  credmatrix policy test --policy deploy/policy.yaml --token-env CREDMATRIX_OIDC_TOKEN --role deploy --account prod
  credmatrix policy test --claims claims.json --role deploy --account dev --region us-east-1 --duration 30m`,
		Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			if target.Role == "" {
				return usagef("--role is required")
			}
			claims, err := a.readClaims(claimsFile, tokenEnv, tokenFile)
			if err != nil {
				return err
			}
			data, err := os.ReadFile(file)
			if err != nil {
				return usagef("read policy: %v (set --policy or CREDMATRIX_POLICY_FILE)", err)
			}
			pol, err := policy.Parse(file, data)
			if err != nil {
				return usageError{err}
			}
			if wantSHA != "" && !strings.EqualFold(wantSHA, pol.SHA256()) {
				return usagef("%s has sha256 %s, not %s as the policy that decided: test with that version of the file", file, pol.SHA256(), wantSHA)
			}
			if at != "" {
				if target.Time, err = time.Parse(time.RFC3339, at); err != nil {
					return usagef("--time: want RFC 3339 (2026-01-02T15:04:05Z)")
				}
			}
			req := policy.Request{Target: target, Duration: duration, ProviderMax: providerMax}
			if scopeDownFile != "" {
				b, err := os.ReadFile(scopeDownFile)
				if err != nil {
					return usagef("read --scope-down: %v", err)
				}
				req.ScopeDown = string(b)
			}
			return a.simulate(pol, claims, req)
		},
	}
	f := cmd.Flags()
	f.StringVar(&file, "policy", a.env("CREDMATRIX_POLICY_FILE", "policy.yaml"), "trust policy file (env CREDMATRIX_POLICY_FILE)")
	f.StringVar(&wantSHA, "policy-sha256", "", "refuse a policy file whose SHA-256 differs (the digest a denial names)")
	f.StringVar(&claimsFile, "claims", "", "JSON file of the token's claims (\"-\": standard input)")
	f.StringVar(&tokenEnv, "token-env", "", "take the claims from the token in this environment variable (not verified)")
	f.StringVar(&tokenFile, "token-file", "", "take the claims from the token in this file (not verified)")
	f.StringVar(&target.Role, "role", "", "role name (required)")
	f.StringVar(&target.Account, "account", "", "account id or name (default: every account declaring the role)")
	f.StringVar(&target.Region, "region", "", "region (default: the account's home region)")
	f.DurationVar(&duration, "duration", 0, "session duration asked for (default: the longest allowed)")
	f.StringVar(&scopeDownFile, "scope-down", "", "file of the scope-down session policy the request sends (JSON)")
	f.DurationVar(&providerMax, "provider-max", 0, "the provider's cap on sessions (1h through a hub role; default none)")
	f.StringVar(&at, "time", "", "evaluate at this time (RFC 3339; default now), for time-window conditions")
	return cmd
}

// readClaims reads claims JSON, or a token's payload, as oidc.Claims.
func (a *app) readClaims(claimsFile, tokenEnv, tokenFile string) (*oidc.Claims, error) {
	var raw []byte
	switch n := btoi(claimsFile != "") + btoi(tokenEnv != "") + btoi(tokenFile != ""); {
	case n != 1:
		return nil, usagef("give exactly one of --claims, --token-env, --token-file")
	case claimsFile == "-":
		b, err := io.ReadAll(io.LimitReader(a.in, oidc.MaxTokenBytes+1))
		if err != nil {
			return nil, fmt.Errorf("read claims: %w", err)
		}
		raw = b
	case claimsFile != "":
		b, err := os.ReadFile(claimsFile)
		if err != nil {
			return nil, usagef("read claims: %v", err)
		}
		raw = b
	default:
		token, err := a.readToken(tokenFile, tokenEnv)
		if err != nil {
			return nil, err
		}
		parts := strings.Split(token, ".")
		if len(parts) != 3 {
			return nil, usagef("token: not a JWS (want 3 dot-separated parts)")
		}
		if raw, err = base64.RawURLEncoding.DecodeString(parts[1]); err != nil {
			return nil, usagef("token: payload is not base64url")
		}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil || m == nil {
		return nil, usagef("claims: want a JSON object")
	}
	c := &oidc.Claims{Raw: m}
	c.Issuer, _ = c.String("iss")
	c.Subject, _ = c.String("sub")
	if c.Issuer == "" || c.Subject == "" {
		return nil, usagef("claims: iss and sub are required")
	}
	return c, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// simulate prints the decision for each target account, made by the
// broker's one decision function, and fails with a
// *brokerclient.DeniedError (exit code 3, as a refused creds call) for the
// first one denied, or a usage error for an invalid request.
func (a *app) simulate(pol *policy.Policy, c *oidc.Claims, req policy.Request) error {
	req.Identity = policy.Identity{Issuer: c.Issuer, Subject: c.Subject, Claim: c.String, Raw: c.Raw}
	accounts := []string{req.Target.Account}
	if req.Target.Account == "" {
		accounts = nil
		for _, r := range pol.Roles() {
			if r.Name == req.Target.Role {
				accounts = append(accounts, r.AccountID)
			}
		}
		if len(accounts) == 0 {
			return usagef("role %q is not declared in %s", req.Target.Role, pol.Source())
		}
	}
	if req.Target.Time.IsZero() {
		req.Target.Time = time.Now()
	}
	fmt.Fprintf(a.out, "policy %s (sha256 %s…)\ncaller %s  sub %s\n", pol.Source(), pol.SHA256()[:12], c.Issuer, c.Subject)
	var denied *brokerclient.DeniedError
	for _, acct := range accounts {
		req.Target.Account = acct
		o := pol.Decide(req)
		if o.Invalid != nil {
			return usagef("invalid request: %s", o.Invalid.Error())
		}
		verdict := "ALLOW"
		if !o.Allowed {
			verdict = "DENY"
			if denied == nil {
				denied = &brokerclient.DeniedError{Rule: o.Rule, Reason: o.Reason}
			}
		}
		fmt.Fprintf(a.out, "\n%s  %s in %s", verdict, req.Target.Role, o.Account.Name)
		if o.Account.ID != "" {
			fmt.Fprintf(a.out, " (%s, %s)", o.Account.ID, o.Region)
		} else {
			fmt.Fprintf(a.out, " (%s)", acct)
		}
		fmt.Fprintf(a.out, "\n  decided by %s: %s\n", o.Rule, o.Reason)
		if o.Allowed {
			fmt.Fprintf(a.out, "  duration %s (max duration %s)\n", o.Duration, o.MaxDuration)
			if o.SessionPolicy != "" {
				fmt.Fprintf(a.out, "  session policy %s\n", o.SessionPolicy)
			}
		}
		tw := tabwriter.NewWriter(a.out, 0, 0, 2, ' ', 0)
		for _, ev := range o.Evaluations {
			mark := "no match"
			if ev.Matched {
				mark = "MATCH"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", ev.Effect, ev.Rule, mark, ev.Reason)
		}
		tw.Flush()
	}
	fmt.Fprintln(a.out, "\nnote: freezes and revocations live in the broker and are not simulated")
	if denied != nil {
		return denied
	}
	return nil
}
