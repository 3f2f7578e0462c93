package grpcapi

import (
	"strings"
	"time"

	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"github.com/credmatrix/credmatrix/services/broker"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// withDenial adds a DenialDetail to a PERMISSION_DENIED status, so a CI
// log shows which rule refused, the audit event to look up and how to
// reproduce the decision offline.
func withDenial(st *status.Status, dn *broker.Denial) *status.Status {
	detail := &brokerv1.DenialDetail{
		Rule:         dn.Rule,
		Reason:       dn.Reason,
		AuditEventId: dn.AuditEventID,
		Hint:         Hint(dn),
		Role:         dn.Role,
		Account:      dn.Account,
		Region:       dn.Region,
		ScopeDown:    dn.ScopeDown,
		PolicySha256: dn.PolicySHA256,
	}
	if dn.Duration > 0 {
		detail.Duration = durationpb.New(dn.Duration)
	}
	if !dn.DecidedAt.IsZero() {
		detail.DecidedAt = timestamppb.New(dn.DecidedAt)
	}
	if withDetail, err := st.WithDetails(detail); err == nil {
		return withDetail
	}
	return st
}

// HintTokenEnv is the environment variable the hint reads the token
// from; clients that know where their token came from say so instead.
const HintTokenEnv = "CREDMATRIX_OIDC_TOKEN"

// Hint is the command line that reproduces a denial offline with
// `credmatrix policy test`: the same token (from the environment), the
// trust policy that decided (and its digest, checked), the role, account
// and region decided, the duration and scope-down policy asked for, and
// the decision time, so the one decision function answers the same. A
// refusal by the broker's state (a freeze, a revocation) cannot be
// reproduced offline; the hint says whom to ask.
func Hint(dn *broker.Denial) string {
	switch dn.Rule {
	case broker.RuleAccountFrozen, broker.RuleRevoked:
		return "an operator froze the account or revoked these sessions (incident response); ask them, quoting audit event " + dn.AuditEventID
	}
	args := []string{"credmatrix", "policy", "test", "--token-env", HintTokenEnv}
	if dn.PolicySource != "" {
		args = append(args, "--policy", shellQuote(dn.PolicySource))
	}
	if dn.PolicySHA256 != "" {
		args = append(args, "--policy-sha256", dn.PolicySHA256)
	}
	args = append(args, "--role", shellQuote(dn.Role), "--account", shellQuote(dn.Account))
	if dn.Region != "" {
		args = append(args, "--region", shellQuote(dn.Region))
	}
	if dn.Duration > 0 {
		args = append(args, "--duration", dn.Duration.String())
	}
	if dn.ScopeDown {
		args = append(args, "--scope-down", "SCOPE-DOWN.json")
	}
	if !dn.DecidedAt.IsZero() {
		args = append(args, "--time", dn.DecidedAt.UTC().Format(time.RFC3339))
	}
	return strings.Join(args, " ")
}
