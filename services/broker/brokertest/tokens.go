package brokertest

import (
	"crypto"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"strings"
)

// Forged tokens for the attacks a verifier must refuse. They are built by
// hand because no JOSE library will produce them.

// AlgNoneToken returns an unsigned JWT ({"alg":"none"}) carrying claims.
func AlgNoneToken(claims map[string]any) string {
	return segment(map[string]any{"alg": "none", "typ": "JWT"}) + "." + segment(claims) + "."
}

// PublicKeyHS256Token returns a JWT signed with HS256 using the PEM
// encoding of pub as the HMAC key: the key-confusion attack on verifiers
// that let the token choose the algorithm.
func PublicKeyHS256Token(pub crypto.PublicKey, kid string, claims map[string]any) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		panic("brokertest: marshal public key: " + err.Error())
	}
	key := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	signing := segment(map[string]any{"alg": "HS256", "typ": "JWT", "kid": kid}) + "." + segment(claims)
	m := hmac.New(sha256.New, key)
	m.Write([]byte(signing))
	return signing + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// TamperSignature flips bits in the middle of a compact JWS signature.
func TamperSignature(token string) string {
	i := strings.LastIndexByte(token, '.')
	sig, err := base64.RawURLEncoding.DecodeString(token[i+1:])
	if err != nil || len(sig) == 0 {
		return token + "x"
	}
	sig[len(sig)/2] ^= 0xff
	return token[:i+1] + base64.RawURLEncoding.EncodeToString(sig)
}

// TamperPayload replaces the claims of a signed token, keeping its
// header and signature.
func TamperPayload(token string, claims map[string]any) string {
	parts := strings.SplitN(token, ".", 3)
	if len(parts) != 3 {
		return token
	}
	return parts[0] + "." + segment(claims) + "." + parts[2]
}

func segment(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic("brokertest: encode JWT segment: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b)
}
