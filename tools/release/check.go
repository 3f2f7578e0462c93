package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// externalApp is a module outside this repository that uses the client
// libraries as an internal app or a CI tool would.
const externalApp = `package main

import (
	"fmt"

	"github.com/credmatrix/credmatrix/clients/auditclient"
	"github.com/credmatrix/credmatrix/clients/brokerclient"
	"github.com/credmatrix/credmatrix/clients/keyguardclient"
	"github.com/credmatrix/credmatrix/clients/keyguardclient/envelope"
)

func main() {
	var (
		_ = brokerclient.New
		_ = keyguardclient.New
		_ = auditclient.New
	)
	fmt.Println("envelope format version", envelope.Version1)
}
`

// clientPackages have runnable examples the check runs from the proxy.
var clientPackages = []string{
	modulePrefix + "/clients/brokerclient",
	modulePrefix + "/clients/keyguardclient",
	modulePrefix + "/clients/auditclient",
}

func checkCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	version := fs.String("version", "", "release version (vMAJOR.MINOR.PATCH)")
	keep := fs.Bool("keep", false, "keep the temporary directory (proxy, GOBIN, app)")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	tmp, err := os.MkdirTemp("", "credmatrix-release-check-")
	if err != nil {
		return err
	}
	if *keep {
		fmt.Println("# keeping", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	proxyDir := filepath.Join(tmp, "proxy")
	fmt.Printf("# file-system module proxy of the working tree at %s: %s\n", *version, proxyDir)
	mods, err := buildProxy(".", *version, proxyDir)
	if err != nil {
		return err
	}
	for _, m := range mods {
		fmt.Printf("#   %s@%s\n", m.Path, *version)
	}
	upstream := os.Getenv("GOPROXY")
	if upstream == "" || upstream == "off" {
		upstream = "https://proxy.golang.org"
	}
	// The check gets a module cache of its own, as a user has, so nothing
	// stale of an earlier check can stand in for this tree. Third-party
	// modules come from the caller's module cache when it has them (read
	// as a file proxy: no network), else from the upstream proxy.
	if out, err := exec.CommandContext(ctx, "go", "env", "GOMODCACHE").Output(); err == nil && strings.TrimSpace(string(out)) != "" {
		upstream = "file://" + filepath.ToSlash(filepath.Join(strings.TrimSpace(string(out)), "cache", "download")) + "," + upstream
	}
	binDir := filepath.Join(tmp, "bin")
	env := append(os.Environ(),
		"GOWORK=off",
		"GOPROXY=file://"+filepath.ToSlash(proxyDir)+","+upstream,
		// The credmatrix modules of this check exist only in the local
		// proxy: the public checksum database cannot know them.
		"GONOSUMDB="+modulePrefix,
		"GOFLAGS=-mod=mod -modcacherw",
		"GOBIN="+binDir,
		"GOPATH="+filepath.Join(tmp, "gopath"),
		"GOMODCACHE="+filepath.Join(tmp, "modcache"),
	)
	cli := modulePrefix + "/clients/cmd/credmatrix@" + *version
	steps := []struct {
		dir  string
		args []string
	}{
		{tmp, []string{"go", "install", cli}},
		{tmp, []string{filepath.Join(binDir, "credmatrix"), "--version"}},
	}
	for _, s := range steps {
		if err := runStep(ctx, s.dir, env, s.args...); err != nil {
			return err
		}
	}
	app := filepath.Join(tmp, "app")
	if err := os.MkdirAll(app, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(app, "go.mod"), []byte("module example.com/app\n\ngo 1.26.0\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(app, "main.go"), []byte(externalApp), 0o644); err != nil {
		return err
	}
	fmt.Printf("# an external module (example.com/app) that imports the client libraries\n")
	for _, a := range [][]string{
		{"go", "get", modulePrefix + "/clients@" + *version},
		{"go", "mod", "tidy"},
		{"go", "build", "-o", filepath.Join(tmp, "app-bin"), "."},
		{filepath.Join(tmp, "app-bin")},
		append([]string{"go", "test", "-count=1", "-run", "^Example"}, clientPackages...),
	} {
		if err := runStep(ctx, app, env, a...); err != nil {
			return err
		}
	}
	fmt.Printf("# release check of %s passed\n", *version)
	return nil
}

func runStep(ctx context.Context, dir string, env []string, args ...string) error {
	fmt.Printf("$ %s\n", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir, cmd.Env = dir, env
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", strings.Join(args, " "), err)
	}
	return nil
}
