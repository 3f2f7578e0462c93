package keyguard_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/platform/auditevent"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/clients/keyguardclient/envelope"
	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/localkms"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// fakeAuditor records events in memory, or fails every Append while down.
type fakeAuditor struct {
	mu     sync.Mutex
	events []*auditv1.Event
	down   bool
}

func (a *fakeAuditor) Append(_ context.Context, ev *auditv1.Event) (*auditv1.AppendResult, error) {
	if err := auditevent.Check(ev); err != nil {
		return nil, fmt.Errorf("the audit service would refuse event %s: %w", ev.GetId(), err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.down {
		return nil, errors.New("audit: connection refused")
	}
	ev = proto.Clone(ev).(*auditv1.Event)
	ev.Sequence = uint64(len(a.events))
	a.events = append(a.events, ev)
	return &auditv1.AppendResult{Id: ev.GetId(), Sequence: ev.GetSequence()}, nil
}

func (a *fakeAuditor) setDown(down bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.down = down
}

func (a *fakeAuditor) recorded() []*auditv1.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*auditv1.Event(nil), a.events...)
}

const (
	app      = "spiffe://credmatrix.dev/app"
	intruder = "spiffe://credmatrix.dev/intruder"
	writer   = "spiffe://credmatrix.dev/writer"
)

var (
	now    = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	euRing = keyguard.Ring{DataClass: "confidential", Region: "eu-west-1"}
	usRing = keyguard.Ring{DataClass: "confidential", Region: "us-east-1"}
	grants = []keyguard.Grant{
		{ID: "app-eu", Principal: app, DataClass: "confidential", Operations: []keyguard.Operation{keyguard.OpEncrypt, keyguard.OpDecrypt}, Regions: []string{"eu-west-1"}},
		{Principal: writer, DataClass: "confidential", Operations: []keyguard.Operation{keyguard.OpEncrypt}, Regions: []string{"eu-west-1", "us-east-1"}},
	}
	secretText = []byte("card 4111-1111-1111-1111 exp 12/29")
	encCtx     = map[string]string{"tenant": "acme", "record": "invoice-42"}
)

