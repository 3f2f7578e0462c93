package config_test

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/credmatrix/credmatrix/platform/config"
)

type tlsFiles struct {
	CertFile string `cfg:"cert_file" help:"PEM certificate"`
	KeyFile  string `cfg:"key_file" help:"PEM private key"`
}

type serverConfig struct {
	ListenAddr   string        `cfg:"listen_addr" help:"address to listen on"`
	TLS          tlsFiles      `cfg:"tls"`
	DrainTimeout time.Duration `cfg:"drain_timeout" help:"how long to drain"`
}

// Validate mimics grpcserver.Config: it names fields relative to itself and
// leaves Source empty for Load to fill in.
func (c *serverConfig) Validate() error {
	if _, _, err := net.SplitHostPort(c.ListenAddr); err != nil {
		return &config.FieldError{Field: "listen_addr", Msg: "must be host:port"}
	}
	return nil
}

type testConfig struct {
	Server   serverConfig `cfg:"server"`
	Debug    bool         `cfg:"debug" help:"verbose logging"`
	Workers  int          `cfg:"workers" help:"worker count"`
	MaxBytes int64        `cfg:"max_bytes"`
	Seq      uint64       `cfg:"seq"`
	Ratio    float64      `cfg:"ratio"`
	Regions  []string     `cfg:"regions" help:"regions in use"`
	Ignored  string
}

func defaults() testConfig {
	return testConfig{
		Server:  serverConfig{ListenAddr: "127.0.0.1:8443", DrainTimeout: 10 * time.Second},
		Workers: 4,
		Regions: []string{"eu-west-1"},
	}
}

const prefix = "CMX"

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func envFunc(env map[string]string) func(string) string {
	return func(k string) string { return env[k] }
}

