package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/credmatrix/credmatrix/clients/credcache"
)

// writeProfiles writes one AWS config profile per target whose
// credential_process runs `credmatrix creds … --output credential-process`.
// No secret is written: the AWS CLI and SDKs call the command when they need
// credentials, and it serves them from the cache.
func (a *app) writeProfiles(targets []target, tf *tokenFlags, path string, window time.Duration) error {
	for _, t := range targets {
		if t.profile == "" {
			return usagef("target %s: name its profile (--profile, or --target %s=NAME)", t, t)
		}
		if strings.ContainsAny(t.profile, "[]\r\n") {
			return usagef("profile name %q: must not contain brackets or line breaks", t.profile)
		}
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
	for _, t := range targets {
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
		if t.Region != "" {
			body = append(body, "region = "+t.Region)
		}
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
