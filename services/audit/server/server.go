// Package server assembles the audit service: SQLite store, log, gRPC API
// and the shared gRPC server plumbing. cmd/audit runs it; the local stack
// and end-to-end tests start it in-process.
package server

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/credmatrix/credmatrix/platform/config"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/grpcapi"
	"github.com/credmatrix/credmatrix/services/audit/sqlite"
	"github.com/hashicorp/go-hclog"
)

// Config is the whole configuration of the audit service.
type Config struct {
	Server           grpcserver.Config `cfg:"server"`
	DBPath           string            `cfg:"db_path" help:"SQLite database file of the audit log (created when missing)"`
	AppendPrincipals []string          `cfg:"append_principals" help:"mTLS identities (certificate URI SANs) allowed to append: the broker and keyguard"`
	ReadPrincipals   []string          `cfg:"read_principals" help:"mTLS identities allowed to query and subscribe: operators"`
	LogLevel         string            `cfg:"log_level" help:"trace, debug, info, warn or error"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	c := Config{Server: grpcserver.DefaultConfig(), DBPath: "credmatrix-audit.db", LogLevel: "info"}
	c.Server.ListenAddr = "127.0.0.1:7403"
	return c
}

// Validate checks the fields the audit service adds; Server validates
// itself.
func (c Config) Validate() error {
	var errs []error
	if c.DBPath == "" {
		errs = append(errs, &config.FieldError{Field: "db_path", Msg: "required"})
	}
	// With TLS on, an empty list would let any certificate the CA signed
	// write to (or read) the log: refuse rather than guess.
	if !c.Server.DevPlaintext {
		if len(c.AppendPrincipals) == 0 {
			errs = append(errs, &config.FieldError{Field: "append_principals", Msg: "required with TLS: name the broker's and keyguard's certificate identities"})
		}
		if len(c.ReadPrincipals) == 0 {
			errs = append(errs, &config.FieldError{Field: "read_principals", Msg: "required with TLS: name the operators' certificate identities"})
		}
	}
	return errors.Join(errs...)
}

// Server is a running audit service.
type Server struct {
	grpc  *grpcserver.Server
	log   *audit.Log
	store *sqlite.Store
}

// New opens the store and starts listening. Serve starts answering.
func New(ctx context.Context, cfg Config, logger hclog.Logger, opts ...grpcserver.Option) (*Server, error) {
	if err := errors.Join(cfg.Validate(), cfg.Server.Validate()); err != nil {
		return nil, err
	}
	store, err := sqlite.Open(ctx, cfg.DBPath)
	if err != nil {
		return nil, fmt.Errorf("open audit store %s: %w", cfg.DBPath, err)
	}
	log := audit.NewLog(store)
	gs, err := grpcserver.New(cfg.Server, logger, opts...)
	if err != nil {
		store.Close()
		return nil, err
	}
	auditv1.RegisterAuditServiceServer(gs.GRPC(), grpcapi.New(log,
		grpcapi.WithIdentity(grpcserver.PeerIdentity),
		grpcapi.WithAppendPrincipals(cfg.AppendPrincipals),
		grpcapi.WithReadPrincipals(cfg.ReadPrincipals),
		grpcapi.WithLogger(logger),
	))
	return &Server{grpc: gs, log: log, store: store}, nil
}

// Addr is where the service listens.
func (s *Server) Addr() net.Addr { return s.grpc.Addr() }

// Serve answers until ctx is cancelled, then ends open subscriptions, drains
// in-flight appends and closes the store.
func (s *Server) Serve(ctx context.Context) error {
	serveCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	go func() {
		<-ctx.Done()
		// Subscribe streams never end by themselves: end them so the
		// graceful stop does not wait for its whole drain timeout.
		s.log.Close()
		cancel()
	}()
	err := s.grpc.Serve(serveCtx)
	return errors.Join(err, s.store.Close())
}

// Stop stops at once: in-flight RPCs are cancelled. Tests use it to take
// audit down under the other services.
func (s *Server) Stop() {
	s.log.Close()
	s.grpc.Stop()
	s.store.Close()
}