type harness struct {
	svc     *keyguard.Service
	auditor *fakeAuditor
	keyring *localkms.Keyring
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	ctx := context.Background()
	kr, err := localkms.Open(filepath.Join(t.TempDir(), "keystore.json"), bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []keyguard.Ring{euRing, usRing} {
		if err := kr.EnsureRing(ctx, r.DataClass, r.Region); err != nil {
			t.Fatal(err)
		}
	}
	a := &fakeAuditor{}
	svc, err := keyguard.New(context.Background(), keyguard.Config{
		Backend: kr, Auditor: a, Rings: []keyguard.Ring{euRing, usRing}, Grants: grants,
		Clock: func() time.Time { return now }, BackendName: "local",
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return &harness{svc: svc, auditor: a, keyring: kr}
}

func (h *harness) encrypt(t *testing.T) keyguard.EncryptOutput {
	t.Helper()
	out, err := h.svc.Encrypt(context.Background(), app, keyguard.EncryptInput{
		DataClass: euRing.DataClass, Region: euRing.Region, Plaintext: secretText, Context: encCtx,
	})
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	return out
}

// event is the expected shape of an audit event, without id and time.
func event(kind auditv1.Kind, decision auditv1.Decision, caller, reason, grant string, ring keyguard.Ring, version uint32, size int) *auditv1.Event {
	return &auditv1.Event{
		Kind: kind, Decision: decision, Reason: reason, Rule: grant,
		Actor: &auditv1.Actor{Principal: caller},
		Time:  timestamppb.New(now),
		Detail: &auditv1.Event_Key{Key: &auditv1.KeyDetail{
			DataClass: ring.DataClass, Region: ring.Region, KeyVersion: version, GrantId: grant,
			EncryptionContext: encCtx, PlaintextBytes: uint64(size), Backend: "local",
		}},
	}
}

func diffEvents(t *testing.T, got []*auditv1.Event, want ...*auditv1.Event) {
	t.Helper()
	for i, w := range want {
		w.Sequence = uint64(i)
	}
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	for _, ev := range got {
		if !uuid.MatchString(ev.GetId()) {
			t.Errorf("event id %q is not a UUIDv4", ev.GetId())
		}
	}
	if diff := cmp.Diff(got, want, protocmp.Transform(), protocmp.IgnoreFields(&auditv1.Event{}, "id")); diff != "" {
		t.Errorf("audit events (-got +want):\n%s", diff)
	}
}

func TestRoundTrip(t *testing.T) {
	h := newHarness(t)
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		SpanID:  trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8},
	}))
	enc, err := h.svc.Encrypt(ctx, app, keyguard.EncryptInput{
		DataClass: euRing.DataClass, Region: euRing.Region, Plaintext: secretText, Context: encCtx,
	})
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	wantKey := keyguard.KeyRef{DataClass: euRing.DataClass, Region: euRing.Region, Version: 1}
	if diff := cmp.Diff(enc.Key, wantKey); diff != "" || enc.AuditSequence != 0 {
		t.Errorf("Encrypt key (-got +want):\n%s audit sequence %d", diff, enc.AuditSequence)
	}
	if bytes.Contains(enc.Ciphertext, secretText) {
		t.Fatal("ciphertext contains the plaintext")
	}

	dec, err := h.svc.Decrypt(ctx, app, keyguard.DecryptInput{Ciphertext: enc.Ciphertext, Context: map[string]string{"record": "invoice-42", "tenant": "acme"}})
	if err != nil {
		t.Fatalf("Decrypt: %v", err)
	}
	if !bytes.Equal(dec.Plaintext, secretText) || dec.Key != wantKey || dec.AuditSequence != 1 {
		t.Errorf("Decrypt = %q, %+v, %d", dec.Plaintext, dec.Key, dec.AuditSequence)
	}

	encEv := event(auditv1.Kind_KIND_KEY_ENCRYPT, auditv1.Decision_DECISION_ALLOW, app, "allowed by grant app-eu", "app-eu", euRing, 1, len(secretText))
	decEv := event(auditv1.Kind_KIND_KEY_DECRYPT, auditv1.Decision_DECISION_ALLOW, app, "allowed by grant app-eu", "app-eu", euRing, 1, len(secretText))
	for _, ev := range []*auditv1.Event{encEv, decEv} {
		ev.TraceId, ev.SpanId = "0102030405060708090a0b0c0d0e0f10", "0102030405060708"
	}
	diffEvents(t, h.auditor.recorded(), encEv, decEv)
}

func TestRotation(t *testing.T) {
	h := newHarness(t)
	old := h.encrypt(t)
	if _, err := h.keyring.Rotate(context.Background(), euRing.DataClass, euRing.Region); err != nil {
		t.Fatal(err)
	}
	if got := h.encrypt(t).Key.Version; got != 2 {
		t.Errorf("after rotation Encrypt used version %d, want 2", got)
	}
	dec, err := h.svc.Decrypt(context.Background(), app, keyguard.DecryptInput{Ciphertext: old.Ciphertext, Context: encCtx})
	if err != nil || dec.Key.Version != 1 {
		t.Fatalf("Decrypt of a version-1 envelope after rotation: %+v, %v", dec.Key, err)
	}
}

