package main

import (
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/clients/keyguardclient"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
)

// keyguardCommand groups the operator commands of keyguard: key rings
// (describe, rotate, retire) and grants (create, revoke, list). Rotation,
// retirement and grants need a keyguard administrator identity.
func (a *app) keyguardCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keyguard",
		Short: "Operate keyguard: describe, rotate and retire key rings; create, revoke and list grants",
	}
	cmd.AddCommand(a.kgDescribeCommand(), a.kgRotateCommand(), a.kgRetireCommand(), a.kgGrantCommand())
	return cmd
}

type ringFlags struct{ dataClass, region string }

func (f *ringFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.dataClass, "data-class", "", "data class of the ring (required)")
	cmd.Flags().StringVar(&f.region, "region", "", "region of the ring (required)")
}

func (a *app) keyguardRPC(run func(rpc keyguardv1.KeyguardServiceClient) error) error {
	conn, err := a.dial(a.keyguardAddr)
	if err != nil {
		return err
	}
	defer conn.Close()
	return run(keyguardclient.New(conn).RPC())
}

func (a *app) kgDescribeCommand() *cobra.Command {
	var f ringFlags
	cmd := &cobra.Command{
		Use:     "describe",
		Short:   "Show a key ring's versions, their state and usage, and when rotation is due",
		Example: `  credmatrix keyguard describe --data-class confidential --region eu-west-1`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.keyguardRPC(func(rpc keyguardv1.KeyguardServiceClient) error {
				d, err := rpc.DescribeKeyRing(cmd.Context(), &keyguardv1.DescribeKeyRingRequest{DataClass: f.dataClass, Region: f.region})
				if err != nil {
					return err
				}
				next := "never"
				if d.GetNextRotationTime() != nil {
					next = d.GetNextRotationTime().AsTime().UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(a.out, "ring %s/%s  backend %s  primary v%d  min decrypt v%d  next rotation %s  rotation due %v\n",
					d.GetDataClass(), d.GetRegion(), d.GetBackend(), d.GetPrimaryVersion(), d.GetMinDecryptVersion(), next, d.GetRotationDue())
				tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "VERSION\tSTATE\tCREATED\tENCRYPTIONS\tBACKEND KEY")
				for _, v := range d.GetVersions() {
					state := strings.ToLower(strings.TrimPrefix(v.GetState().String(), "KEY_VERSION_STATE_"))
					fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\n", v.GetVersion(), state, v.GetCreateTime().AsTime().UTC().Format(time.RFC3339), v.GetEncryptCount(), v.GetBackendKey())
				}
				return tw.Flush()
			})
		},
	}
	f.register(cmd)
	return cmd
}

func (a *app) kgRotateCommand() *cobra.Command {
	var (
		f      ringFlags
		reason string
	)
	cmd := &cobra.Command{
		Use:     "rotate",
		Short:   "Add a new key version to a ring (administrators); older versions keep decrypting",
		Example: `  credmatrix keyguard rotate --data-class confidential --region eu-west-1 --reason "quarterly"`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.keyguardRPC(func(rpc keyguardv1.KeyguardServiceClient) error {
				r, err := rpc.RotateKey(cmd.Context(), &keyguardv1.RotateKeyRequest{DataClass: f.dataClass, Region: f.region, Reason: reason})
				if err != nil {
					return err
				}
				fmt.Fprintf(a.out, "rotated %s/%s to version %d (audit event %d)\n", r.GetKey().GetDataClass(), r.GetKey().GetRegion(), r.GetKey().GetVersion(), r.GetAuditSequence())
				return nil
			})
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded in the audit log)")
	return cmd
}

func (a *app) kgRetireCommand() *cobra.Command {
	var (
		f      ringFlags
		min    uint32
		reason string
	)
	cmd := &cobra.Command{
		Use:     "retire",
		Short:   "Retire the key versions of a ring below a minimum (administrators); rewrap their data first",
		Example: `  credmatrix keyguard retire --data-class confidential --region eu-west-1 --below 3 --reason "rewrapped"`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.keyguardRPC(func(rpc keyguardv1.KeyguardServiceClient) error {
				r, err := rpc.SetMinDecryptVersion(cmd.Context(), &keyguardv1.SetMinDecryptVersionRequest{DataClass: f.dataClass, Region: f.region, MinDecryptVersion: min, Reason: reason})
				if err != nil {
					return err
				}
				fmt.Fprintf(a.out, "versions of %s/%s below %d retired (audit event %d)\n", f.dataClass, f.region, min, r.GetAuditSequence())
				return nil
			})
		},
	}
	f.register(cmd)
	cmd.Flags().Uint32Var(&min, "below", 0, "new minimum decryption version (required)")
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded in the audit log)")
	return cmd
}

func (a *app) kgGrantCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "grant", Short: "Create, revoke and list keyguard grants (administrators)"}
	cmd.AddCommand(a.kgGrantCreateCommand(), a.kgGrantRevokeCommand(), a.kgGrantListCommand())
	return cmd
}

