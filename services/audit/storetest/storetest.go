// Package storetest is the conformance suite for audit.Store: every
// backend (sqlite, postgres, memstore) runs the same tests, so Log can
// rely on the same semantics whichever store it is given.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/tiles"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// Run runs the conformance suite against the stores open returns.
//
// open must open the store kept in dir, creating it if dir holds none;
// Run gives each subtest a fresh t.TempDir() and calls open again with the
// same dir to check that events survive a Close and reopen. Run closes
// every store it opens.
func Run(t *testing.T, open func(t *testing.T, dir string) audit.Store) {
	s := suite{open: open}
	for _, tc := range []struct {
		name string
		run  func(t *testing.T)
	}{
		{"empty", s.testEmpty},
		{"append-read", s.testAppendRead},
		{"copies", s.testCopies},
		{"reject/sequence", s.testRejectSequence},
		{"reject/duplicate-key", s.testRejectDuplicateKey},
		{"lookup", s.testLookup},
		{"rows", s.testRows},
		{"index", s.testIndex},
		{"query/filters", s.testQueryFilters},
		{"query/range", s.testQueryRange},
		{"query/unindexed", s.testQueryUnindexed},
		{"persistence", s.testPersistence},
		{"checkpoints", s.testCheckpoints},
		{"checkpoints/with-batch", s.testBatchCheckpoint},
		{"checkpoints/persistence", s.testCheckpointPersistence},
		{"view", s.testView},
		{"tiles", s.testTiles},
		{"tiles/persistence", s.testTilesPersistence},
		{"compact-range", s.testCompactRange},
		{"prune", s.testPrune},
		{"prune/unindexed", s.testPruneUnindexed},
		{"prune/persistence", s.testPrunePersistence},
	} {
		t.Run(tc.name, tc.run)
	}
}

type suite struct {
	open func(t *testing.T, dir string) audit.Store
}

