package audit_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/platform/auditevent"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/audittest"
	"github.com/credmatrix/credmatrix/services/audit/memstore"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

const broker = "spiffe://credmatrix.dev/broker"

var now = time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC)

func fixedClock() time.Time { return now }

// event returns a valid event as a producer would send it.
func event(id string) *auditv1.Event {
	return &auditv1.Event{
		Id:       id,
		Time:     timestamppb.New(now.Add(-time.Second)),
		Kind:     auditv1.Kind_KIND_SESSION_ISSUE,
		Decision: auditv1.Decision_DECISION_ALLOW,
		Actor:    &auditv1.Actor{Principal: "https://issuer#sub"},
		Detail:   &auditv1.Event_Session{Session: &auditv1.SessionDetail{AccountId: "111111111111", RoleName: "deploy"}},
	}
}

func events(ids ...string) []*auditv1.Event {
	out := make([]*auditv1.Event, len(ids))
	for i, id := range ids {
		out[i] = event(id)
	}
	return out
}

func readAll(t *testing.T, s audit.Store) []*auditv1.Event {
	t.Helper()
	got, err := s.Read(context.Background(), 0, 1<<20)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return got
}

func leafHash(t *testing.T, e *auditv1.Event) []byte {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(e)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	h := sha256.Sum256(append([]byte{0}, b...))
	return h[:]
}