func TestDenied(t *testing.T) {
	h := newHarness(t)
	ct := h.encrypt(t).Ciphertext
	tests := []struct {
		name    string
		call    func() error
		wantMsg string
		want    *auditv1.Event
	}{
		{
			name: "deny/encrypt-no-grant",
			call: func() error {
				out, err := h.svc.Encrypt(context.Background(), intruder, keyguard.EncryptInput{DataClass: "confidential", Region: "eu-west-1", Plaintext: secretText, Context: encCtx})
				if out.Ciphertext != nil {
					t.Error("denied Encrypt returned a ciphertext")
				}
				return err
			},
			wantMsg: "no grant allows " + intruder + " to encrypt data class confidential in region eu-west-1",
			want:    event(auditv1.Kind_KIND_KEY_ENCRYPT, auditv1.Decision_DECISION_DENY, intruder, "no grant allows "+intruder+" to encrypt data class confidential in region eu-west-1", "", euRing, 0, len(secretText)),
		},
		{
			name: "deny/encrypt-wrong-region",
			call: func() error {
				_, err := h.svc.Encrypt(context.Background(), app, keyguard.EncryptInput{DataClass: "confidential", Region: "us-east-1", Plaintext: secretText, Context: encCtx})
				return err
			},
			wantMsg: "no grant allows " + app + " to encrypt data class confidential in region us-east-1",
			want:    event(auditv1.Kind_KIND_KEY_ENCRYPT, auditv1.Decision_DECISION_DENY, app, "no grant allows "+app+" to encrypt data class confidential in region us-east-1", "", usRing, 0, len(secretText)),
		},
		{
			name: "deny/decrypt-encrypt-only-grant",
			call: func() error {
				out, err := h.svc.Decrypt(context.Background(), writer, keyguard.DecryptInput{Ciphertext: ct, Context: encCtx})
				if out.Plaintext != nil {
					t.Error("denied Decrypt returned a plaintext")
				}
				return err
			},
			wantMsg: "no grant allows " + writer + " to decrypt data class confidential in region eu-west-1",
			want:    event(auditv1.Kind_KIND_KEY_DECRYPT, auditv1.Decision_DECISION_DENY, writer, "no grant allows "+writer+" to decrypt data class confidential in region eu-west-1", "", euRing, 1, 0),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(h.auditor.recorded())
			err := tc.call()
			if got := domainerr.CodeOf(err); got != domainerr.PermissionDenied {
				t.Fatalf("error %v: code %q, want permission_denied", err, got)
			}
			if got := domainerr.MessageOf(err); got != tc.wantMsg {
				t.Errorf("message %q, want %q", got, tc.wantMsg)
			}
			events := h.auditor.recorded()[before:]
			tc.want.Sequence = uint64(before)
			if diff := cmp.Diff(events, []*auditv1.Event{tc.want}, protocmp.Transform(), protocmp.IgnoreFields(&auditv1.Event{}, "id")); diff != "" {
				t.Errorf("audit events (-got +want):\n%s", diff)
			}
		})
	}
}

func TestNoRing(t *testing.T) {
	h := newHarness(t)
	_, err := h.svc.Encrypt(context.Background(), app, keyguard.EncryptInput{DataClass: "confidential", Region: "ap-south-1", Plaintext: secretText})
	if domainerr.CodeOf(err) != domainerr.NotFound || domainerr.MessageOf(err) != "no key ring for data class confidential in region ap-south-1" {
		t.Fatalf("Encrypt in a region without a ring: %v", err)
	}
}

func TestAuditDown(t *testing.T) {
	h := newHarness(t)
	ct := h.encrypt(t).Ciphertext
	h.auditor.setDown(true)
	want := "audit log unavailable; operation not performed"

	enc, err := h.svc.Encrypt(context.Background(), app, keyguard.EncryptInput{DataClass: "confidential", Region: "eu-west-1", Plaintext: secretText})
	if domainerr.CodeOf(err) != domainerr.Unavailable || domainerr.MessageOf(err) != want {
		t.Errorf("Encrypt with audit down: %v, want unavailable %q", err, want)
	}
	if diff := cmp.Diff(enc, keyguard.EncryptOutput{}); diff != "" {
		t.Errorf("Encrypt with audit down returned output:\n%s", diff)
	}

	dec, err := h.svc.Decrypt(context.Background(), app, keyguard.DecryptInput{Ciphertext: ct, Context: encCtx})
	if domainerr.CodeOf(err) != domainerr.Unavailable || domainerr.MessageOf(err) != want {
		t.Errorf("Decrypt with audit down: %v, want unavailable %q", err, want)
	}
	if diff := cmp.Diff(dec, keyguard.DecryptOutput{}); diff != "" {
		t.Errorf("Decrypt with audit down returned output:\n%s", diff)
	}

	// A denial that cannot be recorded is Unavailable too.
	if _, err := h.svc.Encrypt(context.Background(), intruder, keyguard.EncryptInput{DataClass: "confidential", Region: "eu-west-1"}); domainerr.CodeOf(err) != domainerr.Unavailable {
		t.Errorf("denied Encrypt with audit down: %v, want unavailable", err)
	}
	if n := len(h.auditor.recorded()); n != 1 {
		t.Errorf("%d events recorded, want only the first encrypt", n)
	}
}

