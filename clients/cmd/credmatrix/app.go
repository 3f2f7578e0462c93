package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"time"

	"github.com/credmatrix/credmatrix/clients/brokerclient"
	"github.com/spf13/cobra"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit codes, distinct so scripts and CI steps can tell why a call failed.
const (
	exitOK          = 0
	exitError       = 1 // anything else (internal error, I/O)
	exitUsage       = 2 // bad flags or arguments, INVALID_ARGUMENT, a setup problem (address, CA, certificate)
	exitDenied      = 3 // the policy or a grant refused, or the token was rejected
	exitUnavailable = 4 // a service (or the audit log behind it) is down; retry later
)

// version is set by the linker (-X main.version=...) in release builds.
var version = "dev"

// versionString is the linker's version, or else the module version the
// binary was installed at (go install …/credmatrix@v0.1.0).
func versionString() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

type streams struct {
	in       io.Reader
	out, err io.Writer
}

// app holds what every subcommand shares: the streams, the environment and
// the connection settings.
type app struct {
	streams
	getenv func(string) string
	args   []string // the command line, for serve-credentials --background
	// now is the clock doctor checks certificates and tokens against
	// (time.Now when nil; tests set it).
	now func() time.Time

	brokerAddr, keyguardAddr, auditAddr string
	caFile, certFile, keyFile           string
	devPlaintext                        bool
	// zones are the audit commands' residency-zone logs (audit_zones.go).
	zones zoneFlags

	// started is set once a command's own code runs: an error before
	// that (unknown command, bad arguments) is a usage error.
	started bool

	// tp makes this command's spans (nil for `dev`, which runs services
	// on the global provider); span is the command's root span.
	tp   *sdktrace.TracerProvider
	span trace.Span
}

// usageError marks errors caused by the caller's input.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func run(ctx context.Context, args []string, s streams, getenv func(string) string) int {
	return (&app{streams: s, getenv: getenv, args: args}).execute(ctx, args)
}

// execute runs the command line and returns the exit code.
func (a *app) execute(ctx context.Context, args []string) int {
	s := a.streams
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(s.in)
	root.SetOut(s.out)
	root.SetErr(s.err)
	err := root.ExecuteContext(ctx)
	if err != nil && !a.started {
		// Cobra refused the command line before any command ran:
		// an unknown command or arguments a command does not take.
		err = usageError{err}
	}
	a.endTrace(ctx, err)
	if err == nil {
		return exitOK
	}
	var child childExit
	if errors.As(err, &child) {
		return child.code
	}
	code, msg := classify(err)
	fmt.Fprintf(s.err, "credmatrix: %s\n", msg)
	return code
}

// classify maps an error to an exit code and a message for humans.
func classify(err error) (int, string) {
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage, err.Error()
	}
	var se *setupError
	if errors.As(err, &se) {
		return exitUsage, "configuration error: " + se.Error()
	}
	var ua *unavailableError
	if errors.As(err, &ua) {
		return exitUnavailable, "service unavailable (retry later): " + ua.Error()
	}
	var denied *brokerclient.DeniedError
	if errors.As(err, &denied) {
		msg := "access denied"
		if denied.Rule != "" {
			msg += " by rule " + denied.Rule
		}
		if denied.Reason != "" {
			msg += ": " + denied.Reason
		}
		if denied.AuditEventID != "" {
			msg += "\n  audit event: " + denied.AuditEventID
		}
		if denied.Hint != "" {
			msg += "\n  reproduce locally: " + denied.Hint
		}
		return exitDenied, msg
	}
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.InvalidArgument, codes.OutOfRange, codes.FailedPrecondition:
			return exitUsage, "invalid request: " + flagNamesIn(st.Message())
		case codes.PermissionDenied, codes.Unauthenticated:
			return exitDenied, "access denied: " + st.Message()
		case codes.Unavailable, codes.ResourceExhausted, codes.DeadlineExceeded, codes.Aborted:
			return exitUnavailable, "service unavailable (retry later): " + st.Message()
		case codes.NotFound:
			return exitError, "not found: " + st.Message()
		default:
			return exitError, st.Code().String() + ": " + st.Message()
		}
	}
	return exitError, err.Error()
}

