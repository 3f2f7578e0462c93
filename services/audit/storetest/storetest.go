// Package storetest is the conformance suite for audit.Store: every
// backend (sqlite, postgres, memstore) runs the same tests, so Log can
// rely on the same semantics whichever store it is given.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/services/audit"

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
		{"reject/duplicate-id", s.testRejectDuplicateID},
		{"lookup", s.testLookup},
		{"query/filters", s.testQueryFilters},
		{"query/pagination", s.testPagination},
		{"query/malformed-token", s.testMalformedToken},
		{"persistence", s.testPersistence},
		{"checkpoints", s.testCheckpoints},
		{"checkpoints/persistence", s.testCheckpointPersistence},
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

func mustAppend(t *testing.T, st audit.Store, events []*auditv1.Event) {
	t.Helper()
	if err := st.Append(context.Background(), events); err != nil {
		t.Fatalf("Append(%d events from %d): %v", len(events), events[0].GetSequence(), err)
	}
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
	got, next, err := st.Query(ctx, audit.Filter{PageSize: 10})
	if err != nil || len(got) != 0 || next != "" {
		t.Errorf("Query on empty store = %d events, %q, %v; want 0, \"\", nil", len(got), next, err)
	}
	found, err := st.Lookup(ctx, []string{"a"})
	if err != nil || len(found) != 0 {
		t.Errorf("Lookup on empty store = %v, %v; want empty, nil", found, err)
	}
	if err := st.Append(ctx, nil); err != nil {
		t.Errorf("Append(nil) = %v, want nil", err)
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
	mustAppend(t, st, in)
	in[0].Reason = "changed after Append"
	got := mustRead(t, st, 0, 1)
	diffEvents(t, "Read after mutating the appended event", got, []*auditv1.Event{want})
	got[0].Reason = "changed after Read"
	diffEvents(t, "Read after mutating a read event", mustRead(t, st, 0, 1), []*auditv1.Event{want})
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
			err := st.Append(context.Background(), batch)
			if !errors.Is(err, audit.ErrSequence) {
				t.Errorf("Append(sequences %v) at head %d = %v, want ErrSequence", tc.batch, tc.head, err)
			}
			mustHead(t, st, uint64(tc.head))
			diffEvents(t, "Read after rejected append", mustRead(t, st, 0, 100), Events(0, tc.head, "stored"))
		})
	}
}

func (s suite) testRejectDuplicateID(t *testing.T) {
	for _, tc := range []struct {
		name string
		ids  []string // ids of the batch at sequence 1, 2...; "stored-0" is stored
	}{
		{"stored", []string{"stored-0"}},
		{"stored-after-new", []string{"new", "stored-0"}},
		{"in-batch", []string{"new", "new"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := s.fresh(t)
			stored := Events(0, 1, "stored")
			mustAppend(t, st, stored)
			batch := make([]*auditv1.Event, len(tc.ids))
			for i, id := range tc.ids {
				batch[i] = Event(uint64(1+i), id)
			}
			err := st.Append(context.Background(), batch)
			if !errors.Is(err, audit.ErrDuplicateID) {
				t.Errorf("Append(ids %q) = %v, want ErrDuplicateID", tc.ids, err)
			}
			mustHead(t, st, 1)
			diffEvents(t, "Read after rejected append", mustRead(t, st, 0, 100), stored)
		})
	}
}

func (s suite) testLookup(t *testing.T) {
	st := s.fresh(t)
	all := fixture()
	mustAppend(t, st, all)
	got, err := st.Lookup(context.Background(), []string{"fx-0", "fx-7", "missing", "fx-0"})
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}
	want := map[string]*auditv1.Event{"fx-0": all[0], "fx-7": all[7]}
	if diff := cmp.Diff(got, want, protocmp.Transform()); diff != "" {
		t.Errorf("Lookup mismatch (-got +want):\n%s", diff)
	}
}

