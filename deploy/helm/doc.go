// Package helm holds the credmatrix Helm chart (credmatrix/) and the tests
// that render it with the real helm binary and check what a platform team
// relies on: the restricted pod security profile, mTLS health probes,
// NetworkPolicies, secrets only by reference, pods that roll when the trust
// policy or key rings change, and values that fail at install time when
// they are wrong. It has no Go API.
package helm
