package grafana

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// repoRoot is the repository root, seen from deploy/grafana.
const repoRoot = "../.."

// metricLiteral matches a metric name defined as a Go string constant.
var metricLiteral = regexp.MustCompile(`"(credmatrix_[a-z0-9_]+)"`)

// metricRef matches a credmatrix metric name in PromQL.
var metricRef = regexp.MustCompile(`\bcredmatrix_[a-z0-9_]+\b`)

// definedMetrics returns every credmatrix_* name defined in the non-test Go
// sources of the services, the platform and the clients.
func definedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for _, dir := range []string{"platform", "services", "clients"} {
		err := filepath.WalkDir(filepath.Join(repoRoot, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, m := range metricLiteral.FindAllStringSubmatch(string(b), -1) {
				names[m[1]] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return names
}

type dashboard struct {
	UID    string  `json:"uid"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile("credmatrix.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("credmatrix.json: %v", err)
	}
	return d
}

// resolve maps a referenced series name to the metric that defines it: a
// histogram's _bucket, _sum and _count series belong to the histogram.
func resolve(name string, defined map[string]bool) (string, bool) {
	if defined[name] {
		return name, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && defined[base] {
			return base, true
		}
	}
	return "", false
}

// TestDashboardUsesDefinedMetrics checks that every query of the dashboard
// references only metric names the code defines, and that every defined
// metric is on the dashboard and in docs/metrics.md.
func TestDashboardUsesDefinedMetrics(t *testing.T) {
	defined := definedMetrics(t)
	if len(defined) < 20 {
		t.Fatalf("found only %d defined metric names; is the source scan broken? %v", len(defined), defined)
	}
	d := loadDashboard(t)
	used := map[string]bool{}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel %q: duplicate id %d", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource must be the ${datasource} variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no queries", p.Title)
		}
		for _, tg := range p.Targets {
			refs := metricRef.FindAllString(tg.Expr, -1)
			if len(refs) == 0 {
				t.Errorf("panel %q: query %q references no credmatrix metric", p.Title, tg.Expr)
			}
			for _, r := range refs {
				base, ok := resolve(r, defined)
				if !ok {
					t.Errorf("panel %q: query references %s, which no code defines", p.Title, r)
					continue
				}
				used[base] = true
			}
			if strings.Count(tg.Expr, "(") != strings.Count(tg.Expr, ")") || strings.Count(tg.Expr, "{") != strings.Count(tg.Expr, "}") {
				t.Errorf("panel %q: unbalanced query %q", p.Title, tg.Expr)
			}
		}
	}
	var missing []string
	for name := range defined {
		if !used[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if diff := cmp.Diff(missing, []string(nil)); diff != "" {
		t.Errorf("metrics defined but on no dashboard panel (-missing +want):\n%s", diff)
	}

	doc, err := os.ReadFile(filepath.Join(repoRoot, "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	var undocumented []string
	for name := range defined {
		if !strings.Contains(string(doc), "`"+name+"`") {
			undocumented = append(undocumented, name)
		}
	}
	sort.Strings(undocumented)
	if diff := cmp.Diff(undocumented, []string(nil)); diff != "" {
		t.Errorf("metrics not documented in docs/metrics.md (-missing +want):\n%s", diff)
	}
	for _, r := range metricRef.FindAllString(string(doc), -1) {
		if _, ok := resolve(r, defined); !ok {
			t.Errorf("docs/metrics.md names %s, which no code defines", r)
		}
	}
}

// TestResolve covers the histogram-suffix mapping the check relies on.
func TestResolve(t *testing.T) {
	defined := map[string]bool{"credmatrix_x_seconds": true, "credmatrix_y_total": true}
	tests := []struct {
		name, ref, want string
		ok              bool
	}{
		{"exact", "credmatrix_y_total", "credmatrix_y_total", true},
		{"histogram/bucket", "credmatrix_x_seconds_bucket", "credmatrix_x_seconds", true},
		{"histogram/count", "credmatrix_x_seconds_count", "credmatrix_x_seconds", true},
		{"unknown", "credmatrix_z_total", "", false},
		{"suffix-on-any-defined-name", "credmatrix_y_total_bucket", "credmatrix_y_total", true},
		{"misspelt", "credmatrix_x_second_bucket", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := resolve(tc.ref, defined)
			if diff := cmp.Diff([]any{got, ok}, []any{tc.want, tc.ok}); diff != "" {
				t.Errorf("resolve(%q) (-got +want):\n%s", tc.ref, diff)
			}
		})
	}
}
