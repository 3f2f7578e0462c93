package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/credmatrix/credmatrix/clients/auditclient/replay"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
)

func (a *app) auditReplayCommand() *cobra.Command {
	var (
		src             logSource
		output          string
		includeUnsigned bool
	)
	cmd := &cobra.Command{
		Use:   "replay",
		Short: "Reconstruct who held what, when, from the verified audit log",
		Long: `Replay reads the log (from the service, an exported --bundle or a SQLite
store file), verifies it first exactly as 'audit verify' does (it refuses a
log that does not verify, and events no checkpoint signs unless
--include-unsigned), then answers one question:

  sessions  which sessions were live at --at (for a subject, account, role)
  timeline  everything a subject did, in order
  key-ops   every key operation on a data class (and region) in a window
  grants    the keyguard grants in force at --at: those created through the
            API and the static ones of keyguard's key-ring file (recorded
            each time keyguard starts)`,
		Example: `  credmatrix audit replay sessions --at 2026-11-27T10:00:00Z --account prod
  credmatrix audit replay timeline --subject repo:acme/app:ref:refs/heads/main
  credmatrix audit replay key-ops --data-class confidential --region eu-west-1 --bundle audit.bundle`,
	}
	pf := cmd.PersistentFlags()
	a.logSourceFlags(pf, &src, true)
	pf.StringVarP(&output, "output", "o", "table", "output: table or json")
	pf.BoolVar(&includeUnsigned, "include-unsigned", false, "also replay events after the last signed checkpoint (nothing proves them: anyone with write access to the store could have written them)")

	a.zoneFlagSet(pf, &a.zones)

	// zoned is set by load when the logs of several residency zones are
	// replayed together: every answer then names its log.
	zoned := false
	// load verifies the log (every log, with zones) and replays it.
	load := func(cmd *cobra.Command) (*replay.Replayer, error) {
		if output != "table" && output != "json" {
			return nil, usagef("--output %q: want table or json", output)
		}
		logs, z, err := a.logs(&a.zones, src.publicKeyFile)
		if err != nil {
			return nil, err
		}
		if !z {
			evs, err := a.verifiedEvents(cmd, src, "", includeUnsigned)
			if err != nil {
				return nil, err
			}
			return replayAll([][]zonedLeaf{evs})
		}
		zoned = true
		if src.bundlePath != "" {
			return nil, usagef("--bundle holds one audit log; with --audit-zone set, replay reads every zone's log from its service")
		}
		if len(src.archives) > 0 {
			return nil, usagef("--archive belongs to one audit log; with --audit-zone set, replay reads every zone's log from its service")
		}
		var perLog [][]zonedLeaf
		for _, l := range logs {
			if err := checkKeyFile(l); err != nil {
				return nil, err
			}
			one := src
			one.addr, one.publicKeyFile, one.keptFile = l.addr, l.publicKeyFile, keptFileOf(src.keptFile, l)
			evs, err := a.verifiedEvents(cmd, one, l.name, includeUnsigned)
			if err != nil {
				a.logFailed(l, err)
				return nil, fmt.Errorf("audit log %s: %w", l.name, err)
			}
			perLog = append(perLog, evs)
		}
		return replayAll(perLog)
	}
	// logCol is the LOG cell of a row ("" unless zoned).
	logCol := func(log string) string {
		if !zoned {
			return ""
		}
		return log + "\t"
	}
	logHead := func() string {
		if !zoned {
			return ""
		}
		return "LOG\t"
	}
	parseTime := func(flag, v string, required bool) (time.Time, error) {
		if v == "" {
			if required {
				return time.Time{}, usagef("--%s: required (RFC 3339, e.g. 2026-11-27T10:00:00Z, or now)", flag)
			}
			return time.Time{}, nil
		}
		if v == "now" {
			return time.Now(), nil
		}
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return time.Time{}, usagef("--%s %q: want RFC 3339 time, e.g. 2026-11-27T10:00:00Z, or now", flag, v)
		}
		return t, nil
	}

	var at, subject, account, role string
	sessions := &cobra.Command{
		Use:   "sessions",
		Short: "Sessions live at a time, optionally for a subject, account (id or name) or role",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := parseTime("at", at, true)
			if err != nil {
				return err
			}
			rp, err := load(cmd)
			if err != nil {
				return err
			}
			ss := rp.SessionsAt(t, replay.SessionFilter{Subject: subject, AccountID: account, RoleName: role})
			if output == "json" {
				return writeReplayJSON(a.out, ss)
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, logHead()+"SEQ\tSESSION\tSUBJECT\tACCOUNT\tROLE\tREGION\tISSUED\tEXPIRES\tACCESS KEY")
			for _, s := range ss {
				fmt.Fprintf(tw, logCol(s.Log)+"%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Sequence, orDash(s.SessionID), orDash(s.Subject),
					orDash(s.AccountName+" "+s.AccountID), s.RoleName, orDash(s.Region), ts(s.Issued), ts(s.Expires), orDash(s.AccessKeyID))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(a.out, "%d session(s) live at %s\n", len(ss), ts(t))
			return nil
		},
	}
	sf := sessions.Flags()
	sf.StringVar(&at, "at", "", "the time to reconstruct (RFC 3339 or now)")
	sf.StringVar(&subject, "subject", "", "only this subject or principal")
	sf.StringVar(&account, "account", "", "only this account id or name")
	sf.StringVar(&role, "role", "", "only this role")

	var tlSubject string
	timeline := &cobra.Command{
		Use:   "timeline",
		Short: "Everything a subject (or principal) did, in order",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if tlSubject == "" {
				return usagef("--subject: required")
			}
			rp, err := load(cmd)
			if err != nil {
				return err
			}
			return printEntries(a.out, output, zoned, rp.Timeline(tlSubject))
		},
	}
	timeline.Flags().StringVar(&tlSubject, "subject", "", "the subject or principal")

	var class, region, since, until string
	keyOps := &cobra.Command{
		Use:   "key-ops",
		Short: "Every key operation for a data class (and region) in a time window",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			from, err := parseTime("since", since, false)
			if err != nil {
				return err
			}
			to, err := parseTime("until", until, false)
			if err != nil {
				return err
			}
			rp, err := load(cmd)
			if err != nil {
				return err
			}
			return printEntries(a.out, output, zoned, rp.KeyOps(class, region, from, to))
		},
	}
	kf := keyOps.Flags()
	kf.StringVar(&class, "data-class", "", "only this data class")
	kf.StringVar(&region, "region", "", "only this region")
	kf.StringVar(&since, "since", "", "only at or after this time")
	kf.StringVar(&until, "until", "", "only before this time")

	var grantsAt, grantsClass string
	grants := &cobra.Command{
		Use:   "grants",
		Short: "The keyguard grants in force at a time",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := parseTime("at", grantsAt, true)
			if err != nil {
				return err
			}
			rp, err := load(cmd)
			if err != nil {
				return err
			}
			gs := rp.GrantsAt(t, grantsClass)
			if output == "json" {
				return writeReplayJSON(a.out, gs)
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, logHead()+"SEQ\tGRANT\tFROM\tGRANTEE\tCLASS\tREGIONS\tOPERATIONS\tCREATED\tEXPIRES")
			for _, g := range gs {
				exp := "-"
				if !g.Expires.IsZero() {
					exp = ts(g.Expires)
				}
				from := "api"
				if g.Static {
					from = "key-ring file"
				}
				fmt.Fprintf(tw, logCol(g.Log)+"%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.Sequence, g.GrantID, from, g.Grantee, g.DataClass,
					orDash(strings.Join(g.Regions, ",")), orDash(strings.Join(g.Operations, ",")), ts(g.Created), exp)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(a.out, "%d grant(s) in force at %s\n", len(gs), ts(t))
			return nil
		},
	}
	grants.Flags().StringVar(&grantsAt, "at", "", "the time to reconstruct (RFC 3339 or now)")
	grants.Flags().StringVar(&grantsClass, "data-class", "", "only this data class")

	cmd.AddCommand(sessions, timeline, keyOps, grants)
	return cmd
}

