package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/postgres"
	"github.com/credmatrix/credmatrix/services/audit/sqlite"
)

// Exit codes of the forensic commands.
const (
	exitOK         = 0
	exitNotOK      = 1 // the log does not verify, or the command failed
	exitUsageError = 2
)

// forensics runs `audit export --db …` and `audit verify --db …`: reading a
// SQLite store file directly, where the service runs, which works when the
// service refuses to start on a damaged store. The user CLI (credmatrix
// audit export|verify) reads the log from the service or a bundle; it
// links no database driver.
func forensics(ctx context.Context, cmd string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("audit "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := fs.String("db", "", "SQLite audit store file to read (opened read-only)")
	pgFile := fs.String("postgres-dsn-file", "", "file holding the connection string of a PostgreSQL audit store to read instead of --db (read-only sessions)")
	pub := fs.String("public-key-file", os.Getenv("CREDMATRIX_AUDIT_PUBLIC_KEY_FILE"), "trusted checkpoint verifier key of the log (required; env CREDMATRIX_AUDIT_PUBLIC_KEY_FILE)")
	var out, kept, output *string
	switch cmd {
	case "export":
		out = fs.String("out", "", "bundle file to write (required)")
	case "verify":
		kept = fs.String("checkpoint-file", "", "a signed checkpoint kept from an earlier run: the log must extend it")
		output = fs.String("output", "table", "output: table or json")
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: audit %s (--db FILE | --postgres-dsn-file FILE) --public-key-file KEY [flags]\n\n", cmd)
		switch cmd {
		case "export":
			fmt.Fprintln(stderr, "Writes the store's events exactly as stored and every stored checkpoint into a\nbundle that 'credmatrix audit verify --bundle' checks. The file is opened\nread-only and never written.")
		case "verify":
			fmt.Fprintln(stderr, "Verifies the store's events against its signed checkpoints (one per commit\nbatch) and the trusted key, compares every row's columns with its event, and\nreports every modified, missing, reordered, undecodable or unsigned event by\nsequence. The file is opened read-only and never written.")
		}
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsageError
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "audit %s: "+format+"\n", append([]any{cmd}, a...)...)
		return exitUsageError
	}
	if fs.NArg() > 0 {
		return usage("unexpected arguments %q", fs.Args())
	}
	var dsn string
	switch {
	case (*db == "") == (*pgFile == ""):
		return usage("--db: required (or --postgres-dsn-file), exactly one")
	case *db != "":
		if _, err := os.Stat(*db); err != nil {
			return usage("--db: %v", err)
		}
	default:
		b, err := os.ReadFile(*pgFile)
		if err != nil {
			return usage("--postgres-dsn-file: %v", err)
		}
		dsn = strings.TrimSpace(string(b))
	}
	var v *checkpoint.Verifier
	if *pub != "" {
		b, err := os.ReadFile(*pub)
		if err != nil {
			return usage("--public-key-file: %v", err)
		}
		if v, err = checkpoint.NewVerifier(string(b)); err != nil {
			return usage("--public-key-file %s: %v", *pub, err)
		}
	} else {
		return usage("--public-key-file: required (the log's checkpoint verifier key: it names the log and checks its checkpoints)")
	}
	if cmd == "export" && *out == "" {
		return usage("--out: required")
	}
	if cmd == "verify" && *output != "table" && *output != "json" {
		return usage("--output %q: want table or json", *output)
	}

	// Evidence is opened read-only and never written: no migration, no
	// journal-mode change, no WAL checkpoint (the file and its -wal stay
	// byte-identical); PostgreSQL sessions are read-only.
	var store audit.Store
	where := *db
	if dsn != "" {
		where = "the PostgreSQL store"
		s, err := postgres.OpenReadOnly(ctx, dsn)
		if err != nil {
			fmt.Fprintf(stderr, "audit %s: %v\n", cmd, err)
			return exitNotOK
		}
		store = s
	} else {
		s, err := sqlite.OpenReadOnly(ctx, *db)
		if err != nil {
			fmt.Fprintf(stderr, "audit %s: open %s: %v\n", cmd, *db, err)
			return exitNotOK
		}
		store = s
	}
	defer store.Close()
	if cmd == "verify" {
		var keptNote []byte
		if *kept != "" {
			var err error
			keptNote, err = os.ReadFile(*kept)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return usage("--checkpoint-file: %v", err)
			}
		}
		r, err := audit.VerifyStore(ctx, store, v, keptNote)
		if err != nil {
			fmt.Fprintf(stderr, "audit verify: read %s: %v\n", where, err)
			return exitNotOK
		}
		if *output == "json" {
			if err := json.NewEncoder(stdout).Encode(r); err != nil {
				fmt.Fprintf(stderr, "audit verify: %v\n", err)
				return exitNotOK
			}
		} else {
			r.WriteText(stdout, keptNote != nil)
		}
		if !r.OK() {
			return exitNotOK
		}
		return exitOK
	}
	b, mismatches, err := audit.ExportBundle(ctx, store, v.Origin(), v.PublicKey())
	if err != nil {
		fmt.Fprintf(stderr, "audit export: read %s: %v\n", where, err)
		return exitNotOK
	}
	var buf bytes.Buffer
	if err := b.Write(&buf); err != nil {
		fmt.Fprintf(stderr, "audit export: %v\n", err)
		return exitNotOK
	}
	if err := os.WriteFile(*out, buf.Bytes(), 0o600); err != nil {
		fmt.Fprintf(stderr, "audit export: %v\n", err)
		return exitNotOK
	}
	fmt.Fprintf(stdout, "exported %d events and %d checkpoints to %s\n", len(b.Events), len(b.Checkpoints), *out)
	if len(mismatches) > 0 {
		// A bundle holds events, not the store's columns: say here what
		// the bundle cannot carry.
		fmt.Fprintf(stderr, "audit export: warning: the store's columns of %d event(s) disagree with the events (first: %s); 'audit verify' reports them all\n", len(mismatches), mismatches[0])
	}
	return exitOK
}