func TestDecryptFailures(t *testing.T) {
	h := newHarness(t)
	ct := h.encrypt(t).Ciphertext
	hdr, _, err := envelope.ParseHeader(ct)
	if err != nil {
		t.Fatal(err)
	}
	tamperedKey := bytes.Clone(ct)
	tamperedKey[hdr.Size()-envelope.SaltSize-envelope.CommitmentSize-1] ^= 1 // last byte of the wrapped key
	tamperedBody := bytes.Clone(ct)
	tamperedBody[len(tamperedBody)-1] ^= 1
	otherVersion := bytes.Clone(ct)
	otherVersion[4+2+1+len(hdr.DataClass)+1+len(hdr.Region)+3] = 9 // key version 9

	authFailed := "ciphertext: authentication failed (wrong encryption context or tampered data)"
	tests := []struct {
		name     string
		in       keyguard.DecryptInput
		wantCode domainerr.Code
		wantMsg  string
		audited  bool
	}{
		{"invalid/wrong-context", keyguard.DecryptInput{Ciphertext: ct, Context: map[string]string{"tenant": "acme"}}, domainerr.Invalid, authFailed, true},
		{"invalid/tampered-wrapped-key", keyguard.DecryptInput{Ciphertext: tamperedKey, Context: encCtx}, domainerr.Invalid, authFailed, true},
		{"invalid/tampered-body", keyguard.DecryptInput{Ciphertext: tamperedBody, Context: encCtx}, domainerr.Invalid, authFailed, true},
		{"not-found/key-version", keyguard.DecryptInput{Ciphertext: otherVersion, Context: encCtx}, domainerr.NotFound, "no key version 9 for data class confidential in region eu-west-1", true},
		{"invalid/garbage", keyguard.DecryptInput{Ciphertext: []byte("not an envelope")}, domainerr.Invalid, "ciphertext: envelope: malformed: bad magic 0x6e6f7420 (want \"CMKG\"): not a keyguard envelope", false},
		{"invalid/truncated", keyguard.DecryptInput{Ciphertext: ct[:20]}, domainerr.Invalid, "ciphertext: envelope: malformed: truncated at region (offset 20: need 9 bytes, have 0)", false},
		{"invalid/empty", keyguard.DecryptInput{}, domainerr.Invalid, "ciphertext: required", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(h.auditor.recorded())
			out, err := h.svc.Decrypt(context.Background(), app, tc.in)
			if domainerr.CodeOf(err) != tc.wantCode || domainerr.MessageOf(err) != tc.wantMsg {
				t.Fatalf("Decrypt error %v (code %q), want %q %q", err, domainerr.CodeOf(err), tc.wantCode, tc.wantMsg)
			}
			if out.Plaintext != nil {
				t.Error("failed Decrypt returned a plaintext")
			}
			events := h.auditor.recorded()[before:]
			switch {
			case !tc.audited && len(events) != 0:
				t.Errorf("rejected request was audited: %v", events)
			case tc.audited && (len(events) != 1 || events[0].GetDecision() != auditv1.Decision_DECISION_ERROR || events[0].GetReason() != tc.wantMsg):
				t.Errorf("audit events %v, want one ERROR event with reason %q", events, tc.wantMsg)
			}
		})
	}
}

