package broker

import (
	"strings"
	"unicode/utf8"

	"github.com/credmatrix/credmatrix/services/broker/oidc"
)

// tagClaims are the claims passed on as session tags, when present, so
// that IAM conditions and CloudTrail can see which pipeline holds a
// session.
var tagClaims = []string{"repository", "ref", "sha", "run_id", "environment", "namespace"}

const (
	maxSessionName = 64
	maxTagValue    = 256
)

// sessionName derives the RoleSessionName from the claims: "org-repo@run"
// for CI tokens, the subject otherwise, in AWS's character set
// [\w+=,.@-] and at most 64 characters. CloudTrail shows it next to every
// call the session makes.
func sessionName(c *oidc.Claims) string {
	base := c.Subject
	if repo, ok := c.String("repository"); ok && repo != "" {
		base = repo
		if run, ok := c.String("run_id"); ok && run != "" {
			base += "@" + run
		}
	}
	name := sanitize(base, isSessionNameChar, maxSessionName)
	if len(name) < 2 {
		return "credmatrix"
	}
	return name
}

// sessionTags derives session tags from claims, sanitised to AWS's tag
// character set and length.
func sessionTags(c *oidc.Claims) map[string]string {
	tags := map[string]string{"sub": sanitize(c.Subject, isTagChar, maxTagValue)}
	for _, name := range tagClaims {
		if v, ok := c.String(name); ok && v != "" {
			tags[name] = sanitize(v, isTagChar, maxTagValue)
		}
	}
	return tags
}

func isSessionNameChar(r rune) bool {
	return r < utf8.RuneSelf && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_+=,.@-", r))
}

func isTagChar(r rune) bool {
	return r < utf8.RuneSelf && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(" _.:/=+-@", r))
}

// sanitize replaces every rune outside allowed with '-' and cuts the
// result to max bytes.
func sanitize(s string, allowed func(rune) bool, max int) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= max {
			break
		}
		if allowed(r) {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	return b.String()
}

// truncate cuts s to at most n bytes on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
