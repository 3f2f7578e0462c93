package keyguard_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/clients/keyguardclient/envelope"
	"github.com/credmatrix/credmatrix/platform/domainerr"
	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/localkms"
	"github.com/credmatrix/credmatrix/services/keyguard/sqlite"
)

var update = flag.Bool("update", false, "regenerate testdata/golden (go test -run TestGolden -update)")

const (
	admin  = "spiffe://credmatrix.dev/admin"
	reader = "spiffe://credmatrix.dev/reader"
)

// batchAuditor is a fakeAuditor that also appends batches, counting the
// appends it receives.
type batchAuditor struct {
	fakeAuditor
	appends atomic.Int64
}

func (a *batchAuditor) Append(ctx context.Context, ev *auditv1.Event) (*auditv1.AppendResult, error) {
	a.appends.Add(1)
	return a.fakeAuditor.Append(ctx, ev)
}

func (a *batchAuditor) AppendBatch(ctx context.Context, evs []*auditv1.Event) ([]*auditv1.AppendResult, error) {
	a.appends.Add(1)
	out := make([]*auditv1.AppendResult, len(evs))
	for i, ev := range evs {
		r, err := a.fakeAuditor.Append(ctx, ev)
		if err != nil {
			return nil, err
		}
		out[i] = r
	}
	return out, nil
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// full is a Service with admins, policies, a SQLite store and a batch
// auditor, over a local keystore.
type full struct {
	svc     *keyguard.Service
	auditor *batchAuditor
	keyring *localkms.Keyring
	clock   *clock
	dir     string
}

type fullOpts struct {
	policies []keyguard.RingPolicy
	dir      string
	keyring  *localkms.Keyring
}

func newFull(t *testing.T, o fullOpts) *full {
	t.Helper()
	ctx := context.Background()
	if o.dir == "" {
		o.dir = t.TempDir()
	}
	c := &clock{t: now}
	kr := o.keyring
	if kr == nil {
		var err error
		kr, err = localkms.Open(filepath.Join(o.dir, "keystore.json"), bytes.Repeat([]byte{1}, 32), localkms.WithClock(c.now))
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []keyguard.Ring{euRing, usRing} {
		if err := kr.EnsureRing(ctx, r.DataClass, r.Region); err != nil {
			t.Fatal(err)
		}
	}
	store, err := sqlite.Open(ctx, filepath.Join(o.dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	a := &batchAuditor{}
	allGrants := append(slicesClone(grants), keyguard.Grant{
		ID: "reader-all", Principal: reader, DataClass: "confidential",
		Operations: []keyguard.Operation{keyguard.OpDecrypt, keyguard.OpRewrap},
		Regions:    []string{"eu-west-1", "us-east-1"},
	})
	svc, err := keyguard.New(ctx, keyguard.Config{
		Backend: kr, Auditor: a, Store: store, Rings: []keyguard.Ring{euRing, usRing}, RingPolicies: o.policies,
		Grants: allGrants, Admins: []string{admin}, Clock: c.now, BackendName: "local",
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return &full{svc: svc, auditor: a, keyring: kr, clock: c, dir: o.dir}
}

func slicesClone(g []keyguard.Grant) []keyguard.Grant { return append([]keyguard.Grant(nil), g...) }

func (f *full) encrypt(t *testing.T, caller string, ring keyguard.Ring, ctx map[string]string) keyguard.EncryptOutput {
	t.Helper()
	out, err := f.svc.Encrypt(context.Background(), caller, keyguard.EncryptInput{DataClass: ring.DataClass, Region: ring.Region, Plaintext: secretText, Context: ctx})
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	return out
}

func (f *full) lastEvent(t *testing.T) *auditv1.Event {
	t.Helper()
	evs := f.auditor.recorded()
	if len(evs) == 0 {
		t.Fatal("no audit events")
	}
	return evs[len(evs)-1]
}

// TestTamperBattery flips every single bit of an envelope, header and body,
// truncates it at every length, extends it, swaps its wrapped key, and
// changes its context, class, region and version: every variant must fail
// and return no plaintext.
func TestTamperBattery(t *testing.T) {
	f := newFull(t, fullOpts{})
	ctx := context.Background()
	ct := f.encrypt(t, app, euRing, encCtx).Ciphertext
	other := f.encrypt(t, app, euRing, encCtx).Ciphertext
	hdr, _, err := envelope.ParseHeader(ct)
	if err != nil {
		t.Fatal(err)
	}
	decrypt := func(caller string, b []byte, c map[string]string) error {
		out, err := f.svc.Decrypt(ctx, caller, keyguard.DecryptInput{Ciphertext: b, Context: c})
		if err == nil || out.Plaintext != nil {
			return nil
		}
		return err
	}

	t.Run("bit-flips", func(t *testing.T) {
		for i := range len(ct) * 8 {
			b := bytes.Clone(ct)
			b[i/8] ^= 1 << (i % 8)
			// The reader may decrypt both regions, so a flip that turns the
			// region into the other ring's still reaches the crypto.
			if err := decrypt(reader, b, encCtx); err == nil {
				t.Fatalf("bit %d (byte %d of %d, header is %d) flipped: decrypted", i, i/8, len(ct), hdr.Size())
			}
		}
	})
	t.Run("truncations", func(t *testing.T) {
		for n := range len(ct) {
			if err := decrypt(app, ct[:n], encCtx); err == nil {
				t.Fatalf("truncated to %d bytes: decrypted", n)
			}
		}
	})
	// Offsets of the header fields (docs/envelope-format.md).
	c, r := len(hdr.DataClass), len(hdr.Region)
	wkOff := 14 + c + r
	swapKey := func() []byte {
		oh, _, _ := envelope.ParseHeader(other)
		b := bytes.Clone(ct)
		copy(b[wkOff:wkOff+len(hdr.WrappedKey)], oh.WrappedKey)
		return b
	}
	setVersion := func(v byte) []byte {
		b := bytes.Clone(ct)
		b[8+c+r+3] = v
		return b
	}
	setRegion := func(region string) []byte {
		b := bytes.Clone(ct)
		copy(b[8+c:8+c+r], region)
		return b
	}
	tests := []struct {
		name   string
		caller string
		b      []byte
		ctx    map[string]string
		want   domainerr.Code
	}{
		{"extended/one-byte", app, append(bytes.Clone(ct), 0), encCtx, domainerr.Invalid},
		{"extended/block", app, append(bytes.Clone(ct), make([]byte, 16)...), encCtx, domainerr.Invalid},
		{"swapped-wrapped-key", app, swapKey(), encCtx, domainerr.Invalid},
		{"wrong-context/value", app, ct, map[string]string{"tenant": "acme", "record": "invoice-43"}, domainerr.Invalid},
		{"wrong-context/missing-pair", app, ct, map[string]string{"tenant": "acme"}, domainerr.Invalid},
		{"wrong-context/extra-pair", app, ct, map[string]string{"tenant": "acme", "record": "invoice-42", "x": "y"}, domainerr.Invalid},
		{"wrong-context/none", app, ct, nil, domainerr.Invalid},
		{"wrong-region/other-ring", reader, setRegion("us-east-1"), encCtx, domainerr.Invalid},
		{"wrong-region/no-grant", app, setRegion("us-east-1"), encCtx, domainerr.PermissionDenied},
		{"wrong-class/no-ring", app, bytes.Replace(ct, []byte("confidential"), []byte("confidentiaz"), 1), encCtx, domainerr.NotFound},
		{"wrong-version/newer", app, setVersion(2), encCtx, domainerr.NotFound},
		{"wrong-version/zero", app, setVersion(0), encCtx, domainerr.Invalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := f.svc.Decrypt(ctx, tc.caller, keyguard.DecryptInput{Ciphertext: tc.b, Context: tc.ctx})
			if got := domainerr.CodeOf(err); got != tc.want {
				t.Fatalf("Decrypt: %v (code %q), want code %q", err, got, tc.want)
			}
			if out.Plaintext != nil {
				t.Fatal("failed Decrypt returned a plaintext")
			}
		})
	}

	t.Run("version-below-minimum", func(t *testing.T) {
		if _, _, err := f.svc.RotateKey(ctx, admin, euRing.DataClass, euRing.Region, "test"); err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.SetMinDecryptVersion(ctx, admin, euRing.DataClass, euRing.Region, 2, "test"); err != nil {
			t.Fatal(err)
		}
		_, err := f.svc.Decrypt(ctx, app, keyguard.DecryptInput{Ciphertext: ct, Context: encCtx})
		want := "key version 1 of data class confidential in region eu-west-1 is retired (minimum decryption version 2)"
		if domainerr.CodeOf(err) != domainerr.FailedPrecondition || domainerr.MessageOf(err) != want {
			t.Fatalf("Decrypt of a retired version: %v, want failed_precondition %q", err, want)
		}
		ev := f.lastEvent(t)
		if ev.GetDecision() != auditv1.Decision_DECISION_DENY || ev.GetReason() != want {
			t.Errorf("last event %v, want a DENY with the reason", ev)
		}
	})
}

func TestGrants(t *testing.T) {
	ctx := context.Background()
	base := keyguard.Grant{
		Principal: intruder, DataClass: "confidential",
		Operations: []keyguard.Operation{keyguard.OpEncrypt, keyguard.OpDecrypt},
		Regions:    []string{"eu-west-1"}, RequiredContext: map[string]string{"tenant": "acme"},
		ExpireTime: now.Add(time.Hour),
	}
	eu := keyguard.EncryptInput{DataClass: "confidential", Region: "eu-west-1", Plaintext: secretText, Context: encCtx}

	t.Run("create-use-revoke", func(t *testing.T) {
		f := newFull(t, fullOpts{})
		if _, err := f.svc.Encrypt(ctx, intruder, eu); domainerr.CodeOf(err) != domainerr.PermissionDenied {
			t.Fatalf("Encrypt before the grant: %v, want permission_denied", err)
		}
		g, _, err := f.svc.CreateGrant(ctx, admin, base)
		if err != nil {
			t.Fatalf("CreateGrant: %v", err)
		}
		if !strings.HasPrefix(g.ID, "g-") || g.CreatedBy != admin || !g.CreateTime.Equal(now) {
			t.Errorf("created grant %+v", g)
		}
		ev := f.lastEvent(t)
		if ev.GetKind() != auditv1.Kind_KIND_GRANT_CREATE || ev.GetKey().GetGrantee() != intruder || ev.GetKey().GetGrantId() != g.ID ||
			!cmpEqual(ev.GetKey().GetGrantRegions(), []string{"eu-west-1"}) || !cmpEqual(ev.GetKey().GetGrantOperations(), []string{"encrypt", "decrypt"}) {
			t.Errorf("grant event %v", ev)
		}
		out, err := f.svc.Encrypt(ctx, intruder, eu)
		if err != nil {
			t.Fatalf("Encrypt with the grant: %v", err)
		}
		if got := f.lastEvent(t).GetRule(); got != g.ID {
			t.Errorf("event names grant %q, want %q", got, g.ID)
		}
		if _, err := f.svc.RevokeGrant(ctx, admin, g.ID, "incident 7"); err != nil {
			t.Fatalf("RevokeGrant: %v", err)
		}
		// The very next request fails.
		if _, err := f.svc.Decrypt(ctx, intruder, keyguard.DecryptInput{Ciphertext: out.Ciphertext, Context: encCtx}); domainerr.CodeOf(err) != domainerr.PermissionDenied {
			t.Fatalf("Decrypt right after revocation: %v, want permission_denied", err)
		}
		if ev := f.lastEvent(t); ev.GetDecision() != auditv1.Decision_DECISION_DENY || ev.GetActor().GetPrincipal() != intruder {
			t.Errorf("denial not audited: %v", ev)
		}
	})

	t.Run("persisted-across-restart", func(t *testing.T) {
		dir := t.TempDir()
		f := newFull(t, fullOpts{dir: dir})
		g, _, err := f.svc.CreateGrant(ctx, admin, base)
		if err != nil {
			t.Fatal(err)
		}
		g2, _, err := f.svc.CreateGrant(ctx, admin, base)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.RevokeGrant(ctx, admin, g2.ID, ""); err != nil {
			t.Fatal(err)
		}
		f2 := newFull(t, fullOpts{dir: dir, keyring: f.keyring})
		list, _, err := f2.svc.ListGrants(ctx, admin, keyguard.ListGrantsInput{Principal: intruder})
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || list[0].ID != g.ID {
			t.Fatalf("after restart: %+v, want only %s", list, g.ID)
		}
		if _, err := f2.svc.Encrypt(ctx, intruder, eu); err != nil {
			t.Fatalf("Encrypt with the reloaded grant: %v", err)
		}
	})

	denials := []struct {
		name  string
		in    keyguard.EncryptInput
		setup func(f *full)
	}{
		{"deny/expired", eu, func(f *full) { f.clock.add(time.Hour) }},
		{"deny/context-missing", keyguard.EncryptInput{DataClass: "confidential", Region: "eu-west-1", Plaintext: secretText}, nil},
		{"deny/context-other-value", keyguard.EncryptInput{DataClass: "confidential", Region: "eu-west-1", Plaintext: secretText, Context: map[string]string{"tenant": "globex"}}, nil},
		{"deny/cross-region", keyguard.EncryptInput{DataClass: "confidential", Region: "us-east-1", Plaintext: secretText, Context: encCtx}, nil},
	}
	for _, tc := range denials {
		t.Run(tc.name, func(t *testing.T) {
			f := newFull(t, fullOpts{})
			if _, _, err := f.svc.CreateGrant(ctx, admin, base); err != nil {
				t.Fatal(err)
			}
			if tc.setup != nil {
				tc.setup(f)
			}
			before := len(f.auditor.recorded())
			out, err := f.svc.Encrypt(ctx, intruder, tc.in)
			if domainerr.CodeOf(err) != domainerr.PermissionDenied || out.Ciphertext != nil {
				t.Fatalf("Encrypt: %v, want permission_denied", err)
			}
			evs := f.auditor.recorded()[before:]
			if len(evs) != 1 || evs[0].GetDecision() != auditv1.Decision_DECISION_DENY {
				t.Fatalf("events %v, want one DENY", evs)
			}
		})
	}

	admins := []struct {
		name      string
		call      func(f *full) error
		kind      auditv1.Kind
		operation string
		msg       string
	}{
		{"deny/non-admin-create", func(f *full) error { _, _, err := f.svc.CreateGrant(ctx, app, base); return err }, auditv1.Kind_KIND_GRANT_CREATE, "", app + " is not a keyguard administrator"},
		{"deny/non-admin-revoke", func(f *full) error { _, err := f.svc.RevokeGrant(ctx, app, "app-eu", ""); return err }, auditv1.Kind_KIND_GRANT_REVOKE, "", app + " is not a keyguard administrator"},
		{"deny/describe-without-grant", func(f *full) error {
			_, err := f.svc.DescribeKeyRing(ctx, app, "confidential", "eu-west-1")
			return err
		}, auditv1.Kind_KIND_KEY_ROTATE, "describe", "no grant allows " + app + " to describe data class confidential in region eu-west-1"},
		{"deny/non-admin-rotate", func(f *full) error {
			_, _, err := f.svc.RotateKey(ctx, app, "confidential", "eu-west-1", "")
			return err
		}, auditv1.Kind_KIND_KEY_ROTATE, "", app + " is not a keyguard administrator"},
		{"deny/non-admin-retire", func(f *full) error {
			_, err := f.svc.SetMinDecryptVersion(ctx, app, "confidential", "eu-west-1", 1, "")
			return err
		}, auditv1.Kind_KIND_KEY_ROTATE, "set-min-decrypt-version", app + " is not a keyguard administrator"},
		{"deny/non-admin-list", func(f *full) error {
			_, _, err := f.svc.ListGrants(ctx, app, keyguard.ListGrantsInput{})
			return err
		}, auditv1.Kind_KIND_GRANT_CREATE, "list-grants", app + " is not a keyguard administrator"},
	}
	for _, tc := range admins {
		t.Run(tc.name, func(t *testing.T) {
			f := newFull(t, fullOpts{})
			err := tc.call(f)
			if domainerr.CodeOf(err) != domainerr.PermissionDenied || domainerr.MessageOf(err) != tc.msg {
				t.Fatalf("error %v, want permission_denied %q", err, tc.msg)
			}
			ev := f.lastEvent(t)
			if ev.GetKind() != tc.kind || ev.GetDecision() != auditv1.Decision_DECISION_DENY || ev.GetActor().GetPrincipal() != app || ev.GetKey().GetOperation() != tc.operation {
				t.Errorf("event %v, want a %v DENY of %q by %s", ev, tc.kind, tc.operation, app)
			}
		})
	}

	invalid := []struct {
		name    string
		mutate  func(g *keyguard.Grant)
		wantMsg string
	}{
		{"invalid/principal-empty", func(g *keyguard.Grant) { g.Principal = "" }, "grant.principal: required"},
		{"invalid/principal-wildcard", func(g *keyguard.Grant) { g.Principal = "spiffe://credmatrix.dev/*" }, "grant.principal: must name one principal exactly (no wildcards or spaces)"},
		{"invalid/data-class", func(g *keyguard.Grant) { g.DataClass = "Top Secret" }, "grant.data_class: must match [a-z0-9-]{1,63}"},
		{"invalid/no-operations", func(g *keyguard.Grant) { g.Operations = nil }, "grant.operations: at least one required"},
		{"invalid/unknown-operation", func(g *keyguard.Grant) { g.Operations = []keyguard.Operation{9} }, "grant.operations: unknown operation(9)"},
		{"invalid/no-regions", func(g *keyguard.Grant) { g.Regions = nil }, "grant.regions: at least one required"},
		{"invalid/region-without-ring", func(g *keyguard.Grant) { g.Regions = []string{"ap-south-1"} }, "grant.regions: no key ring for data class confidential in region ap-south-1"},
		{"invalid/no-expiry", func(g *keyguard.Grant) { g.ExpireTime = time.Time{} }, "grant.expire_time: required (grants always expire)"},
		{"invalid/expired", func(g *keyguard.Grant) { g.ExpireTime = now.Add(-time.Second) }, "grant.expire_time: must be in the future"},
		{"invalid/too-long", func(g *keyguard.Grant) { g.ExpireTime = now.Add(2 * keyguard.MaxGrantLifetime) }, "grant.expire_time: at most 8784h0m0s ahead"},
		{"invalid/reserved-context", func(g *keyguard.Grant) { g.RequiredContext = map[string]string{"credmatrix:x": "y"} }, `grant.required_context["credmatrix:x"]: reserved prefix "credmatrix:"`},
	}
	for _, tc := range invalid {
		t.Run(tc.name, func(t *testing.T) {
			f := newFull(t, fullOpts{})
			g := base
			tc.mutate(&g)
			_, _, err := f.svc.CreateGrant(ctx, admin, g)
			if domainerr.CodeOf(err) != domainerr.Invalid || domainerr.MessageOf(err) != tc.wantMsg {
				t.Fatalf("CreateGrant: %v, want invalid %q", err, tc.wantMsg)
			}
		})
	}

	t.Run("revoke/static-grant", func(t *testing.T) {
		f := newFull(t, fullOpts{})
		if _, err := f.svc.RevokeGrant(ctx, admin, "app-eu", ""); domainerr.CodeOf(err) != domainerr.FailedPrecondition {
			t.Fatalf("RevokeGrant of a configured grant: %v, want failed_precondition", err)
		}
	})
	t.Run("revoke/unknown", func(t *testing.T) {
		f := newFull(t, fullOpts{})
		if _, err := f.svc.RevokeGrant(ctx, admin, "g-nope", ""); domainerr.CodeOf(err) != domainerr.NotFound {
			t.Fatalf("RevokeGrant of an unknown grant: %v, want not_found", err)
		}
	})
	t.Run("audit-down", func(t *testing.T) {
		f := newFull(t, fullOpts{})
		f.auditor.setDown(true)
		if _, _, err := f.svc.CreateGrant(ctx, admin, base); domainerr.CodeOf(err) != domainerr.Unavailable {
			t.Fatalf("CreateGrant with audit down: %v, want unavailable", err)
		}
		f.auditor.setDown(false)
		if list, _, _ := f.svc.ListGrants(ctx, admin, keyguard.ListGrantsInput{Principal: intruder}); len(list) != 0 {
			t.Fatalf("grant created without its audit event: %+v", list)
		}
	})
	t.Run("list/pages", func(t *testing.T) {
		f := newFull(t, fullOpts{})
		for range 5 {
			if _, _, err := f.svc.CreateGrant(ctx, admin, base); err != nil {
				t.Fatal(err)
			}
		}
		var ids []string
		token := ""
		for range 10 {
			page, next, err := f.svc.ListGrants(ctx, admin, keyguard.ListGrantsInput{PageSize: 2, PageToken: token})
			if err != nil {
				t.Fatal(err)
			}
			for _, g := range page {
				ids = append(ids, g.ID)
			}
			if token = next; token == "" {
				break
			}
		}
		if len(ids) != 5+len(grants)+1 {
			t.Errorf("listed %d grants, want %d: %v", len(ids), 5+len(grants)+1, ids)
		}
	})
}

func cmpEqual(a, b []string) bool { return cmp.Diff(a, b) == "" }

// TestRotateRewrapRetire: rotation makes a new primary; old envelopes still
// decrypt; Rewrap moves them to the new version without returning the
// plaintext; once rewrapped, the old version can be retired and the
// rewrapped envelope still decrypts.
func TestRotateRewrapRetire(t *testing.T) {
	ctx := context.Background()
	f := newFull(t, fullOpts{})
	v1 := f.encrypt(t, app, euRing, encCtx)
	ref, _, err := f.svc.RotateKey(ctx, admin, euRing.DataClass, euRing.Region, "quarterly")
	if err != nil {
		t.Fatalf("RotateKey: %v", err)
	}
	if ref.Version != 2 {
		t.Fatalf("RotateKey made version %d, want 2", ref.Version)
	}
	ev := f.lastEvent(t)
	if ev.GetKind() != auditv1.Kind_KIND_KEY_ROTATE || ev.GetKey().GetKeyVersion() != 2 || ev.GetKey().GetFromKeyVersion() != 1 || ev.GetReason() != "rotated by "+admin+": quarterly" {
		t.Errorf("rotation event %v", ev)
	}
	if got := f.encrypt(t, app, euRing, encCtx).Key.Version; got != 2 {
		t.Errorf("Encrypt after rotation used version %d, want 2", got)
	}
	rw, err := f.svc.Rewrap(ctx, reader, keyguard.DecryptInput{Ciphertext: v1.Ciphertext, Context: encCtx})
	if err != nil {
		t.Fatalf("Rewrap: %v", err)
	}
	if rw.From.Version != 1 || rw.To.Version != 2 || bytes.Contains(rw.Ciphertext, secretText) {
		t.Fatalf("Rewrap %+v", rw)
	}
	if ev := f.lastEvent(t); ev.GetKind() != auditv1.Kind_KIND_KEY_REWRAP || ev.GetKey().GetFromKeyVersion() != 1 || ev.GetKey().GetKeyVersion() != 2 {
		t.Errorf("rewrap event %v", ev)
	}
	if _, err := f.svc.SetMinDecryptVersion(ctx, admin, euRing.DataClass, euRing.Region, 2, "v1 rewrapped"); err != nil {
		t.Fatalf("SetMinDecryptVersion: %v", err)
	}
	dec, err := f.svc.Decrypt(ctx, app, keyguard.DecryptInput{Ciphertext: rw.Ciphertext, Context: encCtx})
	if err != nil || !bytes.Equal(dec.Plaintext, secretText) || dec.Key.Version != 2 {
		t.Fatalf("Decrypt of the rewrapped envelope: %+v %v", dec.Key, err)
	}
	if _, err := f.svc.Decrypt(ctx, app, keyguard.DecryptInput{Ciphertext: v1.Ciphertext, Context: encCtx}); domainerr.CodeOf(err) != domainerr.FailedPrecondition {
		t.Fatalf("Decrypt of a retired envelope: %v, want failed_precondition", err)
	}
	if _, err := f.svc.Rewrap(ctx, reader, keyguard.DecryptInput{Ciphertext: v1.Ciphertext, Context: encCtx}); domainerr.CodeOf(err) != domainerr.FailedPrecondition {
		t.Fatalf("Rewrap of a retired envelope: %v, want failed_precondition", err)
	}
	if _, err := f.svc.Rewrap(ctx, app, keyguard.DecryptInput{Ciphertext: rw.Ciphertext, Context: encCtx}); domainerr.CodeOf(err) != domainerr.PermissionDenied {
		t.Fatalf("Rewrap without a rewrap grant: %v, want permission_denied", err)
	}
	if _, err := f.svc.Rewrap(ctx, reader, keyguard.DecryptInput{Ciphertext: rw.Ciphertext, Context: map[string]string{"tenant": "acme"}}); domainerr.CodeOf(err) != domainerr.Invalid {
		t.Fatalf("Rewrap with the wrong context: %v, want invalid", err)
	}
	for _, tc := range []struct {
		min  uint32
		want string
	}{
		{0, "min_decrypt_version: must be 1 to the primary version 2"},
		{3, "min_decrypt_version: must be 1 to the primary version 2"},
	} {
		if _, err := f.svc.SetMinDecryptVersion(ctx, admin, euRing.DataClass, euRing.Region, tc.min, ""); domainerr.MessageOf(err) != tc.want {
			t.Errorf("SetMinDecryptVersion(%d): %v, want %q", tc.min, err, tc.want)
		}
	}
	d, err := f.svc.DescribeKeyRing(ctx, admin, euRing.DataClass, euRing.Region)
	if err != nil {
		t.Fatal(err)
	}
	var states []keyguard.VersionState
	var counts []uint64
	for _, v := range d.Versions {
		states = append(states, v.State)
		counts = append(counts, v.EncryptCount)
	}
	if d.Primary != 2 || d.MinDecryptVersion != 2 || !cmpEqualAny(states, []keyguard.VersionState{keyguard.StatePrimary, keyguard.StateRetired}) ||
		!cmpEqualAny(counts, []uint64{2, 1}) {
		t.Errorf("DescribeKeyRing %+v", d)
	}
	// Retirement survives a restart: it is in the state store.
	f2 := newFull(t, fullOpts{dir: f.dir, keyring: f.keyring})
	if _, err := f2.svc.Decrypt(ctx, app, keyguard.DecryptInput{Ciphertext: v1.Ciphertext, Context: encCtx}); domainerr.CodeOf(err) != domainerr.FailedPrecondition {
		t.Fatalf("after restart, Decrypt of a retired envelope: %v, want failed_precondition", err)
	}
}

func cmpEqualAny[T comparable](a, b []T) bool { return cmp.Diff(a, b) == "" }

func TestAutomaticRotation(t *testing.T) {
	ctx := context.Background()
	t.Run("by-usage", func(t *testing.T) {
		f := newFull(t, fullOpts{policies: []keyguard.RingPolicy{{Ring: euRing, MaxEncryptions: 3}}})
		for range 3 {
			f.encrypt(t, app, euRing, encCtx)
		}
		select {
		case <-f.svc.RotationKick():
		default:
			t.Fatal("no rotation kick at the usage limit")
		}
		refs, err := f.svc.RotateDue(ctx)
		if err != nil || len(refs) != 1 || refs[0].Version != 2 {
			t.Fatalf("RotateDue: %v %v, want version 2 of %s", refs, err, euRing)
		}
		ev := f.lastEvent(t)
		if ev.GetActor().GetPrincipal() != keyguard.SystemPrincipal || ev.GetReason() != "automatic rotation: version 1 sealed 3 messages (limit 3)" {
			t.Errorf("event %v", ev)
		}
		if refs, _ := f.svc.RotateDue(ctx); len(refs) != 0 {
			t.Errorf("second RotateDue rotated again: %v", refs)
		}
	})
	t.Run("by-age", func(t *testing.T) {
		f := newFull(t, fullOpts{policies: []keyguard.RingPolicy{{Ring: usRing, RotationPeriod: 24 * time.Hour}}})
		if refs, _ := f.svc.RotateDue(ctx); len(refs) != 0 {
			t.Fatalf("fresh ring rotated: %v", refs)
		}
		d, _ := f.svc.DescribeKeyRing(ctx, admin, usRing.DataClass, usRing.Region)
		if d.RotationDue || !d.NextRotation.Equal(now.Add(24*time.Hour)) {
			t.Errorf("describe before due: %+v", d)
		}
		f.clock.add(24 * time.Hour)
		refs, err := f.svc.RotateDue(ctx)
		if err != nil || len(refs) != 1 || refs[0] != (keyguard.KeyRef{DataClass: usRing.DataClass, Region: usRing.Region, Version: 2}) {
			t.Fatalf("RotateDue after 24h: %v %v", refs, err)
		}
	})
	t.Run("audit-down", func(t *testing.T) {
		f := newFull(t, fullOpts{})
		f.auditor.setDown(true)
		if _, _, err := f.svc.RotateKey(ctx, admin, euRing.DataClass, euRing.Region, ""); domainerr.CodeOf(err) != domainerr.Unavailable {
			t.Fatalf("RotateKey with audit down: %v", err)
		}
		if v, _ := f.keyring.Primary(ctx, euRing.DataClass, euRing.Region); v != 1 {
			t.Fatalf("rotated to %d without an audit event", v)
		}
	})
}

func TestGenerateDataKey(t *testing.T) {
	ctx := context.Background()
	f := newFull(t, fullOpts{})
	if _, _, err := f.svc.CreateGrant(ctx, admin, keyguard.Grant{Principal: app, DataClass: "confidential", Operations: []keyguard.Operation{keyguard.OpGenerateDataKey}, Regions: []string{"eu-west-1"}, ExpireTime: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	out, err := f.svc.GenerateDataKey(ctx, app, keyguard.GenerateDataKeyInput{DataClass: "confidential", Region: "eu-west-1", Context: encCtx})
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	if len(out.PlaintextKey) != keyguard.DataKeySize || bytes.Contains(out.WrappedKey, out.PlaintextKey) {
		t.Fatalf("key %d bytes", len(out.PlaintextKey))
	}
	dec, err := f.svc.Decrypt(ctx, app, keyguard.DecryptInput{Ciphertext: out.WrappedKey, Context: encCtx})
	if err != nil || !bytes.Equal(dec.Plaintext, out.PlaintextKey) {
		t.Fatalf("Decrypt of the wrapped key: %v", err)
	}
	for _, ev := range f.auditor.recorded() {
		b, _ := proto.Marshal(ev)
		if bytes.Contains(b, out.PlaintextKey) {
			t.Fatalf("audit event %v holds the data key", ev.GetKind())
		}
	}
	if _, err := f.svc.GenerateDataKey(ctx, writer, keyguard.GenerateDataKeyInput{DataClass: "confidential", Region: "eu-west-1"}); domainerr.CodeOf(err) != domainerr.PermissionDenied {
		t.Fatalf("GenerateDataKey without a grant: %v", err)
	}
	f.auditor.setDown(true)
	if out, err := f.svc.GenerateDataKey(ctx, app, keyguard.GenerateDataKeyInput{DataClass: "confidential", Region: "eu-west-1", Context: encCtx}); domainerr.CodeOf(err) != domainerr.Unavailable || out.PlaintextKey != nil {
		t.Fatalf("GenerateDataKey with audit down: %v", err)
	}
}

func TestBatchOneAppend(t *testing.T) {
	ctx := context.Background()
	f := newFull(t, fullOpts{})
	items := []keyguard.EncryptInput{
		{DataClass: "confidential", Region: "eu-west-1", Plaintext: []byte("a"), Context: encCtx},
		{DataClass: "confidential", Region: "us-east-1", Plaintext: []byte("b")}, // denied: residency
		{DataClass: "BAD", Region: "eu-west-1"},                                  // invalid: not audited
		{DataClass: "confidential", Region: "eu-west-1", Plaintext: []byte("c")},
	}
	before := f.auditor.appends.Load()
	res := f.svc.EncryptBatch(ctx, app, items)
	if n := f.auditor.appends.Load() - before; n != 1 {
		t.Errorf("%d audit appends for one batch, want 1", n)
	}
	var codes []domainerr.Code
	for _, r := range res {
		codes = append(codes, domainerr.CodeOf(r.Err))
	}
	if diff := cmp.Diff(codes, []domainerr.Code{"", domainerr.PermissionDenied, domainerr.Invalid, ""}); diff != "" {
		t.Errorf("item codes (-got +want):\n%s", diff)
	}
	if res[0].Output.AuditSequence+2 != res[3].Output.AuditSequence {
		t.Errorf("sequences %d and %d, want the denial between them", res[0].Output.AuditSequence, res[3].Output.AuditSequence)
	}
	dec := f.svc.DecryptBatch(ctx, app, []keyguard.DecryptInput{{Ciphertext: res[0].Output.Ciphertext, Context: encCtx}, {Ciphertext: res[3].Output.Ciphertext}})
	if dec[0].Err != nil || dec[1].Err != nil || string(dec[0].Output.Plaintext) != "a" || string(dec[1].Output.Plaintext) != "c" {
		t.Fatalf("DecryptBatch: %+v", dec)
	}
	f.auditor.setDown(true)
	for i, r := range f.svc.EncryptBatch(ctx, app, items[:1]) {
		if domainerr.CodeOf(r.Err) != domainerr.Unavailable || r.Output.Ciphertext != nil {
			t.Errorf("item %d with audit down: %+v", i, r)
		}
	}
}

// TestGolden decrypts envelopes sealed by an earlier build under key
// version 1 of a committed keystore, after rotating that keystore: data
// written before a rotation stays readable. Regenerate with
// go test -run TestGolden -update (only when the format changes on
// purpose).
func TestGolden(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join("testdata", "golden")
	rootKey := bytes.Repeat([]byte{0x42}, 32)
	goldenCtx := map[string]string{"tenant": "acme", "record": "golden"}
	plaintext := []byte("written before the rotation")
	if *update {
		os.RemoveAll(dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		kr, err := localkms.Open(filepath.Join(dir, "keystore.json"), rootKey, localkms.WithClock(func() time.Time { return now }))
		if err != nil {
			t.Fatal(err)
		}
		if err := kr.EnsureRing(ctx, euRing.DataClass, euRing.Region); err != nil {
			t.Fatal(err)
		}
		svc, err := keyguard.New(ctx, keyguard.Config{Backend: kr, Auditor: &fakeAuditor{}, Rings: []keyguard.Ring{euRing}, Grants: grants, BackendName: "local"})
		if err != nil {
			t.Fatal(err)
		}
		out, err := svc.Encrypt(ctx, app, keyguard.EncryptInput{DataClass: euRing.DataClass, Region: euRing.Region, Plaintext: plaintext, Context: goldenCtx})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "v1.envelope.hex"), []byte(hex.EncodeToString(out.Ciphertext)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ks, err := os.ReadFile(filepath.Join(dir, "keystore.json"))
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	if err := os.WriteFile(filepath.Join(tmp, "keystore.json"), ks, 0o600); err != nil {
		t.Fatal(err)
	}
	kr, err := localkms.Open(filepath.Join(tmp, "keystore.json"), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kr.Rotate(ctx, euRing.DataClass, euRing.Region); err != nil {
		t.Fatal(err)
	}
	svc, err := keyguard.New(ctx, keyguard.Config{Backend: kr, Auditor: &fakeAuditor{}, Rings: []keyguard.Ring{euRing}, Grants: grants, BackendName: "local"})
	if err != nil {
		t.Fatal(err)
	}
	hexEnv, err := os.ReadFile(filepath.Join(dir, "v1.envelope.hex"))
	if err != nil {
		t.Fatal(err)
	}
	env, err := hex.DecodeString(strings.TrimSpace(string(hexEnv)))
	if err != nil {
		t.Fatal(err)
	}
	dec, err := svc.Decrypt(ctx, app, keyguard.DecryptInput{Ciphertext: env, Context: goldenCtx})
	if err != nil {
		t.Fatalf("Decrypt of the golden v1 envelope after rotation: %v", err)
	}
	if !bytes.Equal(dec.Plaintext, plaintext) || dec.Key.Version != 1 {
		t.Fatalf("golden: version %d plaintext %q", dec.Key.Version, dec.Plaintext)
	}
	if v := svc.EncryptBatch(ctx, app, []keyguard.EncryptInput{{DataClass: euRing.DataClass, Region: euRing.Region}})[0].Output.Key.Version; v != 2 {
		t.Errorf("new data under version %d, want 2", v)
	}
}

// downBackend is a KEK backend whose KMS is unreachable.
type downBackend struct{ keyguard.KeyBackend }

func (downBackend) Wrap(context.Context, string, string, uint32, []byte) ([]byte, error) {
	return nil, fmt.Errorf("dial tcp kms.eu-west-1.amazonaws.com:443: connection refused: %w", keyguard.ErrBackendUnavailable)
}

func (downBackend) Unwrap(context.Context, string, string, uint32, []byte) ([]byte, error) {
	return nil, fmt.Errorf("throttled: %w", keyguard.ErrBackendUnavailable)
}

// TestBackendDown: KMS unavailable is UNAVAILABLE, audited as an error,
// with no ciphertext or plaintext and no backend text for the caller.
func TestBackendDown(t *testing.T) {
	ctx := context.Background()
	f := newFull(t, fullOpts{})
	ct := f.encrypt(t, app, euRing, encCtx).Ciphertext
	svc, err := keyguard.New(ctx, keyguard.Config{Backend: downBackend{f.keyring}, Auditor: f.auditor, Rings: []keyguard.Ring{euRing}, Grants: grants, BackendName: "awskms"})
	if err != nil {
		t.Fatal(err)
	}
	want := "key backend unavailable; operation not performed"
	enc, err := svc.Encrypt(ctx, app, keyguard.EncryptInput{DataClass: euRing.DataClass, Region: euRing.Region, Plaintext: secretText, Context: encCtx})
	if domainerr.CodeOf(err) != domainerr.Unavailable || domainerr.MessageOf(err) != want || enc.Ciphertext != nil {
		t.Fatalf("Encrypt with KMS down: %v", err)
	}
	if ev := f.lastEvent(t); ev.GetDecision() != auditv1.Decision_DECISION_ERROR || ev.GetReason() != want {
		t.Errorf("event %v", ev)
	}
	dec, err := svc.Decrypt(ctx, app, keyguard.DecryptInput{Ciphertext: ct, Context: encCtx})
	if domainerr.CodeOf(err) != domainerr.Unavailable || dec.Plaintext != nil {
		t.Fatalf("Decrypt with KMS down: %v", err)
	}
}

// TestUsageCountsPersist: usage counters survive a restart once flushed.
func TestUsageCountsPersist(t *testing.T) {
	ctx := context.Background()
	f := newFull(t, fullOpts{})
	for range 3 {
		f.encrypt(t, app, euRing, encCtx)
	}
	if err := f.svc.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	f2 := newFull(t, fullOpts{dir: f.dir, keyring: f.keyring})
	d, err := f2.svc.DescribeKeyRing(ctx, admin, euRing.DataClass, euRing.Region)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Versions) != 1 || d.Versions[0].EncryptCount != 3 {
		t.Fatalf("after restart: %+v, want 3 encryptions under version 1", d.Versions)
	}
}
