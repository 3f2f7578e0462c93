// Package tampertest is the database-writer battery: it builds a signed
// audit log in a real store, edits the database behind the service's back
// the ways an attacker with write access would (columns altered or blanked,
// index rows removed, every checkpoint deleted and an event modified, an
// unsigned tail appended, a row made undecodable), and checks that each
// edit is detected, with its sequence number:
//
//   - by verify, reading the store as an investigator does
//     (audit.VerifyStore, what 'audit verify --db' runs);
//   - by the service's start-up (audit.Open refuses the store);
//   - by the running service, when the edit happens under it (a query
//     reports the row, or the service stops).
//
// Every backend (sqlite, postgres) runs the same battery; each case logs
// one "BATTERY" line, the rows of the closing table.
package tampertest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	"github.com/credmatrix/credmatrix/clients/auditclient/verify"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/audittest"
	"github.com/credmatrix/credmatrix/services/audit/keptfile"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// Exec runs one SQL statement on the store's database as a database
// writer would. Queries use SQLite's table names (events, checkpoints,
// event_index, index_state) and ? placeholders; a backend translates.
type Exec func(t *testing.T, query string, args ...any)

// QueryBytes reads one BLOB/BYTEA value.
type QueryBytes func(t *testing.T, query string, args ...any) []byte

// Backend is one store implementation under test.
type Backend struct {
	// Name names the backend in the BATTERY lines.
	Name string
	// Fresh returns a new, empty store location: open opens (creating)
	// the store there, exec and query reach its database directly.
	Fresh func(t *testing.T) (open func(t *testing.T) audit.Store, exec Exec, query QueryBytes)
}

// The log every case starts from: 20 events in 4 commit batches of 5
// (checkpoints at 5, 10, 15, 20), fully indexed; event 7 is a session
// issuance (principal, subject, account, role, trace) and event 8 a key
// operation (data class).
const (
	logSize = 20
	batch   = 5
	target  = 7 // the event most edits touch
	keyOp   = 8 // the event that has a data class
)

// Result is what detected one edit.
type Result struct {
	Verify  string // verify's problem: "<kind>@<sequence>" or "ok"
	Startup string // start-up: "refused@<sequence>" or "accepted"
	Running string // the running service: "query@<sequence>", "stopped@<sequence>" or "-"
}

// edit is one database writer's edit.
type edit struct {
	name string
	// under says the edit is made while the service runs (then Running is
	// checked); otherwise only verify and start-up are.
	apply func(t *testing.T, exec Exec, query QueryBytes)
	// want is what must detect it.
	want Result
}

func setColumn(table, col, value string, seq int) func(*testing.T, Exec, QueryBytes) {
	return func(t *testing.T, exec Exec, _ QueryBytes) {
		exec(t, fmt.Sprintf("UPDATE %s SET %s = %s WHERE sequence = ?", table, col, value), seq)
	}
}

func edits() []edit {
	col := func(seq int) Result {
		return Result{Verify: fmt.Sprintf("%s@%d", verify.ColumnMismatch, seq), Startup: fmt.Sprintf("refused@%d", seq), Running: fmt.Sprintf("query@%d", seq)}
	}
	var es []edit
	// The key columns on the event row: time is a filter column (time
	// ranges), id the idempotency key.
	es = append(es,
		edit{"events.time_unix_nano/altered", setColumn("events", "time_unix_nano", "time_unix_nano + 3600000000000", target), col(target)},
		edit{"events.time_unix_nano/blanked", setColumn("events", "time_unix_nano", "0", target), col(target)},
		edit{"events.id/altered", setColumn("events", "id", "'forged-id'", target), col(target)},
		edit{"events.id/blanked", setColumn("events", "id", "''", target), col(target)},
	)
	// Every query index column, altered (made to match another filter)
	// and blanked (made to match none).
	for _, c := range []struct {
		col, altered string
		seq          int
	}{
		{"kind", "4", target}, {"decision", "2", target}, {"principal", "principal + 1", target},
		{"subject", "subject + 1", target}, {"account_id", "account_id + 1", target},
		{"role_name", "role_name + 1", target}, {"data_class", "data_class + 1", keyOp}, {"trace_id", "trace_id + 1", target},
	} {
		es = append(es,
			edit{"event_index." + c.col + "/altered", setColumn("event_index", c.col, c.altered, c.seq), col(c.seq)},
			edit{"event_index." + c.col + "/blanked", setColumn("event_index", c.col, "0", c.seq), col(c.seq)},
		)
	}
	es = append(es,
		edit{"event_index/row-deleted", func(t *testing.T, exec Exec, _ QueryBytes) {
			exec(t, "DELETE FROM event_index WHERE sequence = ?", target)
		}, col(target)},
		// Without any checkpoint in the store, the kept checkpoint
		// (outside it) still catches the edit; the running service,
		// whose tree holds every leaf hash, names the event itself.
		edit{"checkpoints/all-deleted+event-modified", func(t *testing.T, exec Exec, query QueryBytes) {
			exec(t, "DELETE FROM checkpoints")
			data := query(t, "SELECT data FROM events WHERE sequence = ?", target)
			data[len(data)-3] ^= 1
			exec(t, "UPDATE events SET data = ? WHERE sequence = ?", data, target)
		}, Result{Verify: fmt.Sprintf("%s@0..%d", verify.Rollback, logSize-1), Startup: "refused@0", Running: fmt.Sprintf("query@%d", target)}},
		edit{"events/unsigned-tail", func(t *testing.T, exec Exec, _ QueryBytes) {
			for seq := logSize; seq < logSize+3; seq++ {
				e := audittest.BenchEvent(fmt.Sprintf("appended-behind-%d", seq))
				e.Sequence, e.SourceService, e.RecordedTime = uint64(seq), "spiffe://credmatrix.dev/broker", timestamppb.Now()
				data, err := leaf.Marshal(e)
				if err != nil {
					t.Fatal(err)
				}
				k := audit.KeyOf(e)
				exec(t, "INSERT INTO events (sequence, time_unix_nano, id, data) VALUES (?, ?, ?, ?)", seq, k.TimeUnixNano, k.ID, data)
			}
		}, Result{Verify: fmt.Sprintf("%s@%d", verify.Unsigned, logSize), Startup: fmt.Sprintf("refused@%d", logSize), Running: fmt.Sprintf("stopped@%d", logSize)}},
		edit{"events/undecodable-row", func(t *testing.T, exec Exec, _ QueryBytes) {
			exec(t, "UPDATE events SET data = ? WHERE sequence = ?", []byte{0x0a, 0xff, 0x01}, target)
		}, Result{Verify: fmt.Sprintf("%s@%d", verify.Modified, target), Startup: fmt.Sprintf("refused@%d", target), Running: fmt.Sprintf("query@%d", target)}},
	)
	return es
}