var grantOperations = map[string]keyguardv1.Operation{
	"encrypt":           keyguardv1.Operation_OPERATION_ENCRYPT,
	"decrypt":           keyguardv1.Operation_OPERATION_DECRYPT,
	"generate-data-key": keyguardv1.Operation_OPERATION_GENERATE_DATA_KEY,
	"rewrap":            keyguardv1.Operation_OPERATION_REWRAP,
	"describe":          keyguardv1.Operation_OPERATION_DESCRIBE,
}

func (a *app) kgGrantCreateCommand() *cobra.Command {
	var (
		principal, dataClass string
		ops, regions, reqCtx []string
		ttl                  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Allow a principal operations on a data class in some regions, until an expiry",
		Example: `  credmatrix keyguard grant create --principal spiffe://credmatrix.dev/billing --data-class confidential \
      --operation encrypt --operation decrypt --region eu-west-1 --require-context tenant=acme --ttl 720h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			required, err := parsePairs("require-context", reqCtx)
			if err != nil {
				return err
			}
			g := &keyguardv1.Grant{Principal: principal, DataClass: dataClass, Regions: regions, RequiredContext: required,
				ExpireTime: timestamppb.New(time.Now().Add(ttl))}
			for _, o := range ops {
				op, ok := grantOperations[o]
				if !ok {
					return usagef("--operation %q: want encrypt, decrypt, generate-data-key, rewrap or describe", o)
				}
				g.Operations = append(g.Operations, op)
			}
			return a.keyguardRPC(func(rpc keyguardv1.KeyguardServiceClient) error {
				r, err := rpc.CreateGrant(cmd.Context(), &keyguardv1.CreateGrantRequest{Grant: g})
				if err != nil {
					return err
				}
				fmt.Fprintf(a.out, "%s\n", r.GetGrant().GetGrantId())
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&principal, "principal", "", "grantee: certificate URI SAN or <issuer>#<sub> (required)")
	fl.StringVar(&dataClass, "data-class", "", "data class (required)")
	fl.StringArrayVar(&ops, "operation", nil, "operation allowed (repeatable): encrypt, decrypt, generate-data-key, rewrap, describe")
	fl.StringArrayVar(&regions, "region", nil, "region allowed (repeatable); a ring's region is a hard boundary")
	fl.StringArrayVar(&reqCtx, "require-context", nil, "encryption-context pair key=value every request must carry (repeatable)")
	fl.DurationVar(&ttl, "ttl", 24*time.Hour, "how long the grant lasts (grants always expire)")
	return cmd
}

func (a *app) kgGrantRevokeCommand() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:     "revoke GRANT_ID",
		Short:   "Revoke a grant; the next request that relied on it is denied",
		Example: `  credmatrix keyguard grant revoke g-4f0c... --reason "incident 42"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.keyguardRPC(func(rpc keyguardv1.KeyguardServiceClient) error {
				r, err := rpc.RevokeGrant(cmd.Context(), &keyguardv1.RevokeGrantRequest{GrantId: args[0], Reason: reason})
				if err != nil {
					return err
				}
				fmt.Fprintf(a.out, "revoked %s (audit event %d)\n", args[0], r.GetAuditSequence())
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded in the audit log)")
	return cmd
}

func (a *app) kgGrantListCommand() *cobra.Command {
	var principal, dataClass string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List grants (configured and created)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.keyguardRPC(func(rpc keyguardv1.KeyguardServiceClient) error {
				tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "GRANT\tPRINCIPAL\tCLASS\tOPERATIONS\tREGIONS\tREQUIRED CONTEXT\tEXPIRES")
				token := ""
				for {
					r, err := rpc.ListGrants(cmd.Context(), &keyguardv1.ListGrantsRequest{Principal: principal, DataClass: dataClass, PageToken: token})
					if err != nil {
						return err
					}
					for _, g := range r.GetGrants() {
						var ops, ctx []string
						for _, o := range g.GetOperations() {
							ops = append(ops, strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(o.String(), "OPERATION_"), "_", "-")))
						}
						for k, v := range g.GetRequiredContext() {
							ctx = append(ctx, k+"="+v)
						}
						slices.Sort(ctx)
						exp := "never"
						if g.GetExpireTime() != nil {
							exp = g.GetExpireTime().AsTime().UTC().Format(time.RFC3339)
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.GetGrantId(), g.GetPrincipal(), g.GetDataClass(),
							strings.Join(ops, ","), strings.Join(g.GetRegions(), ","), strings.Join(ctx, ","), exp)
					}
					if token = r.GetNextPageToken(); token == "" {
						return tw.Flush()
					}
				}
			})
		},
	}
	cmd.Flags().StringVar(&principal, "principal", "", "only grants of this principal")
	cmd.Flags().StringVar(&dataClass, "data-class", "", "only grants of this data class")
	return cmd
}
