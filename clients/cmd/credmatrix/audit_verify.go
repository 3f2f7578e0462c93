package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

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
			v, err := src.verifier()
			if err != nil {
				return err
			}
			kept, err := src.kept()
			if err != nil {
				return err
			}
			r, err := a.verifyLog(cmd.Context(), &src, verify.Options{Key: v, Trusted: kept})
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(a.out)
				if err := enc.Encode(r); err != nil {
					return err
				}
			} else {
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
		},
	}
	a.logSourceFlags(cmd.Flags(), &src, true)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output: table or json")
	return cmd
}
