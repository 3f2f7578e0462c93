// Package brokerclient is the Go client of the credmatrix broker: it swaps an
// OIDC token for short-lived AWS sessions.
//
// It is a thin, context-first layer over the generated gRPC client that turns
// a policy denial into a *DeniedError carrying the broker's safe reason, so
// callers can show users why and how to reproduce the decision locally.
package brokerclient

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/credmatrix/credmatrix/platform/grpcclient"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Client calls one broker. It is safe for concurrent use; share one per
// connection.
type Client struct {
	rpc   brokerv1.BrokerServiceClient
	retry Retry
}

// Option configures a Client.
type Option func(*Client)

// WithRetry replaces DefaultRetry.
func WithRetry(r Retry) Option { return func(c *Client) { c.retry = r } }

// New returns a client using conn (see platform/grpcclient.Dial for mTLS).
// Share one connection for many calls: it is reused.
func New(conn grpc.ClientConnInterface, opts ...Option) *Client {
	c := &Client{rpc: brokerv1.NewBrokerServiceClient(conn), retry: DefaultRetry}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Target is one session to ask for.
type Target struct {
	// Role name in the trust policy.
	Role string
	// Account id or name.
	Account string
	// Region; empty means the account's home region.
	Region string
	// Duration; 0 means the role's maximum.
	Duration time.Duration
	// Policy is an optional extra scope-down IAM policy (JSON).
	Policy string
}

// DeniedError is a refusal by the broker's trust policy.
type DeniedError struct {
	// Rule that refused ("default-deny" when no rule allowed).
	Rule string
	// Reason, safe to show.
	Reason string
	// AuditEventID of the recorded denial.
	AuditEventID string
	// Hint tells how to reproduce the decision locally.
	Hint string
	// Detail is the broker's DenialDetail (nil when it sent none): what
	// the hint reproduces, for callers that build their own command line.
	Detail *brokerv1.DenialDetail
	err    error
}

func (e *DeniedError) Error() string {
	msg := "denied"
	if e.Rule != "" {
		msg += " by rule " + e.Rule
	}
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}

// Unwrap returns the gRPC status error.
func (e *DeniedError) Unwrap() error { return e.err }

// IssueSession asks for one session per target, all or none. Unavailable
// and throttled calls are retried (see Retry) within ctx's deadline.
func (c *Client) IssueSession(ctx context.Context, token, reason string, targets ...Target) ([]*brokerv1.Session, error) {
	req := &brokerv1.IssueSessionRequest{Token: token, Reason: reason}
	for _, t := range targets {
		pt := &brokerv1.SessionTarget{Role: t.Role, Account: t.Account, Region: t.Region, Policy: t.Policy}
		if t.Duration > 0 {
			pt.Duration = durationpb.New(t.Duration)
		}
		req.Targets = append(req.Targets, pt)
	}
	var resp *brokerv1.IssueSessionResponse
	err := c.retry.do(ctx, func(ctx context.Context) (err error) {
		resp, err = c.rpc.IssueSession(ctx, req)
		return err
	})
	if err != nil {
		return nil, wrap(err)
	}
	return resp.GetSessions(), nil
}

// wrap turns a PERMISSION_DENIED status with a DenialDetail into a
// *DeniedError and leaves every other error as it is.
func wrap(err error) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.PermissionDenied {
		return err
	}
	d := &DeniedError{Reason: st.Message(), err: err}
	for _, det := range st.Details() {
		if dd, ok := det.(*brokerv1.DenialDetail); ok {
			d.Rule, d.Reason, d.AuditEventID, d.Hint, d.Detail = dd.GetRule(), dd.GetReason(), dd.GetAuditEventId(), dd.GetHint(), dd
		}
	}
	return d
}

// IsDenied reports whether err is a policy denial.
func IsDenied(err error) bool {
	var d *DeniedError
	return errors.As(err, &d)
}

// Describe formats a session's non-secret identity for humans.
func Describe(s *brokerv1.Session) string {
	return fmt.Sprintf("%s in %s (%s) %s until %s", s.GetRole(), s.GetAccountName(), s.GetAccountId(), s.GetRegion(),
		s.GetCredentials().GetExpiration().AsTime().Format(time.RFC3339))
}

// Conn is a Client that owns its connection.
type Conn struct {
	*Client
	conn *grpc.ClientConn
}

// Dial connects to the broker at cfg.Target (TLS 1.3; mTLS when cfg has a
// client certificate) and returns a client that owns the connection: reuse
// it for every call, Close it when done.
func Dial(cfg grpcclient.Config, opts ...Option) (*Conn, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	conn, err := grpcclient.Dial(cfg)
	if err != nil {
		return nil, err
	}
	return &Conn{Client: New(conn, opts...), conn: conn}, nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.conn.Close() }
