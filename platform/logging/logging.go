// Package logging builds the JSON go-hclog loggers every credmatrix service
// uses and ties log lines to traces, so that an operator can jump from a log
// line to its trace and back.
package logging

import (
	"context"
	"io"
	"strings"

	"github.com/hashicorp/go-hclog"
	"go.opentelemetry.io/otel/trace"
)

// New returns a JSON logger named name writing to w at level ("trace",
// "debug", "info", "warn", "error"; case-insensitive). Each line carries an
// RFC 3339 timestamp with microseconds. An unknown level falls back to info
// and says so in the first line, rather than failing start-up over a typo or
// silently logging nothing.
func New(w io.Writer, name, level string) hclog.Logger {
	lvl := hclog.LevelFromString(strings.TrimSpace(level))
	unknown := lvl == hclog.NoLevel
	if unknown {
		lvl = hclog.Info
	}
	l := hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      lvl,
		Output:     w,
		JSONFormat: true,
		TimeFormat: hclog.TimeFormatJSON,
	})
	if unknown && level != "" {
		l.Warn("unknown log level, using info", "level", level)
	}
	return l
}

// WithTrace returns l with trace_id and span_id fields taken from the
// OpenTelemetry span in ctx, or l itself when ctx carries no valid span
// context (so callers can use it unconditionally).
func WithTrace(ctx context.Context, l hclog.Logger) hclog.Logger {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return l
	}
	return l.With("trace_id", sc.TraceID().String(), "span_id", sc.SpanID().String())
}