func ts(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func writeReplayJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printEntries(w io.Writer, output string, zoned bool, es []replay.Entry) error {
	if output == "json" {
		return writeReplayJSON(w, es)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head, col := "", func(string) string { return "" }
	if zoned {
		head, col = "LOG\t", func(log string) string { return log + "\t" }
	}
	fmt.Fprintln(tw, head+"SEQ\tTIME\tKIND\tDECISION\tSUBJECT\tDETAIL")
	for _, e := range es {
		fmt.Fprintf(tw, col(e.Log)+"%d\t%s\t%s\t%s\t%s\t%s\n", e.Sequence, ts(e.Time), e.Kind, e.Decision, orDash(e.Subject), orDash(e.Summary))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d event(s)\n", len(es))
	return nil
}

// verifiedEvents verifies one log exactly as 'audit verify' does and
// returns its events (those no checkpoint signs only with
// includeUnsigned), each naming log ("" when it is the only log).
func (a *app) verifiedEvents(cmd *cobra.Command, src logSource, log string, includeUnsigned bool) ([]zonedLeaf, error) {
	v, err := src.verifier()
	if err != nil {
		return nil, err
	}
	kept, err := src.kept()
	if err != nil {
		return nil, err
	}
	r, err := a.verifyChain(cmd.Context(), &src, verify.Options{Key: v, Trusted: kept, KeepLeaves: true})
	if err != nil {
		return nil, err
	}
	of := ""
	if log != "" {
		of = " of audit log " + log
	}
	switch {
	case r.OK():
	case r.OnlyUnsigned() && includeUnsigned:
		fmt.Fprintf(a.err, "warning: including %d UNSIGNED event(s)%s, %d to %d: no checkpoint signs them (--include-unsigned)\n", r.Unsigned, of, r.VerifiedSize, r.Events-1)
	case r.OnlyUnsigned():
		return nil, fmt.Errorf("%w, refusing to replay it: %s (pass --include-unsigned to replay them anyway)", errNotVerified, r.Problem)
	default:
		return nil, fmt.Errorf("%w, refusing to replay it: %s", errNotVerified, r.Problem)
	}
	evs := make([]zonedLeaf, 0, len(r.Leaves))
	for _, data := range r.Leaves {
		l, err := replay.ReadLeaf(data)
		if err != nil {
			return nil, fmt.Errorf("%w, refusing to replay it: %v", errNotVerified, err)
		}
		evs = append(evs, zonedLeaf{log: log, leaf: l})
	}
	if r.Unsigned > 0 && includeUnsigned {
		fmt.Fprintf(a.err, "replayed %d events%s: %d verified (tree size %d) and %d UNSIGNED\n", len(evs), of, r.VerifiedSize, r.VerifiedSize, r.Unsigned)
	} else {
		fmt.Fprintf(a.err, "replayed %d verified events%s (tree size %d)\n", len(evs), of, r.VerifiedSize)
	}
	return evs, nil
}
