package grpcapi_test

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/platform/auditevent"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/audittest"
	"github.com/credmatrix/credmatrix/services/audit/grpcapi"
	"github.com/credmatrix/credmatrix/services/audit/memstore"
	"github.com/credmatrix/credmatrix/services/audit/sqlite"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

const (
	broker   = "spiffe://credmatrix.dev/broker"
	keyguard = "spiffe://credmatrix.dev/keyguard"
	operator = "spiffe://credmatrix.dev/operator/alice"
	evil     = "spiffe://credmatrix.dev/app/evil"

	// identityKey carries the test caller's identity; in production the
	// identity comes from the verified mTLS certificate instead.
	identityKey = "x-test-identity"
)

// identityFromMetadata stands in for the mTLS peer lookup.
func identityFromMetadata(ctx context.Context) (string, bool) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(identityKey); len(v) == 1 {
		return v[0], true
	}
	return "", false
}

func as(id string) context.Context {
	if id == "" {
		return context.Background()
	}
	return metadata.AppendToOutgoingContext(context.Background(), identityKey, id)
}

type fixture struct {
	signer *checkpoint.Signer
	client auditv1.AuditServiceClient
	conn   *grpc.ClientConn
	store  *sqlite.Store
}

// newServer serves a Log over a real SQLite store on an in-memory
// connection.
func newServer(t *testing.T, opts ...grpcapi.Option) fixture {
	t.Helper()
	store, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "audit.db"))
	if err != nil {
		t.Fatalf("sqlite.Open: %v", err)
	}
	t.Cleanup(func() { store.Close() })
	signer := audittest.NewSigner(t)
	log := audittest.OpenLog(t, store, audit.WithSigner(signer), audit.WithGroupCommit(audit.MaxBatch, 0, 0, 0))
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	auditv1.RegisterAuditServiceServer(srv, grpcapi.New(log, opts...))
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	t.Cleanup(func() { log.Close() })
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return fixture{client: auditv1.NewAuditServiceClient(conn), conn: conn, store: store, signer: signer}
}

func secured(t *testing.T) fixture {
	return newServer(t,
		grpcapi.WithIdentity(identityFromMetadata),
		grpcapi.WithAppendPrincipals([]string{broker, keyguard}),
		grpcapi.WithReadPrincipals([]string{operator}))
}

var t0 = time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)

func event(id string, kind auditv1.Kind) *auditv1.Event {
	return &auditv1.Event{
		Id:       id,
		Time:     timestamppb.New(t0),
		Kind:     kind,
		Decision: auditv1.Decision_DECISION_ALLOW,
		Actor:    &auditv1.Actor{Principal: "https://token.actions.githubusercontent.com#repo:acme/app"},
	}
}

func ids(events []*auditv1.Event) []string {
	var out []string
	for _, e := range events {
		out = append(out, e.GetId())
	}
	return out
}

func TestAppendQuerySubscribe(t *testing.T) {
	f := secured(t)
	issue, encrypt := auditv1.Kind_KIND_SESSION_ISSUE, auditv1.Kind_KIND_KEY_ENCRYPT

	resp, err := f.client.Append(as(broker), &auditv1.AppendRequest{Events: []*auditv1.Event{
		event("e0", issue), event("e1", encrypt), event("e2", issue),
	}})
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	var seqs []uint64
	for _, r := range resp.GetResults() {
		seqs = append(seqs, r.GetSequence())
		if len(r.GetLeafHash()) != 32 {
			t.Errorf("result %s: leaf hash of %d bytes, want 32", r.GetId(), len(r.GetLeafHash()))
		}
	}
	if diff := cmp.Diff(seqs, []uint64{0, 1, 2}); diff != "" {
		t.Errorf("sequences mismatch (-got +want):\n%s", diff)
	}

	q, err := f.client.Query(as(operator), &auditv1.QueryRequest{Kinds: []auditv1.Kind{issue}})
	if err != nil {
		t.Fatalf("Query: %v", err)
	}
	if diff := cmp.Diff(ids(q.GetEvents()), []string{"e0", "e2"}); diff != "" || q.GetNextPageToken() != "" {
		t.Errorf("Query by kind: next page %q, ids mismatch (-got +want):\n%s", q.GetNextPageToken(), diff)
	}
	if got := q.GetEvents()[0].GetSourceService(); got != broker {
		t.Errorf("source_service = %q, want the appender's identity %q", got, broker)
	}

	page1, err := f.client.Query(as(operator), &auditv1.QueryRequest{PageSize: 2})
	if err != nil {
		t.Fatalf("Query page 1: %v", err)
	}
	page2, err := f.client.Query(as(operator), &auditv1.QueryRequest{PageSize: 2, PageToken: page1.GetNextPageToken()})
	if err != nil {
		t.Fatalf("Query page 2: %v", err)
	}
	if diff := cmp.Diff([][]string{ids(page1.GetEvents()), ids(page2.GetEvents())}, [][]string{{"e0", "e1"}, {"e2"}}); diff != "" {
		t.Errorf("pages mismatch (-got +want):\n%s", diff)
	}

	ctx, cancel := context.WithTimeout(as(operator), 10*time.Second)
	defer cancel()
	stream, err := f.client.Subscribe(ctx, &auditv1.SubscribeRequest{FromSequence: 1})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	recv := func(n int) []string {
		var got []string
		for range n {
			m, err := stream.Recv()
			if err != nil {
				t.Fatalf("Recv after %v: %v", got, err)
			}
			got = append(got, m.GetEvent().GetId())
		}
		return got
	}
	if diff := cmp.Diff(recv(2), []string{"e1", "e2"}); diff != "" {
		t.Errorf("stored events mismatch (-got +want):\n%s", diff)
	}
	if _, err := f.client.Append(as(keyguard), &auditv1.AppendRequest{Events: []*auditv1.Event{
		event("live0", encrypt), event("live1", encrypt),
	}}); err != nil {
		t.Fatalf("Append live: %v", err)
	}
	if diff := cmp.Diff(recv(2), []string{"live0", "live1"}); diff != "" {
		t.Errorf("live events mismatch (-got +want):\n%s", diff)
	}
}