// built is a log ready to be tampered with.
type built struct {
	signer *checkpoint.Signer
	kept   *keptfile.File
	open   func(t *testing.T) audit.Store
	exec   Exec
	query  QueryBytes
}

func build(t *testing.T, b Backend) (built, *audit.Log, audit.Store) {
	t.Helper()
	ctx := context.Background()
	open, exec, query := b.Fresh(t)
	bl := built{signer: audittest.NewSigner(t), kept: keptfile.New(filepath.Join(t.TempDir(), "checkpoint.kept")), open: open, exec: exec, query: query}
	store := open(t)
	log, err := audit.Open(ctx, store, bl.options()...)
	if err != nil {
		t.Fatalf("open a fresh log: %v", err)
	}
	for i := 0; i < logSize; i += batch {
		var events []*auditv1.Event
		for seq := i; seq < i+batch; seq++ {
			e := audittest.BenchEvent(fmt.Sprintf("battery-%02d", seq))
			if seq == keyOp {
				e.Kind, e.Detail = auditv1.Kind_KIND_KEY_ENCRYPT, &auditv1.Event_Key{Key: &auditv1.KeyDetail{DataClass: "confidential", Region: "eu-west-1"}}
			}
			events = append(events, e)
		}
		if _, err := log.Append(ctx, "spiffe://credmatrix.dev/broker", events); err != nil {
			t.Fatalf("append: %v", err)
		}
	}
	waitIndexed(t, log)
	return bl, log, store
}

// waitIndexed waits until the log's indexer has indexed every event.
func waitIndexed(t *testing.T, log *audit.Log) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for log.IndexLag() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the indexer still lags by %d events after 30s", log.IndexLag())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (bl built) options(extra ...audit.Option) []audit.Option {
	return append([]audit.Option{audit.WithSigner(bl.signer), audit.WithKept(bl.kept, 0)}, extra...)
}

// Run runs the battery on b and returns the table's rows by edit name.
func Run(t *testing.T, b Backend) map[string]Result {
	results := map[string]Result{}
	for _, e := range edits() {
		t.Run(e.name, func(t *testing.T) {
			ctx := context.Background()
			bl, log, store := build(t, b)
			// The edit happens under the running service.
			e.apply(t, bl.exec, bl.query)
			var got Result
			got.Running = running(t, log)
			log.Close()
			store.Close()

			// An investigator verifies the store with the log's key and
			// the checkpoint the service kept outside it.
			store = bl.open(t)
			keptNote, err := bl.kept.Load()
			if err != nil || keptNote == nil {
				t.Fatalf("the kept checkpoint: %q, %v", keptNote, err)
			}
			r, err := audit.VerifyStore(ctx, store, bl.signer.Verifier(), keptNote)
			if err != nil {
				t.Fatalf("VerifyStore: %v", err)
			}
			got.Verify = "ok"
			if r.Problem != nil {
				got.Verify = fmt.Sprintf("%s@%d", r.Problem.Kind, r.Problem.Sequence)
				if r.Problem.Kind == verify.Rollback || r.Problem.Kind == verify.Modified && r.Problem.End > r.Problem.Sequence+1 {
					got.Verify += fmt.Sprintf("..%d", r.Problem.End-1)
				}
			}

			// The service starts on it again.
			l2, err := audit.Open(ctx, store, bl.options()...)
			got.Startup = "accepted"
			if f, ok := audit.FirstFinding(err); ok {
				got.Startup = fmt.Sprintf("refused@%d", f.Sequence)
			} else if err != nil {
				t.Fatalf("start-up failed without a finding: %v", err)
			}
			if l2 != nil {
				l2.Close()
			}
			store.Close()
			t.Logf("BATTERY backend=%s edit=%s verify=%s startup=%s running=%s", b.Name, e.name, got.Verify, got.Startup, got.Running)
			if got != e.want {
				t.Errorf("detected %+v, want %+v", got, e.want)
				if r.Problem != nil {
					t.Logf("verify: %s", r.Problem)
				}
				if err != nil {
					t.Logf("start-up: %v", err)
				}
			}
			results[e.name] = got
		})
	}
	t.Run("adopt/column-edit", func(t *testing.T) { testAdopt(t, b) })
	return results
}

