package broker

import (
	"strings"
	"unicode/utf8"

	"github.com/credmatrix/credmatrix/services/broker/oidc"
)

// tagClaims are the claims passed on as session tags, when present, so
// that IAM conditions and CloudTrail can see which pipeline holds a
// session, and so that a revocation can deny exactly its sessions. The
// subject and the issuer are tags too ("sub", "iss").
var tagClaims = []string{"repository", "ref", "sha", "run_id", "environment", "namespace"}

// Session tag keys of the subject and the issuer.
const (
	TagSubject = "sub"
	TagIssuer  = "iss"
)

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

// sessionTags derives session tags from claims, each value through
// TagValue.
func sessionTags(c *oidc.Claims) map[string]string {
	tags := map[string]string{TagSubject: TagValue(c.Subject), TagIssuer: TagValue(c.Issuer)}
	for _, name := range tagClaims {
		if v, ok := c.String(name); ok && v != "" {
			tags[name] = TagValue(v)
		}
	}
	return tags
}

// TagValue is the session tag value the broker sets for a claim value:
// every rune outside AWS's tag character set becomes '-', and the result
// is cut to 256 bytes. It is the one sanitiser of tag values: revocation
// denies compare the tags with TagValue of their selectors.
func TagValue(v string) string { return sanitize(v, isTagChar, maxTagValue) }

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