func TestInvalidArgumentNamesField(t *testing.T) {
	f := newServer(t) // dev mode: anyone may call
	appendEvents := func(events ...*auditv1.Event) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := f.client.Append(ctx, &auditv1.AppendRequest{Events: events})
			return err
		}
	}
	query := func(req *auditv1.QueryRequest) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := f.client.Query(ctx, req)
			return err
		}
	}
	noKind := event("b", auditv1.Kind_KIND_UNSPECIFIED)
	big := event("big", auditv1.Kind_KIND_KEY_ENCRYPT)
	big.Reason = strings.Repeat("r", audit.MaxEventBytes)
	badTime := timestamppb.New(t0)
	badTime.Nanos = 2e9
	for _, tc := range []struct {
		name  string
		call  func(context.Context) error
		field string
	}{
		{"append/empty-batch", appendEvents(), "events"},
		{"append/missing-id", appendEvents(event("", auditv1.Kind_KIND_KEY_ENCRYPT)), "events[0].id"},
		{"append/missing-kind", appendEvents(event("a", auditv1.Kind_KIND_KEY_ENCRYPT), noKind), "events[1].kind"},
		{"append/oversized", appendEvents(big), "events[0]"},
		{"query/page-size-negative", query(&auditv1.QueryRequest{PageSize: -1}), "page_size"},
		{"query/page-size-too-big", query(&auditv1.QueryRequest{PageSize: 1001}), "page_size"},
		{"query/end-before-start", query(&auditv1.QueryRequest{StartTime: timestamppb.New(t0), EndTime: timestamppb.New(t0.Add(-time.Second))}), "end_time"},
		{"query/bad-start-time", query(&auditv1.QueryRequest{StartTime: badTime}), "start_time"},
		{"query/bad-end-time", query(&auditv1.QueryRequest{EndTime: badTime}), "end_time"},
		{"query/page-token", query(&auditv1.QueryRequest{PageToken: "nope"}), "page_token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := status.Convert(tc.call(context.Background()))
			if st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), tc.field+":") {
				t.Errorf("got %v %q, want InvalidArgument starting with %q", st.Code(), st.Message(), tc.field+":")
			}
		})
	}
}

