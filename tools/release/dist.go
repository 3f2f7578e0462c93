package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"debug/macho"
	"debug/pe"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"
)

// A target is one release binary: a main package built for one platform.
type target struct {
	Name   string // binary name: credmatrix, audit, broker, keyguard
	Pkg    string // main package, relative to the repository root
	GOOS   string
	GOARCH string
}

// cliTags are the build tags of the CLI. grpcnotrace leaves out gRPC's
// golang.org/x/net/trace (request traces behind grpc.EnableTracing, which
// credmatrix never turns on); that package links html/template, whose
// reflective method calls stop the linker from dropping unused methods
// of every type in the binary: without it the CLI is about a fifth
// smaller (22.4 MB -> 17.7 MB stripped, linux/amd64) and starts faster.
const cliTags = "grpcnotrace"

// cliMaxBytes is the size budget of every CLI binary: the CLI is
// downloaded by every CI job and started by every AWS CLI call.
const cliMaxBytes = 20_000_000

// Tags returns the target's build tags.
func (t target) Tags() string {
	if t.Name == "credmatrix" {
		return cliTags
	}
	return ""
}

// File is the target's file name in dist/: NAME-GOOS-GOARCH[.exe]. The
// GitHub Action computes the same name from the runner's platform.
func (t target) File() string {
	name := t.Name + "-" + t.GOOS + "-" + t.GOARCH
	if t.GOOS == "windows" {
		name += ".exe"
	}
	return name
}

// releaseTargets is what a release ships: the user CLI for every desktop
// and CI platform, the services for the Linux platforms their container
// images run on.
func releaseTargets() []target {
	var ts []target
	for _, p := range []string{"linux/amd64", "linux/arm64", "darwin/amd64", "darwin/arm64", "windows/amd64"} {
		goos, goarch, _ := strings.Cut(p, "/")
		ts = append(ts, target{"credmatrix", "./clients/cmd/credmatrix", goos, goarch})
	}
	for _, svc := range []struct{ name, pkg string }{
		{"audit", "./services/audit/cmd/audit"},
		{"broker", "./services/broker/cmd/broker"},
		{"keyguard", "./services/keyguard/cmd/keyguard"},
	} {
		for _, arch := range []string{"amd64", "arm64"} {
			ts = append(ts, target{svc.name, svc.pkg, "linux", arch})
		}
	}
	return ts
}

// The linker stamps the version into these variables: the CLI's own, and
// the one every service prints with --version and logs at start.
var versionVars = []string{
	"main.version",
	modulePrefix + "/platform/daemon.version",
}

// Names of the files beside the binaries.
const (
	sumsFile = "SHA256SUMS"
	sbomFile = "sbom.cdx.json"
)

// ldflags are the linker flags of every release binary: stripped (no
// symbol table, no DWARF) and version-stamped.
func ldflags(version string) string {
	f := "-s -w"
	for _, v := range versionVars {
		f += " -X " + v + "=" + version
	}
	return f
}

func distCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("dist", flag.ContinueOnError)
	version := fs.String("version", "", "the version stamped into the binaries and the SBOM")
	out := fs.String("out", "dist", "output directory (emptied first)")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if err := checkVersionString(*version); err != nil {
		return usageError{err}
	}
	start := time.Now()
	ts := releaseTargets()
	if err := buildDist(ctx, ".", *version, *out, ts); err != nil {
		return err
	}
	if err := verifyDist(ctx, *out, *version, ts); err != nil {
		return fmt.Errorf("the dist just built does not verify: %w", err)
	}
	fmt.Printf("# dist %s: %d binaries, %s, %s in %s (%s)\n", *version, len(ts), sumsFile, sbomFile, *out, time.Since(start).Round(time.Second))
	return nil
}

func verifyDistCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("verify-dist", flag.ContinueOnError)
	version := fs.String("version", "", "the version the binaries must carry")
	dir := fs.String("dir", "dist", "the dist directory")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if err := checkVersionString(*version); err != nil {
		return usageError{err}
	}
	if err := verifyDist(ctx, *dir, *version, releaseTargets()); err != nil {
		return err
	}
	fmt.Printf("# %s verifies: every file present, checksums match, static trimmed stripped binaries stamped %s, the SBOM lists every linked module\n", *dir, *version)
	return nil
}

// checkVersionString accepts what can be stamped into a binary and a file
// name: a release tag or a commit description, never empty or spaced.
func checkVersionString(v string) error {
	if v == "" {
		return fmt.Errorf("-version: required")
	}
	for _, r := range v {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(".-+_", r)) {
			return fmt.Errorf("-version %q: only letters, digits and . - + _", v)
		}
	}
	return nil
}

