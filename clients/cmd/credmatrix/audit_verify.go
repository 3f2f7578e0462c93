package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
)

// errNotVerified marks a log that failed verification (exit code 1).
var errNotVerified = errors.New("the audit log does NOT verify")

func (a *app) auditVerifyCommand() *cobra.Command {
	var (
		src    logSource
		output string
	)
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Verify the audit log against its public key and a kept checkpoint; pinpoint tampering",
		Long: `Verify recomputes every event's Merkle leaf, checks every signed checkpoint
against the trusted public key, checks consistency between checkpoints, and
reports every modified, missing, reordered, undecodable or truncated event by
sequence number (a modified event to its commit batch: the service signs a
checkpoint per batch). Events no checkpoint signs are reported as UNSIGNED.
From the service, rows whose database columns disagree with their event are
reported too. With --checkpoint-file it also detects a rollback or a fork:
the log must extend the checkpoint you kept, and on success the file is
updated to the newest verified checkpoint (keep it somewhere the log's
operators cannot write, or publish it to a witness).

The log comes from the service (default) or an exported --bundle. To verify
a store file directly (forensics), run the audit binary where the store is:
'audit verify --db FILE --public-key-file KEY'. Exit code 1 when the log
does not verify.`,
		Example: `  credmatrix audit verify --checkpoint-file ~/.credmatrix/audit.checkpoint
  credmatrix audit verify --bundle audit.bundle --public-key-file audit.pub --checkpoint-file kept.checkpoint`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usagef("--output %q: want table or json", output)
			}
			logs, zoned, err := a.logs(&a.zones, src.publicKeyFile)
			if err != nil {
				return err
			}
			if !zoned {
				return a.verifyOne(cmd.Context(), src, output, "")
			}
			if src.bundlePath != "" {
				// A bundle is one log: --zone says whose key verifies it.
				if len(logs) != 1 {
					return usagef("--bundle holds one audit log: say whose with --zone (one of %s)", strings.Join(logNames(logs), ", "))
				}
				logs[0].addr = ""
			}
			if len(src.archives) > 0 && len(logs) != 1 {
				return usagef("--archive belongs to one audit log: say whose with --zone (one of %s)", strings.Join(logNames(logs), ", "))
			}
			// Every log on its own: its own key, its own kept checkpoint.
			var failed []string
			var firstErr error
			for _, l := range logs {
				if err := checkKeyFile(l); err != nil {
					return err
				}
				one := src
				one.addr, one.publicKeyFile, one.keptFile = l.addr, l.publicKeyFile, keptFileOf(src.keptFile, l)
				if output == "table" {
					fmt.Fprintf(a.out, "== audit log %s (%s) ==\n", l.name, orDash(l.addr))
				}
				if err := a.verifyOne(cmd.Context(), one, output, l.name); err != nil {
					if !errors.Is(err, errNotVerified) {
						a.logFailed(l, err)
					}
					failed = append(failed, l.name)
					if firstErr == nil {
						firstErr = err
					}
				}
			}
			if firstErr != nil {
				return fmt.Errorf("audit log(s) %s: %w", strings.Join(failed, ", "), firstErr)
			}
			return nil
		},
	}
	a.logSourceFlags(cmd.Flags(), &src, true)
	a.zoneFlagSet(cmd.Flags(), &a.zones)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output: table or json")
	return cmd
}

// verifyOne verifies one log (name: its name when several are verified,
// which JSON output then carries as "audit_log").
func (a *app) verifyOne(ctx context.Context, src logSource, output, name string) error {
	v, err := src.verifier()
	if err != nil {
		return err
	}
	kept, err := src.kept()
	if err != nil {
		return err
	}
	r, err := a.verifyChain(ctx, &src, verify.Options{Key: v, Trusted: kept})
	if err != nil {
		return err
	}
	switch {
	case output == "json" && name != "":
		if err := json.NewEncoder(a.out).Encode(struct {
			Log    string         `json:"audit_log"`
			Report *verify.Report `json:"report"`
		}{name, r}); err != nil {
			return err
		}
	case output == "json":
		if err := json.NewEncoder(a.out).Encode(r); err != nil {
			return err
		}
	default:
		r.WriteText(a.out, kept != nil)
	}
	if !r.OK() {
		return fmt.Errorf("%w: %s", errNotVerified, r.Problem)
	}
	if src.keptFile != "" && len(r.Latest) > 0 {
		if err := os.WriteFile(src.keptFile, r.Latest, 0o600); err != nil {
			return fmt.Errorf("--checkpoint-file: %w", err)
		}
	}
	return nil
}