func TestPermissions(t *testing.T) {
	f := secured(t)
	appendAs := func(id string) error {
		_, err := f.client.Append(as(id), &auditv1.AppendRequest{Events: []*auditv1.Event{event("p-"+id, auditv1.Kind_KIND_KEY_ENCRYPT)}})
		return err
	}
	queryAs := func(id string) error {
		_, err := f.client.Query(as(id), &auditv1.QueryRequest{})
		return err
	}
	subscribeAs := func(id string) error {
		stream, err := f.client.Subscribe(as(id), &auditv1.SubscribeRequest{})
		if err != nil {
			return err
		}
		_, err = stream.Recv()
		return err
	}
	checkpointAs := func(id string) error {
		_, err := f.client.GetCheckpoint(as(id), &auditv1.GetCheckpointRequest{})
		return err
	}
	for _, tc := range []struct {
		name string
		call func(id string) error
		id   string
		want codes.Code
	}{
		{"allow/append-by-broker", appendAs, broker, codes.OK},
		{"allow/append-by-keyguard", appendAs, keyguard, codes.OK},
		{"deny/append-by-unknown-identity", appendAs, evil, codes.PermissionDenied},
		{"deny/append-without-identity", appendAs, "", codes.PermissionDenied},
		{"deny/append-by-operator", appendAs, operator, codes.PermissionDenied},
		{"allow/query-by-operator", queryAs, operator, codes.OK},
		{"deny/query-by-broker", queryAs, broker, codes.PermissionDenied},
		{"deny/query-without-identity", queryAs, "", codes.PermissionDenied},
		{"deny/subscribe-by-broker", subscribeAs, broker, codes.PermissionDenied},
		{"deny/checkpoint-by-broker", checkpointAs, broker, codes.PermissionDenied},
		{"allow/checkpoint-by-operator", checkpointAs, operator, codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := status.Convert(tc.call(tc.id))
			if st.Code() != tc.want {
				t.Errorf("got %v %q, want %v", st.Code(), st.Message(), tc.want)
			}
			if tc.id != "" && strings.Contains(st.Message(), tc.id) {
				t.Errorf("message %q reveals the caller's identity", st.Message())
			}
		})
	}
}

func TestCheckpointAndProofs(t *testing.T) {
	f := newServer(t)
	ctx := context.Background()
	if _, err := f.client.GetCheckpoint(ctx, &auditv1.GetCheckpointRequest{}); status.Code(err) != codes.NotFound {
		t.Fatalf("GetCheckpoint of an empty log = %v, want NotFound", err)
	}
	var batch []*auditv1.Event
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		batch = append(batch, event(id, auditv1.Kind_KIND_KEY_ENCRYPT))
	}
	app, err := f.client.Append(ctx, &auditv1.AppendRequest{Events: batch})
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	cpResp, err := f.client.GetCheckpoint(ctx, &auditv1.GetCheckpointRequest{})
	if err != nil {
		t.Fatalf("GetCheckpoint: %v", err)
	}
	cp, err := f.signer.Verifier().Open(cpResp.GetSignedNote())
	if err != nil {
		t.Fatalf("the served checkpoint does not verify: %v", err)
	}
	if diff := cmp.Diff([]any{cp.Size, cp.Root, cpResp.GetTreeSize(), cpResp.GetOrigin(), cpResp.GetKeyId()},
		[]any{uint64(5), cpResp.GetRootHash(), uint64(5), audittest.Origin, f.signer.KeyID()}); diff != "" {
		t.Errorf("checkpoint (-got +want):\n%s", diff)
	}
	for i, r := range app.GetResults() {
		p, err := f.client.GetInclusionProof(ctx, &auditv1.GetInclusionProofRequest{Sequence: r.GetSequence()})
		if err != nil {
			t.Fatalf("GetInclusionProof(%d): %v", i, err)
		}
		if diff := cmp.Diff(p.GetLeafHash(), r.GetLeafHash()); diff != "" {
			t.Errorf("leaf %d hash (-got +want):\n%s", i, diff)
		}
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, r.GetSequence(), p.GetTreeSize(), r.GetLeafHash(), p.GetHashes(), cp.Root); err != nil {
			t.Errorf("inclusion of %d: %v", i, err)
		}
	}
	// A consistency proof from size 2 to 5, checked against the root at 2.
	incl, err := f.client.GetInclusionProof(ctx, &auditv1.GetInclusionProofRequest{Sequence: 0, TreeSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	root2, err := proof.RootFromInclusionProof(rfc6962.DefaultHasher, 0, 2, app.GetResults()[0].GetLeafHash(), incl.GetHashes())
	if err != nil {
		t.Fatal(err)
	}
	cons, err := f.client.GetConsistencyProof(ctx, &auditv1.GetConsistencyProofRequest{FirstSize: 2})
	if err != nil {
		t.Fatalf("GetConsistencyProof: %v", err)
	}
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, 2, cons.GetSecondSize(), cons.GetHashes(), root2, cp.Root); err != nil {
		t.Errorf("consistency 2 -> 5: %v", err)
	}

	for _, tc := range []struct {
		name  string
		call  func() error
		field string
	}{
		{"inclusion/sequence-beyond-size", func() error {
			_, err := f.client.GetInclusionProof(ctx, &auditv1.GetInclusionProofRequest{Sequence: 5})
			return err
		}, "sequence"},
		{"inclusion/size-beyond-log", func() error {
			_, err := f.client.GetInclusionProof(ctx, &auditv1.GetInclusionProofRequest{Sequence: 0, TreeSize: 6})
			return err
		}, "tree_size"},
		{"consistency/zero-first", func() error {
			_, err := f.client.GetConsistencyProof(ctx, &auditv1.GetConsistencyProofRequest{FirstSize: 0})
			return err
		}, "first_size"},
		{"consistency/first-after-second", func() error {
			_, err := f.client.GetConsistencyProof(ctx, &auditv1.GetConsistencyProofRequest{FirstSize: 4, SecondSize: 3})
			return err
		}, "first_size"},
		{"consistency/second-beyond-log", func() error {
			_, err := f.client.GetConsistencyProof(ctx, &auditv1.GetConsistencyProofRequest{FirstSize: 1, SecondSize: 99})
			return err
		}, "second_size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := status.Convert(tc.call())
			if st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), tc.field+":") {
				t.Errorf("got %v %q, want InvalidArgument naming %s", st.Code(), st.Message(), tc.field)
			}
		})
	}
}

