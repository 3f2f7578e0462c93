package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/telemetry"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// service describes one credmatrix service the CLI talks to.
type service struct {
	name    string // "broker", as said in messages
	grpc    string // its gRPC service name, for health checks
	flag    string // the address flag
	envAddr string // and its variable
}

var (
	brokerService   = service{"broker", "credmatrix.broker.v1.BrokerService", "--broker-addr", "CREDMATRIX_BROKER_ADDR"}
	keyguardService = service{"keyguard service", "credmatrix.keyguard.v1.KeyguardService", "--keyguard-addr", "CREDMATRIX_KEYGUARD_ADDR"}
	auditService    = service{"audit service", "credmatrix.audit.v1.AuditService", "--audit-addr", "CREDMATRIX_AUDIT_ADDR"}
	allServices     = []service{brokerService, keyguardService, auditService}
)

func (s service) flags() flagNames {
	return flagNames{
		service: s.name,
		addr:    s.flag + " (" + s.envAddr + ")",
		ca:      "--ca-file (CREDMATRIX_CA_FILE)",
		cert:    "--cert-file (CREDMATRIX_CERT_FILE)",
		key:     "--key-file (CREDMATRIX_KEY_FILE)",
	}
}

// setupError is a problem with the CLI's setup — an address, a CA, a
// certificate, a flag — found when a call failed. Retrying will not help,
// so it is not reported as "unavailable".
type setupError struct {
	svc     service
	addr    string
	problem string
	fix     string
}

func (e *setupError) Error() string {
	return fmt.Sprintf("cannot use the %s at %s: %s\n  fix: %s\n  (credmatrix doctor checks the whole setup)", e.svc.name, e.addr, e.problem, e.fix)
}

// unavailableError is a transient failure to reach a service, explained.
// It carries the UNAVAILABLE status, so clients still retry it.
type unavailableError struct {
	svc     service
	problem string
	st      *status.Status
}

func (e *unavailableError) Error() string {
	return fmt.Sprintf("the %s is unreachable: %s", e.svc.name, e.problem)
}

// GRPCStatus keeps the error retryable for brokerclient's retry loop.
func (e *unavailableError) GRPCStatus() *status.Status { return e.st }

// serviceOf names the service a method belongs to
// ("/credmatrix.audit.v1.AuditService/Query" is the audit service).
func serviceOf(method string) service {
	for _, s := range allServices {
		if strings.HasPrefix(method, "/"+s.grpc+"/") {
			return s
		}
	}
	return service{name: "service", grpc: strings.Split(strings.TrimPrefix(method, "/"), "/")[0], flag: "the address flag", envAddr: "CREDMATRIX_*_ADDR"}
}

func (a *app) clientConfig(addr string) grpcclient.Config {
	return grpcclient.Config{
		Target: addr, CAFile: a.caFile, CertFile: a.certFile, KeyFile: a.keyFile, DevPlaintext: a.devPlaintext,
	}
}

// dial connects to one service with the shared TLS settings. Failed calls
// on the connection are explained: a transport error is looked into once
// (probe) and becomes a *setupError when the setup is wrong, and a call to
// an address that serves another service says which one it is.
func (a *app) dial(addr string) (*grpc.ClientConn, error) {
	cfg := a.clientConfig(addr)
	if err := cfg.Validate(); err != nil {
		return nil, usageError{err}
	}
	d := &diagnoser{cfg: cfg}
	opts := []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(d.unary),
		grpc.WithChainStreamInterceptor(d.stream),
	}
	var conn *grpc.ClientConn
	var err error
	if a.tp != nil {
		conn, err = grpcclient.DialWithTracing(cfg, a.tp, telemetry.Propagator(), opts...)
	} else {
		conn, err = grpcclient.Dial(cfg, opts...)
	}
	if err != nil {
		return nil, usageError{fmt.Errorf("connect to %s: %w", addr, err)}
	}
	d.conn = conn
	return conn, nil
}

// diagnoser explains the failed calls of one connection.
type diagnoser struct {
	cfg  grpcclient.Config
	conn *grpc.ClientConn

	once sync.Once
	rep  probeReport
}

func (d *diagnoser) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if err == nil {
		return nil
	}
	return d.explain(ctx, serviceOf(method), err)
}

func (d *diagnoser) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, d.explain(ctx, serviceOf(method), err)
	}
	return &explainedStream{ClientStream: s, d: d, ctx: ctx, svc: serviceOf(method)}, nil
}

type explainedStream struct {
	grpc.ClientStream
	d   *diagnoser
	ctx context.Context
	svc service
}

func (s *explainedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err == nil || errors.Is(err, io.EOF) || s.ctx.Err() != nil {
		return err
	}
	return s.d.explain(s.ctx, s.svc, err)
}

// explain turns a transport failure or a wrong-service answer into an
// error that says what is wrong; anything else passes unchanged.
func (d *diagnoser) explain(ctx context.Context, svc service, err error) error {
	st, ok := status.FromError(err)
	if !ok || ctx.Err() != nil {
		return err
	}
	switch st.Code() {
	case codes.Unavailable:
		if !transportFailure(st.Message()) {
			return err // the service itself is answering "unavailable"
		}
		d.once.Do(func() {
			pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*probeTimeout)
			defer cancel()
			d.rep = probe(pctx, d.cfg, svc.flags(), time.Now)
		})
		switch {
		case d.rep.OK:
			return err
		case d.rep.Transient:
			return &unavailableError{svc: svc, problem: d.rep.Problem, st: st}
		}
		return &setupError{svc: svc, addr: d.cfg.Target, problem: d.rep.Problem, fix: d.rep.Fix}
	case codes.Unimplemented:
		if !strings.HasPrefix(st.Message(), "unknown service ") {
			return err
		}
		problem := fmt.Sprintf("this address does not serve the %s (%s)", svc.name, st.Message())
		if other := d.identify(ctx); other != "" {
			problem = fmt.Sprintf("this address is the %s, not the %s", other, svc.name)
		}
		return &setupError{svc: svc, addr: d.cfg.Target, problem: problem, fix: "set " + svc.flag + " (" + svc.envAddr + ") to the " + svc.name + "'s address"}
	}
	return err
}

// identify asks the health service which credmatrix service answers on
// the connection ("" when none says so).
func (d *diagnoser) identify(ctx context.Context) string {
	if d.conn == nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), probeTimeout)
	defer cancel()
	return identifyService(ctx, d.conn)
}

func identifyService(ctx context.Context, conn grpc.ClientConnInterface) string {
	hc := healthpb.NewHealthClient(conn)
	for _, s := range allServices {
		if r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: s.grpc}); err == nil && r.GetStatus() != healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
			return s.name
		}
	}
	return ""
}

// transportFailure tells gRPC's own transport errors ("connection error:
// …", a reset, a preface that never came) from an UNAVAILABLE a service
// returned on purpose ("audit log unavailable; …").
func transportFailure(msg string) bool {
	for _, s := range []string{"connection error", "transport", "error reading server preface", "broken pipe", "connection reset", "EOF", "connection closed", "handshake"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
