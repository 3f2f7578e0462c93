package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/credmatrix/credmatrix/clients/auditclient"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func (a *app) auditCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read the audit log: tail, query, export, verify and replay",
	}
	cmd.AddCommand(a.auditTailCommand(), a.auditQueryCommand(), a.auditExportCommand(), a.auditVerifyCommand(), a.auditReplayCommand())
	return cmd
}

// eventPrinter prints events as an aligned table or as JSON lines.
type eventPrinter struct {
	json bool
	tw   *tabwriter.Writer
	w    io.Writer
	head bool
	// follow flushes after every event (a stream never ends); otherwise the
	// table is aligned over all rows and flushed once.
	follow bool
}

func newEventPrinter(w io.Writer, output string, follow bool) (*eventPrinter, error) {
	switch output {
	case "table":
		return &eventPrinter{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0), w: w, follow: follow}, nil
	case "json":
		return &eventPrinter{json: true, w: w, follow: follow}, nil
	}
	return nil, usagef("--output %q: want table or json", output)
}

func (p *eventPrinter) print(ev *auditv1.Event) error {
	if p.json {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(ev)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.w, "%s\n", b)
		return err
	}
	if !p.head {
		fmt.Fprintln(p.tw, "SEQ\tTIME\tKIND\tDECISION\tPRINCIPAL\tDETAIL\tTRACE\tREASON")
		p.head = true
	}
	trace := ev.GetTraceId()
	if trace == "" {
		trace = "-"
	}
	fmt.Fprintf(p.tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ev.GetSequence(), ev.GetTime().AsTime().UTC().Format(time.RFC3339),
		shortKind(ev.GetKind()), shortDecision(ev.GetDecision()), orDash(ev.GetActor().GetPrincipal()), orDash(detail(ev)), trace, orDash(ev.GetReason()))
	if p.follow {
		return p.tw.Flush()
	}
	return nil
}

// flush writes out a buffered table.
func (p *eventPrinter) flush() error {
	if p.tw == nil {
		return nil
	}
	return p.tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func shortKind(k auditv1.Kind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "KIND_"))
}

func shortDecision(d auditv1.Decision) string {
	return strings.ToLower(strings.TrimPrefix(d.String(), "DECISION_"))
}

// detail summarises the kind-specific part of an event in one cell.
func detail(ev *auditv1.Event) string {
	switch d := ev.GetDetail().(type) {
	case *auditv1.Event_Session:
		s := d.Session
		out := fmt.Sprintf("%s@%s/%s", s.GetRoleName(), orDash(s.GetAccountName()), s.GetRegion())
		if s.GetAccessKeyId() != "" {
			out += " " + s.GetAccessKeyId()
		}
		return out
	case *auditv1.Event_Key:
		k := d.Key
		out := fmt.Sprintf("%s/%s", k.GetDataClass(), k.GetRegion())
		if k.GetKeyVersion() > 0 {
			out += fmt.Sprintf(" v%d", k.GetKeyVersion())
		}
		return out
	case *auditv1.Event_Policy:
		return "policy " + d.Policy.GetSha256()
	case *auditv1.Event_Admin:
		return d.Admin.GetAction()
	}
	return ""
}

func parseKinds(names []string) ([]auditv1.Kind, error) {
	var kinds []auditv1.Kind
	for _, n := range names {
		v, ok := auditv1.Kind_value["KIND_"+strings.ToUpper(strings.ReplaceAll(n, "-", "_"))]
		if !ok || v == 0 {
			var valid []string
			for name, num := range auditv1.Kind_value {
				if num != 0 {
					valid = append(valid, strings.ToLower(strings.TrimPrefix(name, "KIND_")))
				}
			}
			sort.Strings(valid)
			return nil, usagef("--kind %q: want one of %s", n, strings.Join(valid, ", "))
		}
		kinds = append(kinds, auditv1.Kind(v))
	}
	return kinds, nil
}

