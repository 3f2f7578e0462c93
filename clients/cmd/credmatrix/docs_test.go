package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDocsPointAtThingsThatExist keeps the repository's documents true
// about paths: every relative link resolves inside the repository (none
// leaves it), every GitHub Action they tell users to `uses:` from this
// repository has its action.yml, and every image target they build exists
// in the Dockerfile.
func TestDocsPointAtThingsThatExist(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	link := regexp.MustCompile(`\]\(([^)#\s]+)(#[^)]*)?\)`)
	uses := regexp.MustCompile(`uses:\s*credmatrix/credmatrix/([^@\s]+)@`)
	target := regexp.MustCompile(`--target[ =]+(\$?[a-z][a-z0-9-]*)`)
	dockerfile, err := os.ReadFile(filepath.Join(root, "deploy", "docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var docs []string
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "bin" || d.Name() == ".dev" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(d.Name(), ".md") {
			docs = append(docs, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) < 5 {
		t.Fatalf("found %d documents under %s", len(docs), root)
	}
	checkedUses := 0
	for _, doc := range docs {
		rel, _ := filepath.Rel(root, doc)
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		for _, m := range link.FindAllStringSubmatch(text, -1) {
			dest := m[1]
			if strings.Contains(dest, "://") || strings.HasPrefix(dest, "mailto:") {
				continue
			}
			abs := filepath.Clean(filepath.Join(filepath.Dir(doc), dest))
			if r, err := filepath.Rel(root, abs); err != nil || strings.HasPrefix(r, "..") {
				t.Errorf("%s links %s, outside the repository", rel, dest)
				continue
			}
			if _, err := os.Stat(abs); err != nil {
				t.Errorf("%s links %s, which does not exist", rel, dest)
			}
		}
		for _, m := range uses.FindAllStringSubmatch(text, -1) {
			checkedUses++
			if _, err := os.Stat(filepath.Join(root, m[1], "action.yml")); err != nil {
				t.Errorf("%s says uses: credmatrix/credmatrix/%s, which has no action.yml", rel, m[1])
			}
		}
		var builds []string
		for _, l := range strings.Split(text, "\n") {
			if strings.Contains(l, "docker build") {
				builds = append(builds, l)
			}
		}
		for _, m := range target.FindAllStringSubmatch(strings.Join(builds, "\n"), -1) {
			names := []string{m[1]}
			if m[1] == "$s" { // a loop over the services
				names = []string{"audit", "broker", "keyguard"}
			}
			for _, n := range names {
				if !regexp.MustCompile(`(?m)^FROM .* AS ` + regexp.QuoteMeta(n) + `$`).Match(dockerfile) {
					t.Errorf("%s builds --target %s, which deploy/docker/Dockerfile does not have", rel, n)
				}
			}
		}
	}
	if checkedUses == 0 {
		t.Error("no document shows the GitHub Action any more: update this test")
	}
}
