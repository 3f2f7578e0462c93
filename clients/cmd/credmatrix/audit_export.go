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
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// logSource says where export, verify and replay read the log from: a
// bundle file or (without one) the audit service. Reading a store file
// directly (forensics) is the audit binary's job: 'audit verify --db' and
// 'audit export --db' run where the store is, and keep this CLI free of
// database drivers.
type logSource struct {
	bundlePath, publicKeyFile, keptFile string
	// addr is the audit service's address (--audit-addr when empty).
	addr string
	// archives are the archive files of the log's older, pruned ranges,
	// in log order: they and the log form one chain.
	archives []string
}

func (a *app) logSourceFlags(f *pflag.FlagSet, s *logSource, withBundle bool) {
	if withBundle {
		f.StringVar(&s.bundlePath, "bundle", "", "read the log from this exported bundle instead of the service")
		f.StringArrayVar(&s.archives, "archive", nil, "archive file of an older range of the log that was pruned from the service (repeat, oldest first): the archives and the log must form one chain")
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

// loadLog returns the log as a bundle from the chosen source, and the
// rows the service reported as tampered with while it was fetched.
func (a *app) loadLog(ctx context.Context, s *logSource, v *checkpoint.Verifier) (*bundle.Bundle, []*auditv1.ColumnMismatch, error) {
	b, mismatches, err := a.fetchLog(ctx, s, v, nil)
	return b, mismatches, err
}

// verifyLog loads the log and verifies it with opts. From the service, a
// modified event is pinned to its commit batch (the service's per-batch
// checkpoints of the span are fetched) and the rows the service reports
// as tampered with (columns that disagree with their event) are problems
// too.
func (a *app) verifyLog(ctx context.Context, s *logSource, opts verify.Options) (*verify.Report, error) {
	var r *verify.Report
	_, mismatches, err := a.fetchLog(ctx, s, opts.Key, func(c *auditclient.Client, b *bundle.Bundle) error {
		var err error
		if c == nil {
			r = verify.Bundle(b, opts)
			return nil
		}
		r, err = c.Verify(ctx, b, opts)
		return err
	})
	if err != nil {
		return nil, err
	}
	for _, m := range mismatches {
		r.AddColumnMismatch(m.GetSequence(), m.GetColumns())
	}
	return r, nil
}

// verifyChain verifies the log like verifyLog and, with --archive files,
// each archive on its own (the same key; a kept checkpoint applies to the
// log) and that the archives and the log form one chain (verify.Chain:
// each starts where the previous one ends, at the same tree root). The
// report is the log's, extended with the archives' events (and decoded
// events or leaves, for a replay) before its own.
func (a *app) verifyChain(ctx context.Context, s *logSource, opts verify.Options) (*verify.Report, error) {
	var reports []*verify.Report
	for _, path := range s.archives {
		r, err := verifyArchiveFile(path, verify.Options{Key: opts.Key, KeepEvents: opts.KeepEvents, KeepLeaves: opts.KeepLeaves})
		if err != nil {
			return nil, usagef("--archive: %v", err)
		}
		reports = append(reports, r)
	}
	live, err := a.verifyLog(ctx, s, opts)
	if err != nil || len(reports) == 0 {
		return live, err
	}
	if p := verify.Chain(append(reports, live)); p != nil && live.OK() {
		live.Add(p)
	}
	var events []*auditv1.Event
	var leaves [][]byte
	for _, r := range reports {
		live.Events += r.Events
		live.Checkpoints += r.Checkpoints
		events = append(events, r.DecodedEvents...)
		leaves = append(leaves, r.Leaves...)
	}
	live.First = reports[0].First
	if opts.KeepEvents {
		live.DecodedEvents = append(events, live.DecodedEvents...)
	}
	if opts.KeepLeaves {
		live.Leaves = append(leaves, live.Leaves...)
	}
	return live, nil
}

// fetchLog reads the log from the chosen source and, if then is set,
// calls it with the bundle and the service's client (nil for a bundle
// file) before the connection closes.
func (a *app) fetchLog(ctx context.Context, s *logSource, v *checkpoint.Verifier, then func(*auditclient.Client, *bundle.Bundle) error) (*bundle.Bundle, []*auditv1.ColumnMismatch, error) {
	if s.bundlePath != "" {
		f, err := os.Open(s.bundlePath)
		if err != nil {
			return nil, nil, usagef("--bundle: %v", err)
		}
		defer f.Close()
		b, err := bundle.Read(f)
		if err != nil {
			return nil, nil, fmt.Errorf("--bundle %s: %w", s.bundlePath, err)
		}
		if then != nil {
			if err := then(nil, b); err != nil {
				return nil, nil, err
			}
		}
		return b, nil, nil
	}
	kept, err := s.kept()
	if err != nil {
		return nil, nil, err
	}
	addr := s.addr
	if addr == "" {
		addr = a.auditAddr
	}
	conn, err := a.dial(addr)
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	var bar *progressBar
	defer func() {
		if bar != nil {
			bar.done()
		}
	}()
	var mismatches []*auditv1.ColumnMismatch
	client := auditclient.New(conn)
	b, err := client.Export(ctx, auditclient.ExportOptions{
		Verifier: v, Kept: kept,
		Progress: func(done, total uint64) {
			if bar == nil {
				bar = a.progress("fetching events", total)
			}
			bar.set(done)
		},
		OnMismatch: func(m *auditv1.ColumnMismatch) {
			if len(mismatches) < 1000 {
				mismatches = append(mismatches, m)
			}
		},
	})
	if err != nil {
		return nil, nil, err
	}
	if then != nil {
		if err := then(client, b); err != nil {
			return nil, nil, err
		}
	}
	return b, mismatches, nil
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
			l, zoned, err := a.oneLog(&a.zones, src.publicKeyFile)
			if err != nil {
				return err
			}
			if zoned {
				src.addr, src.publicKeyFile = l.addr, l.publicKeyFile
				src.keptFile = keptFileOf(src.keptFile, l)
			}
			var v *checkpoint.Verifier
			if src.publicKeyFile != "" {
				var err error
				if v, err = src.verifier(); err != nil {
					return err
				}
			}
			b, mismatches, err := a.loadLog(cmd.Context(), &src, v)
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
			if len(mismatches) > 0 {
				// A bundle holds events, not the database's columns.
				fmt.Fprintf(a.err, "warning: the audit service reports %d stored row(s) that disagree with the log (first: sequence %d, %s): someone wrote to its database; 'credmatrix audit verify' lists them\n",
					len(mismatches), mismatches[0].GetSequence(), strings.Join(mismatches[0].GetColumns(), ", "))
			}
			return nil
		},
	}
	a.logSourceFlags(cmd.Flags(), &src, false)
	a.zoneFlagSet(cmd.Flags(), &a.zones)
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
