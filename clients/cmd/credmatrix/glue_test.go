package main

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestCIGlueUsesRealFlags keeps the GitHub Action and the GitLab snippet in
// step with the CLI: every `--flag` they pass to `credmatrix creds` must
// exist, and the files must be valid YAML of the right shape.
func TestCIGlueUsesRealFlags(t *testing.T) {
	a := &app{getenv: func(string) string { return "" }}
	creds := a.credsCommand()
	flagRE := regexp.MustCompile(`--([a-z][a-z-]+)`)
	for _, file := range []string{"../../github-action/action.yml", "../../gitlab/credmatrix.gitlab-ci.yml"} {
		t.Run(file, func(t *testing.T) {
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var doc map[string]any
			if err := yaml.Unmarshal(b, &doc); err != nil {
				t.Fatalf("not YAML: %v", err)
			}
			for _, line := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(strings.TrimSpace(line), "#") || !strings.Contains(line, "creds") {
					continue
				}
				for _, m := range flagRE.FindAllStringSubmatch(line, -1) {
					if creds.Flags().Lookup(m[1]) == nil {
						t.Errorf("%s passes --%s, which credmatrix creds does not have", file, m[1])
					}
				}
			}
		})
	}
	var action struct {
		Inputs map[string]any `yaml:"inputs"`
		Runs   struct {
			Using string `yaml:"using"`
		} `yaml:"runs"`
	}
	b, _ := os.ReadFile("../../github-action/action.yml")
	if err := yaml.Unmarshal(b, &action); err != nil || action.Runs.Using != "composite" {
		t.Fatalf("action.yml: %v %+v", err, action.Runs)
	}
	for _, in := range regexp.MustCompile(`inputs\.([a-z-]+)`).FindAllStringSubmatch(string(b), -1) {
		if _, ok := action.Inputs[in[1]]; !ok {
			t.Errorf("action.yml uses undeclared input %s", in[1])
		}
	}
}
