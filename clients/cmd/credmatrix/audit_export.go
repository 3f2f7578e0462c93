package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/credmatrix/credmatrix/clients/auditclient"
	"github.com/credmatrix/credmatrix/clients/auditclient/bundle"
	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
)

// logSource says where export, verify and replay read the log from: a
// bundle file or (without one) the audit service. Reading a store file
// directly (forensics) is the audit binary's job: 'audit verify --db' and
// 'audit export --db' run where the store is, and keep this CLI free of
// database drivers.
type logSource struct {
	bundlePath, publicKeyFile, keptFile string
}

func (a *app) logSourceFlags(f *pflag.FlagSet, s *logSource, withBundle bool) {
	if withBundle {
		f.StringVar(&s.bundlePath, "bundle", "", "read the log from this exported bundle instead of the service")
	}
	f.StringVar(&s.publicKeyFile, "public-key-file", a.getenv("CREDMATRIX_AUDIT_PUBLIC_KEY_FILE"), "trusted checkpoint verifier key of the log (env CREDMATRIX_AUDIT_PUBLIC_KEY_FILE)")
	f.StringVar(&s.keptFile, "checkpoint-file", "", "a signed checkpoint you kept from an earlier run: the log must extend it")
}

// verifier reads the trusted public key.
func (s *logSource) verifier() (*checkpoint.Verifier, error) {
	if s.publicKeyFile == "" {
		return nil, usagef("--public-key-file: required (the log's checkpoint verifier key, e.g. audit-checkpoint.key.pub)")
	}
	b, err := os.ReadFile(s.publicKeyFile)
	if err != nil {
		return nil, usagef("--public-key-file: %v", err)
	}
	v, err := checkpoint.NewVerifier(string(b))
	if err != nil {
		return nil, usagef("--public-key-file %s: %v", s.publicKeyFile, err)
	}
	return v, nil
}

// kept reads the kept checkpoint, if the file is set and exists.
func (s *logSource) kept() ([]byte, error) {
	if s.keptFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(s.keptFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // first run: nothing kept yet
	}
	if err != nil {
		return nil, usagef("--checkpoint-file: %v", err)
	}
	return b, nil
}

// loadLog returns the log as a bundle from the chosen source.
func (a *app) loadLog(ctx context.Context, s *logSource, v *checkpoint.Verifier) (*bundle.Bundle, error) {
	if s.bundlePath != "" {
		f, err := os.Open(s.bundlePath)
		if err != nil {
			return nil, usagef("--bundle: %v", err)
		}
		defer f.Close()
		b, err := bundle.Read(f)
		if err != nil {
			return nil, fmt.Errorf("--bundle %s: %w", s.bundlePath, err)
		}
		return b, nil
	}
	kept, err := s.kept()
	if err != nil {
		return nil, err
	}
	conn, err := a.dial(a.auditAddr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	var bar *progressBar
	defer func() {
		if bar != nil {
			bar.done()
		}
	}()
	return auditclient.New(conn).Export(ctx, auditclient.ExportOptions{
		Verifier: v, Kept: kept,
		Progress: func(done, total uint64) {
			if bar == nil {
				bar = a.progress("fetching events", total)
			}
			bar.set(done)
		},
	})
}

func (a *app) auditExportCommand() *cobra.Command {
	var (
		src logSource
		out string
	)
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Export the audit log (events, signed checkpoints, proofs) into one bundle file",
		Long: `Export writes the log as a bundle: every event's exact leaf bytes, the signed
checkpoints that commit to them and consistency proofs between checkpoints.
'audit verify --bundle' and 'audit replay --bundle' read it offline.

The bundle ends at a checkpoint the service signs for the export. To read a
store file directly (forensics, when the service refuses to start on a
damaged store), run the audit binary where the store is:
'audit export --db FILE --out BUNDLE'.`,
		Example: `  credmatrix audit export --out audit.bundle
  credmatrix audit export --out audit.bundle --public-key-file audit.pub --checkpoint-file kept.checkpoint`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usagef("--out: required")
			}
			var v *checkpoint.Verifier
			if src.publicKeyFile != "" {
				var err error
				if v, err = src.verifier(); err != nil {
					return err
				}
			}
			b, err := a.loadLog(cmd.Context(), &src, v)
			if err != nil {
				return err
			}
			var buf bytes.Buffer
			if err := b.Write(&buf); err != nil {
				return err
			}
			if err := os.WriteFile(out, buf.Bytes(), 0o600); err != nil {
				return err
			}
			fmt.Fprintf(a.out, "exported %d events and %d checkpoints to %s\n", len(b.Events), len(b.Checkpoints), out)
			return nil
		},
	}
	a.logSourceFlags(cmd.Flags(), &src, false)
	cmd.Flags().StringVarP(&out, "out", "O", "", "bundle file to write")
	return cmd
}

// progressBar draws "label  n/total  pct%" on stderr when stderr is a
// terminal and the run is long enough to need it; otherwise it is silent.
type progressBar struct {
	w            io.Writer
	label        string
	total, shown uint64
}

// progressMin is the smallest run that gets a progress bar.
const progressMin = 20000

func (a *app) progress(label string, total uint64) *progressBar {
	f, ok := a.err.(*os.File)
	if !ok || total < progressMin {
		return &progressBar{}
	}
	if fi, err := f.Stat(); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return &progressBar{}
	}
	return &progressBar{w: f, label: label, total: total}
}

func (p *progressBar) set(n uint64) {
	if p.w == nil || n-p.shown < p.total/100 && n != p.total {
		return
	}
	p.shown = n
	const width = 30
	fill := int(n * width / p.total)
	fmt.Fprintf(p.w, "\r%s [%s%s] %d/%d", p.label, strings.Repeat("#", fill), strings.Repeat(".", width-fill), n, p.total)
}

func (p *progressBar) done() {
	if p.w != nil {
		p.set(p.total)
		fmt.Fprintln(p.w)
	}
}
