package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	"golang.org/x/mod/zip"
)

// modulePrefix is the path every credmatrix module starts with.
const modulePrefix = "github.com/credmatrix/credmatrix"

func proxyCmd(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	version := fs.String("version", "", "release version (vMAJOR.MINOR.PATCH)")
	out := fs.String("out", "", "directory to write the proxy into")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if *out == "" {
		return usageError{fmt.Errorf("-out: required")}
	}
	mods, err := buildProxy(".", *version, *out)
	if err != nil {
		return err
	}
	for _, m := range mods {
		fmt.Printf("%s@%s\n", m.Path, *version)
	}
	return nil
}

// workModule is one module of the workspace.
type workModule struct {
	Path string // module path
	Dir  string // directory, relative to the root
}

// workspaceModules reads go.work under root.
func workspaceModules(root string) ([]workModule, error) {
	data, err := os.ReadFile(filepath.Join(root, "go.work"))
	if err != nil {
		return nil, err
	}
	wf, err := modfile.ParseWork("go.work", data, nil)
	if err != nil {
		return nil, err
	}
	var mods []workModule
	for _, u := range wf.Use {
		dir := filepath.Clean(u.Path)
		gomod, err := os.ReadFile(filepath.Join(root, dir, "go.mod"))
		if err != nil {
			return nil, err
		}
		path := modfile.ModulePath(gomod)
		if !strings.HasPrefix(path, modulePrefix) {
			return nil, fmt.Errorf("%s/go.mod: module %q is not under %s", dir, path, modulePrefix)
		}
		mods = append(mods, workModule{Path: path, Dir: dir})
	}
	return mods, nil
}

// buildProxy writes a GOPROXY file tree under out holding every workspace
// module of root at version. Each module's go.mod is rewritten so that it
// requires its siblings at version, and must not replace them.
func buildProxy(root, version, out string) ([]workModule, error) {
	if !semver.IsValid(version) || semver.Build(version) != "" || semver.Major(version) != "v0" && semver.Major(version) != "v1" {
		return nil, usageError{fmt.Errorf("-version %q: want a v0 or v1 semantic version such as v0.1.0", version)}
	}
	mods, err := workspaceModules(root)
	if err != nil {
		return nil, err
	}
	siblings := map[string]bool{}
	for _, m := range mods {
		siblings[m.Path] = true
	}
	info, err := json.Marshal(map[string]any{"Version": version, "Time": time.Now().UTC().Format(time.RFC3339)})
	if err != nil {
		return nil, err
	}
	for _, m := range mods {
		gomod, err := releaseGoMod(filepath.Join(root, m.Dir, "go.mod"), version, siblings)
		if err != nil {
			return nil, err
		}
		escaped, err := module.EscapePath(m.Path)
		if err != nil {
			return nil, err
		}
		dir := filepath.Join(out, escaped, "@v")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		for name, data := range map[string][]byte{version + ".mod": gomod, version + ".info": info, "list": []byte(version + "\n")} {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
				return nil, err
			}
		}
		if err := writeZip(filepath.Join(root, m.Dir), m.Path, version, gomod, filepath.Join(dir, version+".zip")); err != nil {
			return nil, fmt.Errorf("zip %s: %w", m.Path, err)
		}
	}
	return mods, nil
}

// releaseGoMod returns the go.mod at path as released: sibling
// requirements at version. A replace of a sibling is an error: released
// modules must resolve each other through the proxy.
func releaseGoMod(path, version string, siblings map[string]bool) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f, err := modfile.Parse(path, data, nil)
	if err != nil {
		return nil, err
	}
	for _, r := range f.Replace {
		return nil, fmt.Errorf("%s: replace %s: released modules must not replace anything", path, r.Old.Path)
	}
	for _, r := range f.Require {
		if siblings[r.Mod.Path] && r.Mod.Version != version {
			if err := f.AddRequire(r.Mod.Path, version); err != nil {
				return nil, err
			}
		}
	}
	f.Cleanup()
	return f.Format()
}

// writeZip zips the module in dir as module.Version{path, version}, with
// gomod as its go.mod. Nested modules, VCS metadata and files the module
// zip format forbids are left out, as the go command would.
func writeZip(dir, path, version string, gomod []byte, dst string) error {
	var files []zip.File
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			if p != dir {
				if strings.HasPrefix(d.Name(), ".") {
					return filepath.SkipDir
				}
				if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
					return filepath.SkipDir // another module
				}
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if rel == "go.mod" {
			files = append(files, memFile{name: "go.mod", data: gomod})
			return nil
		}
		files = append(files, diskFile{name: filepath.ToSlash(rel), path: p})
		return nil
	})
	if err != nil {
		return err
	}
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	if err := zip.Create(f, module.Version{Path: path, Version: version}, files); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

type diskFile struct{ name, path string }

func (f diskFile) Path() string                 { return f.name }
func (f diskFile) Lstat() (os.FileInfo, error)  { return os.Lstat(f.path) }
func (f diskFile) Open() (io.ReadCloser, error) { return os.Open(f.path) }

type memFile struct {
	name string
	data []byte
}

func (f memFile) Path() string { return f.name }
func (f memFile) Lstat() (os.FileInfo, error) {
	return memInfo{name: f.name, size: int64(len(f.data))}, nil
}
func (f memFile) Open() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(f.data)), nil }

type memInfo struct {
	name string
	size int64
}

func (i memInfo) Name() string       { return i.name }
func (i memInfo) Size() int64        { return i.size }
func (i memInfo) Mode() fs.FileMode  { return 0o644 }
func (i memInfo) ModTime() time.Time { return time.Time{} }
func (i memInfo) IsDir() bool        { return false }
func (i memInfo) Sys() any           { return nil }
