package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/credmatrix/credmatrix/clients/brokerclient"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/spf13/cobra"
)

func (a *app) credsCommand() *cobra.Command {
	var (
		t         brokerclient.Target
		tokenFile string
		tokenEnv  string
		output    string
		reason    string
	)
	cmd := &cobra.Command{
		Use:   "creds",
		Short: "Swap this job's OIDC token for short-lived AWS credentials",
		Long: `creds sends the job's OIDC token to the broker and prints the AWS session the
trust policy allows, in the chosen format. Secrets go to standard output only.`,
		Example: `  # GitHub Actions / any CI: token in a file or variable
  credmatrix creds --role deploy --account dev --token-file "$TOKEN_FILE" --output env
  eval "$(credmatrix creds --role deploy --account dev --token-env CI_JOB_JWT)"

  # AWS CLI / SDK profile (~/.aws/config)
  [profile dev-deploy]
  credential_process = credmatrix creds --role deploy --account dev --token-file /var/run/token --output credential-process`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if t.Role == "" {
				return usagef("--role is required")
			}
			if t.Account == "" {
				return usagef("--account is required")
			}
			switch output {
			case "env", "json", "credential-process":
			default:
				return usagef("--output %q: want env, json or credential-process", output)
			}
			token, err := a.readToken(tokenFile, tokenEnv)
			if err != nil {
				return err
			}
			conn, err := a.dial(a.brokerAddr)
			if err != nil {
				return err
			}
			defer conn.Close()
			sessions, err := brokerclient.New(conn).IssueSession(cmd.Context(), token, reason, t)
			if err != nil {
				return err
			}
			return writeSession(a.out, output, sessions[0])
		},
	}
	f := cmd.Flags()
	f.StringVar(&t.Role, "role", "", "role name in the trust policy (required)")
	f.StringVar(&t.Account, "account", "", "account id or name (required)")
	f.StringVar(&t.Region, "region", "", "region (default: the account's home region)")
	f.DurationVar(&t.Duration, "duration", 0, "session duration (default: the role's maximum)")
	f.StringVar(&tokenFile, "token-file", "", "read the OIDC token from this file")
	f.StringVar(&tokenEnv, "token-env", "CREDMATRIX_OIDC_TOKEN", "read the OIDC token from this environment variable")
	f.StringVarP(&output, "output", "o", "env", "output format: env, json or credential-process")
	f.StringVar(&reason, "reason", "", "why you need the session (recorded in the audit log)")
	return cmd
}

// readToken takes the OIDC token from a file (re-read on every call) or an
// environment variable.
func (a *app) readToken(file, envName string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", usagef("read token file: %v", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", usagef("token file %s is empty", file)
		}
		return tok, nil
	}
	tok := strings.TrimSpace(a.getenv(envName))
	if tok == "" {
		return "", usagef("no OIDC token: set %s or pass --token-file (in the dev stack: export %s=$(credmatrix dev token))", envName, envName)
	}
	return tok, nil
}

// credentialProcess is the AWS CLI/SDK credential_process output, Version 1.
type credentialProcess struct {
	Version         int    `json:"Version"`
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	SessionToken    string `json:"SessionToken"`
	Expiration      string `json:"Expiration"`
}

func writeSession(w interface{ Write([]byte) (int, error) }, format string, s *brokerv1.Session) error {
	c := s.GetCredentials()
	exp := c.GetExpiration().AsTime().UTC().Format(time.RFC3339)
	switch format {
	case "credential-process":
		return json.NewEncoder(w).Encode(credentialProcess{
			Version: 1, AccessKeyID: c.GetAccessKeyId(), SecretAccessKey: c.GetSecretAccessKey(),
			SessionToken: c.GetSessionToken(), Expiration: exp,
		})
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{
			"AccessKeyId": c.GetAccessKeyId(), "SecretAccessKey": c.GetSecretAccessKey(),
			"SessionToken": c.GetSessionToken(), "Expiration": exp,
			"AccountId": s.GetAccountId(), "AccountName": s.GetAccountName(), "Role": s.GetRole(),
			"RoleArn": s.GetRoleArn(), "Region": s.GetRegion(), "SessionId": s.GetSessionId(),
			"SourceIdentity": s.GetSourceIdentity(), "Rule": s.GetRule(), "AuditEventId": s.GetAuditEventId(),
		})
	default:
		_, err := fmt.Fprintf(w, "export AWS_ACCESS_KEY_ID=%s\nexport AWS_SECRET_ACCESS_KEY=%s\nexport AWS_SESSION_TOKEN=%s\nexport AWS_REGION=%s\nexport AWS_CREDENTIAL_EXPIRATION=%s\n",
			shellQuote(c.GetAccessKeyId()), shellQuote(c.GetSecretAccessKey()), shellQuote(c.GetSessionToken()),
			shellQuote(s.GetRegion()), shellQuote(exp))
		return err
	}
}

// shellQuote quotes s for POSIX shells.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
