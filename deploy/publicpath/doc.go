// Package publicpath tests the path CI runners and apps take into a
// credmatrix deployment: the real credmatrix CLI and the README's GitHub
// Actions and GitLab CI examples, run as written against the real broker and
// keyguard binaries over their public listeners — server-authenticated TLS
// with only a CA bundle, the OIDC token as the credential — and every way
// that path must refuse (administrative RPCs, missing or forged tokens,
// plaintext, the wrong port or CA). It has no Go API.
package publicpath
