package broker

import (
	"fmt"
	"regexp"
	"time"
	"unicode/utf8"

	"github.com/credmatrix/credmatrix/services/broker/policy"
)

// Request limits. They bound the work and memory an unauthenticated
// request can cost, and mirror the API contract.
const (
	// MaxTokenBytes bounds a raw OIDC token.
	MaxTokenBytes = 16 << 10
	// MaxTargets bounds the sessions one request may ask for.
	MaxTargets = 10
	// MaxReasonBytes bounds the caller's free-text reason.
	MaxReasonBytes = 256
	// MaxSessionPolicyBytes bounds a scope-down session policy.
	MaxSessionPolicyBytes = 2048
	// MinSessionDuration is the shortest session that may be asked for
	// (the STS minimum).
	MinSessionDuration = 15 * time.Minute
	// MaxSessionDuration is the longest session that may be asked for
	// (the STS maximum for a role).
	MaxSessionDuration = 12 * time.Hour

	maxFieldBytes        = 256
	maxSessionTokenBytes = 8 << 10
)

var (
	regionRE      = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)
	accessKeyIDRE = regexp.MustCompile(`^[A-Z0-9]{16,128}$`)
)

func validateToken(token string) error {
	switch {
	case token == "":
		return invalidf("token", "required")
	case len(token) > MaxTokenBytes:
		return invalidf("token", fmt.Sprintf("exceeds %d bytes", MaxTokenBytes))
	}
	return nil
}

func validateIssue(req IssueRequest) error {
	if err := validateToken(req.Token); err != nil {
		return err
	}
	if len(req.Targets) == 0 || len(req.Targets) > MaxTargets {
		return invalidf("targets", fmt.Sprintf("1 to %d required", MaxTargets))
	}
	for i, t := range req.Targets {
		if err := validateTarget(fmt.Sprintf("targets[%d]", i), t); err != nil {
			return err
		}
	}
	switch {
	case len(req.Reason) > MaxReasonBytes:
		return invalidf("reason", fmt.Sprintf("at most %d bytes", MaxReasonBytes))
	case !utf8.ValidString(req.Reason):
		return invalidf("reason", "must be UTF-8")
	}
	return nil
}

func validateTarget(field string, t Target) error {
	switch {
	case t.Role == "":
		return invalidf(field+".role", "required")
	case len(t.Role) > maxFieldBytes || !utf8.ValidString(t.Role):
		return invalidf(field+".role", "not a role name")
	case t.Account == "":
		return invalidf(field+".account", "required")
	case len(t.Account) > maxFieldBytes || !utf8.ValidString(t.Account):
		return invalidf(field+".account", "not an account id or name")
	case t.Region != "" && !regionRE.MatchString(t.Region):
		return invalidf(field+".region", "not an AWS region")
	case t.Duration != 0 && (t.Duration < MinSessionDuration || t.Duration > MaxSessionDuration):
		return invalidf(field+".duration", "must be between 15m and 12h")
	case len(t.Policy) > MaxSessionPolicyBytes:
		return invalidf(field+".policy", fmt.Sprintf("at most %d bytes", MaxSessionPolicyBytes))
	}
	if t.Policy != "" {
		// Read strictly, as SessionPolicy will: a document Go and IAM
		// would read differently is refused here, naming the field.
		if err := policy.CheckPolicyJSON(t.Policy); err != nil {
			return invalidf(field+".policy", err.Error())
		}
	}
	return nil
}

func validateGetSession(accessKeyID, sessionToken string) error {
	switch {
	case accessKeyID == "":
		return invalidf("access_key_id", "required")
	case !accessKeyIDRE.MatchString(accessKeyID):
		return invalidf("access_key_id", "not an access key id")
	case sessionToken == "":
		return invalidf("session_token", "required")
	case len(sessionToken) > maxSessionTokenBytes:
		return invalidf("session_token", fmt.Sprintf("exceeds %d bytes", maxSessionTokenBytes))
	}
	return nil
}