// openAt opens the store in dir and closes it when the test ends, unless
// the returned close function closed it first.
func (s suite) openAt(t *testing.T, dir string) (audit.Store, func()) {
	t.Helper()
	st := s.open(t, dir)
	var once sync.Once
	closeFn := func() {
		once.Do(func() {
			if err := st.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
	t.Cleanup(closeFn)
	return st, closeFn
}

func (s suite) fresh(t *testing.T) audit.Store {
	t.Helper()
	st, _ := s.openAt(t, t.TempDir())
	return st
}

// t0 is the producer time of fixture event 0; event i is i minutes later.
var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// Event returns a minimal valid event as Log would hand it to a store.
func Event(seq uint64, id string) *auditv1.Event {
	return &auditv1.Event{
		Sequence:      seq,
		Id:            id,
		Time:          timestamppb.New(t0.Add(time.Duration(seq) * time.Minute)),
		RecordedTime:  timestamppb.New(t0.Add(time.Duration(seq)*time.Minute + time.Second)),
		Kind:          auditv1.Kind_KIND_AUDIT_ADMIN,
		Decision:      auditv1.Decision_DECISION_ALLOW,
		SourceService: "spiffe://credmatrix.dev/test",
	}
}

// Events returns n minimal events with sequences from..from+n-1 and ids
// prefix-<sequence>.
func Events(from uint64, n int, prefix string) []*auditv1.Event {
	out := make([]*auditv1.Event, n)
	for i := range out {
		seq := from + uint64(i)
		out[i] = Event(seq, fmt.Sprintf("%s-%d", prefix, seq))
	}
	return out
}

const (
	ghPrincipal  = "https://token.actions.githubusercontent.com#repo:acme/app:ref:refs/heads/main"
	ghSubject    = "repo:acme/app:ref:refs/heads/main"
	billing      = "spiffe://credmatrix.dev/app/billing"
	operator     = "operator@example.com"
	accountProd  = "111111111111"
	accountStage = "222222222222"
	trace1       = "4bf92f3577b34da6a3ce929d0e0e4736"
	trace2       = "00f067aa0ba902b74bf92f3577b34da6"
)

// fixture is a log whose events differ in every filtered field.
func fixture() []*auditv1.Event {
	es := Events(0, 8, "fx")
	set := func(i int, k auditv1.Kind, d auditv1.Decision, principal, subject, trace string) {
		es[i].Kind, es[i].Decision, es[i].TraceId = k, d, trace
		es[i].Actor = &auditv1.Actor{Principal: principal, Subject: subject}
	}
	set(0, auditv1.Kind_KIND_SESSION_ISSUE, auditv1.Decision_DECISION_ALLOW, ghPrincipal, ghSubject, trace1)
	es[0].Detail = &auditv1.Event_Session{Session: &auditv1.SessionDetail{AccountId: accountProd, RoleName: "deploy"}}
	set(1, auditv1.Kind_KIND_SESSION_ISSUE, auditv1.Decision_DECISION_DENY, ghPrincipal, ghSubject, "")
	es[1].Detail = &auditv1.Event_Session{Session: &auditv1.SessionDetail{AccountId: accountStage, RoleName: "admin"}}
	set(2, auditv1.Kind_KIND_KEY_ENCRYPT, auditv1.Decision_DECISION_ALLOW, billing, "", "")
	es[2].Detail = &auditv1.Event_Key{Key: &auditv1.KeyDetail{DataClass: "confidential", Region: "eu-west-1"}}
	set(3, auditv1.Kind_KIND_KEY_DECRYPT, auditv1.Decision_DECISION_DENY, billing, "", trace2)
	es[3].Detail = &auditv1.Event_Key{Key: &auditv1.KeyDetail{DataClass: "restricted"}}
	set(4, auditv1.Kind_KIND_ACCOUNT_FREEZE, auditv1.Decision_DECISION_ALLOW, operator, "alice", "")
	es[4].Detail = &auditv1.Event_Admin{Admin: &auditv1.AdminDetail{AccountId: accountStage, Action: "freeze"}}
	set(5, auditv1.Kind_KIND_SESSION_REVOKE, auditv1.Decision_DECISION_ALLOW, operator, "alice", "")
	es[5].Detail = &auditv1.Event_Admin{Admin: &auditv1.AdminDetail{AccountId: accountProd, RoleName: "deploy"}}
	set(6, auditv1.Kind_KIND_POLICY_RELOAD, auditv1.Decision_DECISION_ERROR, "file", "", "")
	es[6].Detail = &auditv1.Event_Policy{Policy: &auditv1.PolicyDetail{Source: "policy.yaml", Error: "line 3: bad"}}
	set(7, auditv1.Kind_KIND_KEY_ENCRYPT, auditv1.Decision_DECISION_ERROR, billing, "", trace1)
	es[7].Detail = &auditv1.Event_Key{Key: &auditv1.KeyDetail{DataClass: "confidential"}}
	es[7].SecretRefs = []*auditv1.SecretRef{{Name: "data_key", HmacSha256: []byte{1, 2, 3}, KeyId: "k1"}}
	return es
}

// Batch returns the commit batch of events (leaf bytes by leaf.Marshal)
// with checkpoint cp (nil: none).
func Batch(events []*auditv1.Event, cp *audit.StoredCheckpoint) audit.Batch {
	b := audit.Batch{Checkpoint: cp}
	for _, e := range events {
		data, err := leaf.Marshal(e)
		if err != nil {
			panic(err)
		}
		b.Records = append(b.Records, audit.Record{Event: e, Data: data})
	}
	return b
}

// Append appends events as one batch without a checkpoint.
func Append(ctx context.Context, st audit.Store, events []*auditv1.Event) error {
	return st.Append(ctx, Batch(events, nil))
}

func mustAppend(t *testing.T, st audit.Store, events []*auditv1.Event) {
	t.Helper()
	if err := Append(context.Background(), st, events); err != nil {
		t.Fatalf("Append(%d events from %d): %v", len(events), events[0].GetSequence(), err)
	}
}

// IndexAll adds index rows (IndexRowOf) for every stored event from the
// watermark to the head, as Log's indexer does.
func IndexAll(t testing.TB, st audit.Store) {
	t.Helper()
	ctx := context.Background()
	from, err := st.IndexedUpTo(ctx)
	if err != nil {
		t.Fatalf("IndexedUpTo: %v", err)
	}
	events, err := st.Read(ctx, from, 1<<20)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	rows := make([]audit.IndexRow, len(events))
	for i, e := range events {
		rows[i] = audit.IndexRowOf(e)
	}
	if err := st.AddIndex(ctx, from, rows); err != nil {
		t.Fatalf("AddIndex(%d, %d rows): %v", from, len(rows), err)
	}
}

// query runs Store.Query over the whole log and returns the decoded events.
func query(t *testing.T, st audit.Store, f audit.Filter, from, to uint64, limit int) []*auditv1.Event {
	t.Helper()
	rows, err := st.Query(context.Background(), f, from, to, limit)
	if err != nil {
		t.Fatalf("Query: %v", err)
	}
	out := make([]*auditv1.Event, len(rows))
	for i, r := range rows {
		e, bad, err := audit.CheckRow(r)
		if err != nil || len(bad) > 0 {
			t.Fatalf("Query row %d: %v, columns %v disagree with the leaf", r.Sequence, err, bad)
		}
		out[i] = e
	}
	return out
}

func mustHead(t *testing.T, st audit.Store, want uint64) {
	t.Helper()
	got, err := st.Head(context.Background())
	if err != nil {
		t.Fatalf("Head: %v", err)
	}
	if got != want {
		t.Errorf("Head = %d, want %d", got, want)
	}
}

func mustRead(t *testing.T, st audit.Store, from uint64, limit int) []*auditv1.Event {
	t.Helper()
	got, err := st.Read(context.Background(), from, limit)
	if err != nil {
		t.Fatalf("Read(%d, %d): %v", from, limit, err)
	}
	return got
}

func diffEvents(t *testing.T, what string, got, want []*auditv1.Event) {
	t.Helper()
	if diff := cmp.Diff(got, want, protocmp.Transform(), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("%s mismatch (-got +want):\n%s", what, diff)
	}
}

func (s suite) testEmpty(t *testing.T) {
	ctx := context.Background()
	st := s.fresh(t)
	mustHead(t, st, 0)
	diffEvents(t, "Read(0, 10)", mustRead(t, st, 0, 10), nil)
	if rows, err := st.Query(ctx, audit.Filter{}, 0, 10, 10); err != nil || len(rows) != 0 {
		t.Errorf("Query on empty store = %d rows, %v; want 0, nil", len(rows), err)
	}
	found, err := st.Lookup(ctx, []audit.EventKey{{ID: "a"}})
	if err != nil || len(found) != 0 {
		t.Errorf("Lookup on empty store = %v, %v; want empty, nil", found, err)
	}
	if n, err := st.IndexedUpTo(ctx); n != 0 || err != nil {
		t.Errorf("IndexedUpTo on empty store = %d, %v; want 0, nil", n, err)
	}
	if err := st.Append(ctx, audit.Batch{}); err != nil {
		t.Errorf("Append(empty batch) = %v, want nil", err)
	}
	mustHead(t, st, 0)
}

func (s suite) testAppendRead(t *testing.T) {
	st := s.fresh(t)
	all := fixture()
	mustAppend(t, st, all[:3])
	mustHead(t, st, 3)
	mustAppend(t, st, all[3:])
	mustHead(t, st, uint64(len(all)))
	for _, tc := range []struct {
		name  string
		from  uint64
		limit int
		want  []*auditv1.Event
	}{
		{"all", 0, 100, all},
		{"middle", 2, 2, all[2:4]},
		{"tail", 6, 100, all[6:]},
		{"at-head", uint64(len(all)), 10, nil},
		{"beyond-head", 1 << 40, 10, nil},
		{"beyond-int64", 1 << 63, 10, nil},
		{"zero-limit", 0, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			diffEvents(t, "Read", mustRead(t, st, tc.from, tc.limit), tc.want)
		})
	}
}

func (s suite) testCopies(t *testing.T) {
	st := s.fresh(t)
	in := Events(0, 1, "copy")
	want := proto.CloneOf(in[0])
	b := Batch(in, nil)
	if err := st.Append(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	in[0].Reason = "changed after Append"
	b.Records[0].Data[len(b.Records[0].Data)-1] ^= 1
	got := mustRead(t, st, 0, 1)
	diffEvents(t, "Read after mutating the appended event", got, []*auditv1.Event{want})
	got[0].Reason = "changed after Read"
	diffEvents(t, "Read after mutating a read event", mustRead(t, st, 0, 1), []*auditv1.Event{want})
	rows, err := st.ReadRows(context.Background(), 0, 1)
	if err != nil || len(rows) != 1 {
		t.Fatalf("ReadRows = %d, %v", len(rows), err)
	}
	rows[0].Data[0] ^= 1
	diffEvents(t, "Read after mutating a read row", mustRead(t, st, 0, 1), []*auditv1.Event{want})
}

func (s suite) testRejectSequence(t *testing.T) {
	for _, tc := range []struct {
		name  string
		head  int // events stored first
		batch []uint64
	}{
		{"ahead", 0, []uint64{1}},
		{"behind", 2, []uint64{1}},
		{"same-as-last", 2, []uint64{1, 2}},
		{"gap-in-batch", 0, []uint64{0, 2}},
		{"repeat-in-batch", 1, []uint64{1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := s.fresh(t)
			if tc.head > 0 {
				mustAppend(t, st, Events(0, tc.head, "stored"))
			}
			batch := make([]*auditv1.Event, len(tc.batch))
			for i, seq := range tc.batch {
				batch[i] = Event(seq, fmt.Sprintf("new-%d", i))
			}
			err := Append(context.Background(), st, batch)
			if !errors.Is(err, audit.ErrSequence) {
				t.Errorf("Append(sequences %v) at head %d = %v, want ErrSequence", tc.batch, tc.head, err)
			}
			mustHead(t, st, uint64(tc.head))
			diffEvents(t, "Read after rejected append", mustRead(t, st, 0, 100), Events(0, tc.head, "stored"))
		})
	}
}

func (s suite) testRejectDuplicateKey(t *testing.T) {
	// Event(seq, id) has time t0+seq minutes: at(seq, id, minute) moves it.
	at := func(seq uint64, id string, minute int) *auditv1.Event {
		e := Event(seq, id)
		e.Time = timestamppb.New(t0.Add(time.Duration(minute) * time.Minute))
		return e
	}
	for _, tc := range []struct {
		name  string
		batch []*auditv1.Event // at sequence 1, 2...; "stored-0" at minute 0 is stored
		err   error
	}{
		{"reject/stored", []*auditv1.Event{at(1, "stored-0", 0)}, audit.ErrDuplicateID},
		{"reject/stored-after-new", []*auditv1.Event{at(1, "new", 5), at(2, "stored-0", 0)}, audit.ErrDuplicateID},
		{"reject/in-batch", []*auditv1.Event{at(1, "new", 5), at(2, "new", 5)}, audit.ErrDuplicateID},
		// The key is (time, id): the same id at another time is another event.
		{"accept/same-id-other-time", []*auditv1.Event{at(1, "stored-0", 1)}, nil},
		{"accept/same-time-other-id", []*auditv1.Event{at(1, "other", 0)}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := s.fresh(t)
			stored := []*auditv1.Event{at(0, "stored-0", 0)}
			mustAppend(t, st, stored)
			err := Append(context.Background(), st, tc.batch)
			if !errors.Is(err, tc.err) || (err != nil) != (tc.err != nil) {
				t.Fatalf("Append = %v, want %v", err, tc.err)
			}
			want := stored
			if tc.err == nil {
				want = append(want, tc.batch...)
			}
			mustHead(t, st, uint64(len(want)))
			diffEvents(t, "Read after append", mustRead(t, st, 0, 100), want)
		})
	}
}

func (s suite) testLookup(t *testing.T) {
	st := s.fresh(t)
	all := fixture()
	mustAppend(t, st, all)
	k0, k7 := audit.KeyOf(all[0]), audit.KeyOf(all[7])
	otherTime := audit.EventKey{TimeUnixNano: k0.TimeUnixNano + 1, ID: k0.ID}
	got, err := st.Lookup(context.Background(), []audit.EventKey{k0, k7, {ID: "missing"}, otherTime, k0})
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}
	want := map[audit.EventKey]*auditv1.Event{k0: all[0], k7: all[7]}
	if diff := cmp.Diff(got, want, protocmp.Transform()); diff != "" {
		t.Errorf("Lookup mismatch (-got +want):\n%s", diff)
	}
}

// testRows: ReadRows returns the stored evidence as is (the leaf bytes
// Append got), the key columns and, once indexed, the index rows.
func (s suite) testRows(t *testing.T) {
	ctx := context.Background()
	st := s.fresh(t)
	all := fixture()
	b := Batch(all, nil)
	if err := st.Append(ctx, b); err != nil {
		t.Fatal(err)
	}
	IndexAll(t, st)
	mustAppend(t, st, Events(uint64(len(all)), 1, "late"))
	rows, err := st.ReadRows(ctx, 1, 100)
	if err != nil {
		t.Fatalf("ReadRows: %v", err)
	}
	if len(rows) != len(all) {
		t.Fatalf("ReadRows(1, 100) = %d rows, want %d", len(rows), len(all))
	}
	for i, r := range rows {
		seq := uint64(1 + i)
		if r.Sequence != seq {
			t.Errorf("row %d: Sequence %d", i, r.Sequence)
		}
		e, bad, err := audit.CheckRow(r)
		if err != nil || len(bad) > 0 {
			t.Errorf("row %d: CheckRow = %v, %v", seq, bad, err)
		}
		if seq < uint64(len(all)) {
			if !bytes.Equal(r.Data, b.Records[seq].Data) {
				t.Errorf("row %d: stored leaf bytes differ from the appended ones", seq)
			}
			if r.Index == nil || *r.Index != audit.IndexRowOf(all[seq]) {
				t.Errorf("row %d: index row %+v, want %+v", seq, r.Index, audit.IndexRowOf(all[seq]))
			}
			continue
		}
		if r.Index != nil {
			t.Errorf("row %d (not indexed) has index row %+v", seq, r.Index)
		}
		if e.GetId() != "late-8" {
			t.Errorf("row %d: id %q", seq, e.GetId())
		}
	}
	if rows, err := st.ReadRows(ctx, 0, 0); err != nil || len(rows) != 0 {
		t.Errorf("ReadRows(0, 0) = %d rows, %v", len(rows), err)
	}
}

// testIndex: AddIndex continues exactly at the watermark (one indexer wins
// a race), never beyond the head, and moves the watermark.
func (s suite) testIndex(t *testing.T) {
	ctx := context.Background()
	st := s.fresh(t)
	all := fixture()
	mustAppend(t, st, all)
	rows := make([]audit.IndexRow, len(all))
	for i, e := range all {
		rows[i] = audit.IndexRowOf(e)
	}
	for _, tc := range []struct {
		name string
		from uint64
		rows []audit.IndexRow
	}{
		{"ahead-of-watermark", 1, rows[1:3]},
		{"beyond-head", 0, append(slices.Clone(rows), audit.IndexRow{Sequence: 8})},
		{"rows-out-of-order", 0, []audit.IndexRow{rows[1], rows[0]}},
	} {
		if err := st.AddIndex(ctx, tc.from, tc.rows); !errors.Is(err, audit.ErrSequence) {
			t.Errorf("%s: AddIndex = %v, want ErrSequence", tc.name, err)
		}
	}
	if n, _ := st.IndexedUpTo(ctx); n != 0 {
		t.Fatalf("IndexedUpTo after refused AddIndex = %d, want 0", n)
	}
	if err := st.AddIndex(ctx, 0, rows[:3]); err != nil {
		t.Fatalf("AddIndex(0, 3 rows): %v", err)
	}
	if err := st.AddIndex(ctx, 0, rows[:3]); !errors.Is(err, audit.ErrSequence) {
		t.Errorf("AddIndex again from 0 = %v, want ErrSequence (another indexer was first)", err)
	}
	if err := st.AddIndex(ctx, 3, rows[3:]); err != nil {
		t.Fatalf("AddIndex(3, rest): %v", err)
	}
	if n, err := st.IndexedUpTo(ctx); n != uint64(len(all)) || err != nil {
		t.Errorf("IndexedUpTo = %d, %v; want %d", n, err, len(all))
	}
	if err := st.AddIndex(ctx, uint64(len(all)), nil); err != nil {
		t.Errorf("AddIndex of nothing at the watermark = %v", err)
	}
}

func (s suite) testQueryFilters(t *testing.T) {
	st := s.fresh(t)
	all := fixture()
	mustAppend(t, st, all)
	IndexAll(t, st)
	at := func(min int) time.Time { return t0.Add(time.Duration(min) * time.Minute) }
	for _, tc := range []struct {
		name string
		f    audit.Filter
		want []int
	}{
		{"all", audit.Filter{}, []int{0, 1, 2, 3, 4, 5, 6, 7}},
		{"time/start-inclusive", audit.Filter{Start: at(3)}, []int{3, 4, 5, 6, 7}},
		{"time/end-exclusive", audit.Filter{End: at(3)}, []int{0, 1, 2}},
		{"time/window", audit.Filter{Start: at(2), End: at(5)}, []int{2, 3, 4}},
		{"time/empty-window", audit.Filter{Start: at(2), End: at(2)}, nil},
		{"time/far-bounds", audit.Filter{Start: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), End: time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)}, []int{0, 1, 2, 3, 4, 5, 6, 7}},
		{"kind/one", audit.Filter{Kinds: []auditv1.Kind{auditv1.Kind_KIND_KEY_ENCRYPT}}, []int{2, 7}},
		{"kind/several", audit.Filter{Kinds: []auditv1.Kind{auditv1.Kind_KIND_SESSION_ISSUE, auditv1.Kind_KIND_SESSION_REVOKE}}, []int{0, 1, 5}},
		{"kind/none-stored", audit.Filter{Kinds: []auditv1.Kind{auditv1.Kind_KIND_GRANT_CREATE}}, nil},
		{"subject/principal", audit.Filter{Subject: billing}, []int{2, 3, 7}},
		{"subject/oidc-subject", audit.Filter{Subject: ghSubject}, []int{0, 1}},
		{"subject/either", audit.Filter{Subject: "alice"}, []int{4, 5}},
		{"account/session-and-admin", audit.Filter{AccountID: accountProd}, []int{0, 5}},
		{"account/other", audit.Filter{AccountID: accountStage}, []int{1, 4}},
		{"role/session-and-admin", audit.Filter{RoleName: "deploy"}, []int{0, 5}},
		{"data-class", audit.Filter{DataClass: "confidential"}, []int{2, 7}},
		{"trace", audit.Filter{TraceID: trace1}, []int{0, 7}},
		{"decision/deny", audit.Filter{Decision: auditv1.Decision_DECISION_DENY}, []int{1, 3}},
		{"decision/error", audit.Filter{Decision: auditv1.Decision_DECISION_ERROR}, []int{6, 7}},
		{"combined/kind-decision", audit.Filter{Kinds: []auditv1.Kind{auditv1.Kind_KIND_KEY_ENCRYPT}, Decision: auditv1.Decision_DECISION_ERROR}, []int{7}},
		{"combined/account-decision-time", audit.Filter{AccountID: accountStage, Decision: auditv1.Decision_DECISION_ALLOW, Start: at(1)}, []int{4}},
		{"no-match", audit.Filter{Subject: "nobody"}, nil},
		{"no-match/sql-injection", audit.Filter{Subject: "' OR 1=1 --", AccountID: "x\" OR \"1\"=\"1"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := query(t, st, tc.f, 0, uint64(len(all)), audit.MaxPageSize)
			var want []*auditv1.Event
			for _, i := range tc.want {
				want = append(want, all[i])
			}
			diffEvents(t, "Query", got, want)
			// The reference semantics must agree with the store.
			var matched []*auditv1.Event
			for _, e := range all {
				if tc.f.Matches(e) {
					matched = append(matched, e)
				}
			}
			diffEvents(t, "Filter.Matches", matched, want)
		})
	}
}