// buildDist builds ts into out (emptied first), then writes the SBOM and
// SHA256SUMS over everything.
func buildDist(ctx context.Context, root, version, out string, ts []target) error {
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	absOut, err := filepath.Abs(out)
	if err != nil {
		return err
	}
	for _, t := range ts {
		args := []string{"go", "build", "-trimpath", "-tags", t.Tags(), "-ldflags", ldflags(version), "-o", filepath.Join(absOut, t.File()), t.Pkg}
		tags := ""
		if t.Tags() != "" {
			tags = " -tags " + t.Tags()
		}
		fmt.Printf("$ GOOS=%s GOARCH=%s CGO_ENABLED=0 go build -trimpath%s -ldflags '%s' -o %s %s\n", t.GOOS, t.GOARCH, tags, ldflags(version), filepath.Join(out, t.File()), t.Pkg)
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+t.GOOS, "GOARCH="+t.GOARCH)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("build %s: %w", t.File(), err)
		}
	}
	bom, err := makeSBOM(absOut, version, ts, time.Now())
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	enc := cdx.NewBOMEncoder(&buf, cdx.BOMFileFormatJSON)
	enc.SetPretty(true)
	if err := enc.EncodeVersion(bom, cdx.SpecVersion1_6); err != nil {
		return fmt.Errorf("encode SBOM: %w", err)
	}
	if err := os.WriteFile(filepath.Join(absOut, sbomFile), buf.Bytes(), 0o644); err != nil {
		return err
	}
	names := []string{sbomFile}
	for _, t := range ts {
		names = append(names, t.File())
	}
	sort.Strings(names)
	var sums strings.Builder
	for _, n := range names {
		sum, err := fileSHA256(filepath.Join(absOut, n))
		if err != nil {
			return err
		}
		// The format sha256sum -c and shasum -a 256 -c read.
		fmt.Fprintf(&sums, "%s  %s\n", sum, n)
	}
	return os.WriteFile(filepath.Join(absOut, sumsFile), []byte(sums.String()), 0o644)
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// modVersion is the version a module of a binary is released at: the
// credmatrix modules are built from the workspace ("(devel)") and ship
// at the release version; the others are what go.sum pins.
func modVersion(m *debug.Module, version string) string {
	if m.Replace != nil {
		m = m.Replace
	}
	if strings.HasPrefix(m.Path, modulePrefix) && (m.Version == "" || m.Version == "(devel)") {
		return version
	}
	return m.Version
}

func purl(path, version string) string {
	return "pkg:golang/" + path + "@" + version
}

// makeSBOM describes the release as a CycloneDX BOM: each binary a file
// component with its SHA-256, each Go module linked into any binary a
// library component (a purl), the Go standard library at the toolchain
// version, and for each binary the modules it links (dependencies). The
// module lists come from the binaries' build information, which the go
// command writes from the module graph when it links: the modules a
// binary really contains, at the versions go.sum pinned.
func makeSBOM(dir, version string, ts []target, now time.Time) (*cdx.BOM, error) {
	bom := cdx.NewBOM()
	bom.SerialNumber = "" // reproducible apart from the timestamp
	// The release as a whole; its bom-ref differs from every module's.
	self := "release:credmatrix@" + version
	bom.Metadata = &cdx.Metadata{
		Timestamp: now.UTC().Format(time.RFC3339),
		Component: &cdx.Component{BOMRef: self, Type: cdx.ComponentTypeApplication, Name: "credmatrix", Version: version, PackageURL: purl(modulePrefix, version)},
		Tools: &cdx.ToolsChoice{Components: &[]cdx.Component{{
			Type: cdx.ComponentTypeApplication, Name: "credmatrix tools/release", Description: "release dist: debug/buildinfo of each binary, github.com/CycloneDX/cyclonedx-go",
		}}},
	}
	libs := map[string]cdx.Component{}
	var files []cdx.Component
	var deps []cdx.Dependency
	for _, t := range ts {
		path := filepath.Join(dir, t.File())
		bi, err := buildinfo.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t.File(), err)
		}
		sum, err := fileSHA256(path)
		if err != nil {
			return nil, err
		}
		goVersion := strings.TrimPrefix(bi.GoVersion, "go")
		std := purl("stdlib", "go"+goVersion)
		libs[std] = cdx.Component{BOMRef: std, Type: cdx.ComponentTypeLibrary, Name: "stdlib", Version: "go" + goVersion, PackageURL: std}
		ref := "file:" + t.File()
		var dependsOn []string
		mods := append([]*debug.Module{&bi.Main}, bi.Deps...)
		for _, m := range mods {
			v := modVersion(m, version)
			p := purl(m.Path, v)
			c := cdx.Component{BOMRef: p, Type: cdx.ComponentTypeLibrary, Name: m.Path, Version: v, PackageURL: p}
			if m.Sum != "" && m.Replace == nil {
				// go.sum's h1: hash of the module's content.
				c.Properties = &[]cdx.Property{{Name: "go:module:sum", Value: m.Sum}}
			}
			libs[p] = c
			dependsOn = append(dependsOn, p)
		}
		dependsOn = append(dependsOn, std)
		slices.Sort(dependsOn)
		files = append(files, cdx.Component{
			BOMRef: ref, Type: cdx.ComponentTypeFile, Name: t.File(), Version: version,
			Hashes: &[]cdx.Hash{{Algorithm: cdx.HashAlgoSHA256, Value: sum}},
			Properties: &[]cdx.Property{
				{Name: "go:package", Value: bi.Path},
				{Name: "go:os", Value: t.GOOS},
				{Name: "go:arch", Value: t.GOARCH},
				{Name: "go:toolchain", Value: bi.GoVersion},
			},
		})
		deps = append(deps, cdx.Dependency{Ref: ref, Dependencies: &dependsOn})
	}
	comps := files
	refs := make([]string, 0, len(libs))
	for r := range libs {
		refs = append(refs, r)
	}
	sort.Strings(refs)
	for _, r := range refs {
		comps = append(comps, libs[r])
	}
	fileRefs := make([]string, 0, len(files))
	for _, f := range files {
		fileRefs = append(fileRefs, f.BOMRef)
	}
	deps = append([]cdx.Dependency{{Ref: self, Dependencies: &fileRefs}}, deps...)
	bom.Components = &comps
	bom.Dependencies = &deps
	return bom, nil
}

