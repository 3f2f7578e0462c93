package auditevent

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

func testHasher(t testing.TB) *Hasher {
	t.Helper()
	h, err := NewHasher(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// event is a broker-style event whose caller text is s in every field a
// caller can reach.
func event(s string) *auditv1.Event {
	return &auditv1.Event{
		Id:       "11111111-2222-4333-8444-555555555555",
		Time:     timestamppb.Now(),
		Kind:     auditv1.Kind_KIND_SESSION_ISSUE,
		Decision: auditv1.Decision_DECISION_DENY,
		Reason:   "unknown account " + s,
		Actor: &auditv1.Actor{
			Principal: "https://issuer#repo:acme/app", RequestReason: s,
			Claims: map[string]string{"ref": s, "repository": "acme/app"},
		},
		Detail:     &auditv1.Event_Session{Session: &auditv1.SessionDetail{AccountName: s, RoleName: "deploy"}},
		SecretRefs: []*auditv1.SecretRef{{Name: "oidc_token", HmacSha256: make([]byte, 32), KeyId: "k"}},
	}
}

func TestNormaliseLeavesCleanEventsAlone(t *testing.T) {
	ev := event("refs/heads/main")
	want := proto.Clone(ev)
	Normalise(ev, testHasher(t))
	if diff := cmp.Diff(ev, want, protocmp.Transform()); diff != "" {
		t.Errorf("Normalise changed a clean event (-got +want):\n%s", diff)
	}
}

func TestNormaliseText(t *testing.T) {
	long := strings.Repeat("a", 5000)
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"control-characters", "main\x1b[31m\nrow\t\x00\x7f", `main\x1b[31m\nrow\t\x00\x7f`},
		{"c1-and-bidi", "a\u0085b\u202ec\u2066d\u2028", `a\u0085b\u202ec\u2066d\u2028`},
		{"invalid-utf8", "ok\xff\xfe\xc3", `ok\xff\xfe\xc3`},
		{"valid-unicode-kept", "Zürich ✓ 東京", "Zürich ✓ 東京"},
		{"oversized", long, long[:MaxTextBytes] + fmt.Sprintf(TruncatedMarker, 5000-MaxTextBytes)},
		{"oversized-multibyte-cut-at-rune", strings.Repeat("é", 600), strings.Repeat("é", 512) + fmt.Sprintf(TruncatedMarker, 1200-1024)},
		{"escapes-count-against-limit", strings.Repeat("\x01", 300), strings.Repeat(`\x01`, 256) + fmt.Sprintf(TruncatedMarker, 300-256)},
		// refs: 0 is the producer's, then reason, claims["ref"], request_reason.
		{"jwt", "x " + jwt + " y", "x " + fmt.Sprintf(SecretMarker, 3) + " y"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev := event(tc.in)
			Normalise(ev, testHasher(t))
			if diff := cmp.Diff(ev.GetActor().GetRequestReason(), tc.want); diff != "" {
				t.Errorf("request_reason (-got +want):\n%s", diff)
			}
			if err := Check(ev); err != nil {
				t.Errorf("Check after Normalise: %v", err)
			}
		})
	}
}

// TestNormaliseSecretsBecomeRefs: every secret-shaped value, wherever it
// is, becomes a ref named by its path holding the HMAC of exactly that
// value, and nothing of it stays in the event.
func TestNormaliseSecretsBecomeRefs(t *testing.T) {
	h := testHasher(t)
	ev := event(jwt)
	ev.GetActor().Claims[sessionToken] = "v"
	ev.Detail = &auditv1.Event_Key{Key: &auditv1.KeyDetail{
		EncryptionContext: map[string]string{"pem": "k=" + pemKey, "env": "prod"},
	}}
	Normalise(ev, h)
	if err := Check(ev); err != nil {
		t.Fatalf("Check after Normalise: %v", err)
	}
	b, err := proto.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{jwt, sessionToken, "MHcCAQEEIB"} {
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("event still holds %q", secret)
		}
	}
	type ref struct{ Name, Secret string }
	var got []ref
	for _, r := range ev.GetSecretRefs()[1:] {
		for _, secret := range []string{jwt, sessionToken, pemKey} {
			if proto.Equal(r, h.Ref(r.GetName(), []byte(secret))) {
				got = append(got, ref{r.GetName(), secret[:12]})
			}
		}
	}
	want := []ref{ // in field order, map entries in key order
		{"reason", jwt[:12]},
		{"actor.claims.(map key)", sessionToken[:12]},
		{`actor.claims["ref"]`, jwt[:12]},
		{"actor.request_reason", jwt[:12]},
		{`key.encryption_context["pem"]`, pemKey[:12]},
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("refs (-got +want):\n%s", diff)
	}
	if got, want := ev.GetActor().GetClaims()[fmt.Sprintf(SecretMarker, 2)], "v"; got != want {
		t.Errorf("claims = %v, want the secret key replaced by its marker", ev.GetActor().GetClaims())
	}
}

