// Package audittest helps tests build audit logs: a fresh checkpoint
// signer and a Log that is closed when the test ends.
package audittest

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	"github.com/credmatrix/credmatrix/platform/benchload"
	"github.com/credmatrix/credmatrix/services/audit"
)

// Origin is the log origin of signers made by NewSigner.
const Origin = "test.credmatrix.local/audit"

// NewSigner returns a signer with a fresh Ed25519 key named Origin.
func NewSigner(t testing.TB) *checkpoint.Signer {
	t.Helper()
	skey, _, err := checkpoint.GenerateKey(Origin)
	if err != nil {
		t.Fatal(err)
	}
	s, err := checkpoint.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// OpenLog opens a Log over store and closes it when the test ends.
func OpenLog(t testing.TB, store audit.Store, opts ...audit.Option) *audit.Log {
	t.Helper()
	l, err := audit.Open(context.Background(), store, opts...)
	if err != nil {
		t.Fatalf("audit.Open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// RunAppendBenchmark appends b.N single-event batches to log from callers
// goroutines and reports events/s and the p50/p99 latency of one Append.
func RunAppendBenchmark(b *testing.B, log *audit.Log, callers int) {
	b.Helper()
	ctx := context.Background()
	lat := make([][]time.Duration, callers)
	var wg sync.WaitGroup
	var ru0 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	start := time.Now()
	for c := range callers {
		n := b.N / callers
		if c < b.N%callers {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := make([]time.Duration, 0, n)
			for i := range n {
				e := BenchEvent(fmt.Sprintf("bench-%d-%d-%d", b.N, c, i))
				t0 := time.Now()
				if _, err := log.Append(ctx, "spiffe://credmatrix.dev/broker", []*auditv1.Event{e}); err != nil {
					b.Error(err)
					return
				}
				l = append(l, time.Since(t0))
			}
			lat[c] = l
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	var ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	ReportLatency(b, all, elapsed)
	// CPU per event (the whole process: callers, committer, indexer,
	// store), which a busy machine distorts less than events/s.
	cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
	if n := len(all); n > 0 {
		b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-us/event")
	}
	b.ReportMetric(float64(log.IndexLag()), "index-lag-events")
}

// ReportLatency reports events/s over elapsed and the p50/p99 of lat, in ms.
func ReportLatency(b *testing.B, lat []time.Duration, elapsed time.Duration) {
	benchload.Report(b, "events", len(lat), lat, elapsed)
	b.ReportMetric(0, "ns/op")
}

// BenchEvent is a realistic session-issue event as the broker sends it.
func BenchEvent(id string) *auditv1.Event {
	return &auditv1.Event{
		Id:       id,
		Time:     timestamppb.Now(),
		Kind:     auditv1.Kind_KIND_SESSION_ISSUE,
		Decision: auditv1.Decision_DECISION_ALLOW,
		Reason:   "allowed by rule ci-deploy-sandbox",
		Rule:     "ci-deploy-sandbox",
		TraceId:  "4bf92f3577b34da6a3ce929d0e0e4736",
		SpanId:   "00f067aa0ba902b7",
		Actor: &auditv1.Actor{
			Principal: "https://token.actions.githubusercontent.com#repo:acme/app:ref:refs/heads/main",
			Issuer:    "https://token.actions.githubusercontent.com",
			Subject:   "repo:acme/app:ref:refs/heads/main",
			Claims:    map[string]string{"repository": "acme/app", "ref": "refs/heads/main", "run_id": "123456"},
		},
		Detail: &auditv1.Event_Session{Session: &auditv1.SessionDetail{
			AccountId: "111111111111", AccountName: "sandbox", RoleName: "deploy", Region: "eu-west-1",
			RoleArn: "arn:aws:iam::111111111111:role/deploy", SessionId: "s-" + id, AccessKeyId: "ASIAEXAMPLE",
			Provider: "local",
		}},
		SecretRefs: []*auditv1.SecretRef{{Name: "session_token", HmacSha256: make([]byte, 32), KeyId: "hmac-1"}},
	}
}

// BlockingStore wraps a Store so that every Append waits until Unblock:
// Entered receives once for each Append that reached the store. A test
// holds the committer inside one commit with it and fills the queue
// behind that commit deterministically, without timing.
type BlockingStore struct {
	audit.Store
	// Entered receives when an Append reaches the store (buffered: a test
	// may ignore later ones).
	Entered chan struct{}

	release chan struct{}
	once    sync.Once
}

// NewBlockingStore returns store wrapped, blocked; it is unblocked when
// the test ends at the latest. A test that opens a Log on it after this
// call registers its own t.Cleanup(s.Unblock) too, so that it runs before
// the Log's Close.
func NewBlockingStore(t testing.TB, store audit.Store) *BlockingStore {
	s := &BlockingStore{Store: store, Entered: make(chan struct{}, 64), release: make(chan struct{})}
	t.Cleanup(s.Unblock)
	return s
}

// Append waits until Unblock, then appends.
func (s *BlockingStore) Append(ctx context.Context, b audit.Batch) error {
	select {
	case s.Entered <- struct{}{}:
	default:
	}
	<-s.release
	return s.Store.Append(ctx, b)
}

// Unblock lets every waiting and later Append through.
func (s *BlockingStore) Unblock() { s.once.Do(func() { close(s.release) }) }
