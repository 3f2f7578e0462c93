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

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/bundle"
	"github.com/credmatrix/credmatrix/services/audit/checkpoint"
	"github.com/credmatrix/credmatrix/services/audit/sqlite"
)

// logSource says where export, verify and replay read the log from: a
// bundle file, a SQLite store file, or (neither) the audit service.
type logSource struct {
	bundlePath, dbPath, publicKeyFile, keptFile string
}

func (a *app) logSourceFlags(f *pflag.FlagSet, s *logSource, withBundle bool) {
	if withBundle {
		f.StringVar(&s.bundlePath, "bundle", "", "read the log from this exported bundle instead of the service")
	}
	f.StringVar(&s.dbPath, "db", "", "read the log straight from this SQLite audit store file (forensics: works when the service refuses to start)")
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

// load returns the log as a bundle from the chosen source.
func (a *app) loadLog(ctx context.Context, s *logSource, v *checkpoint.Verifier) (*bundle.Bundle, error) {
	switch {
	case s.bundlePath != "" && s.dbPath != "":
		return nil, usagef("--bundle and --db: give one")
	case s.bundlePath != "":
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
	case s.dbPath != "":
		if _, err := os.Stat(s.dbPath); err != nil {
			return nil, usagef("--db: %v", err)
		}
		store, err := sqlite.Open(ctx, s.dbPath)
		if err != nil {
			return nil, err
		}
		defer store.Close()
		origin, key := "", ""
		if v != nil {
			origin, key = v.Origin(), v.PublicKey()
		}
		return bundle.FromStore(ctx, store, origin, key)
	}
	kept, err := s.kept()
	if err != nil {
		return nil, err
	}
	return a.fetchLog(ctx, v, kept)
}

// fetchLog exports the log from the service: a fresh signed checkpoint,
// every event it covers, and (given a kept checkpoint) the consistency
// proof from the kept one to it.
func (a *app) fetchLog(ctx context.Context, v *checkpoint.Verifier, kept []byte) (*bundle.Bundle, error) {
	conn, err := a.dial(a.auditAddr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	rpc := auditv1.NewAuditServiceClient(conn)
	cp, err := rpc.GetCheckpoint(ctx, &auditv1.GetCheckpointRequest{})
	if err != nil {
		return nil, err
	}
	b := &bundle.Bundle{Origin: cp.GetOrigin()}
	if v != nil {
		b.PublicKey = v.PublicKey()
	}
	if len(kept) > 0 && v != nil {
		if k, err := v.Open(kept); err == nil && k.Size < cp.GetTreeSize() {
			p, err := rpc.GetConsistencyProof(ctx, &auditv1.GetConsistencyProofRequest{FirstSize: k.Size, SecondSize: cp.GetTreeSize()})
			if err != nil {
				return nil, err
			}
			b.Checkpoints = append(b.Checkpoints, kept)
			b.Proofs = append(b.Proofs, bundle.Proof{From: k.Size, To: cp.GetTreeSize(), Hashes: p.GetHashes()})
		}
	}
	b.Checkpoints = append(b.Checkpoints, cp.GetSignedNote())
	req := &auditv1.QueryRequest{PageSize: audit.MaxPageSize}
	bar := a.progress("fetching events", cp.GetTreeSize())
	defer bar.done()
	for uint64(len(b.Events)) < cp.GetTreeSize() {
		bar.set(uint64(len(b.Events)))
		resp, err := rpc.Query(ctx, req)
		if err != nil {
			return nil, err
		}
		for _, e := range resp.GetEvents() {
			if uint64(len(b.Events)) == cp.GetTreeSize() {
				break
			}
			data, err := audit.MarshalEvent(e)
			if err != nil {
				return nil, fmt.Errorf("event %d: %w", e.GetSequence(), err)
			}
			b.Events = append(b.Events, data)
		}
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	return b, nil
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

From the service (default) the bundle ends at a freshly signed checkpoint;
with --db it is read straight from a SQLite store file with every stored
checkpoint, which works when the service refuses to start on a damaged store.`,
		Example: `  credmatrix audit export --out audit.bundle
  credmatrix audit export --db /var/lib/credmatrix/audit.db --public-key-file audit.pub --out audit.bundle`,
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