// running reports what the running service says after the edit: a query
// over the whole log naming a mismatched row, or the service stopping
// when it reads the store.
func running(t *testing.T, log *audit.Log) string {
	ctx := context.Background()
	var f audit.Filter
	for {
		page, err := log.Query(ctx, f)
		if err != nil {
			t.Fatalf("Query: %v", err)
		}
		if len(page.Mismatches) > 0 {
			return fmt.Sprintf("query@%d", page.Mismatches[0].Sequence)
		}
		if page.NextPageToken == "" {
			break
		}
		f.PageToken = page.NextPageToken
	}
	// Nothing in what the tree covers: an append reads what was written
	// behind it.
	_, err := log.Append(ctx, "spiffe://credmatrix.dev/broker", []*auditv1.Event{audittest.BenchEvent("after-the-edit")})
	if err == nil {
		return "-"
	}
	if !errors.Is(err, audit.ErrStoreMismatch) {
		t.Fatalf("append after the edit: %v", err)
	}
	if _, err := log.LatestCheckpoint(ctx); domainerr.CodeOf(err) != domainerr.Unavailable {
		t.Errorf("a stopped log still serves checkpoints: %v", err)
	}
	seq := "?"
	if i := strings.Index(err.Error(), "at sequence "); i >= 0 {
		fmt.Sscanf(err.Error()[i:], "at sequence %s", &seq)
	}
	return "stopped@" + strings.TrimRight(seq, " ")
}

// testAdopt: a column edit refused at start-up is adopted with the
// token the refusal printed: the columns are rebuilt from the leaves,
// the adoption is recorded in the log, and the store verifies again.
func testAdopt(t *testing.T, b Backend) {
	ctx := context.Background()
	bl, log, store := build(t, b)
	log.Close()
	bl.exec(t, "UPDATE event_index SET principal = 0 WHERE sequence = ?", target)
	bl.exec(t, "UPDATE events SET id = 'forged-id' WHERE sequence = ?", target)
	_, err := audit.Open(ctx, store, bl.options()...)
	i := strings.Index(fmt.Sprint(err), "adopt=")
	if i < 0 {
		t.Fatalf("refusal without an adoption token: %v", err)
	}
	token := strings.Fields(fmt.Sprint(err)[i+len("adopt="):])[0]
	if _, err := audit.Open(ctx, store, bl.options(audit.WithAdoption("0-0000000000000000"))...); err == nil {
		t.Fatal("a wrong token adopted the store")
	}
	l2, err := audit.Open(ctx, store, bl.options(audit.WithAdoption(token))...)
	if err != nil {
		t.Fatalf("adopt with %s: %v", token, err)
	}
	a := l2.Adopted()
	if a == nil || a.Sequence != logSize {
		t.Fatalf("adoption = %+v, want one recorded at sequence %d", a, logSize)
	}
	page, err := l2.Query(ctx, audit.Filter{Subject: audittest.BenchEvent("").GetActor().GetPrincipal(), PageSize: audit.MaxPageSize})
	if err != nil || len(page.Mismatches) > 0 {
		t.Fatalf("query after adoption: %v, mismatches %v", err, page.Mismatches)
	}
	found := false
	for _, e := range page.Events {
		found = found || e.GetSequence() == target
	}
	if !found {
		t.Errorf("event %d is still missing from queries by principal after the adoption", target)
	}
	l2.Close()
	keptNote, _ := bl.kept.Load()
	r, err := audit.VerifyStore(ctx, store, bl.signer.Verifier(), keptNote)
	if err != nil || !r.OK() {
		t.Fatalf("verify after adoption: %v, %v", err, r.Problem)
	}
	events, err := store.Read(ctx, logSize, 1)
	if err != nil || len(events) != 1 || events[0].GetKind() != auditv1.Kind_KIND_AUDIT_ADMIN || !strings.Contains(events[0].GetReason(), "adopted") {
		t.Fatalf("the adoption event: %v, %v", events, err)
	}
	store.Close()
}
