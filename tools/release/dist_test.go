package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// tinyTree is a module with the repository's path and a CLI main package
// that prints its version as the real one does: a dist of it builds in
// seconds and has everything verify-dist checks.
func tinyTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range map[string]string{
		"go.mod":                          "module " + modulePrefix + "\n\ngo 1.26.0\n",
		"clients/cmd/credmatrix/main.go":  "package main\n\nimport \"fmt\"\n\nvar version = \"dev\"\n\nfunc main() { fmt.Println(\"credmatrix version \" + version) }\n",
		"services/broker/cmd/broker/x.go": "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"broker dev\") }\n",
	} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func edit(t *testing.T, path string, f func([]byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, f(b), 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyDist builds a dist of a tiny tree for this platform, checks
// that it verifies, then that every kind of damage is caught.
func TestVerifyDist(t *testing.T) {
	t.Setenv("GOWORK", "off")
	t.Setenv("GOFLAGS", "-mod=mod")
	ctx := context.Background()
	const version = "v0.9.1"
	ts := []target{{"credmatrix", "./clients/cmd/credmatrix", runtime.GOOS, runtime.GOARCH}}
	good := filepath.Join(t.TempDir(), "dist")
	tree := tinyTree(t)
	if err := buildDist(ctx, tree, version, good, ts); err != nil {
		t.Fatal(err)
	}
	if err := verifyDist(ctx, good, version, ts); err != nil {
		t.Fatalf("a fresh dist does not verify: %v", err)
	}
	bin := ts[0].File()

	for _, tc := range []struct {
		name    string
		damage  func(t *testing.T, dir string)
		version string
		wantErr string
	}{
		{"tampered-binary", func(t *testing.T, dir string) {
			edit(t, filepath.Join(dir, bin), func(b []byte) []byte { b[len(b)/2] ^= 1; return b })
		}, version, "SHA256SUMS says"},
		{"checksum-line-missing", func(t *testing.T, dir string) {
			edit(t, filepath.Join(dir, sumsFile), func(b []byte) []byte {
				var keep []string
				for _, l := range strings.SplitAfter(string(b), "\n") {
					if !strings.HasSuffix(l, "  "+bin+"\n") {
						keep = append(keep, l)
					}
				}
				return []byte(strings.Join(keep, ""))
			})
		}, version, "no checksum for " + bin},
		{"checksum-line-twice", func(t *testing.T, dir string) {
			edit(t, filepath.Join(dir, sumsFile), func(b []byte) []byte { return append(b, b...) })
		}, version, "listed twice"},
		{"checksums-garbled", func(t *testing.T, dir string) {
			edit(t, filepath.Join(dir, sumsFile), func(b []byte) []byte { return append(b, "nonsense\n"...) })
		}, version, "not a \"SHA-256  NAME\" line"},
		{"file-missing", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, sbomFile)); err != nil {
				t.Fatal(err)
			}
		}, version, "want exactly"},
		{"file-extra", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, "README"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}, version, "want exactly"},
		{"other-version", func(*testing.T, string) {}, "v0.9.2", "of credmatrix v0.9.2"},
		{"sbom-not-cyclonedx", func(t *testing.T, dir string) {
			edit(t, filepath.Join(dir, sbomFile), func([]byte) []byte { return []byte("{") })
			resum(t, dir)
		}, version, "does not parse as CycloneDX JSON"},
		{"sbom-drops-a-module", func(t *testing.T, dir string) {
			edit(t, filepath.Join(dir, sbomFile), func(b []byte) []byte {
				return bytes.ReplaceAll(b, []byte(`"pkg:golang/`+modulePrefix+`@`+version+`"`), []byte(`"pkg:golang/example.com/other@v1.0.0"`))
			})
			resum(t, dir)
		}, version, "which the SBOM does not list"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyDir(t, good)
			tc.damage(t, dir)
			err := verifyDist(ctx, dir, tc.version, ts)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("verifyDist = %v, want an error with %q", err, tc.wantErr)
			}
		})
	}

	t.Run("unstripped", func(t *testing.T) {
		bin := filepath.Join(t.TempDir(), "unstripped")
		cmd := exec.Command("go", "build", "-o", bin, "./clients/cmd/credmatrix")
		cmd.Dir = tree
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
		if err := checkStripped(bin); err == nil || !strings.Contains(err.Error(), "not stripped") {
			t.Fatalf("checkStripped(a go build without -s -w) = %v, want not stripped", err)
		}
		if err := checkStripped(filepath.Join(good, ts[0].File())); err != nil {
			t.Fatalf("checkStripped(the dist binary) = %v", err)
		}
	})
}

// resum rewrites SHA256SUMS over the directory's files, as someone who
// replaced a file would, so that the check after the checksums is reached.
func resum(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	var b strings.Builder
	for _, e := range entries {
		if e.Name() == sumsFile {
			continue
		}
		sum, err := fileSHA256(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(sum + "  " + e.Name() + "\n")
	}
	if err := os.WriteFile(filepath.Join(dir, sumsFile), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}
