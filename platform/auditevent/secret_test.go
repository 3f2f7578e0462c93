package auditevent

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// A real-looking RS256 token (header, payload, signature).
const jwt = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJpc3MiOiJodHRwczovL2lzc3VlciIsInN1YiI6InJlcG86YWNtZS9hcHAifQ.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU"

// A credmatrix local session token: base64url JSON payload "." 32-byte MAC.
const sessionToken = "eyJzaWQiOiJhYmMiLCJleHAiOjF9.q83vEjRWeJq8mZ3uHh8vN2l0ZXN0aW5nLW1hYy0zMmJ5dGVz"

const pemKey = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----"

func TestSecretSpans(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want [][2]int
	}{
		{"plain", "refs/heads/main", nil},
		{"jwt-alone", jwt, [][2]int{{0, len(jwt)}}},
		{"jwt-in-text", "branch " + jwt + " done", [][2]int{{7, 7 + len(jwt)}}},
		{"jwt-prefixed-in-run", "xxeyJ" + jwt[3:], [][2]int{{2, len(jwt) + 2}}},
		{"two-jwts", jwt + " " + jwt, [][2]int{{0, len(jwt)}, {len(jwt) + 1, 2*len(jwt) + 1}}},
		{"session-token", "t=" + sessionToken, [][2]int{{2, 2 + len(sessionToken)}}},
		{"pem", "key: " + pemKey + " tail", [][2]int{{5, 5 + len(pemKey)}}},
		{"pem-without-end", "key: -----BEGIN PRIVATE KEY-----\nMIIE", [][2]int{{5, 37}}},
		{"pem-certificate-is-not-secret", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----", nil},
		{"header-too-short", "eyJhbGci.eyJpc3MiOiJ.c2lnbmF0dXJlLXNpZ25hdHVy", nil},
		{"signature-too-short", "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwcyJ9.c2lnbmF0", nil},
		{"dotted-words", "eyJust.some.words.here", nil},
		{"no-header-marker", "abcdefghijklmnop.abcdefghijklmnop.abcdefghijklmnopqrstuvwx", nil},
		{"eyJ-repeated", strings.Repeat("eyJ", 1000), nil},
		{"eyJ-dots", strings.Repeat("eyJ.", 1000), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := SecretSpans(tc.in)
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("SecretSpans mismatch (-got +want):\n%s", diff)
			}
			if ContainsSecret(tc.in) != (len(tc.want) > 0) {
				t.Errorf("ContainsSecret = %v, want %v", !(len(tc.want) > 0), len(tc.want) > 0)
			}
		})
	}
}

// oldLooksLikeJWT is the audit service's former detector (quadratic), kept
// as the reference the new one must never miss.
func oldLooksLikeJWT(s string) bool {
	for {
		i := strings.Index(s, "eyJ")
		if i < 0 {
			return false
		}
		s = s[i:]
		parts := strings.SplitN(s, ".", 4)
		if len(parts) >= 3 && oldIsB64URL(parts[0], 10) && oldIsB64URL(parts[1], 10) && oldIsB64URL(oldLeading(parts[2]), 16) {
			return true
		}
		s = s[3:]
	}
}

func oldIsB64URL(s string, min int) bool { return len(s) >= min && len(oldLeading(s)) == len(s) }

func oldLeading(s string) string {
	for i := 0; i < len(s); i++ {
		if !isB64URL(s[i]) {
			return s[:i]
		}
	}
	return s
}

// FuzzSecretSpans checks that the detector finds whatever the former one
// found, that every span it returns is a secret, and that nothing secret
// remains once the spans are cut out.
func FuzzSecretSpans(f *testing.F) {
	for _, s := range []string{jwt, sessionToken, pemKey, "a." + jwt + ".b", "eyJ" + jwt, "eyJhbGciOiJ.eyJhbGciOiJ.eyJhbGciOiJhbGciOiJ", strings.Repeat("eyJa.", 20)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		spans := SecretSpans(s)
		if oldLooksLikeJWT(s) && len(spans) == 0 {
			t.Fatalf("%q: the former detector finds a JWT, the new one nothing", s)
		}
		if ContainsSecret(s) != (len(spans) > 0) {
			t.Fatalf("%q: ContainsSecret and SecretSpans disagree", s)
		}
		var rest strings.Builder
		prev := 0
		for _, sp := range spans {
			if sp[0] < prev || sp[1] <= sp[0] || sp[1] > len(s) {
				t.Fatalf("%q: bad spans %v", s, spans)
			}
			if !ContainsSecret(s[sp[0]:sp[1]]) {
				t.Fatalf("%q: span %v holds no secret", s, sp)
			}
			rest.WriteString(s[prev:sp[0]])
			rest.WriteString(" ")
			prev = sp[1]
		}
		rest.WriteString(s[prev:])
		if ContainsSecret(rest.String()) {
			t.Fatalf("%q: a secret remains after cutting spans %v: %q", s, spans, rest.String())
		}
	})
}

// adversarial inputs of n bytes: shapes that made the former detector
// quadratic, and near misses of every secret shape.
func adversarial(n int) map[string]string {
	fill := func(unit string) string { return strings.Repeat(unit, n/len(unit)+1)[:n] }
	return map[string]string{
		"eyJ":           fill("eyJ"),
		"eyJ-dot":       fill("eyJaaaaaaaaaa."),
		"two-part-miss": fill("eyJaaaaaaaaaa.bbbbbbbbbbbbbbbb "),
		"pem-begin":     fill("-----BEGIN "),
		"prose":         fill("deploy of acme/app from refs/heads/main "),
	}
}

// BenchmarkContainsSecret shows linear time: MB/s stays flat from 1 KiB to
// 600 KB on every input shape (the former detector took 56 s of CPU for
// one 600 KB field).
//
//	go test -run '^$' -bench ContainsSecret ./platform/auditevent/
func BenchmarkContainsSecret(b *testing.B) {
	for _, n := range []int{1 << 10, 64 << 10, 600 << 10} {
		for name, s := range adversarial(n) {
			b.Run(fmt.Sprintf("%s/%d", name, n), func(b *testing.B) {
				b.SetBytes(int64(len(s)))
				for b.Loop() {
					ContainsSecret(s)
				}
			})
		}
	}
}

// BenchmarkFormerDetector is the former detector on the same inputs up to
// 64 KiB, for comparison (quadratic: 64 times the input, about 4000 times
// the time).
//
//	go test -run '^$' -bench FormerDetector ./platform/auditevent/
func BenchmarkFormerDetector(b *testing.B) {
	for _, n := range []int{1 << 10, 8 << 10, 64 << 10} {
		s := adversarial(n)["eyJ"]
		b.Run(fmt.Sprintf("eyJ/%d", n), func(b *testing.B) {
			b.SetBytes(int64(len(s)))
			for b.Loop() {
				oldLooksLikeJWT(s)
			}
		})
	}
}