func (s suite) testQueryFilters(t *testing.T) {
	st := s.fresh(t)
	all := fixture()
	mustAppend(t, st, all)
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
			tc.f.PageSize = audit.MaxPageSize
			got, next, err := st.Query(context.Background(), tc.f)
			if err != nil {
				t.Fatalf("Query: %v", err)
			}
			if next != "" {
				t.Errorf("Query next page token = %q, want \"\"", next)
			}
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

func (s suite) testPagination(t *testing.T) {
	st := s.fresh(t)
	mustAppend(t, st, fixture())
	keys := []auditv1.Kind{auditv1.Kind_KIND_KEY_ENCRYPT, auditv1.Kind_KIND_KEY_DECRYPT}
	for _, tc := range []struct {
		name string
		f    audit.Filter
		want [][]uint64
	}{
		{"partial-last-page", audit.Filter{PageSize: 3}, [][]uint64{{0, 1, 2}, {3, 4, 5}, {6, 7}}},
		{"exact-last-page", audit.Filter{PageSize: 4}, [][]uint64{{0, 1, 2, 3}, {4, 5, 6, 7}}},
		{"one-page", audit.Filter{PageSize: 8}, [][]uint64{{0, 1, 2, 3, 4, 5, 6, 7}}},
		{"filtered", audit.Filter{PageSize: 1, Kinds: keys}, [][]uint64{{2}, {3}, {7}}},
		{"filtered-sparse", audit.Filter{PageSize: 2, Subject: ghPrincipal}, [][]uint64{{0, 1}}},
		{"token-past-head", audit.Filter{PageSize: 2, PageToken: audit.EncodePageToken(1 << 40)}, [][]uint64{nil}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got [][]uint64
			f := tc.f
			for page := 0; ; page++ {
				if page > 10 {
					t.Fatalf("more than 10 pages; got %v", got)
				}
				events, next, err := st.Query(context.Background(), f)
				if err != nil {
					t.Fatalf("Query page %d: %v", page, err)
				}
				var seqs []uint64
				for _, e := range events {
					seqs = append(seqs, e.GetSequence())
				}
				got = append(got, seqs)
				if next == "" {
					break
				}
				f.PageToken = next
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("pages mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func (s suite) testMalformedToken(t *testing.T) {
	st := s.fresh(t)
	mustAppend(t, st, Events(0, 2, "tok"))
	for _, token := range []string{"not base64!", "AAAA", "AgAAAAAAAAAA", audit.EncodePageToken(1) + "A"} {
		t.Run(token, func(t *testing.T) {
			_, _, err := st.Query(context.Background(), audit.Filter{PageSize: 10, PageToken: token})
			if audit.ErrorCodeOf(err) != audit.Invalid || !strings.Contains(err.Error(), "page_token") {
				t.Errorf("Query(page_token %q) = %v, want an Invalid error naming page_token", token, err)
			}
		})
	}
}

func (s suite) testPersistence(t *testing.T) {
	dir := t.TempDir()
	first := fixture()
	st, closeFirst := s.openAt(t, dir)
	mustAppend(t, st, first)
	closeFirst()

	st, closeSecond := s.openAt(t, dir)
	mustHead(t, st, uint64(len(first)))
	diffEvents(t, "Read after reopen", mustRead(t, st, 0, 100), first)
	more := Events(uint64(len(first)), 2, "more")
	mustAppend(t, st, more)
	if err := st.Append(context.Background(), []*auditv1.Event{Event(10, "fx-0")}); !errors.Is(err, audit.ErrDuplicateID) {
		t.Errorf("Append of an id stored before reopen = %v, want ErrDuplicateID", err)
	}
	closeSecond()

	st, _ = s.openAt(t, dir)
	mustHead(t, st, uint64(len(first)+len(more)))
	diffEvents(t, "Read after second reopen", mustRead(t, st, 0, 100), append(first, more...))
}

func cp(size uint64) audit.StoredCheckpoint {
	return audit.StoredCheckpoint{Size: size, Note: []byte(fmt.Sprintf("note %d\n", size)), Time: t0.Add(time.Duration(size) * time.Second)}
}

func (s suite) testCheckpoints(t *testing.T) {
	ctx := context.Background()
	st := s.fresh(t)
	if _, ok, err := st.LatestCheckpoint(ctx); ok || err != nil {
		t.Fatalf("LatestCheckpoint of an empty store = ok %v, %v; want none", ok, err)
	}
	if err := st.AddCheckpoint(ctx, cp(1)); !errors.Is(err, audit.ErrSequence) {
		t.Errorf("AddCheckpoint beyond head of an empty store = %v, want ErrSequence", err)
	}
	mustAppend(t, st, Events(0, 5, "cp"))
	for _, size := range []uint64{3, 5} {
		if err := st.AddCheckpoint(ctx, cp(size)); err != nil {
			t.Fatalf("AddCheckpoint(%d): %v", size, err)
		}
	}
	for _, tc := range []struct {
		name string
		size uint64
	}{{"reject/zero", 0}, {"reject/older", 4}, {"reject/same", 5}, {"reject/beyond-head", 6}} {
		if err := st.AddCheckpoint(ctx, cp(tc.size)); !errors.Is(err, audit.ErrSequence) {
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
			want = append(want, cp(size))
		}
		if diff := cmp.Diff(got, want, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s: Checkpoints(%d, %d) (-got +want):\n%s", tc.name, tc.from, tc.limit, diff)
		}
	}
	got, ok, err := st.LatestCheckpoint(ctx)
	if err != nil || !ok {
		t.Fatalf("LatestCheckpoint = ok %v, %v", ok, err)
	}
	if diff := cmp.Diff(got, cp(5)); diff != "" {
		t.Errorf("LatestCheckpoint (-got +want):\n%s", diff)
	}
	// The store returns copies.
	got.Note[0] = 'X'
	again, _, _ := st.LatestCheckpoint(ctx)
	if diff := cmp.Diff(again, cp(5)); diff != "" {
		t.Errorf("LatestCheckpoint after mutating a returned note (-got +want):\n%s", diff)
	}
}

func (s suite) testCheckpointPersistence(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, closeFirst := s.openAt(t, dir)
	mustAppend(t, st, Events(0, 2, "cpp"))
	if err := st.AddCheckpoint(ctx, cp(2)); err != nil {
		t.Fatalf("AddCheckpoint: %v", err)
	}
	closeFirst()
	st, _ = s.openAt(t, dir)
	got, ok, err := st.LatestCheckpoint(ctx)
	if err != nil || !ok {
		t.Fatalf("LatestCheckpoint after reopen = ok %v, %v", ok, err)
	}
	if diff := cmp.Diff(got, cp(2)); diff != "" {
		t.Errorf("LatestCheckpoint after reopen (-got +want):\n%s", diff)
	}
}
