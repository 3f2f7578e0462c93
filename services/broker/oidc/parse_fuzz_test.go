package oidc

import (
	"errors"
	"testing"
)

// FuzzParseToken covers the parsing done before any signature check: the
// compact JWS and its payload, and the JWKS parser. Neither may panic, and
// every refusal of a token is an authentication failure.
func FuzzParseToken(f *testing.F) {
	f.Add("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL2V4YW1wbGUuY29tIn0.c2ln", []byte(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"k"}]}`))
	f.Add("a.b.c", []byte(`{"keys":[]}`))
	f.Add("..", []byte(`{`))
	f.Fuzz(func(t *testing.T, token string, jwks []byte) {
		if _, raw, iss, err := parseUnverified(token); err != nil && !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("parseUnverified error %v is not ErrUnauthenticated", err)
		} else if err == nil && (raw == nil || iss == "") {
			t.Fatal("parseUnverified succeeded without claims or issuer")
		}
		keys, err := parseJWKS(jwks)
		if err == nil && len(keys) == 0 {
			t.Fatal("parseJWKS returned no keys and no error")
		}
		for _, k := range keys {
			if !k.IsPublic() {
				t.Fatal("parseJWKS kept a private key")
			}
		}
	})
}
