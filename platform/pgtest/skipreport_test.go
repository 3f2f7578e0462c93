package pgtest

import (
	"os"
	"path/filepath"
	"testing"
)

// TestMissingDependencyReports: a skip for a missing dependency is written
// to the skip report, which `make test` prints (go test shows skip
// messages of passing packages only with -v).
func TestMissingDependencyReports(t *testing.T) {
	report := filepath.Join(t.TempDir(), "skips.txt")
	t.Setenv(RequireEnv, "")
	t.Setenv(SkipReportEnv, report)
	t.Run("needs-a-tool", func(t *testing.T) {
		MissingDependency(t, "frobnicator", "apt-get install frobnicator")
	})
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	want := "TestMissingDependencyReports/needs-a-tool: frobnicator not available: apt-get install frobnicator\n"
	if string(b) != want {
		t.Fatalf("report %q, want %q", b, want)
	}
}
