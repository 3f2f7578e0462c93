package auditevent

import (
	"slices"
	"strings"
)

// The secret shapes recognised in text. A producer replaces each match by
// a SecretRef (see Normalise); the audit service refuses an event that
// still holds one (see Check). Both use these functions, so they cannot
// disagree about what is a secret.
//
//   - A compact JWS or JWT (an OIDC token): a base64url JSON header
//     ("eyJ…", at least 10 characters up to the first dot), a dot, a
//     base64url payload of at least 10 characters, a dot, and a signature
//     starting with at least 16 base64url characters.
//   - A signed base64url JSON blob: "eyJ…" (at least 10 characters), a
//     dot, and at least 43 base64url characters (a MAC or signature of 256
//     bits or more), as credmatrix's local session tokens are.
//   - A PEM private key: "-----BEGIN …PRIVATE KEY-----" up to its END line
//     (or to the end of the text when it has none).
//
// Every function here runs in time linear in the length of the text.
const (
	jwsMinHeader    = 10 // "eyJ" and at least 7 more characters
	jwsMinPayload   = 10
	jwsMinSignature = 16
	macMinLen       = 43    // base64url of 32 bytes
	jwsMark         = "eyJ" // every base64url shape starts with it
	pemBegin        = "-----BEGIN "
	pemDashes       = "-----"
	pemEnd          = "-----END "
	pemMaxLabel     = 64 // "ENCRYPTED PRIVATE KEY", "OPENSSH PRIVATE KEY"…
)

// ContainsSecret reports whether s holds a secret-shaped value.
func ContainsSecret(s string) bool {
	found := false
	secretSpans(s, func(int, int) bool {
		found = true
		return false
	})
	return found
}

// SecretSpans returns the byte ranges [start, end) of the secret-shaped
// values in s, in order and not overlapping.
func SecretSpans(s string) [][2]int {
	var found [][2]int
	secretSpans(s, func(start, end int) bool {
		found = append(found, [2]int{start, end})
		return true
	})
	if len(found) < 2 {
		return found
	}
	slices.SortStableFunc(found, func(x, y [2]int) int { return x[0] - y[0] })
	spans := found[:1]
	for _, sp := range found[1:] {
		if last := &spans[len(spans)-1]; sp[0] <= last[1] {
			last[1] = max(last[1], sp[1])
			continue
		}
		spans = append(spans, sp)
	}
	return spans
}

// mayHoldSecret is the cheap test every secret shape needs to pass.
func mayHoldSecret(s string) bool {
	return strings.Contains(s, jwsMark) || strings.Contains(s, pemBegin)
}

// secretSpans calls yield with every match (spans of different shapes may
// overlap; starts do not decrease within one shape) until yield returns
// false. It sorts nothing and allocates nothing.
func secretSpans(s string, yield func(start, end int) bool) {
	if !jwsSpans(s, yield) {
		return
	}
	pemSpans(s, yield)
}

// run is a maximal run of base64url characters: s[start:end], with the
// position of its first "eyJ" (or -1).
type run struct{ start, end, eyj int }

// jwsSpans finds the base64url shapes in one pass over the runs of
// base64url characters, keeping the last two. It returns false when yield
// asked to stop.
func jwsSpans(s string, yield func(start, end int) bool) bool {
	first := strings.Index(s, jwsMark)
	if first < 0 {
		return true
	}
	i := first
	for i > 0 && isB64URL(s[i-1]) {
		i-- // back to the start of the run holding the first "eyJ"
	}
	var a, b run
	have := 0 // how many of a, b are set
	for i < len(s) {
		if !isB64URL(s[i]) {
			i++
			continue
		}
		c := run{start: i, eyj: -1}
		for i < len(s) && isB64URL(s[i]) {
			if c.eyj < 0 && s[i] == 'e' && i+2 < len(s) && s[i+1] == 'y' && s[i+2] == 'J' {
				c.eyj = i
			}
			i++
		}
		c.end = i
		if have == 2 && a.eyj >= 0 && a.end-a.eyj >= jwsMinHeader && dotted(s, a, b) &&
			b.end-b.start >= jwsMinPayload && dotted(s, b, c) && c.end-c.start >= jwsMinSignature {
			if !yield(a.eyj, c.end) {
				return false
			}
		}
		if have >= 1 && b.eyj >= 0 && b.end-b.eyj >= jwsMinHeader && dotted(s, b, c) && c.end-c.start >= macMinLen {
			if !yield(b.eyj, c.end) {
				return false
			}
		}
		a, b = b, c
		have = min(have+1, 2)
	}
	return true
}

// dotted reports whether run y follows run x after exactly one dot.
func dotted(s string, x, y run) bool {
	return x.end < len(s) && s[x.end] == '.' && y.start == x.end+1
}

func isB64URL(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// pemSpans finds PEM private keys. Each search starts after the previous
// match or candidate, so the text is read a bounded number of times.
func pemSpans(s string, yield func(start, end int) bool) {
	off := 0
	for {
		i := strings.Index(s[off:], pemBegin)
		if i < 0 {
			return
		}
		start := off + i
		label := start + len(pemBegin)
		window := s[label:min(len(s), label+pemMaxLabel+len(pemDashes))]
		j := strings.Index(window, pemDashes)
		if j < 0 || !strings.HasSuffix(window[:j], "PRIVATE KEY") {
			off = label
			continue
		}
		end := len(s)
		body := label + j + len(pemDashes)
		if k := strings.Index(s[body:], pemEnd); k >= 0 {
			tail := body + k + len(pemEnd)
			if m := strings.Index(s[tail:min(len(s), tail+pemMaxLabel+len(pemDashes))], pemDashes); m >= 0 {
				end = tail + m + len(pemDashes)
			} else {
				end = tail
			}
		}
		if !yield(start, end) {
			return
		}
		off = end
	}
}
