package keyguard

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/clients/keyguardclient/envelope"
	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// Grant limits of the API.
const (
	// MaxGrantLifetime is the longest a grant created through the API may
	// live: grants always expire, and are renewed on purpose.
	MaxGrantLifetime = 366 * 24 * time.Hour
	// MaxPrincipalLen bounds a grant's principal.
	MaxPrincipalLen = 512
	// MaxGrantRegions bounds a grant's regions.
	MaxGrantRegions = 32
)

// addGrantLocked indexes g; the caller holds gmu (or is New).
func (s *Service) addGrantLocked(g *Grant) {
	s.grants[g.ID] = g
	s.byWho[g.Principal] = append(s.byWho[g.Principal], g)
}

func (s *Service) removeGrantLocked(id string) {
	g := s.grants[id]
	if g == nil {
		return
	}
	delete(s.grants, id)
	s.byWho[g.Principal] = slices.DeleteFunc(slices.Clone(s.byWho[g.Principal]), func(x *Grant) bool { return x.ID == id })
	if len(s.byWho[g.Principal]) == 0 {
		delete(s.byWho, g.Principal)
	}
}

// validateGrant checks a grant from the API, naming the field.
func (s *Service) validateGrant(g *Grant, now time.Time) error {
	inv := func(msg string) error { return &domainerr.Error{Code: domainerr.Invalid, Message: msg} }
	switch {
	case g.Principal == "":
		return inv("grant.principal: required")
	case len(g.Principal) > MaxPrincipalLen:
		return inv(fmt.Sprintf("grant.principal: exceeds %d bytes", MaxPrincipalLen))
	case strings.ContainsAny(g.Principal, "*\n\r\t "):
		return inv("grant.principal: must name one principal exactly (no wildcards or spaces)")
	}
	if err := validateName("grant.data_class", g.DataClass); err != nil {
		return err
	}
	if len(g.Operations) == 0 {
		return inv("grant.operations: at least one required")
	}
	for _, op := range g.Operations {
		if !op.valid() {
			return inv(fmt.Sprintf("grant.operations: unknown %s", op))
		}
	}
	switch {
	case len(g.Regions) == 0:
		return inv("grant.regions: at least one required")
	case len(g.Regions) > MaxGrantRegions:
		return inv(fmt.Sprintf("grant.regions: at most %d", MaxGrantRegions))
	}
	for _, r := range g.Regions {
		if !envelope.ValidName(r) {
			return inv("grant.regions: " + fmt.Sprintf("%q", r) + " must match " + namePattern)
		}
		if _, ok := s.rings[Ring{DataClass: g.DataClass, Region: r}]; !ok {
			return inv(fmt.Sprintf("grant.regions: no key ring for data class %s in region %s", g.DataClass, r))
		}
	}
	if err := validateContext(g.RequiredContext); err != nil {
		return &domainerr.Error{Code: domainerr.Invalid, Message: "grant.required_context" + strings.TrimPrefix(domainerr.MessageOf(err), "encryption_context")}
	}
	switch {
	case g.ExpireTime.IsZero():
		return inv("grant.expire_time: required (grants always expire)")
	case !g.ExpireTime.After(now):
		return inv("grant.expire_time: must be in the future")
	case g.ExpireTime.Sub(now) > MaxGrantLifetime:
		return inv(fmt.Sprintf("grant.expire_time: at most %s ahead", MaxGrantLifetime))
	}
	return nil
}

func grantDetail(g *Grant) func(*auditv1.KeyDetail) {
	return func(kd *auditv1.KeyDetail) {
		kd.Grantee = g.Principal
		kd.GrantRegions = slices.Clone(g.Regions)
		for _, op := range g.Operations {
			kd.GrantOperations = append(kd.GrantOperations, op.String())
		}
		kd.GrantRequiredContext = maps.Clone(g.RequiredContext)
		if !g.ExpireTime.IsZero() {
			kd.GrantExpireTime = timestamppb.New(g.ExpireTime)
		}
	}
}

// CreateGrant stores a new grant for an administrator and returns it with
// its id. It is audited before it takes effect, and in effect for the next
// request once it returns.
func (s *Service) CreateGrant(ctx context.Context, caller string, g Grant) (Grant, uint64, error) {
	now := s.clock()
	g = cloneGrant(g)
	g.CreatedBy, g.CreateTime = caller, now.UTC()
	id, err := newGrantID(s.rand)
	if err != nil {
		return Grant{}, 0, &domainerr.Error{Code: domainerr.Internal, Message: domainerr.InternalMessage, Err: err}
	}
	g.ID = id
	ring := Ring{DataClass: g.DataClass}
	if len(g.Regions) == 1 {
		ring.Region = g.Regions[0]
	}
	o := &op{caller: caller, kind: auditv1.Kind_KIND_GRANT_CREATE, ring: ring, grantID: g.ID, context: g.RequiredContext, detail: grantDetail(&g)}
	if err := s.isAdmin(ctx, o); err != nil {
		return Grant{}, 0, err
	}
	if err := s.validateGrant(&g, now); err != nil {
		return Grant{}, 0, err
	}
	seq, err := s.record(ctx, o, auditv1.Decision_DECISION_ALLOW, "grant created by "+caller)
	if err != nil {
		return Grant{}, 0, err
	}
	s.gmu.Lock()
	err = s.store.PutGrant(ctx, g)
	if err == nil {
		stored := cloneGrant(g)
		s.addGrantLocked(&stored)
	}
	s.gmu.Unlock()
	if err != nil {
		return Grant{}, 0, s.fail(ctx, o, &domainerr.Error{Code: domainerr.Unavailable, Message: "grant store unavailable; grant not created", Err: err})
	}
	return g, seq, nil
}

