package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestAWSProfileRegionsAndUnknownAccounts: `creds --output aws-profile`
// writes each profile with its account's home region (from the broker)
// unless the target names one, and writes nothing when a target is an
// account the policy does not know or a role the token may not assume.
func TestAWSProfileRegionsAndUnknownAccounts(t *testing.T) {
	stack, _, _ := startStack(t)
	home := t.TempDir()
	cfgFile := filepath.Join(home, "config")
	c := &cli{t: t, env: envMap(stack.RunnerEnv())}
	c.env["CREDMATRIX_DEV_ISSUER"], c.env["CREDMATRIX_DEV_MINT_SECRET_FILE"] = envMap(stack.Env())["CREDMATRIX_DEV_ISSUER"], envMap(stack.Env())["CREDMATRIX_DEV_MINT_SECRET_FILE"]
	c.env["CREDMATRIX_OIDC_TOKEN"] = strings.TrimSpace(c.devOK("token", "--repository", "acme/app", "--ref", "refs/heads/main"))
	c.env["AWS_CONFIG_FILE"] = cfgFile

	c.ok("", "creds", "--target", "deploy@sandbox=home", "--target", "deploy@111111111111/eu-central-1=pinned", "--output", "aws-profile")
	cfg, err := os.ReadFile(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]string{}
	for _, sec := range strings.Split(string(cfg), "[profile ")[1:] {
		name, body, _ := strings.Cut(sec, "]")
		sections[name] = body
	}
	if !strings.Contains(sections["home"], "\nregion = eu-west-1\n") || !strings.Contains(sections["pinned"], "\nregion = eu-central-1\n") {
		t.Fatalf("profiles without the right region lines:\n%s", cfg)
	}
	if _, err := os.Stat("/usr/bin/aws"); err == nil {
		cmd := exec.Command("/usr/bin/aws", "configure", "get", "region", "--profile", "home")
		cmd.Env = []string{"HOME=" + home, "AWS_CONFIG_FILE=" + cfgFile, "PATH=/usr/bin:/bin"}
		if out, err := cmd.Output(); err != nil || strings.TrimSpace(string(out)) != "eu-west-1" {
			t.Fatalf("the AWS CLI reads region %q (%v) for the profile", out, err)
		}
	}

	for _, tc := range []struct{ name, target, want string }{
		{"unknown-account", "deploy@no-such-account=x", `no role "deploy" in an account "no-such-account"`},
		{"role-not-allowed", "deploy@prod=x", `no role "deploy" in an account "prod"`},
		{"unknown-role", "admin@sandbox=x", `no role "admin"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := c.run("", "creds", "--target", "deploy@sandbox=other", "--target", tc.target, "--output", "aws-profile")
			if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) || !strings.Contains(r.stderr, "no profile written") {
				t.Fatalf("%+v", r)
			}
			if now, _ := os.ReadFile(cfgFile); string(now) != string(cfg) {
				t.Fatalf("the AWS config changed:\n%s", now)
			}
		})
	}
}