// TestOverloadIsResourceExhaustedWithRetryInfo holds the committer inside
// one commit (a blocking store) behind a queue with room for one event,
// then sends two appends: the first answer is RESOURCE_EXHAUSTED with a
// RetryInfo delay (the queued append cannot be answered while the store is
// held), and the queued one succeeds once the store moves. The overload is
// made to happen; the test never depends on timing.
func TestOverloadIsResourceExhaustedWithRetryInfo(t *testing.T) {
	store := audittest.NewBlockingStore(t, memstore.New())
	log := audittest.OpenLog(t, store, audit.WithGroupCommit(1, 0, 0, 75*time.Millisecond))
	t.Cleanup(store.Unblock) // before the log closes, even if the test fails early
	client := serveLog(t, log)
	ctx := context.Background()
	appendOne := func(id string) error {
		_, err := client.Append(ctx, &auditv1.AppendRequest{Events: []*auditv1.Event{event(id, auditv1.Kind_KIND_KEY_ENCRYPT)}})
		return err
	}

	first := make(chan error, 1)
	go func() { first <- appendOne("first") }()
	<-store.Entered // the committer holds "first" inside the store

	type answer struct {
		id  string
		err error
	}
	answers := make(chan answer, 2)
	for _, id := range []string{"second", "third"} {
		go func() { answers <- answer{id, appendOne(id)} }()
	}
	refused := <-answers
	st := status.Convert(refused.err)
	var delay time.Duration
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			delay = ri.GetRetryDelay().AsDuration()
		}
	}
	if st.Code() != codes.ResourceExhausted || delay != 75*time.Millisecond {
		t.Fatalf("first answer while the store is held: %s = %v %q with retry delay %v; want RESOURCE_EXHAUSTED with RetryInfo 75ms", refused.id, st.Code(), st.Message(), delay)
	}
	store.Unblock()
	if err := <-first; err != nil {
		t.Errorf("first append: %v", err)
	}
	if queued := <-answers; queued.err != nil {
		t.Errorf("queued append %s: %v", queued.id, queued.err)
	}
}

// serveLog serves log over an in-memory connection to an unauthenticated
// caller (dev mode: no principal lists).
func serveLog(t *testing.T, log *audit.Log) auditv1.AuditServiceClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	auditv1.RegisterAuditServiceServer(srv, grpcapi.New(log))
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return auditv1.NewAuditServiceClient(conn)
}

func TestStoreDownIsUnavailable(t *testing.T) {
	f := newServer(t)
	if err := f.store.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	_, err := f.client.Append(context.Background(), &auditv1.AppendRequest{Events: []*auditv1.Event{event("x", auditv1.Kind_KIND_KEY_ENCRYPT)}})
	st := status.Convert(err)
	if st.Code() != codes.Unavailable || strings.Contains(st.Message(), "sql") {
		t.Errorf("Append on a closed store = %v %q, want Unavailable without the store's error text", st.Code(), st.Message())
	}
	_, err = f.client.Query(context.Background(), &auditv1.QueryRequest{})
	if got := status.Code(err); got != codes.Unavailable {
		t.Errorf("Query on a closed store = %v, want Unavailable", got)
	}
}

