package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/credmatrix/credmatrix/clients/brokerclient"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// adminCommand groups the incident-response commands: every one first
// shows what it would touch (a dry run at the broker), then asks for
// confirmation (--yes for scripts), then prints the audit event that
// records it.
func (a *app) adminCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Incident response at the broker: revoke, freeze, unfreeze, reload, list revocations (operators)",
		Long: `admin drives the broker's operator RPCs. They need an operator's mTLS
identity: --cert-file and --key-file (CREDMATRIX_CERT_FILE, CREDMATRIX_KEY_FILE)
naming one of the broker's admin_principals, on the broker's mTLS port.

revoke, freeze, unfreeze and reload first ask the broker for a dry run and
print what would be touched — the roles and accounts, and for revoke the IAM
policy each role would get and whether the revocation reaches sessions
already issued ("enforced in IAM") or only blocks new ones ("issuance blocked
only") — then ask for confirmation. --dry-run stops after the dry run; --yes
answers the question (scripts). Each change prints the id of the audit event
that records it.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(a.adminRevokeCommand(), a.adminFreezeCommand(true), a.adminFreezeCommand(false), a.adminReloadCommand(), a.adminRevocationsCommand())
	return cmd
}

// errNotConfirmed ends a command the operator did not confirm.
var errNotConfirmed = errors.New("not confirmed: nothing was changed (--yes answers the question in scripts)")

// confirm asks question on standard error and reads the answer from
// standard input: only "yes" proceeds.
func (a *app) confirm(question string, yes bool) error {
	if yes {
		return nil
	}
	fmt.Fprintf(a.err, "%s Type yes to proceed: ", question)
	line, err := bufio.NewReader(a.in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read the answer: %w", err)
	}
	if strings.TrimSpace(line) != "yes" {
		fmt.Fprintln(a.err)
		return errNotConfirmed
	}
	return nil
}

func (a *app) brokerRPC(run func(rpc brokerv1.BrokerServiceClient) error) error {
	conn, err := a.dial(a.brokerAddr)
	if err != nil {
		return err
	}
	defer conn.Close()
	return run(brokerv1.NewBrokerServiceClient(conn))
}

func (a *app) adminRevokeCommand() *cobra.Command {
	var (
		req          brokerv1.RevokeSessionsRequest
		claims       []string
		issuedBefore string
		blockFor     time.Duration
		dryRun, yes  bool
	)
	cmd := &cobra.Command{
		Use:   "revoke",
		Short: "Revoke sessions: block new ones for the match and, where IAM can tell them apart, stop those already issued",
		Long: `revoke records a revocation at the broker. Every selector given must match:
--subject, --issuer, --role, --account-id, --session-id, --claim NAME=VALUE.
New sessions for the match are refused for --block-for (default 12h). With
the aws provider, sessions already issued before --issued-before (default
now) stop working too, on every role where each selector can be expressed in
IAM; the dry run and the result say, role by role, "enforced in IAM" or
"issuance blocked only" and why.`,
		Example: `  credmatrix admin revoke --subject repo:acme/app:ref:refs/heads/main --reason "token leaked in build log" --dry-run
  credmatrix admin revoke --claim repository=acme/app --account-id 111111111111 --reason "compromised runner" --yes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if req.Claims, err = parsePairs("claim", claims); err != nil {
				return err
			}
			if issuedBefore != "" {
				t, err := time.Parse(time.RFC3339, issuedBefore)
				if err != nil {
					return usagef("--issued-before: want RFC 3339 (2026-01-02T15:04:05Z)")
				}
				req.IssuedBefore = timestamppb.New(t)
			}
			if blockFor != 0 {
				req.BlockFor = durationpb.New(blockFor)
			}
			return a.brokerRPC(func(rpc brokerv1.BrokerServiceClient) error {
				dry := &brokerv1.RevokeSessionsRequest{Subject: req.Subject, Issuer: req.Issuer, Role: req.Role, AccountId: req.AccountId,
					SessionId: req.SessionId, Claims: req.Claims, IssuedBefore: req.IssuedBefore, BlockFor: req.BlockFor, Reason: req.Reason, DryRun: true}
				plan, err := rpc.RevokeSessions(cmd.Context(), dry)
				if err != nil {
					return err
				}
				a.printRevocation(plan)
				if dryRun {
					fmt.Fprintln(a.out, "dry run: nothing was recorded or changed")
					return nil
				}
				if req.Reason == "" {
					return usagef("--reason is required: say why, for the audit log")
				}
				if err := a.confirm(fmt.Sprintf("Revoke these sessions (%d roles)?", len(plan.GetRoles())), yes); err != nil {
					return err
				}
				res, err := rpc.RevokeSessions(cmd.Context(), &req)
				if res != nil && res.GetRevocationId() != "" {
					fmt.Fprintln(a.out)
					a.printRevocation(res)
				}
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Subject, "subject", "", "OIDC subject of the callers")
	f.StringVar(&req.Issuer, "issuer", "", "OIDC issuer URL of the callers")
	f.StringVar(&req.Role, "role", "", "role name")
	f.StringVar(&req.AccountId, "account-id", "", "account id (12 digits)")
	f.StringVar(&req.SessionId, "session-id", "", "one session id")
	f.StringArrayVar(&claims, "claim", nil, "NAME=VALUE a claim of the callers' tokens (repeatable)")
	f.StringVar(&issuedBefore, "issued-before", "", "revoke sessions issued before this time (RFC 3339; default now)")
	f.DurationVar(&blockFor, "block-for", 0, "how long new sessions for the match stay blocked (default 12h; 1m to 720h)")
	f.StringVar(&req.Reason, "reason", "", "why (recorded in the audit log; required unless --dry-run)")
	f.BoolVar(&dryRun, "dry-run", false, "show what would be revoked and the IAM policies, change nothing")
	f.BoolVar(&yes, "yes", false, "do not ask for confirmation (scripts)")
	return cmd
}

