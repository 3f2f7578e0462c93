package auditclient_test

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// TestBatchSpanLinks checks the documented tracing choice: an Append RPC's
// "audit.append_batch" span is the child of its first request's span and
// links to the other requests it carries, each of which links back.
func TestBatchSpanLinks(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })
	tracer := tp.Tracer("test")

	f := &fakeAudit{entered: make(chan struct{}, 100), gate: make(chan struct{})}
	c := serve(t, f)
	appendAs := func(name string) error {
		ctx, span := tracer.Start(context.Background(), name)
		defer span.End()
		_, err := c.Append(ctx, ev(name))
		return err
	}
	first := make(chan error, 1)
	go func() { first <- appendAs("req-first") }()
	<-f.entered
	const n = 3
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := appendAs(fmt.Sprint("req-", i)); err != nil {
				t.Errorf("req-%d: %v", i, err)
			}
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.Queued() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d events queued", c.Queued(), n)
		}
		runtime.Gosched()
	}
	close(f.gate)
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatal(err)
	}

	names := map[string]string{}
	backLinks := map[string][]string{} // batch span id -> requests linking to it
	type batch struct {
		Parent string
		Links  []string
		id     string
	}
	var batches []batch
	for _, s := range rec.Ended() {
		names[s.SpanContext().SpanID().String()] = s.Name()
	}
	for _, s := range rec.Ended() {
		if s.Name() == "audit.append_batch" {
			b := batch{Parent: names[s.Parent().SpanID().String()], id: s.SpanContext().SpanID().String()}
			for _, l := range s.Links() {
				b.Links = append(b.Links, names[l.SpanContext.SpanID().String()])
			}
			sort.Strings(b.Links)
			batches = append(batches, b)
			continue
		}
		for _, l := range s.Links() {
			backLinks[l.SpanContext.SpanID().String()] = append(backLinks[l.SpanContext.SpanID().String()], s.Name())
		}
	}
	sort.Slice(batches, func(i, j int) bool { return len(batches[i].Links) < len(batches[j].Links) })
	if len(batches) != 2 {
		t.Fatalf("%d batch spans, want 2", len(batches))
	}
	var got [][]string
	for _, b := range batches {
		back := backLinks[b.id]
		sort.Strings(back)
		got = append(got, append(append([]string{b.Parent}, b.Links...), fmt.Sprint("back:", back)))
	}
	second := got[1][0]
	var others []string
	for i := range n {
		if r := fmt.Sprint("req-", i); r != second {
			others = append(others, r)
		}
	}
	want := [][]string{
		{"req-first", "back:[]"},
		append(append([]string{second}, others...), fmt.Sprint("back:", others)),
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("batch spans (parent, links..., requests linking back) (-got +want):\n%s", diff)
	}
}
