// Package server assembles the broker: trust policy, OIDC verifier, the
// local STS provider, the audit client and the gRPC API on the shared
// server plumbing. cmd/broker runs it; the local stack and end-to-end tests
// start it in-process.
package server

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/credmatrix/credmatrix/platform/auditsink"
	"github.com/credmatrix/credmatrix/platform/config"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	"github.com/credmatrix/credmatrix/platform/keyfile"
	"github.com/credmatrix/credmatrix/platform/logging"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/credmatrix/credmatrix/services/broker"
	"github.com/credmatrix/credmatrix/services/broker/grpcapi"
	"github.com/credmatrix/credmatrix/services/broker/localsts"
	"github.com/credmatrix/credmatrix/services/broker/oidc"
	"github.com/credmatrix/credmatrix/services/broker/policy"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
)

// LocalSTSConfig configures the local provider.
type LocalSTSConfig struct {
	SigningKeyFile string `cfg:"signing_key_file" help:"file holding the 32-byte hex key that signs local session tokens"`
}

// Config is the whole configuration of the broker.
type Config struct {
	Server           grpcserver.Config `cfg:"server"`
	PolicyFile       string            `cfg:"policy_file" help:"trust policy YAML (issuers, accounts, roles, rules)"`
	Audit            grpcclient.Config `cfg:"audit"`
	AuditHMACKeyFile string            `cfg:"audit_hmac_key_file" help:"file holding the 32-byte hex key of the HMACs that name secrets in audit events"`
	Provider         string            `cfg:"provider" help:"STS provider: local"`
	LocalSTS         LocalSTSConfig    `cfg:"local_sts"`
	LogLevel         string            `cfg:"log_level" help:"trace, debug, info, warn or error"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	c := Config{Server: grpcserver.DefaultConfig(), Provider: "local", LogLevel: "info"}
	c.Server.ListenAddr = "127.0.0.1:7401"
	c.Audit.Target = "127.0.0.1:7403"
	return c
}

// Validate checks the fields the broker adds; nested configs validate
// themselves.
func (c Config) Validate() error {
	var errs []error
	req := func(field, val, msg string) {
		if val == "" {
			errs = append(errs, &config.FieldError{Field: field, Msg: msg})
		}
	}
	req("policy_file", c.PolicyFile, "required: the trust policy")
	req("audit.target", c.Audit.Target, "required: the broker records every issuance before returning it")
	req("audit_hmac_key_file", c.AuditHMACKeyFile, "required")
	switch c.Provider {
	case "local":
		req("local_sts.signing_key_file", c.LocalSTS.SigningKeyFile, "required with provider local")
	default:
		errs = append(errs, &config.FieldError{Field: "provider", Msg: fmt.Sprintf("unknown provider %q (want local)", c.Provider)})
	}
	return errors.Join(errs...)
}

// Server is a running broker.
type Server struct {
	grpc  *grpcserver.Server
	audit *grpc.ClientConn
}

// New loads the policy and keys, connects to audit and starts listening.
func New(ctx context.Context, cfg Config, log hclog.Logger, opts ...grpcserver.Option) (*Server, error) {
	if err := errors.Join(cfg.Validate(), cfg.Server.Validate(), cfg.Audit.Validate()); err != nil {
		return nil, err
	}
	pol, err := policy.Load(cfg.PolicyFile)
	if err != nil {
		return nil, err
	}
	var issuers []oidc.IssuerConfig
	for _, is := range pol.Issuers() {
		issuers = append(issuers, oidc.IssuerConfig{URL: is.URL, Audiences: is.Audiences})
	}
	verifier, err := oidc.NewVerifier(ctx, issuers)
	if err != nil {
		return nil, fmt.Errorf("oidc verifier: %w", err)
	}
	hmacKey, err := keyfile.Read(cfg.AuditHMACKeyFile, auditsink.MinKeyBytes)
	if err != nil {
		return nil, fmt.Errorf("audit_hmac_key_file: %w", err)
	}
	hasher, err := auditsink.NewHasher(hmacKey)
	if err != nil {
		return nil, err
	}
	stsKey, err := keyfile.Read(cfg.LocalSTS.SigningKeyFile, localsts.KeySize)
	if err != nil {
		return nil, fmt.Errorf("local_sts.signing_key_file: %w", err)
	}
	provider, err := localsts.New(stsKey)
	if err != nil {
		return nil, err
	}
	// grpc.NewClient connects lazily: an audit service that is down now
	// makes requests fail UNAVAILABLE, not the start-up.
	auditConn, err := grpcclient.Dial(cfg.Audit)
	if err != nil {
		return nil, fmt.Errorf("audit client: %w", err)
	}
	svc, err := broker.New(broker.Config{
		Policy: pol, Verifier: verifier, Provider: provider, Auditor: auditsink.New(auditConn), Hasher: hasher,
	})
	if err != nil {
		auditConn.Close()
		return nil, err
	}
	gs, err := grpcserver.New(cfg.Server, log, opts...)
	if err != nil {
		auditConn.Close()
		return nil, err
	}
	brokerv1.RegisterBrokerServiceServer(gs.GRPC(), grpcapi.New(svc,
		grpcapi.WithIdentity(grpcserver.PeerIdentity),
		grpcapi.WithErrorHandler(func(ctx context.Context, err error) {
			logging.WithTrace(ctx, log).Warn("request failed", "error", err)
		}),
	))
	log.Info("trust policy loaded", "file", cfg.PolicyFile, "sha256", pol.SHA256(), "rules", len(pol.Rules()), "provider", provider.Name())
	return &Server{grpc: gs, audit: auditConn}, nil
}

// Addr is where the broker listens.
func (s *Server) Addr() net.Addr { return s.grpc.Addr() }

// Serve answers until ctx is cancelled, then drains.
func (s *Server) Serve(ctx context.Context) error {
	err := s.grpc.Serve(ctx)
	return errors.Join(err, s.audit.Close())
}

// Stop stops at once.
func (s *Server) Stop() {
	s.grpc.Stop()
	s.audit.Close()
}
