package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/credmatrix/credmatrix/clients/credcache"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
)

// writeProfiles writes one AWS config profile per target whose
// credential_process runs `credmatrix creds … --output credential-process`.
// No secret is written: the AWS CLI and SDKs call the command when they need
// credentials, and it serves them from the cache.
//
// The broker is asked first (ListRoles, with the token the profile will
// use) which roles the token may assume: a target it may not — an account
// the policy does not know, a role the token is not allowed — gets no
// profile, and nothing is written. A target without a region gets the
// account's home region from the broker, so the AWS CLI goes to the
// account's regional endpoints, never the global ones.
func (a *app) writeProfiles(ctx context.Context, targets []target, tf *tokenFlags, path string, window time.Duration) error {
	for _, t := range targets {
		if t.profile == "" {
			return usagef("target %s: name its profile (--profile, or --target %s=NAME)", t, t)
		}
		if strings.ContainsAny(t.profile, "[]\r\n") {
			return usagef("profile name %q: must not contain brackets or line breaks", t.profile)
		}
	}
	regions, err := a.homeRegions(ctx, tf, targets)
	if err != nil {
		return err
	}
	if path == "" {
		path = a.getenv("AWS_CONFIG_FILE")
	}
	if path == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return usagef("--aws-config: no home directory: %v", err)
		}
		path = filepath.Join(home, ".aws", "config")
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the credmatrix executable: %w", err)
	}
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("read AWS config: %w", err)
	}
	text := string(old)
	for i, t := range targets {
		args := []string{exe, "creds", "--target", t.String(), "--output", "credential-process", "--broker-addr", a.brokerAddr}
		for _, kv := range [][2]string{{"--ca-file", a.caFile}, {"--cert-file", a.certFile}, {"--key-file", a.keyFile}} {
			if kv[1] != "" {
				abs, err := filepath.Abs(kv[1])
				if err != nil {
					return err
				}
				args = append(args, kv[0], abs)
			}
		}
		if t.Duration > 0 {
			args = append(args, "--duration", t.Duration.String())
		}
		if window != credcache.DefaultWindow {
			args = append(args, "--refresh-window", window.String())
		}
		args = append(args, tf.args()...)
		body := []string{"credential_process = " + commandLine(args)}
		region := t.Region
		if region == "" {
			region = regions[i]
		}
		body = append(body, "region = "+region)
		text = setProfile(text, t.profile, body)
		fmt.Fprintf(a.out, "profile %s: %s (credential_process; no secret stored) in %s\n", t.profile, t, path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".credmatrix.tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		return fmt.Errorf("write AWS config: %w", err)
	}
	return os.Rename(tmp, path)
}

// homeRegions asks the broker which roles the token may assume and returns
// each target's home region, or an error naming the first target the token
// may not assume.
func (a *app) homeRegions(ctx context.Context, tf *tokenFlags, targets []target) ([]string, error) {
	src, err := a.tokenSource(tf)
	if err != nil {
		return nil, err
	}
	token, err := src.Token(ctx)
	if err != nil {
		return nil, usageError{err}
	}
	var roles []*brokerv1.RoleSummary
	err = a.brokerRPC(func(rpc brokerv1.BrokerServiceClient) error {
		r, err := rpc.ListRoles(ctx, &brokerv1.ListRolesRequest{Token: token})
		roles = r.GetRoles()
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]string, len(targets))
	for i, t := range targets {
		for _, r := range roles {
			if r.GetRole() == t.Role && (r.GetAccountId() == t.Account || r.GetAccountName() == t.Account) {
				out[i] = r.GetRegion()
				break
			}
		}
		if out[i] == "" {
			return nil, usagef("target %s: the broker lists no role %q in an account %q for this token (an account the policy does not know, or a role it does not allow; 'credmatrix roles' lists what it may assume); no profile written",
				t, t.Role, t.Account)
		}
	}
	return out, nil
}

// setProfile replaces (or appends) the section of profile name in an AWS
// config file's text, keeping every other line as it was.
func setProfile(text, name string, body []string) string {
	header := "[profile " + name + "]"
	if name == "default" {
		header = "[default]"
	}
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if text == "" {
		lines = nil
	}
	var out []string
	replaced := false
	for i := 0; i < len(lines); i++ {
		if strings.TrimSpace(lines[i]) != header {
			out = append(out, lines[i])
			continue
		}
		out = append(out, header)
		out = append(out, body...)
		replaced = true
		// Skip the old section's lines up to the next section header.
		for i+1 < len(lines) && !strings.HasPrefix(strings.TrimSpace(lines[i+1]), "[") {
			i++
		}
	}
	if !replaced {
		if len(out) > 0 && strings.TrimSpace(out[len(out)-1]) != "" {
			out = append(out, "")
		}
		out = append(out, header)
		out = append(out, body...)
	}
	return strings.Join(out, "\n") + "\n"
}

// commandLine joins args for credential_process, which the AWS CLI and SDKs
// split like a POSIX shell: quote what needs it.
func commandLine(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && !strings.ContainsAny(a, " \t\"'\\$`;&|<>()*?[]{}#~") {
			q[i] = a
			continue
		}
		q[i] = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`, "`", "\\`").Replace(a) + `"`
	}
	return strings.Join(q, " ")
}
