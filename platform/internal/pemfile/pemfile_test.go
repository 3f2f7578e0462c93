package pemfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCertPoolErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
		want string
	}{
		{name: "missing", path: filepath.Join(dir, "nope.pem"), want: "read CA bundle: open "},
		{name: "no-certificate", path: empty, want: "holds no PEM certificate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := CertPool(tc.path)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("CertPool(%s) error = %v, want one containing %q", tc.path, err, tc.want)
			}
		})
	}
}
