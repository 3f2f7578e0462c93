package keyfile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEnsureThenRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "k.hex")
	k1, err := Ensure(path, 32)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := Ensure(path, 32)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k1, k2) || len(k1) != 32 {
		t.Fatal("Ensure must return the stored key the second time")
	}
	info, _ := os.Stat(path)
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", info.Mode().Perm())
	}
}

func TestReadErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	secretish := "zz" + strings.Repeat("ab", 31)
	for _, tc := range []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "nope"), "no such file"},
		{"world-readable", write("w", strings.Repeat("ab", 32), 0o644), "readable by other users"},
		{"not-hex", write("h", secretish, 0o600), "not hex-encoded"},
		{"short", write("s", "abcd", 0o600), "holds 2 bytes, want 32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Read(tc.path, 32)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "abab") {
				t.Fatalf("error leaks key material: %v", err)
			}
		})
	}
}