func TestLoadPrecedence(t *testing.T) {
	tests := []struct {
		name string
		file string // YAML; "" means no file
		env  map[string]string
		args []string
		want func(c *testConfig)
	}{
		{
			name: "defaults-only",
			want: func(c *testConfig) {},
		},
		{
			name: "file/overrides-default",
			file: "server:\n  listen_addr: 127.0.0.1:9000\n  tls:\n    cert_file: /f/cert.pem\nworkers: 8\nregions: [us-east-1, eu-central-1]\nseq: 18446744073709551615\nratio: 0.5\nmax_bytes: -3\n",
			want: func(c *testConfig) {
				c.Server.ListenAddr = "127.0.0.1:9000"
				c.Server.TLS.CertFile = "/f/cert.pem"
				c.Workers = 8
				c.Regions = []string{"us-east-1", "eu-central-1"}
				c.Seq = 18446744073709551615
				c.Ratio = 0.5
				c.MaxBytes = -3
			},
		},
		{
			name: "file/null-value-keeps-default",
			file: "server:\n  listen_addr:\nworkers:\n",
			want: func(c *testConfig) {},
		},
		{
			name: "file/empty",
			file: "# nothing here\n",
			want: func(c *testConfig) {},
		},
		{
			name: "env/overrides-file",
			file: "workers: 8\nserver:\n  drain_timeout: 3s\n",
			env:  map[string]string{"CMX_WORKERS": "16", "CMX_SERVER_TLS_KEY_FILE": "/e/key.pem", "CMX_REGIONS": "a, b,"},
			want: func(c *testConfig) {
				c.Workers = 16
				c.Server.DrainTimeout = 3 * time.Second
				c.Server.TLS.KeyFile = "/e/key.pem"
				c.Regions = []string{"a", "b"}
			},
		},
		{
			name: "env/empty-counts-as-unset",
			env:  map[string]string{"CMX_WORKERS": ""},
			want: func(c *testConfig) {},
		},
		{
			name: "flag/overrides-env-and-file",
			file: "workers: 8\ndebug: true\n",
			env:  map[string]string{"CMX_WORKERS": "16", "CMX_SERVER_DRAIN_TIMEOUT": "1m"},
			args: []string{"--workers=32", "--server.drain-timeout", "250ms", "--debug=false", "--server.tls.cert-file=/x/c.pem"},
			want: func(c *testConfig) {
				c.Workers = 32
				c.Server.DrainTimeout = 250 * time.Millisecond
				c.Server.TLS.CertFile = "/x/c.pem"
			},
		},
		{
			name: "flag/bool-without-value",
			args: []string{"-debug"},
			want: func(c *testConfig) { c.Debug = true },
		},
		{
			name: "flag/last-wins",
			args: []string{"--regions=a,b", "--regions=c"},
			want: func(c *testConfig) { c.Regions = []string{"c"} },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range tc.env {
				env[k] = v
			}
			if tc.file != "" {
				env["CMX_CONFIG"] = writeFile(t, tc.file)
			}
			got := defaults()
			if err := config.Load(&got, config.Options{Name: "test", EnvPrefix: prefix, Args: tc.args, Getenv: envFunc(env)}); err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := defaults()
			tc.want(&want)
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("config mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestLoadConfigPathFlagBeatsEnv(t *testing.T) {
	fromEnv := writeFile(t, "workers: 1\n")
	fromFlag := writeFile(t, "workers: 2\n")
	got := defaults()
	err := config.Load(&got, config.Options{
		EnvPrefix: prefix,
		Args:      []string{"--config", fromFlag},
		Getenv:    envFunc(map[string]string{"CMX_CONFIG": fromEnv}),
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got.Workers != 2 {
		t.Errorf("Workers = %d, want 2 (from --config file)", got.Workers)
	}
}

// TestLoadErrors checks that every error names the field and the source.
// "{file}" in want is replaced by the config file's path.
func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		file string
		env  map[string]string
		args []string
		want []string
	}{
		{
			name: "file/unknown-key-with-line",
			file: "workers: 2\nserver:\n  listen_adr: x\n",
			want: []string{"config: server.listen_adr (from file {file}:3): unknown key"},
		},
		{
			name: "file/unknown-key-dash-suggestion",
			file: "server:\n  tls:\n    cert-file: x\n",
			want: []string{"config: server.tls.cert-file (from file {file}:3): unknown key (did you mean cert_file?)"},
		},
		{
			name: "file/unknown-top-level-key",
			file: "\n\nworkerz: 2\n",
			want: []string{"config: workerz (from file {file}:3): unknown key"},
		},
		{
			name: "file/bad-duration",
			file: "server:\n  drain_timeout: 10\n",
			want: []string{`config: server.drain_timeout (from file {file}:2): invalid duration "10" (want e.g. 500ms, 30s, 1h30m)`},
		},
		{
			name: "file/bad-int",
			file: "workers: many\n",
			want: []string{`config: workers (from file {file}:1): invalid integer "many"`},
		},
		{
			name: "file/struct-given-scalar",
			file: "server: 127.0.0.1:1\n",
			want: []string{"config: server (from file {file}:1): want a mapping"},
		},
		{
			name: "file/scalar-given-list",
			file: "workers: [1, 2]\n",
			want: []string{"config: workers (from file {file}:1): want a single int value"},
		},
		{
			name: "file/duplicate-key",
			file: "workers: 1\nworkers: 2\n",
			want: []string{"config: workers (from file {file}:2): duplicate key (first at line 1)"},
		},
		{
			name: "file/top-level-not-mapping",
			file: "- a\n- b\n",
			want: []string{"config: config (from file {file}:1): top level must be a mapping"},
		},
		{
			name: "file/several-errors-all-reported",
			file: "workers: x\nratio: y\nnope: 1\n",
			want: []string{
				`config: workers (from file {file}:1): invalid integer "x"`,
				`config: ratio (from file {file}:2): invalid number "y"`,
				"config: nope (from file {file}:3): unknown key",
			},
		},
		{
			name: "file/missing",
			env:  map[string]string{"CMX_CONFIG": "/does/not/exist.yaml"},
			want: []string{"config: config (from env CMX_CONFIG): read config file: open /does/not/exist.yaml: no such file or directory"},
		},
		{
			name: "env/bad-bool",
			env:  map[string]string{"CMX_DEBUG": "yes please"},
			want: []string{`config: debug (from env CMX_DEBUG): invalid boolean "yes please" (want true or false)`},
		},
		{
			name: "env/bad-duration",
			env:  map[string]string{"CMX_SERVER_DRAIN_TIMEOUT": "soon"},
			want: []string{`config: server.drain_timeout (from env CMX_SERVER_DRAIN_TIMEOUT): invalid duration "soon" (want e.g. 500ms, 30s, 1h30m)`},
		},
		{
			name: "env/negative-uint",
			env:  map[string]string{"CMX_SEQ": "-1"},
			want: []string{`config: seq (from env CMX_SEQ): invalid unsigned integer "-1"`},
		},
		{
			name: "env/int-out-of-range",
			env:  map[string]string{"CMX_MAX_BYTES": "99999999999999999999"},
			want: []string{`config: max_bytes (from env CMX_MAX_BYTES): invalid integer "99999999999999999999": out of range`},
		},
		{
			name: "flag/bad-int",
			args: []string{"--workers=lots"},
			want: []string{`config: workers (from flag --workers): invalid integer "lots"`},
		},
		{
			name: "flag/bad-bool",
			args: []string{"--debug=maybe"},
			want: []string{`config: debug (from flag --debug): invalid boolean "maybe" (want true or false)`},
		},
		{
			name: "flag/bad-duration",
			args: []string{"--server.drain-timeout=5"},
			want: []string{`config: server.drain_timeout (from flag --server.drain-timeout): invalid duration "5" (want e.g. 500ms, 30s, 1h30m)`},
		},
		{
			name: "validate/source-env",
			env:  map[string]string{"CMX_SERVER_LISTEN_ADDR": "nope"},
			want: []string{"config: server.listen_addr (from env CMX_SERVER_LISTEN_ADDR): must be host:port"},
		},
		{
			name: "validate/source-file",
			file: "server:\n  listen_addr: nope\n",
			want: []string{"config: server.listen_addr (from file {file}:2): must be host:port"},
		},
		{
			name: "validate/source-flag",
			args: []string{"--server.listen-addr=nope"},
			want: []string{"config: server.listen_addr (from flag --server.listen-addr): must be host:port"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range tc.env {
				env[k] = v
			}
			var path string
			if tc.file != "" {
				path = writeFile(t, tc.file)
				env["CMX_CONFIG"] = path
			}
			cfg := defaults()
			err := config.Load(&cfg, config.Options{EnvPrefix: prefix, Args: tc.args, Getenv: envFunc(env)})
			if err == nil {
				t.Fatal("Load succeeded, want error")
			}
			var got []string
			for _, fe := range config.FieldErrors(err) {
				got = append(got, fe.Error())
			}
			want := make([]string, len(tc.want))
			for i, w := range tc.want {
				want[i] = strings.ReplaceAll(w, "{file}", path)
			}
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("field errors mismatch (-got +want):\n%s\nfull error: %v", diff, err)
			}
		})
	}
}

// rootValidated checks that a Validate on the target itself sees the loaded
// values and that its errors get their Source filled in.
type rootValidated struct {
	Mode string `cfg:"mode"`
}

func (r rootValidated) Validate() error {
	if r.Mode != "local" && r.Mode != "aws" {
		return errors.Join(&config.FieldError{Field: "mode", Msg: `must be "local" or "aws"`})
	}
	return nil
}

func TestLoadRootValidate(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "ok", args: []string{"--mode=aws"}, want: ""},
		{name: "bad-from-flag", args: []string{"--mode=gcp"}, want: `config: mode (from flag --mode): must be "local" or "aws"`},
		{name: "bad-default", args: nil, want: `config: mode (from default): must be "local" or "aws"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r rootValidated
			err := config.Load(&r, config.Options{Args: tc.args})
			got := ""
			if err != nil {
				got = err.Error()
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("error mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestLoadArgumentErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "unknown-flag", args: []string{"--nope"}, want: "config: flag provided but not defined: -nope"},
		{name: "positional", args: []string{"serve"}, want: `config: unexpected argument "serve"`},
		{name: "missing-flag-value", args: []string{"--workers"}, want: "config: flag needs an argument: -workers"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := defaults()
			err := config.Load(&cfg, config.Options{EnvPrefix: prefix, Args: tc.args})
			if err == nil {
				t.Fatal("Load succeeded, want error")
			}
			if diff := cmp.Diff(err.Error(), tc.want); diff != "" {
				t.Errorf("error mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestLoadBadTarget(t *testing.T) {
	type unsupported struct {
		M map[string]string `cfg:"m"`
	}
	type reserved struct {
		C string `cfg:"config"`
	}
	tests := []struct {
		name   string
		target any
		want   string
	}{
		{name: "nil", target: nil, want: "config: target must be a non-nil pointer to a struct, got <nil>"},
		{name: "not-pointer", target: testConfig{}, want: "config: target must be a non-nil pointer to a struct, got config_test.testConfig"},
		{name: "unsupported-type", target: &unsupported{}, want: "config: field m (M): unsupported type map[string]string"},
		{name: "reserved-flag", target: &reserved{}, want: "config: field config: flag name --config is reserved"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := config.Load(tc.target, config.Options{})
			if err == nil {
				t.Fatal("Load succeeded, want error")
			}
			if diff := cmp.Diff(err.Error(), tc.want); diff != "" {
				t.Errorf("error mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestLoadHelp(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{name: "short", args: []string{"-h"}},
		{name: "long", args: []string{"--help"}},
		{name: "after-other-flags", args: []string{"--workers=2", "--help"}},
	}
	const want = `Usage: audit [flags]

Flags (precedence: default < config file < environment < flag):
  --config path
      YAML config file (env CMX_CONFIG)
  --server.listen-addr string
      address to listen on (env CMX_SERVER_LISTEN_ADDR, default "127.0.0.1:8443")
  --server.tls.cert-file string
      PEM certificate (env CMX_SERVER_TLS_CERT_FILE)
  --server.tls.key-file string
      PEM private key (env CMX_SERVER_TLS_KEY_FILE)
  --server.drain-timeout duration
      how long to drain (env CMX_SERVER_DRAIN_TIMEOUT, default "10s")
  --debug
      verbose logging (env CMX_DEBUG)
  --workers int
      worker count (env CMX_WORKERS, default "4")
  --max-bytes int
      (no description) (env CMX_MAX_BYTES)
  --seq uint
      (no description) (env CMX_SEQ)
  --ratio float
      (no description) (env CMX_RATIO)
  --regions list
      regions in use (env CMX_REGIONS, default "eu-west-1")
  -h, --help
      show this help
`
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			cfg := defaults()
			err := config.Load(&cfg, config.Options{Name: "audit", EnvPrefix: prefix, Args: tc.args, Usage: &out})
			if !errors.Is(err, config.ErrHelp) {
				t.Fatalf("Load error = %v, want ErrHelp", err)
			}
			if diff := cmp.Diff(out.String(), want); diff != "" {
				t.Errorf("usage mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestFieldErrorString(t *testing.T) {
	tests := []struct {
		name string
		err  *config.FieldError
		want string
	}{
		{
			name: "with-source",
			err:  &config.FieldError{Field: "server.listen_addr", Source: "env CREDMATRIX_AUDIT_SERVER_LISTEN_ADDR", Msg: "must be host:port"},
			want: "config: server.listen_addr (from env CREDMATRIX_AUDIT_SERVER_LISTEN_ADDR): must be host:port",
		},
		{
			name: "without-source",
			err:  &config.FieldError{Field: "server.listen_addr", Msg: "must be host:port"},
			want: "config: server.listen_addr: must be host:port",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.err.Error(), tc.want); diff != "" {
				t.Errorf("Error() mismatch (-got +want):\n%s", diff)
			}
		})
	}
}