// testQueryRange: Query searches [from, to) and returns at most limit rows.
func (s suite) testQueryRange(t *testing.T) {
	st := s.fresh(t)
	all := fixture()
	mustAppend(t, st, all)
	IndexAll(t, st)
	keys := audit.Filter{Kinds: []auditv1.Kind{auditv1.Kind_KIND_KEY_ENCRYPT, auditv1.Kind_KIND_KEY_DECRYPT}}
	for _, tc := range []struct {
		name     string
		f        audit.Filter
		from, to uint64
		limit    int
		want     []uint64
	}{
		{"all/limit", audit.Filter{}, 0, 8, 3, []uint64{0, 1, 2}},
		{"all/from-to", audit.Filter{}, 2, 5, 10, []uint64{2, 3, 4}},
		{"filtered/limit", keys, 0, 8, 2, []uint64{2, 3}},
		{"filtered/from", keys, 3, 8, 10, []uint64{3, 7}},
		{"filtered/to", keys, 0, 7, 10, []uint64{2, 3}},
		{"to-beyond-head", audit.Filter{}, 6, 1 << 40, 10, []uint64{6, 7}},
		{"from-beyond-int64", audit.Filter{}, 1 << 63, 1<<63 + 5, 10, nil},
		{"empty-range", audit.Filter{}, 4, 4, 10, nil},
		{"zero-limit", audit.Filter{}, 0, 8, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []uint64
			for _, e := range query(t, st, tc.f, tc.from, tc.to, tc.limit) {
				got = append(got, e.GetSequence())
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("sequences (-got +want):\n%s", diff)
			}
		})
	}
}

