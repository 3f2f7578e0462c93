package auditappend

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// TestBatchSpansLinkEveryRequest checks the documented tracing choice: a
// batch span is the child of its first caller's span and links to the
// others, and each of those links back to it.
func TestBatchSpansLinkEveryRequest(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })
	tracer := tp.Tracer("test")

	f := held()
	a := serve(t, f, WithConfig(Config{MaxEvents: 100, MaxInFlight: 1}))
	appendOne := func(name string) {
		ctx, span := tracer.Start(context.Background(), name)
		defer span.End()
		if _, err := a.Append(ctx, ev(name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); appendOne("req-first") }()
	<-f.entered
	for i := range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); appendOne(fmt.Sprint("req-", i)) }()
	}
	waitQueued(t, a, 4)
	close(f.gate)
	wg.Wait()
	// A batch span ends after its callers are answered: Close waits until
	// the appender has finished with every batch, spans included.
	if err := a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	names := map[string]string{} // span id -> name
	var batches []sdktrace.ReadOnlySpan
	reqLinks := map[string][]string{} // request name -> linked span ids
	for _, s := range rec.Ended() {
		names[s.SpanContext().SpanID().String()] = s.Name()
		if s.Name() == "audit.append_batch" {
			batches = append(batches, s)
			continue
		}
		for _, l := range s.Links() {
			reqLinks[s.Name()] = append(reqLinks[s.Name()], l.SpanContext.SpanID().String())
		}
	}
	// For each batch: the requests it covers (parent first, then links
	// sorted), and which requests link back to it.
	var got [][]string
	for _, bs := range batches {
		covered := []string{names[bs.Parent().SpanID().String()]}
		var linked []string
		for _, l := range bs.Links() {
			linked = append(linked, names[l.SpanContext.SpanID().String()])
		}
		sort.Strings(linked)
		covered = append(covered, linked...)
		var back []string
		for req, ids := range reqLinks {
			for _, id := range ids {
				if id == bs.SpanContext().SpanID().String() {
					back = append(back, req)
				}
			}
		}
		sort.Strings(back)
		if bs.Parent().TraceID() != bs.SpanContext().TraceID() {
			t.Errorf("batch span not in its first request's trace")
		}
		got = append(got, append(covered, fmt.Sprint("back:", back)))
	}
	sort.Slice(got, func(i, j int) bool { return len(got[i]) < len(got[j]) })
	if len(got) != 2 {
		t.Fatalf("got %d batch spans, want 2: %v", len(got), got)
	}
	// The second batch's parent is whichever request queued first.
	first := got[1][0]
	var others []string
	for i := range 4 {
		if n := fmt.Sprint("req-", i); n != first {
			others = append(others, n)
		}
	}
	want := [][]string{
		{"req-first", "back:[]"},
		append(append([]string{first}, others...), fmt.Sprint("back:", others)),
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("batch spans (parent, links..., requests linking back) (-got +want):\n%s", diff)
	}
}
