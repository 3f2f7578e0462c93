package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/credmatrix/credmatrix/clients/auditclient"
	"github.com/credmatrix/credmatrix/clients/auditclient/replay"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func (a *app) auditCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read the audit log: tail, query, export, verify, replay and archive",
	}
	cmd.AddCommand(a.auditTailCommand(), a.auditQueryCommand(), a.auditExportCommand(), a.auditVerifyCommand(), a.auditReplayCommand(), a.auditArchiveCommand(), a.auditPruneCommand())
	return cmd
}

// eventPrinter prints events as an aligned table or as JSON lines, and
// says how many it printed.
type eventPrinter struct {
	json  bool
	zoned bool // events come from several logs: each names its log
	w     io.Writer
	err   io.Writer // where the count goes when stdout is JSON lines
	table table
	n     int
}

func newEventPrinter(w, errw io.Writer, output string) (*eventPrinter, error) {
	switch output {
	case "table":
		return &eventPrinter{w: w, err: errw, table: table{header: eventHeader}}, nil
	case "json":
		return &eventPrinter{json: true, w: w, err: errw}, nil
	}
	return nil, usagef("--output %q: want table or json", output)
}

var eventHeader = []string{"SEQ", "TIME", "KIND", "DECISION", "PRINCIPAL", "DETAIL", "TRACE", "REASON"}

// add buffers one event (a table is aligned over all its rows).
func (p *eventPrinter) add(ev *auditv1.Event) error {
	return p.addFrom("", ev)
}

// addFrom buffers one event of the audit log named log.
func (p *eventPrinter) addFrom(log string, ev *auditv1.Event) error {
	p.n++
	if p.json {
		return p.writeJSONFrom(log, ev)
	}
	row := eventRow(ev)
	if p.zoned {
		row = append([]string{log}, row...)
	}
	p.table.add(row)
	return nil
}

// stream prints one event now, aligned with the rows printed before it.
func (p *eventPrinter) stream(ev *auditv1.Event) error {
	p.n++
	if p.json {
		return p.writeJSON(ev)
	}
	return p.table.stream(p.w, eventRow(ev))
}

func (p *eventPrinter) writeJSON(ev *auditv1.Event) error { return p.writeJSONFrom("", ev) }

// writeJSONFrom prints ev as one JSON line; with several logs read, its
// first field, "audit_log", names the log it came from.
func (p *eventPrinter) writeJSONFrom(log string, ev *auditv1.Event) error {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(ev)
	if err != nil {
		return err
	}
	if p.zoned {
		name, _ := json.Marshal(log)
		rest := strings.TrimSpace(string(b[1:]))
		if rest != "}" {
			rest = "," + rest
		}
		b = []byte(`{"audit_log":` + string(name) + rest)
	}
	_, err = fmt.Fprintf(p.w, "%s\n", b)
	return err
}

// flush prints the buffered rows.
func (p *eventPrinter) flush() error {
	if p.json {
		return nil
	}
	return p.table.flush(p.w)
}