// testQueryUnindexed: an event without an index row is never a candidate
// of a filtered query (Log scans the unindexed tail itself), and an
// unfiltered query returns it with a nil Index.
func (s suite) testQueryUnindexed(t *testing.T) {
	ctx := context.Background()
	st := s.fresh(t)
	all := fixture()
	mustAppend(t, st, all[:4])
	IndexAll(t, st)
	mustAppend(t, st, all[4:])
	got := query(t, st, audit.Filter{Subject: operator}, 0, 8, 10)
	if len(got) != 0 {
		t.Errorf("filtered Query over unindexed events = %d events, want 0", len(got))
	}
	rows, err := st.Query(ctx, audit.Filter{}, 3, 8, 10)
	if err != nil || len(rows) != 5 {
		t.Fatalf("unfiltered Query = %d rows, %v; want 5", len(rows), err)
	}
	for _, r := range rows {
		if indexed := r.Index != nil; indexed != (r.Sequence < 4) {
			t.Errorf("row %d: indexed %v", r.Sequence, indexed)
		}
	}
}

func (s suite) testPersistence(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	first := fixture()
	st, closeFirst := s.openAt(t, dir)
	mustAppend(t, st, first)
	IndexAll(t, st)
	closeFirst()

	st, closeSecond := s.openAt(t, dir)
	mustHead(t, st, uint64(len(first)))
	diffEvents(t, "Read after reopen", mustRead(t, st, 0, 100), first)
	if n, err := st.IndexedUpTo(ctx); n != uint64(len(first)) || err != nil {
		t.Errorf("IndexedUpTo after reopen = %d, %v; want %d", n, err, len(first))
	}
	more := Events(uint64(len(first)), 2, "more")
	mustAppend(t, st, more)
	again := proto.CloneOf(first[0])
	again.Sequence = 10
	if err := Append(ctx, st, []*auditv1.Event{again}); !errors.Is(err, audit.ErrDuplicateID) {
		t.Errorf("Append of a key stored before reopen = %v, want ErrDuplicateID", err)
	}
	closeSecond()

	st, _ = s.openAt(t, dir)
	mustHead(t, st, uint64(len(first)+len(more)))
	diffEvents(t, "Read after second reopen", mustRead(t, st, 0, 100), append(first, more...))
	got := query(t, st, audit.Filter{Subject: "alice"}, 0, uint64(len(first)), 10)
	if len(got) != 2 {
		t.Errorf("indexed Query after reopen = %d events, want 2", len(got))
	}
}