func (a *app) auditTailCommand() *cobra.Command {
	var (
		from   uint64
		follow bool
		kinds  []string
		output string
	)
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Stream audit events from a sequence number (and follow new ones)",
		Example: `  credmatrix audit tail --from 0 --follow=false
  credmatrix audit tail --kind session-issue --output json | my-siem-forwarder`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := parseKinds(kinds)
			if err != nil {
				return err
			}
			p, err := newEventPrinter(a.out, output, follow)
			if err != nil {
				return err
			}
			conn, err := a.dial(a.auditAddr)
			if err != nil {
				return err
			}
			defer conn.Close()
			client := auditclient.New(conn)
			if !follow {
				// Read what is there now, then stop.
				err := client.Query(cmd.Context(), &auditv1.QueryRequest{Kinds: k}, func(ev *auditv1.Event) error {
					if ev.GetSequence() < from {
						return nil
					}
					return p.print(ev)
				})
				if err != nil {
					return err
				}
				return p.flush()
			}
			return client.Tail(cmd.Context(), from, k, p.print)
		},
	}
	f := cmd.Flags()
	f.Uint64Var(&from, "from", 0, "first sequence number")
	f.BoolVarP(&follow, "follow", "f", true, "keep streaming new events until interrupted")
	f.StringSliceVar(&kinds, "kind", nil, "only these kinds (e.g. session-issue,key-encrypt)")
	f.StringVarP(&output, "output", "o", "table", "output: table or json (one event per line)")
	return cmd
}

func (a *app) auditQueryCommand() *cobra.Command {
	var (
		since, until                           string
		kinds                                  []string
		decision, output                       string
		subject, account, role, class, traceID string
	)
	cmd := &cobra.Command{
		Use:   "query",
		Short: "Find audit events by time, kind, subject, account, role, data class, decision or trace",
		Example: `  credmatrix audit query --kind session-issue --decision deny --since 2026-11-27T00:00:00Z
  credmatrix audit query --subject 'repo:acme/app:ref:refs/heads/main' --output json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &auditv1.QueryRequest{Subject: subject, AccountId: account, RoleName: role, DataClass: class, TraceId: traceID}
			var err error
			if req.Kinds, err = parseKinds(kinds); err != nil {
				return err
			}
			for _, tv := range []struct {
				flag, val string
				dst       **timestamppb.Timestamp
			}{{"since", since, &req.StartTime}, {"until", until, &req.EndTime}} {
				if tv.val == "" {
					continue
				}
				t, err := time.Parse(time.RFC3339, tv.val)
				if err != nil {
					return usagef("--%s %q: want RFC 3339 time, e.g. 2026-11-27T10:00:00Z", tv.flag, tv.val)
				}
				*tv.dst = timestamppb.New(t)
			}
			if decision != "" {
				v, ok := auditv1.Decision_value["DECISION_"+strings.ToUpper(decision)]
				if !ok || v == 0 {
					return usagef("--decision %q: want allow, deny or error", decision)
				}
				req.Decision = auditv1.Decision(v)
			}
			p, err := newEventPrinter(a.out, output, false)
			if err != nil {
				return err
			}
			conn, err := a.dial(a.auditAddr)
			if err != nil {
				return err
			}
			defer conn.Close()
			if err := auditclient.New(conn).Query(cmd.Context(), req, p.print); err != nil {
				return err
			}
			return p.flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&since, "since", "", "only events at or after this RFC 3339 time")
	f.StringVar(&until, "until", "", "only events before this RFC 3339 time")
	f.StringSliceVar(&kinds, "kind", nil, "only these kinds")
	f.StringVar(&decision, "decision", "", "only this decision: allow, deny or error")
	f.StringVar(&subject, "subject", "", "only this subject or principal")
	f.StringVar(&account, "account", "", "only this account id")
	f.StringVar(&role, "role", "", "only this role")
	f.StringVar(&class, "data-class", "", "only this data class")
	f.StringVar(&traceID, "trace-id", "", "only this trace id")
	f.StringVarP(&output, "output", "o", "table", "output: table or json (one event per line)")
	return cmd
}
