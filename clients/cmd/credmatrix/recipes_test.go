package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// Shell recipes must fail closed: a command whose output a shell runs
// (eval, source, a pipe into sh) has its exit code ignored, so a denial
// or an outage would let a CI job go on without credentials — and on to
// whatever ambient credentials the runner has. The only safe form is to
// assign the output, stop on failure, then eval the variable:
//
//	creds=$(credmatrix creds …) || exit $?
//	eval "$creds"
var (
	// evalSubst: eval of a command substitution, in any quoting.
	evalSubst = regexp.MustCompile("\\beval\\s+[\"']?(\\$\\(|`)")
	// sourceSubst: sourcing a process substitution.
	sourceSubst = regexp.MustCompile(`(^|[;&|]\s*|\s)(source|\.)\s+<\(`)
	// pipeToShell: a credmatrix command's output run by a shell.
	pipeToShell = regexp.MustCompile("credmatrix[^|`]*\\s\\|\\s*(sudo\\s+)?(ba|da|z|k)?sh(\\s|$)")
	// maskedExport: export/local/readonly/declare of a credential command's
	// output: their own exit code (0) replaces the command's.
	maskedExport = regexp.MustCompile(`\b(export|local|readonly|declare|typeset)\s+[A-Za-z_][A-Za-z0-9_]*=["']?\$\([^)]*credmatrix\s+(creds|serve-credentials)`)
	// evalVar: eval of a variable; guardedAssign: the assignment that makes
	// it safe (output of a command substitution, then || exit/return).
	evalVar       = regexp.MustCompile(`\beval\s+"?\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?"?`)
	guardedAssign = regexp.MustCompile(`(^|[\s;])([A-Za-z_][A-Za-z0-9_]*)=["']?\$\(.*\)["']?\s*\|\|\s*(exit|return|\{[^}]*\b(exit|return)\b)`)
)

// recipeProblems returns what is unsafe in a text holding shell recipes
// (a document, a help text, a CI template), one line each.
func recipeProblems(text string) []string {
	// Join continued lines, so a recipe split with \ is one line.
	text = strings.ReplaceAll(text, "\\\n", " ")
	var problems []string
	guarded := map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		l := strings.TrimSpace(line)
		switch {
		case evalSubst.MatchString(l):
			problems = append(problems, "eval of a command substitution ignores the command's exit code: "+l)
		case sourceSubst.MatchString(l):
			problems = append(problems, "sourcing a process substitution ignores the command's exit code: "+l)
		case pipeToShell.MatchString(l):
			problems = append(problems, "piping a command into a shell ignores its exit code: "+l)
		case maskedExport.MatchString(l):
			problems = append(problems, "export/local of a command substitution masks its exit code: "+l)
		}
		if m := guardedAssign.FindStringSubmatch(l); m != nil {
			guarded[m[2]] = true
		}
		if m := evalVar.FindStringSubmatch(l); m != nil && !evalSubst.MatchString(l) && !guarded[m[1]] {
			problems = append(problems, "eval of $"+m[1]+", which is not assigned with `|| exit` before: "+l)
		}
	}
	return problems
}

func TestRecipeProblems(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		bad        bool
	}{
		{"bad/eval-dquote", `eval "$(credmatrix creds --role r --account a)"`, true},
		{"bad/eval-bare", `eval $(credmatrix creds --role r --account a)`, true},
		{"bad/eval-backtick", "eval `credmatrix creds --role r --account a`", true},
		{"bad/eval-background", `eval "$(credmatrix serve-credentials --role r --account a &)"`, true},
		{"bad/source", `source <(credmatrix creds --role r --account a)`, true},
		{"bad/dot", `. <(credmatrix creds --role r --account a)`, true},
		{"bad/pipe-sh", `credmatrix creds --role r --account a | sh`, true},
		{"bad/export", `export AWS_SESSION_TOKEN=$(credmatrix creds --role r --account a --output json | jq -r .SessionToken)`, true},
		{"bad/eval-unguarded-var", "creds=$(credmatrix creds --role r --account a)\neval \"$creds\"", true},
		{"bad/eval-and-list", `creds=$(credmatrix creds --role r --account a) && eval "$creds"`, true},
		{"good/guarded", "creds=$(credmatrix creds --role r --account a) || exit $?\neval \"$creds\"", false},
		{"good/guarded-continued", "creds=$(credmatrix creds \\\n  --role r --account a) || exit $?\neval \"$creds\"", false},
		{"good/guarded-braces", "c=\"$(credmatrix creds -o env)\" || { echo denied >&2; exit 3; }\neval \"${c}\"", false},
		{"good/return", "c=$(credmatrix creds -o env) || return\neval \"$c\"", false},
		{"good/prose", "Never eval a command substitution directly.", false},
		{"good/direct", "credmatrix creds --role r --account a --output github-env", false},
		{"good/completion", "`credmatrix completion bash|zsh|fish` prints", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := recipeProblems(tc.text); (len(got) > 0) != tc.bad {
				t.Fatalf("recipeProblems(%q) = %q, want bad=%v", tc.text, got, tc.bad)
			}
		})
	}
}

// TestShellRecipesFailClosed lints every place a user copies shell from:
// the repository's documents (README, docs/, chart notes), the CI
// templates, every help text in Go source (the CLI's and credmatrix-dev's)
// and the CLI's rendered help.
func TestShellRecipesFailClosed(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	texts := map[string]string{}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			switch d.Name() {
			case ".git", "bin", "node_modules", ".dev", "testdata", "tmp":
				return filepath.SkipDir
			}
			return nil
		}
		name := d.Name()
		switch {
		case strings.HasSuffix(name, "_test.go"), strings.HasSuffix(name, ".pb.go"):
			return nil
		case strings.HasSuffix(name, ".md"), strings.HasSuffix(name, ".go"), strings.HasSuffix(name, ".yml"),
			strings.HasSuffix(name, ".yaml"), strings.HasSuffix(name, ".sh"), strings.HasSuffix(name, ".txt"),
			strings.HasSuffix(name, ".tpl"), name == "Makefile", name == "run":
		default:
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		texts[rel] = string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	a := &app{getenv: func(string) string { return "" }}
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		texts["credmatrix help: "+c.CommandPath()] = c.Long + "\n" + c.Example
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(a.rootCommand())

	// The lint must see what it guards: the documents and the recipes
	// that eval credentials (GitLab template, creds and
	// serve-credentials help) are all there.
	for _, must := range []string{"README.md", "clients/gitlab/credmatrix.gitlab-ci.yml", "credmatrix help: credmatrix creds", "credmatrix help: credmatrix serve-credentials"} {
		if !evalVar.MatchString(texts[must]) && must != "README.md" {
			t.Errorf("%s has no eval recipe any more: update this test", must)
		}
		if _, ok := texts[must]; !ok {
			t.Errorf("the lint did not read %s", must)
		}
	}
	if len(texts) < 100 {
		t.Fatalf("read only %d texts from %s", len(texts), root)
	}
	for name, text := range texts {
		for _, p := range recipeProblems(text) {
			t.Errorf("%s: %s", name, p)
		}
	}
}
