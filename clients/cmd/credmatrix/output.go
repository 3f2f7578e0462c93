package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func timestamp(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

// credentialProcess is the AWS CLI/SDK credential_process output, Version 1.
type credentialProcess struct {
	Version         int    `json:"Version"`
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	SessionToken    string `json:"SessionToken"`
	Expiration      string `json:"Expiration"`
}

type sessionJSON struct {
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	SessionToken    string `json:"SessionToken"`
	Expiration      string `json:"Expiration"`
	AccountID       string `json:"AccountId"`
	AccountName     string `json:"AccountName"`
	Role            string `json:"Role"`
	RoleARN         string `json:"RoleArn"`
	Region          string `json:"Region"`
	SessionID       string `json:"SessionId"`
	SourceIdentity  string `json:"SourceIdentity"`
	Rule            string `json:"Rule"`
	AuditEventID    string `json:"AuditEventId"`
}

func expiration(s *brokerv1.Session) string {
	return s.GetCredentials().GetExpiration().AsTime().UTC().Format(time.RFC3339)
}

// writeJSON prints every session (one object per target, in order).
func writeSessionsJSON(w io.Writer, sessions []*brokerv1.Session) error {
	out := make([]sessionJSON, len(sessions))
	for i, s := range sessions {
		c := s.GetCredentials()
		out[i] = sessionJSON{
			AccessKeyID: c.GetAccessKeyId(), SecretAccessKey: c.GetSecretAccessKey(), SessionToken: c.GetSessionToken(),
			Expiration: expiration(s), AccountID: s.GetAccountId(), AccountName: s.GetAccountName(), Role: s.GetRole(),
			RoleARN: s.GetRoleArn(), Region: s.GetRegion(), SessionID: s.GetSessionId(),
			SourceIdentity: s.GetSourceIdentity(), Rule: s.GetRule(), AuditEventID: s.GetAuditEventId(),
		}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if len(out) == 1 {
		return enc.Encode(out[0])
	}
	return enc.Encode(out)
}

// writeSession prints one session as env, credential-process or github-env.
func writeSession(w io.Writer, format string, s *brokerv1.Session, getenv func(string) string) error {
	c := s.GetCredentials()
	switch format {
	case "credential-process":
		return json.NewEncoder(w).Encode(credentialProcess{
			Version: 1, AccessKeyID: c.GetAccessKeyId(), SecretAccessKey: c.GetSecretAccessKey(),
			SessionToken: c.GetSessionToken(), Expiration: expiration(s),
		})
	case "json":
		return writeSessionsJSON(w, []*brokerv1.Session{s})
	case "github-env":
		return writeGitHubEnv(w, s, getenv)
	default:
		vars := envVars(s)
		var b strings.Builder
		for _, kv := range vars {
			fmt.Fprintf(&b, "export %s=%s\n", kv[0], shellQuote(kv[1]))
		}
		_, err := io.WriteString(w, b.String())
		return err
	}
}

func envVars(s *brokerv1.Session) [][2]string {
	c := s.GetCredentials()
	vars := [][2]string{
		{"AWS_ACCESS_KEY_ID", c.GetAccessKeyId()},
		{"AWS_SECRET_ACCESS_KEY", c.GetSecretAccessKey()},
		{"AWS_SESSION_TOKEN", c.GetSessionToken()},
	}
	if s.GetRegion() != "" {
		vars = append(vars, [2]string{"AWS_REGION", s.GetRegion()}, [2]string{"AWS_DEFAULT_REGION", s.GetRegion()})
	}
	return append(vars, [2]string{"AWS_CREDENTIAL_EXPIRATION", expiration(s)})
}

// writeGitHubEnv masks the secrets in the job log (workflow commands on
// stdout), then appends the variables to the $GITHUB_ENV file so later
// steps get them. Nothing secret is printed unmasked.
func writeGitHubEnv(w io.Writer, s *brokerv1.Session, getenv func(string) string) error {
	path := getenv("GITHUB_ENV")
	if path == "" {
		return usagef("--output github-env: GITHUB_ENV is unset (this output is for GitHub Actions steps)")
	}
	c := s.GetCredentials()
	for _, secret := range []string{c.GetAccessKeyId(), c.GetSecretAccessKey(), c.GetSessionToken()} {
		if strings.ContainsAny(secret, "\r\n") {
			return fmt.Errorf("credential contains a line break; refusing to write it to GITHUB_ENV")
		}
		if _, err := fmt.Fprintf(w, "::add-mask::%s\n", secret); err != nil {
			return err
		}
	}
	var b strings.Builder
	for _, kv := range envVars(s) {
		fmt.Fprintf(&b, "%s=%s\n", kv[0], kv[1])
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open GITHUB_ENV: %w", err)
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return fmt.Errorf("write GITHUB_ENV: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "credmatrix: credentials for %s in %s (%s) written to GITHUB_ENV, expiring %s\n",
		s.GetRole(), s.GetAccountId(), s.GetRegion(), expiration(s))
	return err
}

// shellQuote quotes s for POSIX shells.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
