package logging_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/credmatrix/credmatrix/platform/logging"
)

// lines decodes every JSON line in buf.
func lines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func TestNewLevels(t *testing.T) {
	tests := []struct {
		name  string
		level string
		// want lists the @message of each line after logging one line per level.
		want []string
	}{
		{name: "debug", level: "debug", want: []string{"d", "i", "w", "e"}},
		{name: "info", level: "info", want: []string{"i", "w", "e"}},
		{name: "upper-case", level: "WARN", want: []string{"w", "e"}},
		{name: "error", level: "error", want: []string{"e"}},
		{name: "empty-means-info", level: "", want: []string{"i", "w", "e"}},
		{name: "unknown-means-info-and-says-so", level: "loud", want: []string{"unknown log level, using info", "i", "w", "e"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			l := logging.New(&buf, "test", tc.level)
			l.Debug("d")
			l.Info("i")
			l.Warn("w")
			l.Error("e")
			var got []string
			for _, m := range lines(t, &buf) {
				got = append(got, m["@message"].(string))
				for _, k := range []string{"@timestamp", "@level", "@module"} {
					if _, ok := m[k]; !ok {
						t.Errorf("line %v lacks %s", m, k)
					}
				}
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("messages mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestWithTrace(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	spanCtx, span := tp.Tracer("test").Start(context.Background(), "op")
	defer span.End()
	sc := span.SpanContext()

	tests := []struct {
		name string
		ctx  context.Context
		want map[string]any // expected trace fields; nil means none
	}{
		{
			name: "active-span",
			ctx:  spanCtx,
			want: map[string]any{"trace_id": sc.TraceID().String(), "span_id": sc.SpanID().String()},
		},
		{
			name: "no-span",
			ctx:  context.Background(),
			want: map[string]any{},
		},
		{
			name: "invalid-span-context",
			ctx:  trace.ContextWithSpanContext(context.Background(), trace.SpanContext{}),
			want: map[string]any{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			logging.WithTrace(tc.ctx, logging.New(&buf, "test", "info")).Info("hello")
			ls := lines(t, &buf)
			if len(ls) != 1 {
				t.Fatalf("got %d lines, want 1", len(ls))
			}
			got := map[string]any{}
			for _, k := range []string{"trace_id", "span_id"} {
				if v, ok := ls[0][k]; ok {
					got[k] = v
				}
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("trace fields mismatch (-got +want):\n%s", diff)
			}
		})
	}
}