// verifyDist checks a dist directory as a user (or CI) downloading it
// would, and more: exactly the expected files; SHA256SUMS names each and
// each matches; every binary is for its platform, static, built with
// -trimpath, stripped, with its build tags; the ones this machine can run
// print version (with -trimpath the build information leaves out
// -ldflags, so the others' stamp is taken from the same build command);
// the CLI within its size budget; the SBOM parses as CycloneDX, hashes each binary as
// SHA256SUMS does and lists every module each binary links.
func verifyDist(ctx context.Context, dir, version string, ts []target) error {
	want := []string{sumsFile, sbomFile}
	for _, t := range ts {
		want = append(want, t.File())
	}
	sort.Strings(want)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, want) {
		return fmt.Errorf("%s holds %v; want exactly %v", dir, got, want)
	}

	sums, err := readSums(filepath.Join(dir, sumsFile))
	if err != nil {
		return err
	}
	for _, name := range want {
		if name == sumsFile {
			continue
		}
		wantSum, ok := sums[name]
		if !ok {
			return fmt.Errorf("%s has no checksum for %s", sumsFile, name)
		}
		delete(sums, name)
		sum, err := fileSHA256(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if sum != wantSum {
			return fmt.Errorf("%s: SHA-256 %s, %s says %s", name, sum, sumsFile, wantSum)
		}
	}
	for name := range sums {
		return fmt.Errorf("%s lists %s, which is not in the release", sumsFile, name)
	}

	f, err := os.Open(filepath.Join(dir, sbomFile))
	if err != nil {
		return err
	}
	defer f.Close()
	var bom cdx.BOM
	if err := cdx.NewBOMDecoder(f, cdx.BOMFileFormatJSON).Decode(&bom); err != nil {
		return fmt.Errorf("%s does not parse as CycloneDX JSON: %w", sbomFile, err)
	}
	if bom.BOMFormat != cdx.BOMFormat || bom.Components == nil || bom.Dependencies == nil || bom.Metadata == nil || bom.Metadata.Component == nil || bom.Metadata.Component.Version != version {
		return fmt.Errorf("%s: not a CycloneDX BOM of credmatrix %s with components and dependencies", sbomFile, version)
	}
	comps := map[string]cdx.Component{}
	for _, c := range *bom.Components {
		comps[c.BOMRef] = c
	}
	deps := map[string][]string{}
	for _, d := range *bom.Dependencies {
		if d.Dependencies != nil {
			deps[d.Ref] = *d.Dependencies
		}
	}

	for _, t := range ts {
		path := filepath.Join(dir, t.File())
		bi, err := buildinfo.ReadFile(path)
		if err != nil {
			return fmt.Errorf("%s: %w", t.File(), err)
		}
		settings := map[string]string{}
		for _, s := range bi.Settings {
			settings[s.Key] = s.Value
		}
		for k, v := range map[string]string{"GOOS": t.GOOS, "GOARCH": t.GOARCH, "CGO_ENABLED": "0", "-trimpath": "true", "-tags": t.Tags()} {
			if settings[k] != v {
				return fmt.Errorf("%s: built with %s=%q, want %q", t.File(), k, settings[k], v)
			}
		}
		if bi.Path != modulePrefix+strings.TrimPrefix(t.Pkg, ".") {
			return fmt.Errorf("%s: is %s, want %s", t.File(), bi.Path, t.Pkg)
		}
		if fi, err := os.Stat(path); err != nil {
			return err
		} else if t.Name == "credmatrix" && fi.Size() > cliMaxBytes {
			return fmt.Errorf("%s: %d bytes, over the CLI's budget of %d", t.File(), fi.Size(), cliMaxBytes)
		}
		if err := checkStripped(path); err != nil {
			return fmt.Errorf("%s: %w", t.File(), err)
		}
		if t.GOOS == runtime.GOOS && t.GOARCH == runtime.GOARCH {
			out, err := exec.CommandContext(ctx, path, "--version").CombinedOutput()
			if err != nil || !strings.Contains(string(out), version) {
				return fmt.Errorf("%s --version: %v: %q does not name %s", t.File(), err, out, version)
			}
		}

		ref := "file:" + t.File()
		fc, ok := comps[ref]
		if !ok || fc.Hashes == nil || len(*fc.Hashes) != 1 || (*fc.Hashes)[0].Algorithm != cdx.HashAlgoSHA256 {
			return fmt.Errorf("%s: no file component with a SHA-256 for %s", sbomFile, t.File())
		}
		if sum, _ := fileSHA256(path); (*fc.Hashes)[0].Value != sum {
			return fmt.Errorf("%s: SHA-256 of %s is %s, the file's is %s", sbomFile, t.File(), (*fc.Hashes)[0].Value, sum)
		}
		listed := deps[ref]
		for _, m := range append([]*debug.Module{&bi.Main}, bi.Deps...) {
			p := purl(m.Path, modVersion(m, version))
			if c, ok := comps[p]; !ok || c.PackageURL != p || !slices.Contains(listed, p) {
				return fmt.Errorf("%s: %s links %s, which the SBOM does not list for it", sbomFile, t.File(), p)
			}
		}
	}
	return nil
}