func TestNormaliseMapKeysStayDistinct(t *testing.T) {
	ev := event("x")
	ev.GetActor().Claims = map[string]string{"a\x01": "1", `a\x01`: "2", strings.Repeat("k", 300): "3", strings.Repeat("k", 300) + "z": "4"}
	Normalise(ev, testHasher(t))
	claims := ev.GetActor().GetClaims()
	if len(claims) != 4 {
		t.Fatalf("claims = %q, want 4 entries", claims)
	}
	k := strings.Repeat("k", MaxKeyBytes) + fmt.Sprintf(TruncatedMarker, 44)
	want := map[string]string{`a\x01`: "1", `a\x01~2`: "2", k: "3", k[:len(k)-len("44 bytes]")] + "45 bytes]": "4"}
	if diff := cmp.Diff(claims, want); diff != "" {
		t.Errorf("claims (-got +want):\n%s", diff)
	}
}

// TestNormaliseKeepsEventsWithinBudget: an event whose caller text adds
// up to far more than the audit limit still fits once normalised.
func TestNormaliseKeepsEventsWithinBudget(t *testing.T) {
	big := strings.Repeat("\xff", 16<<10)
	ev := event(big)
	ctx := map[string]string{}
	for i := range 2000 {
		ctx[fmt.Sprintf("%03d-%s", i, strings.Repeat("k", 300))] = big
	}
	ev.Detail = &auditv1.Event_Key{Key: &auditv1.KeyDetail{EncryptionContext: ctx, GrantRegions: strings.Split(strings.Repeat("r,", 500), ",")}}
	Normalise(ev, testHasher(t))
	if n := proto.Size(ev); n > EventBudget {
		t.Fatalf("normalised event is %d bytes, budget %d", n, EventBudget)
	}
	if err := Check(ev); err != nil {
		t.Fatal(err)
	}
	if got := len(ev.GetKey().GetEncryptionContext()); got > 16 {
		t.Errorf("encryption_context has %d entries after the last pass, want at most 16", got)
	}
}

// FuzzNormalise: whatever text a caller sends, the normalised event passes
// the audit service's check, fits its size limit and serialises.
func FuzzNormalise(f *testing.F) {
	for _, s := range []string{"main", jwt, "\x1b[2J\xff", pemKey, strings.Repeat("eyJ", 50) + "." + jwt} {
		f.Add(s, s)
	}
	h := testHasher(f)
	f.Fuzz(func(t *testing.T, a, b string) {
		ev := event(a)
		ev.GetActor().Claims[a] = b
		ev.GetActor().Claims[b] = a
		Normalise(ev, h)
		if err := Check(ev); err != nil {
			t.Fatalf("Check after Normalise: %v", err)
		}
		if n := proto.Size(ev); n > EventBudget {
			t.Fatalf("%d bytes after Normalise", n)
		}
		if _, err := proto.Marshal(ev); err != nil {
			t.Fatalf("marshal after Normalise: %v", err)
		}
		for _, r := range ev.GetSecretRefs() {
			if r.GetName() == "" || len(r.GetName()) > 64 {
				t.Fatalf("ref name %q", r.GetName())
			}
		}
	})
}

// BenchmarkNormalise is the cost a producer pays per event: a clean event
// (the common case) and one full of hostile text.
//
//	go test -run '^$' -bench Normalise -benchmem ./platform/auditevent/
func BenchmarkNormalise(b *testing.B) {
	h := testHasher(b)
	b.Run("clean", func(b *testing.B) {
		ev := event("refs/heads/main") // left as it is: reusable
		for b.Loop() {
			Normalise(ev, h)
		}
	})
	b.Run("hostile", func(b *testing.B) {
		for b.Loop() {
			Normalise(event(jwt+"\x1b\xff"+strings.Repeat("x", 2000)), h)
		}
	})
}