// summary says how many events there were: after the table, or on
// standard error when standard output is JSON lines for a program.
func (p *eventPrinter) summary(note string) {
	w := p.w
	if p.json {
		w = p.err
	}
	msg := fmt.Sprintf("%d event%s", p.n, plural(p.n))
	if note != "" {
		msg += " (" + note + ")"
	}
	fmt.Fprintln(w, msg)
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func eventRow(ev *auditv1.Event) []string {
	return []string{
		strconv.FormatUint(ev.GetSequence(), 10), ev.GetTime().AsTime().UTC().Format(time.RFC3339),
		replay.ShortKind(ev.GetKind()), replay.ShortDecision(ev.GetDecision()), orDash(ev.GetActor().GetPrincipal()),
		orDash(detail(ev)), orDash(ev.GetTraceId()), orDash(ev.GetReason()),
	}
}

// table aligns columns. Buffered rows are aligned together; streamed rows
// use the widths seen so far (growing when a cell is wider), so a followed
// log stays in columns.
type table struct {
	header []string
	widths []int
	rows   [][]string
	headed bool
}

func (t *table) widen(cells []string) {
	for i, c := range cells {
		if i >= len(t.widths) {
			t.widths = append(t.widths, 0)
		}
		t.widths[i] = max(t.widths[i], utf8.RuneCountInString(c))
	}
}

func (t *table) add(cells []string) {
	t.rows = append(t.rows, cells)
}

func (t *table) flush(w io.Writer) error {
	if len(t.rows) == 0 {
		return nil
	}
	if !t.headed {
		t.widen(t.header)
	}
	for _, r := range t.rows {
		t.widen(r)
	}
	if !t.headed {
		if err := t.line(w, t.header); err != nil {
			return err
		}
		t.headed = true
	}
	for _, r := range t.rows {
		if err := t.line(w, r); err != nil {
			return err
		}
	}
	t.rows = nil
	return nil
}

func (t *table) stream(w io.Writer, cells []string) error {
	t.add(cells)
	return t.flush(w)
}

func (t *table) line(w io.Writer, cells []string) error {
	var b strings.Builder
	for i, c := range cells {
		b.WriteString(c)
		if i < len(cells)-1 {
			b.WriteString(strings.Repeat(" ", t.widths[i]-utf8.RuneCountInString(c)+2))
		}
	}
	b.WriteByte('\n')
	_, err := io.WriteString(w, b.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
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

// accountID matches a 12-digit AWS account id.
var accountID = regexp.MustCompile(`^[0-9]{12}$`)

// errFound stops a Query early.
var errFound = errors.New("found")

// resolveAccount turns an account name into its id, as the broker recorded
// the pair in the log's session events (the log is what is being queried,
// so no other source of names is needed). An id is returned as it is.
func resolveAccount(ctx context.Context, client *auditclient.Client, account string) (id string, found bool, err error) {
	if accountID.MatchString(account) {
		return account, true, nil
	}
	req := &auditv1.QueryRequest{Kinds: []auditv1.Kind{auditv1.Kind_KIND_SESSION_ISSUE}}
	err = client.Query(ctx, req, func(ev *auditv1.Event) error {
		if s := ev.GetSession(); s.GetAccountName() == account && s.GetAccountId() != "" {
			id = s.GetAccountId()
			return errFound
		}
		return nil
	})
	if errors.Is(err, errFound) {
		return id, true, nil
	}
	return "", false, err
}

func parseKinds(names []string) ([]auditv1.Kind, error) {
	var kinds []auditv1.Kind
	for _, n := range names {
		k, err := replay.ParseKind(n)
		if err != nil {
			return nil, usagef("--kind: %v", err)
		}
		kinds = append(kinds, k)
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
		Short: "Print audit events from a sequence number, then follow new ones (--follow=false stops at the end)",
		Long: `tail prints the events from --from on, then keeps printing new ones as they
become durable, until interrupted (Ctrl-C). --follow=false prints what is
there now and stops. The table keeps its columns while following; --output
json prints one event per line for other programs.`,
		Example: `  credmatrix audit tail --from 0 --follow=false
  credmatrix audit tail --kind session-issue --output json | my-siem-forwarder`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := parseKinds(kinds)
			if err != nil {
				return err
			}
			p, err := newEventPrinter(a.out, a.err, output)
			if err != nil {
				return err
			}
			l, _, err := a.oneLog(&a.zones, "")
			if err != nil {
				return err
			}
			conn, err := a.dial(l.addr)
			if err != nil {
				return err
			}
			defer conn.Close()
			client := auditclient.New(conn)
			// What is there now, aligned as one table.
			next := from
			err = client.Query(cmd.Context(), &auditv1.QueryRequest{Kinds: k}, func(ev *auditv1.Event) error {
				if ev.GetSequence() < from {
					return nil
				}
				next = ev.GetSequence() + 1
				return p.add(ev)
			})
			if err != nil {
				return err
			}
			if err := p.flush(); err != nil {
				return err
			}
			if !follow {
				p.summary("")
				return nil
			}
			// Then new events as they come, in the same columns.
			fmt.Fprintf(a.err, "credmatrix: %d event%s so far; following new events from sequence %d (Ctrl-C stops; --follow=false does not follow)\n", p.n, plural(p.n), next)
			return client.Tail(cmd.Context(), next, k, p.stream)
		},
	}
	f := cmd.Flags()
	f.Uint64Var(&from, "from", 0, "first sequence number")
	f.BoolVarP(&follow, "follow", "f", true, "keep streaming new events until interrupted")
	f.StringSliceVar(&kinds, "kind", nil, "only these kinds (e.g. session-issue,key-encrypt)")
	f.StringVarP(&output, "output", "o", "table", "output: table or json (one event per line)")
	a.zoneFlagSet(f, &a.zones)
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
			req := &auditv1.QueryRequest{Subject: subject, RoleName: role, DataClass: class, TraceId: traceID}
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
			p, err := newEventPrinter(a.out, a.err, output)
			if err != nil {
				return err
			}
			logs, zoned, err := a.logs(&a.zones, "")
			if err != nil {
				return err
			}
			if !zoned {
				return a.queryOne(cmd.Context(), logs[0], req, account, p)
			}
			return a.queryZones(cmd.Context(), logs, req, account, p)
		},
	}
	a.zoneFlagSet(cmd.Flags(), &a.zones)
	f := cmd.Flags()
	f.StringVar(&since, "since", "", "only events at or after this RFC 3339 time")
	f.StringVar(&until, "until", "", "only events before this RFC 3339 time")
	f.StringSliceVar(&kinds, "kind", nil, "only these kinds")
	f.StringVar(&decision, "decision", "", "only this decision: allow, deny or error")
	f.StringVar(&subject, "subject", "", "only this subject or principal")
	f.StringVar(&account, "account", "", "only this account, by id or name (a name is looked up in the log's session events)")
	f.StringVar(&role, "role", "", "only this role")
	f.StringVar(&class, "data-class", "", "only this data class")
	f.StringVar(&traceID, "trace-id", "", "only this trace id")
	f.StringVarP(&output, "output", "o", "table", "output: table or json (one event per line)")
	return cmd
}