func TestDevModeRecordsNoSource(t *testing.T) {
	f := newServer(t)
	if _, err := f.client.Append(context.Background(), &auditv1.AppendRequest{Events: []*auditv1.Event{event("dev", auditv1.Kind_KIND_AUDIT_ADMIN)}}); err != nil {
		t.Fatalf("Append: %v", err)
	}
	q, err := f.client.Query(context.Background(), &auditv1.QueryRequest{})
	if err != nil {
		t.Fatalf("Query: %v", err)
	}
	if diff := cmp.Diff(ids(q.GetEvents()), []string{"dev"}); diff != "" {
		t.Fatalf("ids mismatch (-got +want):\n%s", diff)
	}
	if got := q.GetEvents()[0].GetSourceService(); got != "" {
		t.Errorf("source_service = %q, want empty without an identity", got)
	}
}

// TestSubscribeResumesAfterDisconnect reads part of the log, drops the
// stream, appends more, and resumes from the last sequence seen plus one:
// nothing is lost or repeated.
func TestSubscribeResumesAfterDisconnect(t *testing.T) {
	f := newServer(t)
	bg := context.Background()
	appendIDs := func(ids ...string) {
		var batch []*auditv1.Event
		for _, id := range ids {
			batch = append(batch, event(id, auditv1.Kind_KIND_KEY_ENCRYPT))
		}
		if _, err := f.client.Append(bg, &auditv1.AppendRequest{Events: batch}); err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
	appendIDs("a", "b", "c", "d")
	ctx, cancel := context.WithCancel(bg)
	stream, err := f.client.Subscribe(ctx, &auditv1.SubscribeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var last uint64
	for range 2 {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		got = append(got, resp.GetEvent().GetId())
		last = resp.GetEvent().GetSequence()
	}
	cancel() // the client disconnects mid-stream
	appendIDs("e", "f")

	ctx2, cancel2 := context.WithCancel(bg)
	defer cancel2()
	stream, err = f.client.Subscribe(ctx2, &auditv1.SubscribeRequest{FromSequence: last + 1})
	if err != nil {
		t.Fatal(err)
	}
	for range 4 {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv after resume: %v", err)
		}
		got = append(got, resp.GetEvent().GetId())
	}
	if diff := cmp.Diff(got, []string{"a", "b", "c", "d", "e", "f"}); diff != "" {
		t.Errorf("events across the reconnect (-got +want):\n%s", diff)
	}
}

// TestAppendRefuseIndividually: a request that asks for refusals per event
// gets the bad event refused in its result (INVALID_ARGUMENT, naming the
// field, quoting nothing) and the rest recorded; a request that does not
// ask (an older client) keeps the whole-batch refusal.
func TestAppendRefuseIndividually(t *testing.T) {
	f := secured(t)
	jwt := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOmFjbWUvYXBwIn0.c2lnbmF0dXJlLWJ5dGVzLWhlcmUtYW5kLW1vcmU"
	bad := event("bad", auditv1.Kind_KIND_SESSION_ISSUE)
	bad.Reason = "ref " + jwt
	batch := []*auditv1.Event{event("ok1", auditv1.Kind_KIND_SESSION_ISSUE), bad, event("ok2", auditv1.Kind_KIND_SESSION_ISSUE)}

	_, err := f.client.Append(as(broker), &auditv1.AppendRequest{Events: batch})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), "events[1].reason: ") {
		t.Fatalf("Append without refuse_individually = %v, want the whole batch refused naming events[1].reason", err)
	}

	resp, err := f.client.Append(as(broker), &auditv1.AppendRequest{Events: batch, RefuseIndividually: true})
	if err != nil {
		t.Fatalf("Append with refuse_individually: %v", err)
	}
	type result struct {
		ID       string
		Sequence uint64
		Code     codes.Code
		Message  string
	}
	var got []result
	for _, r := range resp.GetResults() {
		got = append(got, result{r.GetId(), r.GetSequence(), codes.Code(r.GetRefusal().GetCode()), r.GetRefusal().GetMessage()})
	}
	want := []result{
		{ID: "ok1", Sequence: 0},
		{ID: "bad", Code: codes.InvalidArgument, Message: "events[1].reason: " + auditevent.ProblemSecret},
		{ID: "ok2", Sequence: 1},
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("results mismatch (-got +want):\n%s", diff)
	}
	if strings.Contains(resp.String(), jwt[:20]) {
		t.Error("the response quotes the refused event's content")
	}
	q, err := f.client.Query(as(operator), &auditv1.QueryRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ids(q.GetEvents()), []string{"ok1", "ok2"}); diff != "" {
		t.Errorf("stored ids mismatch (-got +want):\n%s", diff)
	}
}