// CP returns a stand-in checkpoint of size (stores do not interpret notes).
func CP(size uint64) audit.StoredCheckpoint {
	return audit.StoredCheckpoint{Size: size, Note: []byte(fmt.Sprintf("note %d\n", size)), Time: t0.Add(time.Duration(size) * time.Second)}
}

func cpPtr(size uint64) *audit.StoredCheckpoint { c := CP(size); return &c }

func (s suite) testCheckpoints(t *testing.T) {
	ctx := context.Background()
	st := s.fresh(t)
	if _, ok, err := st.LatestCheckpoint(ctx); ok || err != nil {
		t.Fatalf("LatestCheckpoint of an empty store = ok %v, %v; want none", ok, err)
	}
	if err := st.AddCheckpoint(ctx, CP(1)); !errors.Is(err, audit.ErrSequence) {
		t.Errorf("AddCheckpoint beyond head of an empty store = %v, want ErrSequence", err)
	}
	mustAppend(t, st, Events(0, 5, "cp"))
	for _, size := range []uint64{3, 5} {
		if err := st.AddCheckpoint(ctx, CP(size)); err != nil {
			t.Fatalf("AddCheckpoint(%d): %v", size, err)
		}
	}
	for _, tc := range []struct {
		name string
		size uint64
	}{{"reject/zero", 0}, {"reject/older", 4}, {"reject/same", 5}, {"reject/beyond-head", 6}} {
		if err := st.AddCheckpoint(ctx, CP(tc.size)); !errors.Is(err, audit.ErrSequence) {
			t.Errorf("%s: AddCheckpoint(%d) = %v, want ErrSequence", tc.name, tc.size, err)
		}
	}
	for _, tc := range []struct {
		name     string
		from     uint64
		limit    int
		wantSize []uint64
	}{
		{"all", 0, 10, []uint64{3, 5}},
		{"from", 4, 10, []uint64{5}},
		{"from-exact", 3, 10, []uint64{3, 5}},
		{"limit", 0, 1, []uint64{3}},
		{"none", 6, 10, nil},
		{"zero-limit", 0, 0, nil},
	} {
		got, err := st.Checkpoints(ctx, tc.from, tc.limit)
		if err != nil {
			t.Fatalf("%s: Checkpoints: %v", tc.name, err)
		}
		var want []audit.StoredCheckpoint
		for _, size := range tc.wantSize {
			want = append(want, CP(size))
		}
		if diff := cmp.Diff(got, want, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s: Checkpoints(%d, %d) (-got +want):\n%s", tc.name, tc.from, tc.limit, diff)
		}
	}
	got, ok, err := st.LatestCheckpoint(ctx)
	if err != nil || !ok {
		t.Fatalf("LatestCheckpoint = ok %v, %v", ok, err)
	}
	if diff := cmp.Diff(got, CP(5)); diff != "" {
		t.Errorf("LatestCheckpoint (-got +want):\n%s", diff)
	}
	// The store returns copies.
	got.Note[0] = 'X'
	again, _, _ := st.LatestCheckpoint(ctx)
	if diff := cmp.Diff(again, CP(5)); diff != "" {
		t.Errorf("LatestCheckpoint after mutating a returned note (-got +want):\n%s", diff)
	}
}