func (a *app) env(name, def string) string {
	if v := a.getenv(name); v != "" {
		return v
	}
	return def
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "credmatrix",
		Short: "Short-lived AWS credentials, envelope encryption and a tamper-evident audit log",
		Long: `credmatrix swaps a CI job's OIDC token for a scoped, short-lived AWS session
as a Git-reviewed trust policy allows, encrypts data by class and region, and
records every issuance, denial and key operation in a tamper-evident audit log.

Connection settings come from flags or environment variables
(CREDMATRIX_BROKER_ADDR, CREDMATRIX_KEYGUARD_ADDR, CREDMATRIX_AUDIT_ADDR,
CREDMATRIX_CA_FILE, CREDMATRIX_CERT_FILE, CREDMATRIX_KEY_FILE).
CI runners and apps call the broker's and keyguard's public listeners with
only the CA bundle: the OIDC token is the credential, no client certificate
is needed. The client certificate is for operators on the mTLS service
ports (keyguard grants and rotation, audit queries).
'credmatrix-dev' starts a local stack and prints them.

Each command is one trace (root span "credmatrix <command>") that follows
the request through broker or keyguard to audit; the audit event records its
trace id (credmatrix audit query --trace-id). Spans are exported over OTLP
only when the standard variables ask (OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_TRACES_EXPORTER=otlp, OTEL_EXPORTER_OTLP_PROTOCOL=grpc|http/protobuf).

Exit codes: 0 ok, 1 error, 2 bad usage, invalid request or a setup problem
(address, CA, certificate: 'credmatrix doctor' explains), 3 denied,
4 unavailable (retry later).`,
		Version:       versionString(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		a.started = true
		return a.startTrace(cmd)
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.brokerAddr, "broker-addr", a.env("CREDMATRIX_BROKER_ADDR", "127.0.0.1:7401"), "broker address (env CREDMATRIX_BROKER_ADDR)")
	pf.StringVar(&a.keyguardAddr, "keyguard-addr", a.env("CREDMATRIX_KEYGUARD_ADDR", "127.0.0.1:7402"), "keyguard address (env CREDMATRIX_KEYGUARD_ADDR)")
	pf.StringVar(&a.auditAddr, "audit-addr", a.env("CREDMATRIX_AUDIT_ADDR", "127.0.0.1:7403"), "audit address (env CREDMATRIX_AUDIT_ADDR)")
	pf.StringVar(&a.caFile, "ca-file", a.getenv("CREDMATRIX_CA_FILE"), "CA certificate (PEM) the services' certificates chain to (env CREDMATRIX_CA_FILE)")
	pf.StringVar(&a.certFile, "cert-file", a.getenv("CREDMATRIX_CERT_FILE"), "client certificate (PEM) for the mTLS service ports; not needed on the public listeners (env CREDMATRIX_CERT_FILE)")
	pf.StringVar(&a.keyFile, "key-file", a.getenv("CREDMATRIX_KEY_FILE"), "client key (PEM) for mTLS (env CREDMATRIX_KEY_FILE)")
	pf.BoolVar(&a.devPlaintext, "dev-plaintext", a.getenv("CREDMATRIX_DEV_PLAINTEXT") == "true", "connect without TLS (loopback only; development)")

	root.AddCommand(a.credsCommand(), a.serveCredentialsCommand(), a.encryptCommand(), a.decryptCommand(), a.keyguardCommand(), a.auditCommand(), a.policyCommand(), a.doctorCommand(), a.adminCommand(), a.rolesCommand())
	refuseUnknownSubcommands(root)
	return root
}

// parsePairs parses repeated k=v flags into a map.
func parsePairs(flag string, pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, usagef("--%s %q: want key=value", flag, p)
		}
		if _, dup := m[k]; dup {
			return nil, usagef("--%s: key %q given twice", flag, k)
		}
		m[k] = v
	}
	return m, nil
}
