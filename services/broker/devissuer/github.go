package devissuer

import (
	"crypto/sha1"
	"encoding/hex"
	"hash/fnv"
	"strconv"
	"strings"
)

// GitHubActionsClaims returns claims shaped like those of a GitHub Actions
// ID token for a push workflow run of repo ("org/name") on ref
// ("refs/heads/main"), for audience. Ids and the commit sha are derived
// from the inputs, so the same inputs always give the same claims.
func GitHubActionsClaims(repo, ref, runID, audience string) map[string]any {
	owner, _, _ := strings.Cut(repo, "/")
	refType := "branch"
	if strings.HasPrefix(ref, "refs/tags/") {
		refType = "tag"
	}
	sha := sha1.Sum([]byte(repo + "\x00" + ref + "\x00" + runID))
	workflowRef := repo + "/.github/workflows/deploy.yml@" + ref
	return map[string]any{
		"sub":                   "repo:" + repo + ":ref:" + ref,
		"aud":                   audience,
		"repository":            repo,
		"repository_id":         stableID(repo),
		"repository_owner":      owner,
		"repository_owner_id":   stableID(owner),
		"repository_visibility": "private",
		"ref":                   ref,
		"ref_type":              refType,
		"ref_protected":         "true",
		"sha":                   hex.EncodeToString(sha[:]),
		"run_id":                runID,
		"run_number":            "1",
		"run_attempt":           "1",
		"workflow":              "deploy",
		"workflow_ref":          workflowRef,
		"workflow_sha":          hex.EncodeToString(sha[:]),
		"job_workflow_ref":      workflowRef,
		"job_workflow_sha":      hex.EncodeToString(sha[:]),
		"event_name":            "push",
		"actor":                 "octocat",
		"actor_id":              "583231",
		"runner_environment":    "github-hosted",
		"head_ref":              "",
		"base_ref":              "",
	}
}

// stableID turns a name into a numeric id string, as GitHub ids are.
func stableID(name string) string {
	h := fnv.New64a()
	_, _ = h.Write([]byte(name))
	return strconv.FormatUint(h.Sum64()%1_000_000_000, 10)
}