// testBatchCheckpoint: a batch's checkpoint is stored with its events, in
// the same all-or-nothing commit.
func (s suite) testBatchCheckpoint(t *testing.T) {
	ctx := context.Background()
	st := s.fresh(t)
	if err := st.Append(ctx, Batch(Events(0, 3, "b"), cpPtr(3))); err != nil {
		t.Fatalf("Append with checkpoint 3: %v", err)
	}
	for _, tc := range []struct {
		name string
		b    audit.Batch
		err  error
	}{
		{"reject/checkpoint-beyond-batch", Batch(Events(3, 2, "c"), cpPtr(6)), audit.ErrSequence},
		{"reject/checkpoint-not-newer", Batch(Events(3, 2, "c"), cpPtr(3)), audit.ErrSequence},
		{"reject/duplicate-key-with-checkpoint", Batch(sameKey(Event(3, "c-3"), Event(4, "c-3")), cpPtr(5)), audit.ErrDuplicateID},
	} {
		if err := st.Append(ctx, tc.b); !errors.Is(err, tc.err) {
			t.Errorf("%s: Append = %v, want %v", tc.name, err, tc.err)
		}
		mustHead(t, st, 3)
		if cp, _, _ := st.LatestCheckpoint(ctx); cp.Size != 3 {
			t.Errorf("%s: latest checkpoint after a refused batch = %d, want 3", tc.name, cp.Size)
		}
	}
	// A checkpoint may sign less than the batch (a log that signs a
	// subset); it must not sign more.
	if err := st.Append(ctx, Batch(Events(3, 2, "c"), cpPtr(4))); err != nil {
		t.Fatalf("Append with checkpoint inside the batch: %v", err)
	}
	got, err := st.Checkpoints(ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, []audit.StoredCheckpoint{CP(3), CP(4)}); diff != "" {
		t.Errorf("Checkpoints (-got +want):\n%s", diff)
	}
}

func (s suite) testCheckpointPersistence(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, closeFirst := s.openAt(t, dir)
	if err := st.Append(ctx, Batch(Events(0, 2, "cpp"), cpPtr(2))); err != nil {
		t.Fatalf("Append: %v", err)
	}
	closeFirst()
	st, _ = s.openAt(t, dir)
	got, ok, err := st.LatestCheckpoint(ctx)
	if err != nil || !ok {
		t.Fatalf("LatestCheckpoint after reopen = ok %v, %v", ok, err)
	}
	if diff := cmp.Diff(got, CP(2)); diff != "" {
		t.Errorf("LatestCheckpoint after reopen (-got +want):\n%s", diff)
	}
}

