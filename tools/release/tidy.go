package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/mod/modfile"
)

// tidyCmd runs go mod tidy in every workspace module as if the modules were
// released at version: siblings resolve through a file proxy of this tree,
// so go.mod files name them at version and need no replace lines. The
// siblings' checksums are left out of go.sum: they change with every
// commit, the workspace does not use them, and a real release gets them
// from the checksum database.
func tidyCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tidy", flag.ContinueOnError)
	version := fs.String("version", "", "the version modules require each other at")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	tmp, err := os.MkdirTemp("", "credmatrix-tidy-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	mods, err := workspaceModules(".")
	if err != nil {
		return err
	}
	for _, m := range mods {
		if err := setSiblingVersions(filepath.Join(m.Dir, "go.mod"), *version, mods); err != nil {
			return err
		}
	}
	if err := setWorkReplaces("go.work", *version, mods); err != nil {
		return err
	}
	// Twice: a module's first tidy may add requirements that the
	// proxy's copy of it lacked when its dependents were tidied.
	for round := 0; round < 2; round++ {
		proxyDir := filepath.Join(tmp, fmt.Sprint("proxy", round))
		mods, err := buildProxy(".", *version, proxyDir)
		if err != nil {
			return err
		}
		upstream := os.Getenv("GOPROXY")
		if upstream == "" || upstream == "off" {
			upstream = "https://proxy.golang.org"
		}
		if out, err := exec.CommandContext(ctx, "go", "env", "GOMODCACHE").Output(); err == nil && strings.TrimSpace(string(out)) != "" {
			upstream = "file://" + filepath.ToSlash(filepath.Join(strings.TrimSpace(string(out)), "cache", "download")) + "," + upstream
		}
		env := append(os.Environ(),
			"GOWORK=off",
			"GOPROXY=file://"+filepath.ToSlash(proxyDir)+","+upstream,
			"GONOSUMDB="+modulePrefix,
			"GOFLAGS=-mod=mod -modcacherw",
			"GOMODCACHE="+filepath.Join(tmp, fmt.Sprint("modcache", round)),
		)
		for _, m := range mods {
			cmd := exec.CommandContext(ctx, "go", "mod", "tidy")
			cmd.Dir, cmd.Env = m.Dir, env
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("go mod tidy in %s: %w\n%s", m.Dir, err, out)
			}
			if err := dropSiblingSums(filepath.Join(m.Dir, "go.sum")); err != nil {
				return err
			}
		}
	}
	return nil
}

// setSiblingVersions rewrites path so that every sibling it requires is
// required at version, with no replace of any sibling.
func setSiblingVersions(path, version string, mods []workModule) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	f, err := modfile.Parse(path, data, nil)
	if err != nil {
		return err
	}
	sib := map[string]bool{}
	for _, m := range mods {
		sib[m.Path] = true
	}
	for _, r := range f.Replace {
		if sib[r.Old.Path] {
			if err := f.DropReplace(r.Old.Path, r.Old.Version); err != nil {
				return err
			}
		}
	}
	for _, r := range f.Require {
		if sib[r.Mod.Path] && r.Mod.Version != version {
			if err := f.AddRequire(r.Mod.Path, version); err != nil {
				return err
			}
		}
	}
	f.Cleanup()
	out, err := f.Format()
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, 0o644)
}

// dropSiblingSums removes the credmatrix modules' lines from a go.sum.
func dropSiblingSums(path string) error {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), modulePrefix+"/") || strings.HasPrefix(sc.Text(), modulePrefix+" ") {
			continue
		}
		out.WriteString(sc.Text() + "\n")
	}
	return os.WriteFile(path, out.Bytes(), 0o644)
}

// setWorkReplaces rewrites go.work so that version of every workspace
// module resolves to its directory (and no other version of it is
// replaced): the go.mod files require siblings at version, which exists
// only once released.
func setWorkReplaces(path, version string, mods []workModule) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	wf, err := modfile.ParseWork(path, data, nil)
	if err != nil {
		return err
	}
	want := map[string]string{}
	for _, m := range mods {
		want[m.Path+"@"+version] = "./" + filepath.ToSlash(m.Dir)
	}
	have := map[string]string{}
	for _, r := range wf.Replace {
		have[r.Old.Path+"@"+r.Old.Version] = r.New.Path
	}
	if maps.Equal(want, have) {
		return nil // already in step: keep the file (and its comments) as it is
	}
	for _, m := range mods {
		for _, r := range wf.Replace {
			if r.Old.Path == m.Path {
				if err := wf.DropReplace(r.Old.Path, r.Old.Version); err != nil {
					return err
				}
			}
		}
		if err := wf.AddReplace(m.Path, version, "./"+filepath.ToSlash(m.Dir), ""); err != nil {
			return err
		}
	}
	wf.Cleanup()
	return os.WriteFile(path, modfile.Format(wf.Syntax), 0o644)
}
