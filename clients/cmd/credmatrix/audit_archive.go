package main

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/credmatrix/credmatrix/clients/auditclient"
	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
)

func (a *app) auditArchiveCommand() *cobra.Command {
	var (
		src logSource
		out string
		end uint64
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

'audit verify --bundle FILE' and 'audit replay ... --bundle FILE' read it
later with only the log's public key. Only operators may archive.`,
		Example: `  credmatrix audit archive --out audit-0001.bundle --public-key-file audit.pub
  credmatrix audit archive --out audit-0001.bundle --end 5000000 --public-key-file audit.pub
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
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&src.publicKeyFile, "public-key-file", a.getenv("CREDMATRIX_AUDIT_PUBLIC_KEY_FILE"), "trusted checkpoint verifier key of the log (env CREDMATRIX_AUDIT_PUBLIC_KEY_FILE)")
	f.StringVarP(&out, "out", "O", "", "archive file to write (must not exist)")
	f.Uint64Var(&end, "end", 0, "tree size to archive up to: a signed checkpoint's size (0: the latest)")
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
