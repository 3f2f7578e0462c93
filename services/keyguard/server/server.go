// Package server assembles keyguard: the key-ring and grant file, the local
// KEK backend, the audit client and the gRPC API on the shared server
// plumbing. cmd/keyguard runs it; the local stack and end-to-end tests
// start it in-process.
package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/credmatrix/credmatrix/platform/auditsink"
	"github.com/credmatrix/credmatrix/platform/config"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	"github.com/credmatrix/credmatrix/platform/keyfile"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/grpcapi"
	"github.com/credmatrix/credmatrix/services/keyguard/localkms"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"gopkg.in/yaml.v3"
)

// LocalConfig configures the local KEK backend.
type LocalConfig struct {
	KeystoreFile string `cfg:"keystore_file" help:"keystore of the local backend (created when missing)"`
	RootKeyFile  string `cfg:"root_key_file" help:"file holding the 32-byte hex root key that seals the keystore"`
}

// Config is the whole configuration of keyguard.
type Config struct {
	Server      grpcserver.Config `cfg:"server"`
	Audit       grpcclient.Config `cfg:"audit"`
	KeyringFile string            `cfg:"keyring_file" help:"YAML file of key rings (data class x region) and grants"`
	Backend     string            `cfg:"backend" help:"KEK backend: local"`
	Local       LocalConfig       `cfg:"local"`
	LogLevel    string            `cfg:"log_level" help:"trace, debug, info, warn or error"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	c := Config{Server: grpcserver.DefaultConfig(), Backend: "local", LogLevel: "info"}
	c.Server.ListenAddr = "127.0.0.1:7402"
	c.Audit.Target = "127.0.0.1:7403"
	return c
}

// Validate checks the fields keyguard adds; nested configs validate
// themselves.
func (c Config) Validate() error {
	var errs []error
	req := func(field, val, msg string) {
		if val == "" {
			errs = append(errs, &config.FieldError{Field: field, Msg: msg})
		}
	}
	req("keyring_file", c.KeyringFile, "required: the key rings and grants")
	req("audit.target", c.Audit.Target, "required: keyguard records every operation before returning its result")
	switch c.Backend {
	case "local":
		req("local.keystore_file", c.Local.KeystoreFile, "required with backend local")
		req("local.root_key_file", c.Local.RootKeyFile, "required with backend local")
	default:
		errs = append(errs, &config.FieldError{Field: "backend", Msg: fmt.Sprintf("unknown backend %q (want local)", c.Backend)})
	}
	return errors.Join(errs...)
}

// keyringFile is the YAML document of rings and grants.
type keyringFile struct {
	Rings []struct {
		DataClass string `yaml:"data_class"`
		Region    string `yaml:"region"`
	} `yaml:"rings"`
	Grants []struct {
		ID         string   `yaml:"id"`
		Principal  string   `yaml:"principal"`
		DataClass  string   `yaml:"data_class"`
		Operations []string `yaml:"operations"`
		Regions    []string `yaml:"regions"`
	} `yaml:"grants"`
}

var operations = map[string]keyguard.Operation{
	"encrypt":           keyguard.OpEncrypt,
	"decrypt":           keyguard.OpDecrypt,
	"generate_data_key": keyguard.OpGenerateDataKey,
	"rewrap":            keyguard.OpRewrap,
	"describe":          keyguard.OpDescribe,
}

// LoadKeyrings reads the rings and grants file. Unknown fields and
// operations are errors naming the file and field; the domain validates the
// values.
func LoadKeyrings(path string) ([]keyguard.Ring, []keyguard.Grant, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("keyring file: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f keyringFile
	if err := dec.Decode(&f); err != nil {
		return nil, nil, fmt.Errorf("keyring file %s: %w", path, err)
	}
	rings := make([]keyguard.Ring, 0, len(f.Rings))
	for _, r := range f.Rings {
		rings = append(rings, keyguard.Ring{DataClass: r.DataClass, Region: r.Region})
	}
	grants := make([]keyguard.Grant, 0, len(f.Grants))
	for i, g := range f.Grants {
		kg := keyguard.Grant{ID: g.ID, Principal: g.Principal, DataClass: g.DataClass, Regions: g.Regions}
		for j, op := range g.Operations {
			o, ok := operations[op]
			if !ok {
				return nil, nil, fmt.Errorf("keyring file %s: grants[%d].operations[%d]: unknown operation %q (want encrypt, decrypt, generate_data_key, rewrap or describe)", path, i, j, op)
			}
			kg.Operations = append(kg.Operations, o)
		}
		grants = append(grants, kg)
	}
	return rings, grants, nil
}

// Server is a running keyguard.
type Server struct {
	grpc  *grpcserver.Server
	audit *grpc.ClientConn
}

// New opens the backend, ensures every configured ring exists, connects to
// audit and starts listening.
func New(ctx context.Context, cfg Config, log hclog.Logger, opts ...grpcserver.Option) (*Server, error) {
	if err := errors.Join(cfg.Validate(), cfg.Server.Validate(), cfg.Audit.Validate()); err != nil {
		return nil, err
	}
	rings, grants, err := LoadKeyrings(cfg.KeyringFile)
	if err != nil {
		return nil, err
	}
	rootKey, err := keyfile.Read(cfg.Local.RootKeyFile, localkms.RootKeySize)
	if err != nil {
		return nil, fmt.Errorf("local.root_key_file: %w", err)
	}
	backend, err := localkms.Open(cfg.Local.KeystoreFile, rootKey)
	if err != nil {
		return nil, fmt.Errorf("local.keystore_file: %w", err)
	}
	for _, r := range rings {
		if err := backend.EnsureRing(ctx, r.DataClass, r.Region); err != nil {
			return nil, fmt.Errorf("key ring %s: %w", r, err)
		}
	}
	auditConn, err := grpcclient.Dial(cfg.Audit)
	if err != nil {
		return nil, fmt.Errorf("audit client: %w", err)
	}
	svc, err := keyguard.New(keyguard.Config{
		Backend: backend, BackendName: cfg.Backend, Auditor: auditsink.New(auditConn), Rings: rings, Grants: grants,
	})
	if err != nil {
		auditConn.Close()
		return nil, fmt.Errorf("keyring file %s: %w", cfg.KeyringFile, err)
	}
	gs, err := grpcserver.New(cfg.Server, log, opts...)
	if err != nil {
		auditConn.Close()
		return nil, err
	}
	keyguardv1.RegisterKeyguardServiceServer(gs.GRPC(), grpcapi.New(svc,
		grpcapi.WithIdentity(grpcserver.PeerIdentity),
		grpcapi.WithLogger(log),
	))
	log.Info("key rings ready", "rings", len(rings), "grants", len(grants), "backend", cfg.Backend, "root_key_id", backend.RootKeyID())
	return &Server{grpc: gs, audit: auditConn}, nil
}

// Addr is where keyguard listens.
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
