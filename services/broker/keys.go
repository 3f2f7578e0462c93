package broker

import (
	"context"
	"fmt"
	"strings"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/broker/oidc"
)

// keyWatcher is implemented by verifiers that report changes in their
// issuers' keys (*oidc.Verifier).
type keyWatcher interface {
	OnKeyEvent(f func(ctx context.Context, ev oidc.KeyEvent))
}

// keyRefresher is implemented by verifiers whose issuers' keys can be
// refetched on demand (*oidc.Verifier).
type keyRefresher interface {
	RefreshKeys(ctx context.Context) error
}

// watchKeys has v report key changes and outages to the audit log.
func (s *Service) watchKeys(v TokenVerifier) {
	if w, ok := v.(keyWatcher); ok {
		w.OnKeyEvent(s.auditKeyEvent)
	}
}

// refreshKeys refetches v's keys (SIGHUP, ReloadPolicy): withdrawn keys
// stop verifying at once, even when the policy file did not change. A
// failure keeps the cached keys within their grace.
func refreshKeys(ctx context.Context, v TokenVerifier) error {
	if r, ok := v.(keyRefresher); ok {
		return r.RefreshKeys(ctx)
	}
	return nil
}

// adoptKeys lets a reloaded policy's verifier start with the cached keys
// of the one it replaces, so an issuer outage during a reload does not
// lose them.
func adoptKeys(next, cur TokenVerifier) {
	n, ok1 := next.(*oidc.Verifier)
	c, ok2 := cur.(*oidc.Verifier)
	if ok1 && ok2 {
		n.AdoptKeys(c)
	}
}

// maxKidsListed bounds the key ids named in one event; a kid is at most
// maxKidBytes. Both come from the issuer's JWKS.
const (
	maxKidsListed = 8
	maxKidBytes   = 64
)

// auditKeyEvent records a change in an issuer's keys: rotations and
// withdrawals, and outages (refresh failed, cached keys until the end of
// the grace, then refusal). The cause of a failure goes to KeyEventLog,
// never to the log of record.
func (s *Service) auditKeyEvent(ctx context.Context, ke oidc.KeyEvent) {
	ev := s.newEvent(ctx, s.now(), auditv1.Decision_DECISION_ALLOW)
	ev.Kind = auditv1.Kind_KIND_ISSUER_KEYS
	var action string
	switch ke.Kind {
	case oidc.KeysChanged:
		var parts []string
		for _, p := range []struct {
			name string
			kids []string
		}{{"added", ke.Added}, {"withdrawn", ke.Withdrawn}, {"replaced", ke.Replaced}} {
			if len(p.kids) > 0 {
				parts = append(parts, p.name+" "+kidList(p.kids))
			}
		}
		action = "issuer signing keys changed: " + strings.Join(parts, "; ")
		ev.Reason = "issuer signing keys changed"
	case oidc.KeysRefreshFailed:
		ev.Decision = auditv1.Decision_DECISION_ERROR
		action = "issuer signing keys could not be refreshed; cached keys verify until " + ke.Until.UTC().Format("2006-01-02T15:04:05Z")
		ev.Reason = "issuer outage: serving cached signing keys within the grace"
	case oidc.KeysUnavailable:
		ev.Decision = auditv1.Decision_DECISION_ERROR
		action = "issuer signing keys unavailable; tokens from this issuer are refused until it answers"
		ev.Reason = "issuer outage: no usable signing keys; tokens refused as unavailable"
	case oidc.KeysRecovered:
		action = "issuer signing keys fetched again after an outage"
		ev.Reason = "issuer recovered"
	default:
		return
	}
	ev.Actor = &auditv1.Actor{Principal: "broker", Issuer: truncate(ke.Issuer, maxFieldBytes)}
	ev.Detail = &auditv1.Event_Admin{Admin: &auditv1.AdminDetail{Action: action, Issuer: truncate(ke.Issuer, maxFieldBytes)}}
	_, err := s.append(ctx, ev)
	if s.keyLog != nil {
		s.keyLog(ke, err)
	}
}

func kidList(kids []string) string {
	out := make([]string, 0, min(len(kids), maxKidsListed))
	for i, k := range kids {
		if i == maxKidsListed {
			out = append(out, fmt.Sprintf("and %d more", len(kids)-maxKidsListed))
			break
		}
		out = append(out, truncate(strings.ToValidUTF8(k, "?"), maxKidBytes))
	}
	return "[" + strings.Join(out, " ") + "]"
}