// readSums parses a SHA256SUMS file ("HEX  NAME" lines).
func readSums(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sums := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if b, err := hex.DecodeString(sum); !ok || err != nil || len(b) != sha256.Size || name == "" || strings.ContainsAny(name, "/\\") {
			return nil, fmt.Errorf("%s:%d: not a \"SHA-256  NAME\" line", path, n)
		}
		if _, dup := sums[name]; dup {
			return nil, fmt.Errorf("%s:%d: %s listed twice", path, n, name)
		}
		sums[name] = sum
	}
	return sums, sc.Err()
}

// checkStripped fails when the binary still has a symbol table or DWARF:
// -s -w was not applied (the build settings say what was asked; this
// checks what the file is).
func checkStripped(path string) error {
	var syms []string
	var sections []string
	if f, err := elf.Open(path); err == nil {
		defer f.Close()
		ss, _ := f.Symbols() // ErrNoSymbols when stripped
		for _, s := range ss {
			syms = append(syms, s.Name)
		}
		for _, s := range f.Sections {
			sections = append(sections, s.Name)
		}
	} else if f, err := macho.Open(path); err == nil {
		defer f.Close()
		if f.Symtab != nil {
			for _, s := range f.Symtab.Syms {
				syms = append(syms, s.Name)
			}
		}
		for _, s := range f.Sections {
			sections = append(sections, s.Name)
		}
	} else if f, err := pe.Open(path); err == nil {
		defer f.Close()
		for _, s := range f.Symbols {
			syms = append(syms, s.Name)
		}
		for _, s := range f.Sections {
			sections = append(sections, s.Name)
		}
	} else {
		return errors.New("neither ELF, Mach-O nor PE")
	}
	for _, s := range syms {
		if s == "main.main" || s == "_main.main" || s == "runtime.main" || s == "_runtime.main" {
			return fmt.Errorf("not stripped: has the symbol %s", s)
		}
	}
	for _, s := range sections {
		if strings.Contains(s, "debug_info") {
			return fmt.Errorf("not stripped: has the DWARF section %s", s)
		}
	}
	return nil
}