func TestEncryptValidation(t *testing.T) {
	h := newHarness(t)
	manyPairs := map[string]string{}
	for i := range 17 {
		manyPairs[fmt.Sprintf("k%02d", i)] = "v"
	}
	valid := keyguard.EncryptInput{DataClass: "confidential", Region: "eu-west-1", Plaintext: []byte("x")}
	with := func(f func(in *keyguard.EncryptInput)) keyguard.EncryptInput { in := valid; f(&in); return in }
	tests := []struct {
		name    string
		in      keyguard.EncryptInput
		wantMsg string
	}{
		{"invalid/empty-data-class", with(func(in *keyguard.EncryptInput) { in.DataClass = "" }), "data_class: required"},
		{"invalid/uppercase-data-class", with(func(in *keyguard.EncryptInput) { in.DataClass = "Confidential" }), "data_class: must match [a-z0-9-]{1,63}"},
		{"invalid/long-data-class", with(func(in *keyguard.EncryptInput) { in.DataClass = strings.Repeat("a", 64) }), "data_class: must match [a-z0-9-]{1,63}"},
		{"invalid/empty-region", with(func(in *keyguard.EncryptInput) { in.Region = "" }), "region: required"},
		{"invalid/bad-region", with(func(in *keyguard.EncryptInput) { in.Region = "eu west 1" }), "region: must match [a-z0-9-]{1,63}"},
		{"invalid/oversized-plaintext", with(func(in *keyguard.EncryptInput) { in.Plaintext = make([]byte, 65537) }), "plaintext: exceeds 65536 bytes"},
		{"invalid/too-many-context-pairs", with(func(in *keyguard.EncryptInput) { in.Context = manyPairs }), "encryption_context: at most 16 pairs"},
		{"invalid/reserved-context-key", with(func(in *keyguard.EncryptInput) { in.Context = map[string]string{"credmatrix:x": "1"} }), `encryption_context["credmatrix:x"]: reserved prefix "credmatrix:"`},
		{"invalid/long-context-key", with(func(in *keyguard.EncryptInput) { in.Context = map[string]string{strings.Repeat("k", 257): "1"} }), `encryption_context["` + strings.Repeat("k", 64) + `"...]: key exceeds 256 bytes`},
		{"invalid/long-context-value", with(func(in *keyguard.EncryptInput) { in.Context = map[string]string{"k": strings.Repeat("v", 257)} }), `encryption_context["k"]: value exceeds 256 bytes`},
		{"invalid/empty-context-key", with(func(in *keyguard.EncryptInput) { in.Context = map[string]string{"": "v"} }), `encryption_context[""]: key must not be empty`},
		{"invalid/non-utf8-context-key", with(func(in *keyguard.EncryptInput) { in.Context = map[string]string{"k\xff": "v"} }), `encryption_context["k\xff"]: key must be valid UTF-8`},
		{"invalid/non-utf8-context-value", with(func(in *keyguard.EncryptInput) { in.Context = map[string]string{"k": "\xc3"} }), `encryption_context["k"]: value must be valid UTF-8`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.svc.Encrypt(context.Background(), app, tc.in)
			if domainerr.CodeOf(err) != domainerr.Invalid || domainerr.MessageOf(err) != tc.wantMsg {
				t.Fatalf("Encrypt error %v, want invalid %q", err, tc.wantMsg)
			}
		})
	}
	if n := len(h.auditor.recorded()); n != 0 {
		t.Errorf("invalid requests produced %d audit events", n)
	}
}

