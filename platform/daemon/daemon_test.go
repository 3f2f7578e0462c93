package daemon

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

type testConfig struct {
	Listen string `cfg:"listen" help:"address"`
	Level  string `cfg:"log_level" help:"log level"`
}

func (c testConfig) Validate() error {
	if c.Listen == "" {
		return errors.New("listen: required")
	}
	return nil
}

type fakeService struct{ served *bool }

func (fakeService) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }
func (f fakeService) Serve(ctx context.Context) error {
	*f.served = true
	<-ctx.Done()
	return nil
}

func spec(served *bool, startErr error) Spec[testConfig] {
	return Spec[testConfig]{
		Name: "test", EnvPrefix: "CM_TEST",
		Defaults: testConfig{Level: "info"},
		LogLevel: func(c *testConfig) string { return c.Level },
		Start: func(_ context.Context, cfg testConfig, _ hclog.Logger) (Service, error) {
			if startErr != nil {
				return nil, startErr
			}
			return fakeService{served: served}, nil
		},
	}
}

func TestMainExitCodes(t *testing.T) {
	noenv := func(string) string { return "" }
	for _, tc := range []struct {
		name     string
		args     []string
		startErr error
		want     int
		wantLog  string
	}{
		{name: "ok/serves-until-cancelled", args: []string{"test", "--listen", "127.0.0.1:0"}, want: ExitOK, wantLog: "started"},
		{name: "config/invalid", args: []string{"test"}, want: ExitConfig, wantLog: "listen: required"},
		{name: "config/unknown-flag", args: []string{"test", "--nope"}, want: ExitConfig, wantLog: "nope"},
		{name: "config/help", args: []string{"test", "--help"}, want: ExitOK, wantLog: "--listen"},
		{name: "version", args: []string{"test", "--version"}, want: ExitOK, wantLog: "test dev\n"},
		{name: "start/fails", args: []string{"test", "--listen", "x:1"}, startErr: errors.New("db locked"), want: ExitFailed, wantLog: "db locked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // Serve returns at once.
			var served bool
			var stderr bytes.Buffer
			got := Main(ctx, spec(&served, tc.startErr), tc.args, noenv, &stderr)
			if got != tc.want {
				t.Fatalf("exit code %d, want %d; stderr:\n%s", got, tc.want, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.wantLog) {
				t.Fatalf("stderr lacks %q:\n%s", tc.wantLog, stderr.String())
			}
			if served != (tc.wantLog == "started") {
				t.Fatalf("served = %v", served)
			}
		})
	}
}
