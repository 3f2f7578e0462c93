package main

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/credmatrix/credmatrix/platform/telemetry"
	"github.com/spf13/cobra"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// tracerName names the CLI's instrumentation scope.
const tracerName = "github.com/credmatrix/credmatrix/clients/cmd/credmatrix"

// traceShutdownTimeout bounds flushing the command's spans at exit, so an
// unreachable collector delays the CLI by at most this much.
const traceShutdownTimeout = 5 * time.Second

// spanFlags are the flags whose values become root-span attributes: they
// name what was asked for (never a secret), so a trace can be found by
// role, account, data class or region.
var spanFlags = []struct{ flag, attr string }{
	{"role", "credmatrix.role"},
	{"account", "credmatrix.account"},
	{"data-class", "credmatrix.data_class"},
	{"region", "credmatrix.region"},
}

// startTrace sets up this command's tracer provider (exporting over OTLP
// only when the OTEL_* variables ask) and starts its root span, named by
// the command ("credmatrix creds"), so one user action is one trace from
// the CLI through broker or keyguard to audit. `serve-credentials` gets no
// root span, so each request it serves is a trace of its own.
func (a *app) startTrace(cmd *cobra.Command) error {
	tp, err := telemetry.NewProvider(cmd.Context(), "credmatrix-cli", a.getenv)
	if err != nil {
		return usagef("%v", err)
	}
	a.tp = tp
	if cmd.CommandPath() == "credmatrix serve-credentials" {
		// A long-running server: each credential request is a trace of
		// its own (its client span is the root), not a child of one
		// span lasting hours.
		return nil
	}
	var attrs []attribute.KeyValue
	for _, f := range spanFlags {
		if fl := cmd.Flags().Lookup(f.flag); fl != nil && fl.Changed && fl.Value.Type() == "string" {
			attrs = append(attrs, attribute.String(f.attr, fl.Value.String()))
		}
	}
	ctx, span := tp.Tracer(tracerName).Start(cmd.Context(), cmd.CommandPath(),
		trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(attrs...))
	a.span = span
	cmd.SetContext(ctx)
	return nil
}

// endTrace ends the root span with the command's outcome (the exit code,
// never the error text, which may quote local input) and flushes.
func (a *app) endTrace(ctx context.Context, err error) {
	if a.span != nil {
		code := exitOK
		if err != nil {
			code, _ = classify(err)
			var child childExit
			if errors.As(err, &child) {
				code = child.code
			}
			a.span.SetStatus(otelcodes.Error, "exit "+strconv.Itoa(code))
		}
		a.span.SetAttributes(attribute.Int("credmatrix.exit_code", code))
		a.span.End()
	}
	if a.tp != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), traceShutdownTimeout)
		defer cancel()
		_ = a.tp.Shutdown(sctx)
	}
}