// TestEventsHoldNoSecrets runs every kind of outcome and checks that no
// serialised event contains the plaintext or the data key.
func TestEventsHoldNoSecrets(t *testing.T) {
	h := newHarness(t)
	enc := h.encrypt(t)
	ctx := context.Background()
	h.svc.Decrypt(ctx, app, keyguard.DecryptInput{Ciphertext: enc.Ciphertext, Context: encCtx})
	h.svc.Decrypt(ctx, app, keyguard.DecryptInput{Ciphertext: enc.Ciphertext, Context: map[string]string{"tenant": "other"}})
	h.svc.Decrypt(ctx, writer, keyguard.DecryptInput{Ciphertext: enc.Ciphertext, Context: encCtx})
	h.svc.Encrypt(ctx, intruder, keyguard.EncryptInput{DataClass: "confidential", Region: "eu-west-1", Plaintext: secretText})

	hdr, _, err := envelope.ParseHeader(enc.Ciphertext)
	if err != nil {
		t.Fatal(err)
	}
	dataKey, err := h.keyring.Unwrap(ctx, hdr.DataClass, hdr.Region, hdr.KeyVersion, hdr.WrappedKey)
	if err != nil {
		t.Fatal(err)
	}
	events := h.auditor.recorded()
	if len(events) != 5 {
		t.Fatalf("%d events, want 5", len(events))
	}
	for _, ev := range events {
		b, err := proto.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		text := []byte(ev.String())
		for name, s := range map[string][]byte{"plaintext": secretText, "data key": dataKey, "wrapped key": hdr.WrappedKey} {
			if bytes.Contains(b, s) || bytes.Contains(text, s) {
				t.Errorf("event %d (%v) contains the %s", ev.GetSequence(), ev.GetDecision(), name)
			}
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	kr, err := localkms.Open(filepath.Join(t.TempDir(), "k.json"), bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	ok := keyguard.Config{Backend: kr, Auditor: &fakeAuditor{}, BackendName: "local", Rings: []keyguard.Ring{euRing}, Grants: grants}
	with := func(f func(c *keyguard.Config)) keyguard.Config { c := ok; f(&c); return c }
	tests := []struct {
		name    string
		cfg     keyguard.Config
		wantMsg string
	}{
		{"no-backend", with(func(c *keyguard.Config) { c.Backend = nil }), "backend required"},
		{"no-auditor", with(func(c *keyguard.Config) { c.Auditor = nil }), "auditor required"},
		{"no-backend-name", with(func(c *keyguard.Config) { c.BackendName = "" }), "backend name required"},
		{"bad-ring", with(func(c *keyguard.Config) { c.Rings = []keyguard.Ring{{DataClass: "X", Region: "eu-west-1"}} }), "rings[0]"},
		{"grant-no-principal", with(func(c *keyguard.Config) {
			c.Grants = []keyguard.Grant{{DataClass: "public", Operations: []keyguard.Operation{1}, Regions: []string{"a"}}}
		}), "grants[0]: principal required"},
		{"grant-no-operations", with(func(c *keyguard.Config) {
			c.Grants = []keyguard.Grant{{Principal: "p", DataClass: "public", Regions: []string{"a"}}}
		}), "grants[0]: at least one operation"},
		{"grant-bad-operation", with(func(c *keyguard.Config) {
			c.Grants = []keyguard.Grant{{Principal: "p", DataClass: "public", Operations: []keyguard.Operation{0}, Regions: []string{"a"}}}
		}), "grants[0]: unknown operation(0)"},
		{"grant-no-regions", with(func(c *keyguard.Config) {
			c.Grants = []keyguard.Grant{{Principal: "p", DataClass: "public", Operations: []keyguard.Operation{1}}}
		}), "grants[0]: at least one region"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := keyguard.New(context.Background(), tc.cfg); err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("New error %v, want one saying %q", err, tc.wantMsg)
			}
		})
	}
	if _, err := keyguard.New(context.Background(), ok); err != nil {
		t.Fatalf("New with a good config: %v", err)
	}
}

// TestHostileTextIsAlwaysRecordable: text an in-process caller or an
// administrator's grant puts in an event — not UTF-8, raw tokens, control
// characters — never makes the event unrecordable (the fake auditor refuses
// what the audit service refuses): a denial is still a denial with its
// event, and an allowed operation still succeeds with its event.
func TestHostileTextIsAlwaysRecordable(t *testing.T) {
	const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOmFjbWUvYXBwIn0.c2lnbmF0dXJlLWJ5dGVzLWhlcmUtYW5kLW1vcmU"
	h := newHarness(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		op   func() error
		want domainerr.Code
	}{
		{"encrypt/context-jwt-and-escapes", func() error {
			_, err := h.svc.Encrypt(ctx, app, keyguard.EncryptInput{DataClass: "confidential", Region: "eu-west-1", Plaintext: []byte("x"),
				Context: map[string]string{jwt: "\x1b]0;title\x07", "ok": "\u202e" + jwt}})
			return err
		}, ""},
		{"encrypt/caller-not-utf8-denied", func() error {
			_, err := h.svc.Encrypt(ctx, "spiffe://x/\xff"+jwt, keyguard.EncryptInput{DataClass: "confidential", Region: "eu-west-1", Plaintext: []byte("x")})
			return err
		}, domainerr.PermissionDenied},
		{"grant/non-admin-not-utf8-denied", func() error {
			_, _, err := h.svc.CreateGrant(ctx, intruder, keyguard.Grant{Principal: "p\xff" + jwt, DataClass: "confidential\x1b", Regions: []string{jwt}})
			return err
		}, domainerr.PermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(h.auditor.recorded())
			err := tc.op()
			if got := domainerr.CodeOf(err); got != tc.want {
				t.Fatalf("error %v, want code %q", err, tc.want)
			}
			evs := h.auditor.recorded()[before:]
			if len(evs) != 1 {
				t.Fatalf("%d events, want 1", len(evs))
			}
			b, _ := proto.Marshal(evs[0])
			if bytes.Contains(b, []byte(jwt)) || bytes.Contains(b, []byte("\x1b]")) {
				t.Errorf("event holds raw hostile text: %v", evs[0])
			}
		})
	}
}