// testView: a View sees one instant: an append committed while it reads
// is invisible to it (rows, head, checkpoints and watermark alike), and
// visible after.
func (s suite) testView(t *testing.T) {
	ctx := context.Background()
	st := s.fresh(t)
	if err := st.Append(ctx, Batch(Events(0, 3, "v"), cpPtr(3))); err != nil {
		t.Fatal(err)
	}
	IndexAll(t, st)
	err := st.View(ctx, func(r audit.Reader) error {
		before, err := snapshotOf(ctx, r)
		if err != nil {
			return err
		}
		// Commit a batch and index it while the view is open.
		if err := st.Append(ctx, Batch(Events(3, 2, "w"), cpPtr(5))); err != nil {
			return fmt.Errorf("append during a view: %w", err)
		}
		IndexAll(t, st)
		after, err := snapshotOf(ctx, r)
		if err != nil {
			return err
		}
		if diff := cmp.Diff(after, before); diff != "" {
			t.Errorf("the view changed while it was open (-after +before):\n%s", diff)
		}
		if before.Head != 3 || before.Latest != 3 || before.Indexed != 3 || len(before.Rows) != 3 {
			t.Errorf("view = %+v, want head, checkpoint and index at 3", before)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("View: %v", err)
	}
	var now viewState
	if err := st.View(ctx, func(r audit.Reader) (err error) { now, err = snapshotOf(ctx, r); return err }); err != nil {
		t.Fatal(err)
	}
	if now.Head != 5 || now.Latest != 5 || now.Indexed != 5 || len(now.Rows) != 5 {
		t.Errorf("a later view = %+v; want head, checkpoint, index and rows at 5", now)
	}
	if err := st.View(ctx, func(audit.Reader) error { return errView }); !errors.Is(err, errView) {
		t.Errorf("View returned %v, want f's error", err)
	}
}

var errView = errors.New("from f")

// sameKey gives b the key (time and id) of a.
func sameKey(a, b *auditv1.Event) []*auditv1.Event {
	b.Id, b.Time = a.Id, a.Time
	return []*auditv1.Event{a, b}
}

type viewState struct {
	Head, Latest, Indexed uint64
	Rows                  []uint64
	Checkpoints           int
}

func snapshotOf(ctx context.Context, r audit.Reader) (viewState, error) {
	var v viewState
	var err error
	if v.Head, err = r.Head(ctx); err != nil {
		return v, err
	}
	cp, _, err := r.LatestCheckpoint(ctx)
	if err != nil {
		return v, err
	}
	v.Latest = cp.Size
	if v.Indexed, err = r.IndexedUpTo(ctx); err != nil {
		return v, err
	}
	rows, err := r.ReadRows(ctx, 0, 100)
	if err != nil {
		return v, err
	}
	for _, row := range rows {
		v.Rows = append(v.Rows, row.Sequence)
	}
	cps, err := r.Checkpoints(ctx, 0, 100)
	v.Checkpoints = len(cps)
	return v, err
}

// fullTile returns a full tile whose hashes are derived from seed.
func fullTile(level, index uint64, seed byte) tiles.Tile {
	h := make([]byte, tiles.FullBytes)
	for i := range h {
		h[i] = seed + byte(i)
	}
	return tiles.Tile{ID: tiles.ID{Level: level, Index: index}, Hashes: h}
}

func (s suite) testTiles(t *testing.T) {
	ctx := context.Background()
	st := s.fresh(t)
	a, b := fullTile(0, 0, 1), fullTile(1, 7, 2)
	got, err := st.ReadTiles(ctx, []tiles.ID{a.ID})
	if err != nil || len(got) != 1 || got[0] != nil {
		t.Fatalf("ReadTiles of an empty store = %v, %v; want one nil", got, err)
	}
	batch := Batch(Events(0, 3, "t"), cpPtr(3))
	batch.Tiles = []tiles.Tile{a, b}
	if err := st.Append(ctx, batch); err != nil {
		t.Fatalf("Append with tiles: %v", err)
	}
	missing := tiles.ID{Level: 0, Index: 1}
	got, err = st.ReadTiles(ctx, []tiles.ID{b.ID, missing, a.ID})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, [][]byte{b.Hashes, nil, a.Hashes}); diff != "" {
		t.Errorf("ReadTiles (-got +want):\n%s", diff)
	}
	// A rebuild replaces a stored tile, and adds missing ones.
	a2, c := fullTile(0, 0, 9), fullTile(0, 1, 3)
	if err := st.AddTiles(ctx, []tiles.Tile{a2, c}); err != nil {
		t.Fatalf("AddTiles: %v", err)
	}
	got, _ = st.ReadTiles(ctx, []tiles.ID{a.ID, c.ID})
	if diff := cmp.Diff(got, [][]byte{a2.Hashes, c.Hashes}); diff != "" {
		t.Errorf("ReadTiles after AddTiles (-got +want):\n%s", diff)
	}
	// Only full tiles are stored; a batch holding a partial one stores
	// nothing of it.
	partial := tiles.Tile{ID: tiles.ID{Level: 0, Index: 2}, Hashes: make([]byte, tiles.HashSize)}
	if err := st.AddTiles(ctx, []tiles.Tile{partial}); err == nil {
		t.Error("AddTiles stored a partial tile")
	}
	bad := Batch(Events(3, 1, "t"), nil)
	bad.Tiles = []tiles.Tile{partial}
	if err := st.Append(ctx, bad); err == nil {
		t.Error("Append stored a batch with a partial tile")
	}
	if head, _ := st.Head(ctx); head != 3 {
		t.Errorf("Head after a refused batch = %d, want 3 (all or nothing)", head)
	}
	// Many at once (more than one SELECT's worth).
	var many []tiles.Tile
	var ids []tiles.ID
	for i := range uint64(150) {
		many = append(many, fullTile(2, i, byte(i)))
		ids = append(ids, tiles.ID{Level: 2, Index: i})
	}
	if err := st.AddTiles(ctx, many); err != nil {
		t.Fatal(err)
	}
	got, err = st.ReadTiles(ctx, ids)
	if err != nil || len(got) != 150 {
		t.Fatalf("ReadTiles of 150 = %d, %v", len(got), err)
	}
	for i := range got {
		if !bytes.Equal(got[i], many[i].Hashes) {
			t.Fatalf("ReadTiles[%d] differs", i)
		}
	}
	if err := st.View(ctx, func(r audit.Reader) error {
		got, err := r.ReadTiles(ctx, []tiles.ID{c.ID})
		if err == nil && !bytes.Equal(got[0], c.Hashes) {
			t.Error("View's ReadTiles differs")
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

func (s suite) testTilesPersistence(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, closeFn := s.openAt(t, dir)
	batch := Batch(Events(0, 2, "tp"), cpPtr(2))
	a := fullTile(0, 0, 5)
	batch.Tiles = []tiles.Tile{a}
	if err := st.Append(ctx, batch); err != nil {
		t.Fatal(err)
	}
	closeFn()
	st2, _ := s.openAt(t, dir)
	got, err := st2.ReadTiles(ctx, []tiles.ID{a.ID})
	if err != nil || !bytes.Equal(got[0], a.Hashes) {
		t.Fatalf("tile after reopen = %d bytes, %v", len(got[0]), err)
	}
}

func (s suite) testCompactRange(t *testing.T) {
	ctx := context.Background()
	st := s.fresh(t)
	if _, ok, err := st.LatestCompactRange(ctx); ok || err != nil {
		t.Fatalf("LatestCompactRange of an empty store = ok %v, %v", ok, err)
	}
	cr := [][]byte{bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)}
	withRange := func(size uint64) *audit.StoredCheckpoint {
		c := CP(size)
		c.CompactRange = cr
		return &c
	}
	if err := st.Append(ctx, Batch(Events(0, 3, "cr"), withRange(3))); err != nil {
		t.Fatal(err)
	}
	if err := st.Append(ctx, Batch(Events(3, 2, "cr"), cpPtr(5))); err != nil {
		t.Fatal(err)
	}
	got, ok, err := st.LatestCompactRange(ctx)
	if err != nil || !ok {
		t.Fatalf("LatestCompactRange = ok %v, %v", ok, err)
	}
	if diff := cmp.Diff(got, *withRange(3), cmpopts.EquateApproxTime(0)); diff != "" {
		t.Errorf("LatestCompactRange (-got +want):\n%s", diff)
	}
	latest, _, _ := st.LatestCheckpoint(ctx)
	if latest.Size != 5 || latest.CompactRange != nil {
		t.Errorf("LatestCheckpoint = size %d with compact range %v, want 5 without", latest.Size, latest.CompactRange)
	}
	cps, err := st.Checkpoints(ctx, 0, 10)
	if err != nil || len(cps) != 2 || !cmp.Equal(cps[0].CompactRange, cr) || cps[1].CompactRange != nil {
		t.Errorf("Checkpoints = %v, %v", cps, err)
	}
	// AddCompactRange fills a checkpoint that has none, and no other.
	cr2 := [][]byte{bytes.Repeat([]byte{3}, 32)}
	if err := st.AddCompactRange(ctx, 5, cr2); err != nil {
		t.Fatal(err)
	}
	if err := st.AddCompactRange(ctx, 3, cr2); err != nil {
		t.Fatal(err)
	}
	got, _, _ = st.LatestCompactRange(ctx)
	if got.Size != 5 || !cmp.Equal(got.CompactRange, cr2) {
		t.Errorf("LatestCompactRange after AddCompactRange = size %d, %v", got.Size, got.CompactRange)
	}
	cps, _ = st.Checkpoints(ctx, 3, 1)
	if !cmp.Equal(cps[0].CompactRange, cr) {
		t.Error("AddCompactRange replaced a stored compact range")
	}
	if err := st.AddCheckpoint(ctx, *withRange(5)); !errors.Is(err, audit.ErrSequence) {
		t.Errorf("AddCheckpoint of a stored size = %v", err)
	}
}

// prunedLog appends 600 events in two batches signed at 300 and 600,
// indexes them and stores a full tile.
func (s suite) prunedLog(t *testing.T, st audit.Store) {
	t.Helper()
	ctx := context.Background()
	if err := st.Append(ctx, Batch(Events(0, 300, "pr"), cpPtr(300))); err != nil {
		t.Fatal(err)
	}
	if err := st.Append(ctx, Batch(Events(300, 300, "pr"), cpPtr(600))); err != nil {
		t.Fatal(err)
	}
	IndexAll(t, st)
	if err := st.AddTiles(ctx, []tiles.Tile{fullTile(0, 0, 7)}); err != nil {
		t.Fatal(err)
	}
}

func mustPruned(t *testing.T, r audit.Reader, want audit.PruneState) {
	t.Helper()
	got, err := r.Pruned(context.Background())
	if err != nil || got != want {
		t.Errorf("Pruned = %+v, %v; want %+v", got, err, want)
	}
}

func (s suite) testPrune(t *testing.T) {
	ctx := context.Background()
	st := s.fresh(t)
	mustPruned(t, st, audit.PruneState{})
	s.prunedLog(t, st)
	for _, bad := range []audit.PruneState{
		{End: 601, Base: 290}, // beyond the head
		{End: 300, Base: 301}, // base after end
		{End: 0, Base: 0},     // nothing
		{End: 620, Base: 610}, // beyond the head
	} {
		if err := st.Prune(ctx, bad); !errors.Is(err, audit.ErrSequence) {
			t.Errorf("Prune(%+v) = %v, want ErrSequence", bad, err)
		}
	}
	mustPruned(t, st, audit.PruneState{})
	mustHead(t, st, 600)

	p := audit.PruneState{End: 300, Base: 290}
	if p.Keep() != 256 {
		t.Fatalf("Keep() = %d, want 256", p.Keep())
	}
	if err := st.Prune(ctx, p); err != nil {
		t.Fatalf("Prune(%+v): %v", p, err)
	}
	mustPruned(t, st, p)
	mustHead(t, st, 600) // the head never goes back
	rows, err := st.ReadRows(ctx, 0, 5)
	if err != nil || len(rows) != 5 || rows[0].Sequence != 256 {
		t.Fatalf("ReadRows(0) after the prune = %d rows from %v, %v; want from 256", len(rows), rows, err)
	}
	if rows[0].Index == nil {
		t.Error("a kept row lost its index row")
	}
	if got := mustRead(t, st, 250, 1); len(got) != 1 || got[0].GetSequence() != 256 {
		t.Errorf("Read(250) after the prune = %v, want event 256", got)
	}
	if got := query(t, st, audit.Filter{}, 0, 600, 1000); len(got) != 600-256 || got[0].GetSequence() != 256 {
		t.Errorf("Query after the prune = %d events, want %d from 256", len(got), 600-256)
	}
	found, err := st.Lookup(ctx, []audit.EventKey{audit.KeyOf(Event(3, "pr-3")), audit.KeyOf(Event(400, "pr-400"))})
	if err != nil || len(found) != 1 || found[audit.KeyOf(Event(400, "pr-400"))] == nil {
		t.Errorf("Lookup of a pruned and a kept key = %v, %v; want only the kept one", found, err)
	}
	cps, err := st.Checkpoints(ctx, 0, 10)
	if err != nil || len(cps) != 2 {
		t.Errorf("Checkpoints after the prune = %v, %v; want both (checkpoints stay)", cps, err)
	}
	ts, err := st.ReadTiles(ctx, []tiles.ID{{Level: 0, Index: 0}})
	if err != nil || !bytes.Equal(ts[0], fullTile(0, 0, 7).Hashes) {
		t.Errorf("ReadTiles after the prune = %v: tiles stay", err)
	}
	if err := st.View(ctx, func(r audit.Reader) error { mustPruned(t, r, p); return nil }); err != nil {
		t.Fatal(err)
	}
	// A prune never goes back, and never moves the base back.
	for _, bad := range []audit.PruneState{{End: 300, Base: 290}, {End: 200, Base: 100}, {End: 400, Base: 280}} {
		if err := st.Prune(ctx, bad); !errors.Is(err, audit.ErrSequence) {
			t.Errorf("Prune(%+v) after %+v = %v, want ErrSequence", bad, p, err)
		}
	}
	// The log goes on.
	mustAppend(t, st, Events(600, 2, "after"))
	mustHead(t, st, 602)
	again := Event(602, "pr-500")
	again.Time = Event(500, "").GetTime()
	if err := Append(ctx, st, []*auditv1.Event{again}); !errors.Is(err, audit.ErrDuplicateID) {
		t.Errorf("Append of a kept key = %v, want ErrDuplicateID", err)
	}
	// A later prune with the same base deletes nothing more.
	p2 := audit.PruneState{End: 600, Base: 290}
	if err := st.Prune(ctx, p2); err != nil {
		t.Fatalf("Prune(%+v): %v", p2, err)
	}
	mustPruned(t, st, p2)
	if rows, _ := st.ReadRows(ctx, 0, 1); len(rows) != 1 || rows[0].Sequence != 256 {
		t.Errorf("ReadRows(0) after a prune with the same base = %v, want from 256", rows)
	}
}

func (s suite) testPruneUnindexed(t *testing.T) {
	ctx := context.Background()
	st := s.fresh(t)
	if err := st.Append(ctx, Batch(Events(0, 600, "pu"), cpPtr(600))); err != nil {
		t.Fatal(err)
	}
	rows := make([]audit.IndexRow, 100)
	for i, e := range Events(0, 100, "pu") {
		rows[i] = audit.IndexRowOf(e)
	}
	if err := st.AddIndex(ctx, 0, rows); err != nil {
		t.Fatal(err)
	}
	if err := st.Prune(ctx, audit.PruneState{End: 520, Base: 515}); err != nil {
		t.Fatal(err)
	}
	// The watermark moves to the first kept row: the indexer goes on
	// from there.
	if n, err := st.IndexedUpTo(ctx); n != 512 || err != nil {
		t.Errorf("IndexedUpTo after the prune = %d, %v; want 512", n, err)
	}
	IndexAll(t, st)
	if n, _ := st.IndexedUpTo(ctx); n != 600 {
		t.Errorf("IndexedUpTo after indexing = %d, want 600", n)
	}
	if got := query(t, st, audit.Filter{Kinds: []auditv1.Kind{auditv1.Kind_KIND_AUDIT_ADMIN}}, 0, 600, 1000); len(got) != 600-512 {
		t.Errorf("indexed Query after the prune = %d events, want %d", len(got), 600-512)
	}
}

func (s suite) testPrunePersistence(t *testing.T) {
	dir := t.TempDir()
	st, closeFirst := s.openAt(t, dir)
	s.prunedLog(t, st)
	p := audit.PruneState{End: 600, Base: 300}
	if err := st.Prune(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	closeFirst()
	st, _ = s.openAt(t, dir)
	mustPruned(t, st, p)
	mustHead(t, st, 600)
	if got := mustRead(t, st, 0, 1000); len(got) != 600-256 || got[0].GetSequence() != 256 {
		t.Errorf("Read after reopen = %d events, want %d from 256", len(got), 600-256)
	}
}