func TestAppendSetsServerFields(t *testing.T) {
	store := memstore.New()
	log := audittest.OpenLog(t, store, audit.WithClock(fixedClock))
	in := events("a", "b")
	in[0].Sequence = 99                    // ignored
	in[0].SourceService = "forged"         // overwritten
	in[1].RecordedTime = timestamppb.Now() // overwritten
	sent := []*auditv1.Event{proto.CloneOf(in[0]), proto.CloneOf(in[1])}

	got, err := log.Append(context.Background(), broker, in)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	var want []*auditv1.Event
	for i, e := range sent {
		w := proto.CloneOf(e)
		w.Sequence = uint64(i)
		w.RecordedTime = timestamppb.New(now)
		w.SourceService = broker
		want = append(want, w)
	}
	if diff := cmp.Diff(readAll(t, store), want, protocmp.Transform()); diff != "" {
		t.Errorf("stored events mismatch (-got +want):\n%s", diff)
	}
	wantResults := []*auditv1.AppendResult{
		{Id: "a", Sequence: 0, LeafHash: leafHash(t, want[0])},
		{Id: "b", Sequence: 1, LeafHash: leafHash(t, want[1])},
	}
	if diff := cmp.Diff(got, wantResults, protocmp.Transform()); diff != "" {
		t.Errorf("results mismatch (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(in, sent, protocmp.Transform()); diff != "" {
		t.Errorf("Append modified the caller's events (-got +want):\n%s", diff)
	}
}

func TestAppendConcurrentIsGapFree(t *testing.T) {
	const workers, batches = 8, 40
	store := memstore.New()
	log := audittest.OpenLog(t, store)
	var (
		mu   sync.Mutex
		seqs []uint64
		wg   sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			for b := range batches {
				n := 1 + b%3
				batch := make([]*auditv1.Event, n)
				for i := range batch {
					batch[i] = event(fmt.Sprintf("w%d-b%d-%d", w, b, i))
				}
				res, err := log.Append(context.Background(), broker, batch)
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				for i, r := range res {
					if i > 0 && r.GetSequence() != res[i-1].GetSequence()+1 {
						t.Errorf("batch not contiguous: %v", res)
					}
					seqs = append(seqs, r.GetSequence())
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.Sort(seqs)
	for i, s := range seqs {
		if s != uint64(i) {
			t.Fatalf("acknowledged sequences are not 0..%d: position %d holds %d", len(seqs)-1, i, s)
		}
	}
	stored := readAll(t, store)
	if len(stored) != len(seqs) {
		t.Fatalf("stored %d events, acknowledged %d", len(stored), len(seqs))
	}
	for i, e := range stored {
		if e.GetSequence() != uint64(i) {
			t.Fatalf("stored event %d has sequence %d", i, e.GetSequence())
		}
	}
}

func TestAppendIsIdempotentOnID(t *testing.T) {
	store := memstore.New()
	log := audittest.OpenLog(t, store, audit.WithClock(fixedClock))
	ctx := context.Background()
	first, err := log.Append(ctx, broker, events("a", "b"))
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	retry := events("b", "c", "c")
	retry[0].Reason = "a retry may differ; the first event wins"
	got, err := log.Append(ctx, broker, retry)
	if err != nil {
		t.Fatalf("Append retry: %v", err)
	}
	stored := readAll(t, store)
	if len(stored) != 3 {
		t.Fatalf("stored %d events, want 3 (a, b, c once each)", len(stored))
	}
	want := []*auditv1.AppendResult{
		first[1],
		{Id: "c", Sequence: 2, LeafHash: leafHash(t, stored[2])},
		{Id: "c", Sequence: 2, LeafHash: leafHash(t, stored[2])},
	}
	if diff := cmp.Diff(got, want, protocmp.Transform()); diff != "" {
		t.Errorf("retry results mismatch (-got +want):\n%s", diff)
	}
	if stored[1].GetReason() != "" {
		t.Errorf("retry replaced the stored event: reason %q", stored[1].GetReason())
	}
}

// testJWT is a syntactically valid, unsigned-looking compact JWT.
const testJWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOmFjbWUvYXBwIn0.c2lnbmF0dXJlLWJ5dGVzLWhlcmUtYW5kLW1vcmU"

func TestAppendValidation(t *testing.T) {
	with := func(mod func(e *auditv1.Event)) *auditv1.Event {
		e := event("x")
		mod(e)
		return e
	}
	tooMany := make([]*auditv1.Event, audit.MaxBatch+1)
	for i := range tooMany {
		tooMany[i] = event(fmt.Sprint(i))
	}
	oversized := with(func(e *auditv1.Event) { e.Reason = strings.Repeat("r", audit.MaxEventBytes) })
	huge := with(func(e *auditv1.Event) {
		e.Id = ""
		e.Reason = strings.Repeat("eyJ\xff", 150<<10)
	})
	for _, tc := range []struct {
		name   string
		events []*auditv1.Event
		want   string
	}{
		{"invalid/empty-batch", nil, "events: at least 1 required"},
		{"invalid/too-many", tooMany, "events: at most 1000 per batch, got 1001"},
		{"invalid/nil-event", []*auditv1.Event{event("a"), nil}, "events[1]: required"},
		{"invalid/missing-id", []*auditv1.Event{event("")}, "events[0].id: required"},
		{"invalid/long-id", []*auditv1.Event{event(strings.Repeat("i", 129))}, "events[0].id: at most 128 bytes"},
		{"invalid/id-not-utf8", []*auditv1.Event{event("\xff")}, "events[0].id: not valid UTF-8"},
		{"invalid/missing-time", []*auditv1.Event{with(func(e *auditv1.Event) { e.Time = nil })}, "events[0].time: required"},
		{"invalid/bad-time", []*auditv1.Event{with(func(e *auditv1.Event) { e.Time.Nanos = -1 })}, "events[0].time: not a valid timestamp"},
		{"invalid/time-out-of-range", []*auditv1.Event{with(func(e *auditv1.Event) {
			e.Time = timestamppb.New(time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC))
		})}, "events[0].time: out of range (years 1678 to 2262)"},
		{"invalid/missing-kind", []*auditv1.Event{event("a"), event("b"), with(func(e *auditv1.Event) { e.Kind = 0 })}, "events[2].kind: required"},
		{"invalid/unknown-kind", []*auditv1.Event{with(func(e *auditv1.Event) { e.Kind = 99 })}, "events[0].kind: unknown value 99"},
		{"invalid/missing-decision", []*auditv1.Event{with(func(e *auditv1.Event) { e.Decision = 0 })}, "events[0].decision: required"},
		{"invalid/unknown-decision", []*auditv1.Event{with(func(e *auditv1.Event) { e.Decision = 7 })}, "events[0].decision: unknown value 7"},
		{"invalid/trace-id-uppercase", []*auditv1.Event{with(func(e *auditv1.Event) { e.TraceId = strings.Repeat("A", 32) })}, "events[0].trace_id: must be empty or 32 lowercase hex digits"},
		{"invalid/span-id-short", []*auditv1.Event{with(func(e *auditv1.Event) { e.SpanId = "abc" })}, "events[0].span_id: must be empty or 16 lowercase hex digits"},
		{"invalid/not-utf8", []*auditv1.Event{with(func(e *auditv1.Event) { e.Reason = "\xff" })}, "events[0].reason: not valid UTF-8"},
		{"invalid/key-not-utf8", []*auditv1.Event{with(func(e *auditv1.Event) { e.Actor.Claims = map[string]string{"ok": "1", "\xff": "2"} })},
			`events[0].actor.claims[<key of 1 bytes>]: key not valid UTF-8`},
		{"invalid/oversized", []*auditv1.Event{oversized}, fmt.Sprintf("events[0]: %d bytes serialised, at most 65536", proto.Size(oversized))},
		// Size first: a 600 KB field that would also fail every other check
		// is refused for its size, before any string is scanned.
		{"invalid/oversized-before-content", []*auditv1.Event{huge}, fmt.Sprintf("events[0]: %d bytes serialised, at most 65536", proto.Size(huge))},
		// Secrets never stored: refs carry an HMAC and its key id, and a
		// raw token anywhere in the event is refused.
		{"secret/ref-without-hmac", []*auditv1.Event{with(func(e *auditv1.Event) {
			e.SecretRefs = []*auditv1.SecretRef{{Name: "session_token", KeyId: "k1"}}
		})}, "events[0].secret_refs[0].hmac_sha256: must be the 32-byte HMAC-SHA256 of the secret, never the secret itself"},
		{"secret/ref-holding-the-secret", []*auditv1.Event{with(func(e *auditv1.Event) {
			e.SecretRefs = []*auditv1.SecretRef{{Name: "secret_access_key", HmacSha256: []byte("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"), KeyId: "k1"}}
		})}, "events[0].secret_refs[0].hmac_sha256: must be the 32-byte HMAC-SHA256 of the secret, never the secret itself"},
		{"secret/ref-without-key-id", []*auditv1.Event{with(func(e *auditv1.Event) {
			e.SecretRefs = []*auditv1.SecretRef{{Name: "oidc_token", HmacSha256: make([]byte, 32)}}
		})}, "events[0].secret_refs[0].key_id: required: name the HMAC key so investigators can recompute it"},
		{"secret/ref-without-name", []*auditv1.Event{with(func(e *auditv1.Event) {
			e.SecretRefs = []*auditv1.SecretRef{{HmacSha256: make([]byte, 32), KeyId: "k1"}}
		})}, "events[0].secret_refs[0].name: required, at most 64 bytes"},
		{"secret/jwt-in-reason", []*auditv1.Event{with(func(e *auditv1.Event) { e.Reason = "token " + testJWT + " rejected" })},
			"events[0].reason: " + auditevent.ProblemSecret},
		{"secret/jwt-in-claim", []*auditv1.Event{with(func(e *auditv1.Event) { e.Actor.Claims = map[string]string{"raw": testJWT} })},
			`events[0].actor.claims["raw"]: ` + auditevent.ProblemSecret},
		{"secret/jwt-as-claim-name", []*auditv1.Event{with(func(e *auditv1.Event) { e.Actor.Claims = map[string]string{testJWT: "v"} })},
			fmt.Sprintf(`events[0].actor.claims[<key of %d bytes>]: key `, len(testJWT)) + auditevent.ProblemSecret},
		{"secret/jwt-in-session-tag", []*auditv1.Event{with(func(e *auditv1.Event) { e.GetSession().SessionTags = map[string]string{"t": testJWT} })},
			`events[0].session.session_tags["t"]: ` + auditevent.ProblemSecret},
		{"secret/private-key-in-request-reason", []*auditv1.Event{with(func(e *auditv1.Event) {
			e.Actor.RequestReason = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"
		})}, "events[0].actor.request_reason: " + auditevent.ProblemSecret},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := memstore.New()
			log := audittest.OpenLog(t, store)
			res, err := log.Append(context.Background(), broker, tc.events)
			var got domainerr.Error
			if e := (*domainerr.Error)(nil); errors.As(err, &e) {
				got = *e
			}
			want := domainerr.Error{Code: domainerr.Invalid, Message: tc.want}
			if diff := cmp.Diff(got, want); diff != "" || res != nil {
				t.Errorf("Append = %v, %v; error mismatch (-got +want):\n%s", res, err, diff)
			}
			if n := len(readAll(t, store)); n != 0 {
				t.Errorf("an invalid batch stored %d events", n)
			}
		})
	}
}

// TestAppendEachRefusesOnlyTheBadEvent: with refusals per event, the valid
// events of a batch are recorded in order and only the bad ones come back
// refused, each naming its position and field.
func TestAppendEachRefusesOnlyTheBadEvent(t *testing.T) {
	store := memstore.New()
	log := audittest.OpenLog(t, store, audit.WithClock(fixedClock))
	bad := event("b")
	bad.Actor.RequestReason = "ship " + testJWT
	got, err := log.AppendEach(context.Background(), broker, []*auditv1.Event{event("a"), bad, nil, event("c"), event("a")})
	if err != nil {
		t.Fatalf("AppendEach: %v", err)
	}
	stored := readAll(t, store)
	if len(stored) != 2 {
		t.Fatalf("stored %d events, want a and c", len(stored))
	}
	type outcome struct {
		Result *auditv1.AppendResult
		Err    string
	}
	var gotOutcomes []outcome
	for _, o := range got {
		var msg string
		if e := (*domainerr.Error)(nil); errors.As(o.Err, &e) {
			msg = string(e.Code) + ": " + e.Message
		}
		gotOutcomes = append(gotOutcomes, outcome{o.Result, msg})
	}
	a := &auditv1.AppendResult{Id: "a", Sequence: 0, LeafHash: leafHash(t, stored[0])}
	want := []outcome{
		{Result: a},
		{Err: "invalid: events[1].actor.request_reason: " + auditevent.ProblemSecret},
		{Err: "invalid: events[2]: required"},
		{Result: &auditv1.AppendResult{Id: "c", Sequence: 1, LeafHash: leafHash(t, stored[1])}},
		{Result: a}, // a repeated id is answered with the first event
	}
	if diff := cmp.Diff(gotOutcomes, want, protocmp.Transform()); diff != "" {
		t.Errorf("outcomes mismatch (-got +want):\n%s", diff)
	}
}

func TestAppendEachAllRefusedRecordsNothing(t *testing.T) {
	store := memstore.New()
	log := audittest.OpenLog(t, store)
	got, err := log.AppendEach(context.Background(), broker, []*auditv1.Event{event(""), nil})
	if err != nil {
		t.Fatalf("AppendEach: %v", err)
	}
	if len(got) != 2 || got[0].Err == nil || got[1].Err == nil {
		t.Errorf("outcomes = %+v, want both refused", got)
	}
	if n := len(readAll(t, store)); n != 0 || log.Size() != 0 {
		t.Errorf("stored %d events, tree %d; want none", n, log.Size())
	}
	for _, batch := range [][]*auditv1.Event{nil, make([]*auditv1.Event, audit.MaxBatch+1)} {
		if _, err := log.AppendEach(context.Background(), broker, batch); domainerr.CodeOf(err) != domainerr.Invalid {
			t.Errorf("AppendEach of %d events = %v, want the whole request invalid", len(batch), err)
		}
	}
}

func TestAppendLimitsAreInclusive(t *testing.T) {
	big := event("big")
	for n := audit.MaxEventBytes - proto.Size(big) - 4; proto.Size(big) < audit.MaxEventBytes; n++ {
		big.Reason = strings.Repeat("r", n)
	}
	if proto.Size(big) != audit.MaxEventBytes {
		t.Fatalf("could not build an event of exactly %d bytes (got %d)", audit.MaxEventBytes, proto.Size(big))
	}
	full := make([]*auditv1.Event, audit.MaxBatch)
	for i := range full {
		full[i] = event(fmt.Sprint(i))
	}
	for _, tc := range []struct {
		name   string
		events []*auditv1.Event
	}{
		{"valid/max-event-size", []*auditv1.Event{big}},
		{"valid/max-batch", full},
		{"valid/max-id", []*auditv1.Event{event(strings.Repeat("i", audit.MaxIDBytes))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := audittest.OpenLog(t, memstore.New())
			if _, err := log.Append(context.Background(), broker, tc.events); err != nil {
				t.Errorf("Append: %v", err)
			}
		})
	}
}

// flakyStore fails the next calls it is told to, around a real store.
type flakyStore struct {
	audit.Store
	failHead, failLookup, failAppend, failRead atomic.Int32
	// commitThenFail makes Append store the batch and still report an
	// error, like a commit whose acknowledgement was lost.
	commitThenFail atomic.Bool
}

var errDisk = errors.New("disk on fire: /var/lib/audit/audit.db")

func (s *flakyStore) Head(ctx context.Context) (uint64, error) {
	if s.failHead.Add(-1) >= 0 {
		return 0, errDisk
	}
	return s.Store.Head(ctx)
}

func (s *flakyStore) View(ctx context.Context, f func(audit.Reader) error) error {
	if s.failRead.Add(-1) >= 0 {
		return errDisk
	}
	return s.Store.View(ctx, f)
}

func (s *flakyStore) Lookup(ctx context.Context, keys []audit.EventKey) (map[audit.EventKey]*auditv1.Event, error) {
	if s.failLookup.Add(-1) >= 0 {
		return nil, errDisk
	}
	return s.Store.Lookup(ctx, keys)
}

func (s *flakyStore) Append(ctx context.Context, b audit.Batch) error {
	if s.failAppend.Add(-1) >= 0 {
		if s.commitThenFail.Load() {
			if err := s.Store.Append(ctx, b); err != nil {
				return err
			}
		}
		return errDisk
	}
	return s.Store.Append(ctx, b)
}

func TestAppendStoreFailure(t *testing.T) {
	for _, tc := range []struct {
		name           string
		fail           func(s *flakyStore)
		commitThenFail bool
		wantIDs        []string // stored, in order, after append a, failing append b, append c
	}{
		{"unavailable/append-fails", func(s *flakyStore) { s.failAppend.Store(1) }, false, []string{"a", "c"}},
		{"unavailable/append-commits-then-fails", func(s *flakyStore) { s.failAppend.Store(1) }, true, []string{"a", "b", "c"}},
		{"unavailable/resync-read-fails-after-failure", func(s *flakyStore) { s.failAppend.Store(1); s.failRead.Store(1) }, false, []string{"a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			store := &flakyStore{Store: memstore.New()}
			store.commitThenFail.Store(tc.commitThenFail)
			log := audittest.OpenLog(t, store)
			if _, err := log.Append(ctx, broker, events("a")); err != nil {
				t.Fatalf("Append a: %v", err)
			}
			tc.fail(store)
			res, err := log.Append(ctx, broker, events("b"))
			if domainerr.CodeOf(err) != domainerr.Unavailable || res != nil {
				t.Fatalf("Append b on a failing store = %v, %v; want no results and Unavailable", res, err)
			}
			var de *domainerr.Error
			if errors.As(err, &de) && strings.Contains(de.Message, "fire") {
				t.Errorf("the caller-facing message leaks the store's error: %q", de.Message)
			}
			if !errors.Is(err, errDisk) {
				t.Errorf("the cause is lost: %v", err)
			}
			// The next append finds the true head: no gap, no collision.
			_, _ = log.Append(ctx, broker, events("c"))
			var got []string
			for i, e := range readAll(t, store) {
				if e.GetSequence() != uint64(i) {
					t.Errorf("stored event %d has sequence %d", i, e.GetSequence())
				}
				got = append(got, e.GetId())
			}
			if diff := cmp.Diff(got, tc.wantIDs); diff != "" {
				t.Errorf("stored ids mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestQueryValidation(t *testing.T) {
	log := audittest.OpenLog(t, memstore.New())
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		f    audit.Filter
		want string
	}{
		{"invalid/negative-page-size", audit.Filter{PageSize: -1}, "page_size: must be 0 to 1000, got -1"},
		{"invalid/page-size-too-big", audit.Filter{PageSize: 1001}, "page_size: must be 0 to 1000, got 1001"},
		{"invalid/end-before-start", audit.Filter{Start: t0, End: t0.Add(-time.Nanosecond)}, "end_time: before start_time"},
		{"invalid/page-token", audit.Filter{PageToken: "garbage"}, "page_token: malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := log.Query(context.Background(), tc.f)
			var got domainerr.Error
			if e := (*domainerr.Error)(nil); errors.As(err, &e) {
				got = *e
			}
			if diff := cmp.Diff(got, domainerr.Error{Code: domainerr.Invalid, Message: tc.want}); diff != "" {
				t.Errorf("Query error mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestQueryDefaults(t *testing.T) {
	ctx := context.Background()
	log := audittest.OpenLog(t, memstore.New())
	batch := make([]*auditv1.Event, 150)
	for i := range batch {
		batch[i] = event(fmt.Sprint(i))
	}
	if _, err := log.Append(ctx, broker, batch); err != nil {
		t.Fatalf("Append: %v", err)
	}
	page, err := log.Query(ctx, audit.Filter{Kinds: []auditv1.Kind{auditv1.Kind_KIND_UNSPECIFIED}})
	if err != nil {
		t.Fatalf("Query: %v", err)
	}
	if len(page.Events) != audit.DefaultPageSize || page.NextPageToken == "" {
		t.Errorf("Query with page_size 0 and kind UNSPECIFIED = %d events, next %q; want %d and a token", len(page.Events), page.NextPageToken, audit.DefaultPageSize)
	}
}

// subscriber runs Log.Subscribe in the background and exposes what it got.
type subscriber struct {
	events chan *auditv1.Event
	done   chan error
	cancel context.CancelFunc
}

func subscribe(t *testing.T, log *audit.Log, from uint64, kinds ...auditv1.Kind) *subscriber {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &subscriber{events: make(chan *auditv1.Event, 1024), done: make(chan error, 1), cancel: cancel}
	go func() {
		s.done <- log.Subscribe(ctx, from, kinds, func(e *auditv1.Event) error {
			s.events <- e
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-s.done
	})
	return s
}

// next returns the ids of the next n events, failing after a deadline.
func (s *subscriber) next(t *testing.T, n int) []string {
	t.Helper()
	var ids []string
	deadline := time.After(10 * time.Second)
	for len(ids) < n {
		select {
		case e := <-s.events:
			ids = append(ids, e.GetId())
		case <-deadline:
			t.Fatalf("got %v, then nothing for 10s; want %d events", ids, n)
		}
	}
	return ids
}

func (s *subscriber) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.done:
		s.done <- err // for the cleanup
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("Subscribe did not return")
		return nil
	}
}

func TestSubscribeStoredThenLive(t *testing.T) {
	ctx := context.Background()
	log := audittest.OpenLog(t, memstore.New())
	if _, err := log.Append(ctx, broker, events("s0", "s1", "s2")); err != nil {
		t.Fatalf("Append: %v", err)
	}
	sub := subscribe(t, log, 1)
	if diff := cmp.Diff(sub.next(t, 2), []string{"s1", "s2"}); diff != "" {
		t.Errorf("stored events mismatch (-got +want):\n%s", diff)
	}
	for _, id := range []string{"l0", "l1", "l2"} {
		if _, err := log.Append(ctx, broker, events(id)); err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
	if diff := cmp.Diff(sub.next(t, 3), []string{"l0", "l1", "l2"}); diff != "" {
		t.Errorf("live events mismatch (-got +want):\n%s", diff)
	}
	sub.cancel()
	if err := sub.wait(t); !errors.Is(err, context.Canceled) {
		t.Errorf("Subscribe after cancel = %v, want context.Canceled", err)
	}
}

func TestSubscribeCatchesUpManyAndFiltersKinds(t *testing.T) {
	ctx := context.Background()
	log := audittest.OpenLog(t, memstore.New())
	batch := make([]*auditv1.Event, 700)
	var wantDenials []string
	for i := range batch {
		batch[i] = event(fmt.Sprint(i))
		if i%7 == 0 {
			batch[i].Kind = auditv1.Kind_KIND_KEY_DECRYPT
			wantDenials = append(wantDenials, fmt.Sprint(i))
		}
	}
	if _, err := log.Append(ctx, broker, batch); err != nil {
		t.Fatalf("Append: %v", err)
	}
	all := subscribe(t, log, 0)
	if got := all.next(t, 700); got[0] != "0" || got[699] != "699" {
		t.Errorf("catch-up got %s..%s, want 0..699", got[0], got[699])
	}
	decrypts := subscribe(t, log, 0, auditv1.Kind_KIND_KEY_DECRYPT)
	if diff := cmp.Diff(decrypts.next(t, len(wantDenials)), wantDenials); diff != "" {
		t.Errorf("filtered events mismatch (-got +want):\n%s", diff)
	}
}

func TestSubscribeEnds(t *testing.T) {
	ctx := context.Background()
	errGone := errors.New("client gone")
	t.Run("send-error", func(t *testing.T) {
		log := audittest.OpenLog(t, memstore.New())
		if _, err := log.Append(ctx, broker, events("a")); err != nil {
			t.Fatalf("Append: %v", err)
		}
		err := log.Subscribe(ctx, 0, nil, func(*auditv1.Event) error { return errGone })
		if !errors.Is(err, errGone) {
			t.Errorf("Subscribe = %v, want the send error", err)
		}
	})
	t.Run("log-closed", func(t *testing.T) {
		log := audittest.OpenLog(t, memstore.New())
		sub := subscribe(t, log, 0)
		if err := log.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := sub.wait(t); domainerr.CodeOf(err) != domainerr.Unavailable {
			t.Errorf("Subscribe after Close = %v, want Unavailable", err)
		}
		if _, err := log.Append(ctx, broker, events("late")); domainerr.CodeOf(err) != domainerr.Unavailable {
			t.Errorf("Append after Close = %v, want Unavailable", err)
		}
	})
}

// TestBackpressure holds the committer inside one commit and sends two
// more appends into a queue that has room for one event: exactly one of
// them is refused at once with ResourceExhausted and retry advice and
// records nothing; the other waits and is acknowledged once the store
// moves again. No timing: the refusal is the first answer to arrive,
// because the queued append cannot be answered while the store is held.
func TestBackpressure(t *testing.T) {
	ctx := context.Background()
	store := audittest.NewBlockingStore(t, memstore.New())
	log := audittest.OpenLog(t, store, audit.WithGroupCommit(1, 0, 0, 123*time.Millisecond))
	t.Cleanup(store.Unblock) // before the log closes, even if the test fails early

	firstDone := make(chan error, 1)
	go func() { _, err := log.Append(ctx, broker, events("first")); firstDone <- err }()
	<-store.Entered // the committer is stuck in the store with "first"

	type answer struct {
		id  string
		err error
	}
	answers := make(chan answer, 2)
	for _, id := range []string{"second", "third"} {
		go func() { _, err := log.Append(ctx, broker, events(id)); answers <- answer{id, err} }()
	}
	refused := <-answers
	var de *domainerr.Error
	if !errors.As(refused.err, &de) || de.Code != domainerr.ResourceExhausted || de.RetryAfter != 123*time.Millisecond {
		t.Fatalf("first answer while the store is held: %s = %v, want ResourceExhausted with RetryAfter 123ms", refused.id, refused.err)
	}
	store.Unblock()
	if err := <-firstDone; err != nil {
		t.Errorf("first append: %v", err)
	}
	if queued := <-answers; queued.err != nil {
		t.Errorf("queued append %s: %v", queued.id, queued.err)
	}
	for _, e := range readAll(t, store) {
		if e.GetId() == refused.id {
			t.Errorf("the refused event %s was stored", refused.id)
		}
	}
}