// printRevocation prints a revocation, or its dry run: the match, the
// roles with their reach, and the IAM policy of each.
func (a *app) printRevocation(r *brokerv1.RevokeSessionsResponse) {
	if r.GetDryRun() {
		fmt.Fprintln(a.out, "dry run: the revocation would")
	} else {
		fmt.Fprintf(a.out, "revocation %s recorded\n", r.GetRevocationId())
	}
	fmt.Fprintf(a.out, "  revoke sessions issued before %s\n", r.GetIssuedBefore().AsTime().UTC().Format(time.RFC3339))
	if r.GetBlockUntil() != nil {
		fmt.Fprintf(a.out, "  block new sessions for the match until %s\n", r.GetBlockUntil().AsTime().UTC().Format(time.RFC3339))
	}
	if len(r.GetRoles()) == 0 {
		fmt.Fprintln(a.out, "  match no role of the trust policy")
	}
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  ROLE\tACCOUNT\tREACH\tWHY")
	for _, rr := range r.GetRoles() {
		reach := "issuance blocked only"
		if rr.GetEnforcement() == brokerv1.RevocationEnforcement_REVOCATION_ENFORCEMENT_IAM {
			reach = "enforced in IAM"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", rr.GetRoleArn(), rr.GetAccountId(), reach, printable(rr.GetReason()))
	}
	tw.Flush()
	for _, rr := range r.GetRoles() {
		if rr.GetPolicyDocument() != "" {
			fmt.Fprintf(a.out, "  IAM policy credmatrix-revocations on %s:\n    %s\n", rr.GetRoleArn(), rr.GetPolicyDocument())
		}
	}
	if !r.GetDryRun() {
		fmt.Fprintf(a.out, "  %d roles updated in IAM; audit event %s (sequence %d)\n", r.GetRolesUpdated(), r.GetAuditEventId(), r.GetAuditSequence())
	}
}

func (a *app) adminFreezeCommand(freeze bool) *cobra.Command {
	var (
		account, ou, reason string
		dryRun, yes         bool
	)
	name, verb := "freeze", "Freeze"
	short := "The incident kill switch: no session for an account, or every account under an OU, until unfreeze"
	if !freeze {
		name, verb = "unfreeze", "Unfreeze"
		short = "Lift a freeze of an account or an OU"
	}
	cmd := &cobra.Command{
		Use:     name,
		Short:   short,
		Example: fmt.Sprintf("  credmatrix admin %s --account prod --reason \"incident 42\" --dry-run\n  credmatrix admin %s --ou /root/prod --reason \"incident 42\" --yes", name, name),
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.brokerRPC(func(rpc brokerv1.BrokerServiceClient) error {
				call := func(dry bool) (ids, roles []string, event string, seq uint64, err error) {
					if freeze {
						r, err := rpc.FreezeAccount(cmd.Context(), &brokerv1.FreezeAccountRequest{Account: account, OuPath: ou, Reason: reason, DryRun: dry})
						return r.GetAccountIds(), r.GetRoleArns(), r.GetAuditEventId(), r.GetAuditSequence(), err
					}
					r, err := rpc.UnfreezeAccount(cmd.Context(), &brokerv1.UnfreezeAccountRequest{Account: account, OuPath: ou, Reason: reason, DryRun: dry})
					return r.GetAccountIds(), r.GetRoleArns(), r.GetAuditEventId(), r.GetAuditSequence(), err
				}
				ids, roles, _, _, err := call(true)
				if err != nil {
					return err
				}
				scope := "account " + account
				if ou != "" {
					scope = "OU " + ou
				}
				fmt.Fprintf(a.out, "dry run: %s of %s covers\n", name, scope)
				fmt.Fprintf(a.out, "  accounts: %s\n  roles:    %s\n", list(ids), list(roles))
				if dryRun {
					fmt.Fprintln(a.out, "dry run: nothing was changed")
					return nil
				}
				if reason == "" {
					return usagef("--reason is required: say why, for the audit log")
				}
				if err := a.confirm(fmt.Sprintf("%s %s (%d accounts)?", verb, scope, len(ids)), yes); err != nil {
					return err
				}
				ids, _, event, seq, err := call(false)
				if err != nil {
					return err
				}
				past := map[bool]string{true: "frozen", false: "unfrozen"}[freeze]
				fmt.Fprintf(a.out, "%s %s: accounts %s; audit event %s (sequence %d)\n", scope, past, list(ids), event, seq)
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&account, "account", "", "account id or name (or --ou)")
	f.StringVar(&ou, "ou", "", "OU path such as /root/prod: every account under it, including accounts added later")
	f.StringVar(&reason, "reason", "", "why (recorded in the audit log; required unless --dry-run)")
	f.BoolVar(&dryRun, "dry-run", false, "show what would be covered, change nothing")
	f.BoolVar(&yes, "yes", false, "do not ask for confirmation (scripts)")
	return cmd
}

func list(xs []string) string {
	if len(xs) == 0 {
		return "(none)"
	}
	return strings.Join(xs, " ")
}

func (a *app) adminReloadCommand() *cobra.Command {
	var dryRun, yes bool
	cmd := &cobra.Command{
		Use:   "reload",
		Short: "Reload the trust policy from its source and refetch the issuers' signing keys",
		Long: `reload asks the broker to read its policy file again (a policy that fails
validation is refused and the one in force stays) and to refetch every
issuer's signing keys even when the file did not change, so a key the issuer
withdrew stops verifying at once. The dry run validates the file and says
whether it differs from the policy in force.`,
		Example: `  credmatrix admin reload --dry-run
  credmatrix admin reload --yes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.brokerRPC(func(rpc brokerv1.BrokerServiceClient) error {
				dry, err := rpc.ReloadPolicy(cmd.Context(), &brokerv1.ReloadPolicyRequest{DryRun: true})
				if err != nil {
					return err
				}
				change := "the same as the policy in force"
				if dry.GetChanged() {
					change = "different from the policy in force"
				}
				fmt.Fprintf(a.out, "dry run: the policy source validates (sha256 %s, %d rules), %s\n", dry.GetSha256(), dry.GetRuleCount(), change)
				if dryRun {
					fmt.Fprintln(a.out, "dry run: nothing was changed")
					return nil
				}
				if err := a.confirm("Reload the policy and refetch the issuers' keys?", yes); err != nil {
					return err
				}
				r, err := rpc.ReloadPolicy(cmd.Context(), &brokerv1.ReloadPolicyRequest{})
				if err != nil {
					return err
				}
				keys := "signing keys refetched"
				if !r.GetKeysRefreshed() {
					keys = "some issuers' signing keys could not be refetched (cached keys kept within their grace)"
				}
				fmt.Fprintf(a.out, "policy reloaded: sha256 %s, %d rules, changed %v; %s; audit event %s (sequence %d)\n",
					r.GetSha256(), r.GetRuleCount(), r.GetChanged(), keys, r.GetAuditEventId(), r.GetAuditSequence())
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "validate the policy source and show whether it differs, change nothing")
	cmd.Flags().BoolVar(&yes, "yes", false, "do not ask for confirmation (scripts)")
	return cmd
}

func (a *app) adminRevocationsCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "revocations",
		Short:   "List the revocations in effect and the frozen accounts and OUs (read only)",
		Example: `  credmatrix admin revocations`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.brokerRPC(func(rpc brokerv1.BrokerServiceClient) error {
				r, err := rpc.ListRevocations(cmd.Context(), &brokerv1.ListRevocationsRequest{})
				if err != nil {
					return err
				}
				fmt.Fprintf(a.out, "frozen: %s\n", list(r.GetFrozenScopes()))
				if len(r.GetRevocations()) == 0 {
					fmt.Fprintln(a.out, "revocations: none in effect")
					return nil
				}
				tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "REVOCATION\tCREATED\tISSUED BEFORE\tBLOCKED UNTIL\tMATCH\tREASON")
				for _, rv := range r.GetRevocations() {
					blocked := "-"
					if rv.GetBlockUntil() != nil {
						blocked = rv.GetBlockUntil().AsTime().UTC().Format(time.RFC3339)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", rv.GetRevocationId(), rv.GetCreatedAt().AsTime().UTC().Format(time.RFC3339),
						rv.GetIssuedBefore().AsTime().UTC().Format(time.RFC3339), blocked, selectors(rv), printable(rv.GetReason()))
				}
				return tw.Flush()
			})
		},
	}
}

// selectors describes a revocation's match.
func selectors(rv *brokerv1.Revocation) string {
	var out []string
	for _, s := range []struct{ k, v string }{{"subject", rv.GetSubject()}, {"issuer", rv.GetIssuer()}, {"role", rv.GetRole()},
		{"account", rv.GetAccountId()}, {"session", rv.GetSessionId()}} {
		if s.v != "" {
			out = append(out, s.k+"="+printable(s.v))
		}
	}
	keys := make([]string, 0, len(rv.GetClaims()))
	for k := range rv.GetClaims() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		out = append(out, "claim:"+printable(k)+"="+printable(rv.GetClaims()[k]))
	}
	return strings.Join(out, " ")
}

// printable keeps a value from the broker (an operator's text, a
// caller's claim) from writing control characters to the terminal.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}

// rolesCommand lists what the caller's token may assume.
func (a *app) rolesCommand() *cobra.Command {
	var tf tokenFlags
	cmd := &cobra.Command{
		Use:   "roles",
		Short: "List the roles this job's OIDC token may assume, as the broker decides now",
		Long: `roles sends the job's OIDC token (found as for creds) to the broker, which
lists every role the token may assume in its account's home region right
now — the same decision IssueSession makes, freezes and revocations
included — with the longest session it would get and the rule that allows
it.`,
		Example: `  credmatrix roles
  credmatrix roles --token-env CREDMATRIX_OIDC_TOKEN`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			src, err := a.tokenSource(&tf)
			if err != nil {
				return err
			}
			token, err := src.Token(cmd.Context())
			if err != nil {
				return usageError{err}
			}
			return a.brokerRPC(func(rpc brokerv1.BrokerServiceClient) error {
				r, err := rpc.ListRoles(cmd.Context(), &brokerv1.ListRolesRequest{Token: token})
				if err != nil {
					return err
				}
				if len(r.GetRoles()) == 0 {
					fmt.Fprintln(a.out, "this token may assume no role (credmatrix policy test explains why, offline)")
					return nil
				}
				tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ROLE\tACCOUNT\tREGION\tMAX DURATION\tRULE\tARN")
				for _, rs := range r.GetRoles() {
					fmt.Fprintf(tw, "%s\t%s (%s)\t%s\t%s\t%s\t%s\n", rs.GetRole(), rs.GetAccountName(), rs.GetAccountId(), rs.GetRegion(),
						rs.GetMaxDuration().AsDuration(), rs.GetRule(), rs.GetRoleArn())
				}
				return tw.Flush()
			})
		},
	}
	tf.register(cmd)
	return cmd
}

// localHint adapts the broker's denial hint to where this command found
// its token, so the printed command line runs as it is.
func localHint(d *brokerclient.DeniedError, tf *tokenFlags) string {
	const serverToken = "--token-env CREDMATRIX_OIDC_TOKEN"
	if !strings.Contains(d.Hint, serverToken) {
		return d.Hint
	}
	switch {
	case tf.file != "":
		return strings.Replace(d.Hint, serverToken, "--token-file "+shellWord(tf.file), 1)
	case tf.source == "gitlab":
		return strings.Replace(d.Hint, serverToken, "--token-env "+shellWord(tf.gitlabVar), 1)
	case tf.source == "env" || tf.envVar != "CREDMATRIX_OIDC_TOKEN":
		return strings.Replace(d.Hint, serverToken, "--token-env "+shellWord(tf.envVar), 1)
	}
	return d.Hint
}

// shellWord quotes s for a shell command line when it needs it.
func shellWord(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./:@=+,-") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// withLocalHint rewrites the hint of a denial err carries.
func withLocalHint(err error, tf *tokenFlags) error {
	var d *brokerclient.DeniedError
	if errors.As(err, &d) {
		d.Hint = localHint(d, tf)
	}
	return err
}