// RevokeGrant removes a grant for an administrator. It is audited first;
// once it returns, no request can use the grant any more.
func (s *Service) RevokeGrant(ctx context.Context, caller, id, reason string) (uint64, error) {
	if id == "" {
		return 0, &domainerr.Error{Code: domainerr.Invalid, Message: "grant_id: required"}
	}
	if len(id) > 128 {
		return 0, &domainerr.Error{Code: domainerr.Invalid, Message: "grant_id: exceeds 128 bytes"}
	}
	if err := s.sync(ctx); err != nil {
		return 0, err
	}
	o := &op{caller: caller, kind: auditv1.Kind_KIND_GRANT_REVOKE, grantID: id}
	static := false
	s.gmu.RLock()
	if g := s.grants[id]; g != nil {
		o.ring.DataClass = g.DataClass
		gc := cloneGrant(*g)
		o.detail = grantDetail(&gc)
		static = g.static
	}
	s.gmu.RUnlock()
	if err := s.isAdmin(ctx, o); err != nil {
		return 0, err
	}
	if o.detail == nil {
		return 0, &domainerr.Error{Code: domainerr.NotFound, Message: fmt.Sprintf("grant %q not found", id)}
	}
	if static {
		return 0, &domainerr.Error{Code: domainerr.FailedPrecondition, Message: fmt.Sprintf("grant %s is defined in configuration; remove it there", id)}
	}
	if reason == "" {
		reason = "no reason given"
	}
	// Audit first (fail closed), then remove under the write lock: once
	// RevokeGrant returns, no request can pass on the grant. The lock is
	// not held across the audit round trip, so requests keep flowing.
	seq, err := s.record(ctx, o, auditv1.Decision_DECISION_ALLOW, "grant revoked by "+caller+": "+reason)
	if err != nil {
		return 0, err
	}
	// The store's version moves with the delete, so requests at every
	// other replica reload before they decide again.
	s.gmu.Lock()
	_, err = s.store.DeleteGrant(ctx, id)
	if err == nil {
		s.removeGrantLocked(id)
	}
	s.gmu.Unlock()
	if err != nil {
		return 0, s.fail(ctx, o, &domainerr.Error{Code: domainerr.Unavailable, Message: "grant store unavailable; grant not revoked", Err: err})
	}
	return seq, nil
}

// ListGrantsInput filters and pages ListGrants.
type ListGrantsInput struct {
	// Principal and DataClass filter when set.
	Principal, DataClass string
	// PageSize is 1 to 1000; 0 means 100.
	PageSize int
	// PageToken continues a previous listing.
	PageToken string
}

// ListGrants lists grants (configured and created) in id order, for an
// administrator.
func (s *Service) ListGrants(ctx context.Context, caller string, in ListGrantsInput) ([]Grant, string, error) {
	o := &op{caller: caller, kind: auditv1.Kind_KIND_GRANT_CREATE, ring: Ring{DataClass: in.DataClass},
		detail: func(kd *auditv1.KeyDetail) { kd.Operation = "list-grants" }}
	if err := s.isAdmin(ctx, o); err != nil {
		return nil, "", err
	}
	if err := s.sync(ctx); err != nil {
		return nil, "", err
	}
	switch {
	case in.PageSize < 0 || in.PageSize > 1000:
		return nil, "", &domainerr.Error{Code: domainerr.Invalid, Message: "page_size: must be 0 to 1000"}
	case in.PageSize == 0:
		in.PageSize = 100
	}
	after := ""
	if in.PageToken != "" {
		b, err := base64.RawURLEncoding.DecodeString(in.PageToken)
		if err != nil || len(b) == 0 {
			return nil, "", &domainerr.Error{Code: domainerr.Invalid, Message: "page_token: not a token from ListGrants"}
		}
		after = string(b)
	}
	s.gmu.RLock()
	var all []Grant
	for _, g := range s.grants {
		if (in.Principal == "" || g.Principal == in.Principal) && (in.DataClass == "" || g.DataClass == in.DataClass) && g.ID > after {
			all = append(all, cloneGrant(*g))
		}
	}
	s.gmu.RUnlock()
	slices.SortFunc(all, func(a, b Grant) int { return compare(a.ID, b.ID) })
	next := ""
	if len(all) > in.PageSize {
		all = all[:in.PageSize]
		next = base64.RawURLEncoding.EncodeToString([]byte(all[len(all)-1].ID))
	}
	return all, next, nil
}

func newGrantID(r io.Reader) (string, error) {
	var b [12]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", fmt.Errorf("grant id: %w", err)
	}
	return "g-" + hex.EncodeToString(b[:]), nil
}
