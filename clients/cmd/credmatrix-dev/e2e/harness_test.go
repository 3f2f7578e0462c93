package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Exit codes of the credmatrix CLI (see its --help).
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitDenied      = 3
	exitUnavailable = 4
)

// built holds the binaries of this tree, built once per test run.
type built struct {
	dir                                      string
	credmatrix, audit, broker, keyguard, dev string
}

var (
	buildOnce sync.Once
	bins      built
	buildOut  string
	buildErr  error
)

// binaries builds the CLI, the three services and credmatrix-dev from this
// tree once per test run, into a temporary directory.
func binaries(t testing.TB) built {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "credmatrix-e2e-bin-")
		if err != nil {
			buildErr = err
			return
		}
		root, err := filepath.Abs(filepath.Join("..", "..", "..", ".."))
		if err != nil {
			buildErr = err
			return
		}
		// The CLI with the build tags of its release binaries (make dist),
		// so that these tests and BenchmarkCredentialProcess run what ships.
		for _, args := range [][]string{
			{"./services/audit/cmd/audit", "./services/broker/cmd/broker", "./services/keyguard/cmd/keyguard", "./clients/cmd/credmatrix-dev"},
			{"-tags", "grpcnotrace", "./clients/cmd/credmatrix"},
		} {
			cmd := exec.Command("go", append([]string{"build", "-o", dir + string(filepath.Separator)}, args...)...)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
			out, err := cmd.CombinedOutput()
			buildOut, buildErr = string(out), err
			if err != nil {
				return
			}
		}
		bins = built{
			dir:        dir,
			credmatrix: filepath.Join(dir, "credmatrix"), audit: filepath.Join(dir, "audit"),
			broker: filepath.Join(dir, "broker"), keyguard: filepath.Join(dir, "keyguard"),
			dev: filepath.Join(dir, "credmatrix-dev"),
		}
	})
	if buildErr != nil {
		t.Fatalf("go build: %v\n%s", buildErr, buildOut)
	}
	return bins
}

// credmatrixBinary is the credmatrix CLI built from this tree.
func credmatrixBinary(t testing.TB) string { return binaries(t).credmatrix }

// cli runs the credmatrix CLI binary against the stack, with exactly the
// environment in env (plus PATH and a private HOME).
type cli struct {
	t   *testing.T
	env map[string]string
	// transcript keeps everything the CLI printed on stderr, to check it
	// for secrets at the end.
	transcript *syncBuffer
}

type result struct {
	code           int
	stdout, stderr string
}

func (c *cli) run(stdin string, args ...string) result {
	c.t.Helper()
	return c.runBin(credmatrixBinary(c.t), stdin, args...)
}

// devOK runs credmatrix-dev (e.g. `token`) with the same environment and
// fails the test unless it succeeds.
func (c *cli) devOK(args ...string) string {
	c.t.Helper()
	r := c.runBin(binaries(c.t).dev, "", args...)
	if r.code != exitOK {
		c.t.Fatalf("credmatrix-dev %s: exit %d\nstderr: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

func (c *cli) runBin(bin, stdin string, args ...string) result {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = c.environ()
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		c.t.Fatalf("run credmatrix %s: %v", strings.Join(args, " "), err)
	}
	if c.transcript != nil {
		c.transcript.Write([]byte(errb.String()))
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

func (c *cli) environ() []string {
	env := []string{"PATH=" + os.Getenv("PATH")}
	if _, ok := c.env["HOME"]; !ok {
		env = append(env, "HOME="+c.t.TempDir())
	}
	keys := make([]string, 0, len(c.env))
	for k := range c.env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+c.env[k])
	}
	return env
}

func (c *cli) ok(stdin string, args ...string) string {
	c.t.Helper()
	r := c.run(stdin, args...)
	if r.code != exitOK {
		c.t.Fatalf("credmatrix %s: exit %d\nstderr: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

// credentialProcess is the AWS CLI/SDK credential_process output, Version 1,
// as the AWS CLI's `configure export-credentials --format process` prints it.
type credentialProcess struct {
	Version         int    `json:"Version"`
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	SessionToken    string `json:"SessionToken"`
	Expiration      string `json:"Expiration"`
}
