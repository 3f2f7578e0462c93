package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/credmatrix/credmatrix/clients/auditclient"
	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

func (a *app) auditArchiveCommand() *cobra.Command {
	var (
		src   logSource
		out   string
		end   uint64
		prune bool
	)
	cmd := &cobra.Command{
		Use:   "archive",
		Short: "Write a sealed range of the audit log to a bundle file and verify it",
		Long: `Archive asks the audit service for the events from the first one it holds up
to a signed checkpoint (--end, default its latest), with the signed checkpoints
in that range and the node hashes of the tree before it, and writes them to
--out as a bundle file (written to a temporary file first, checked against the
SHA-256 the service computed, then linked into place: never overwritten). The
file is verified offline against --public-key-file exactly as 'audit verify
--bundle' does, and must be sealed (end at a signed checkpoint). The service
records the archive (range and SHA-256) in the log itself.

With --prune, once the file is verified and in place, the service removes the
archived events from its hot store (see 'audit prune'). Keep the file (and
copies): after the prune it is the only home of those events.

'audit verify --bundle FILE' and 'audit replay ... --bundle FILE' read it
later with only the log's public key; 'audit verify|replay --archive FILE'
checks archives and the service's log as one chain. Only operators may
archive.`,
		Example: `  credmatrix audit archive --out audit-0001.bundle --public-key-file audit.pub
  credmatrix audit archive --out audit-0001.bundle --end 5000000 --public-key-file audit.pub --prune
  credmatrix audit verify --bundle audit-0001.bundle --public-key-file audit.pub`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usagef("--out: required")
			}
			v, err := src.verifier()
			if err != nil {
				return err
			}
			if _, err := os.Stat(out); err == nil {
				return usagef("--out %s: already exists (an archive is never overwritten)", out)
			}
			tmp, err := os.CreateTemp(filepath.Dir(out), filepath.Base(out)+".partial-*")
			if err != nil {
				return usagef("--out: %v", err)
			}
			defer os.Remove(tmp.Name())
			conn, err := a.dial(a.auditAddr)
			if err != nil {
				tmp.Close()
				return err
			}
			defer conn.Close()
			client := auditclient.New(conn)
			sum, err := client.Archive(cmd.Context(), end, tmp)
			if err == nil {
				err = tmp.Sync()
			}
			if cerr := tmp.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			r, err := verifyArchiveFile(tmp.Name(), verify.Options{Key: v})
			if err != nil {
				return err
			}
			switch {
			case !r.OK():
				return fmt.Errorf("%w: the archive written by the service: %s", errNotVerified, r.Problem)
			case !r.Sealed || r.First != sum.GetFirstSequence() || r.First+r.Events != sum.GetEndSize():
				return fmt.Errorf("%w: the archive holds events %d to %d (sealed: %v) but the service announced %d to %d",
					errNotVerified, r.First, r.First+r.Events, r.Sealed, sum.GetFirstSequence(), sum.GetEndSize())
			}
			if err := os.Link(tmp.Name(), out); err != nil {
				return fmt.Errorf("--out: %w", err)
			}
			fmt.Fprintf(a.out, "archived events %d to %d (%d events, %d signed checkpoints) to %s\n", r.First, sum.GetEndSize()-1, r.Events, r.Checkpoints, out)
			fmt.Fprintf(a.out, "  sha256 %s; verified and sealed at tree size %d; recorded as audit event %d\n", hex.EncodeToString(sum.GetSha256()), r.VerifiedSize, sum.GetAuditSequence())
			if !prune {
				return nil
			}
			res, err := client.Prune(cmd.Context(), sum)
			if err != nil {
				return fmt.Errorf("prune (the archive %s is written and verified): %w", out, err)
			}
			printPruned(a, sum, res)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&src.publicKeyFile, "public-key-file", a.getenv("CREDMATRIX_AUDIT_PUBLIC_KEY_FILE"), "trusted checkpoint verifier key of the log (env CREDMATRIX_AUDIT_PUBLIC_KEY_FILE)")
	f.StringVarP(&out, "out", "O", "", "archive file to write (must not exist)")
	f.Uint64Var(&end, "end", 0, "tree size to archive up to: a signed checkpoint's size (0: the latest)")
	f.BoolVar(&prune, "prune", false, "once the archive is verified and in place, prune its events from the service's hot store")
	return cmd
}

func printPruned(a *app, sum *auditv1.ArchiveSummary, res *auditv1.PruneResponse) {
	fmt.Fprintf(a.out, "pruned events %d to %d from the service (recorded as audit event %d); it now holds events from %d on\n",
		sum.GetFirstSequence(), sum.GetEndSize()-1, res.GetAuditSequence(), res.GetFirstSequence())
}

func (a *app) auditPruneCommand() *cobra.Command {
	var (
		src  logSource
		file string
	)
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Remove the events of a verified archive file from the audit service's hot store",
		Long: `Prune verifies an archive file written by 'audit archive' (offline, against
--public-key-file; it must be sealed) and asks the service to remove its
events from the hot store. The service prunes only a range it archived
itself: the archive must start at the first event it holds, end at a signed
checkpoint, and its range and SHA-256 must be those of the archive event the
log recorded. The service records the prune in the log before removing
anything. Checkpoints and the Merkle tree's node hashes stay, so inclusion
and consistency proofs keep working for every tree size; queries, exports
and tails cover the events from the new first sequence on (a tail asked to
start before it fails, naming it).

Keep the archive file (and copies): after the prune it is the only home of
those events. 'audit verify|replay --archive FILE' checks it and the
service's log as one chain. Only operators may prune.`,
		Example: `  credmatrix audit prune --archive audit-0001.bundle --public-key-file audit.pub
  credmatrix audit verify --archive audit-0001.bundle --public-key-file audit.pub`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return usagef("--archive: required")
			}
			v, err := src.verifier()
			if err != nil {
				return err
			}
			data, err := os.ReadFile(file)
			if err != nil {
				return usagef("--archive: %v", err)
			}
			r, err := verifyArchiveFile(file, verify.Options{Key: v})
			if err != nil {
				return err
			}
			switch {
			case !r.OK():
				return fmt.Errorf("%w: the archive %s: %s", errNotVerified, file, r.Problem)
			case !r.Sealed || r.Events == 0:
				return fmt.Errorf("%w: the archive %s does not end at a signed checkpoint (not sealed): it cannot be pruned", errNotVerified, file)
			}
			digest := sha256.Sum256(data)
			sum := &auditv1.ArchiveSummary{FirstSequence: r.First, EndSize: r.First + r.Events, Sha256: digest[:]}
			conn, err := a.dial(a.auditAddr)
			if err != nil {
				return err
			}
			defer conn.Close()
			res, err := auditclient.New(conn).Prune(cmd.Context(), sum)
			if err != nil {
				return err
			}
			printPruned(a, sum, res)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&src.publicKeyFile, "public-key-file", a.getenv("CREDMATRIX_AUDIT_PUBLIC_KEY_FILE"), "trusted checkpoint verifier key of the log (env CREDMATRIX_AUDIT_PUBLIC_KEY_FILE)")
	f.StringVar(&file, "archive", "", "the archive file ('audit archive --out') whose events to prune")
	return cmd
}

// verifyArchiveFile reads and verifies one bundle file.
func verifyArchiveFile(path string, opts verify.Options) (*verify.Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", path, err)
	}
	defer f.Close()
	b, err := bundle.Read(f)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", path, err)
	}
	return verify.Bundle(b, opts), nil
}
