package devissuer_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/services/broker/devissuer"
	"github.com/go-jose/go-jose/v4"
	"github.com/google/go-cmp/cmp"
)

func start(t *testing.T, opts ...devissuer.Option) (*devissuer.Issuer, string) {
	t.Helper()
	iss, err := devissuer.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	url, err := iss.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = iss.Close() })
	return iss, url
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

func TestMintVerifiesWithPublishedKey(t *testing.T) {
	for _, alg := range []string{devissuer.RS256, devissuer.ES256} {
		t.Run(alg, func(t *testing.T) {
			iss, url := start(t, devissuer.WithAlgorithm(alg))
			var disc struct {
				Issuer  string   `json:"issuer"`
				JWKSURI string   `json:"jwks_uri"`
				Algs    []string `json:"id_token_signing_alg_values_supported"`
			}
			getJSON(t, url+devissuer.DiscoveryPath, &disc)
			if diff := cmp.Diff([]string{disc.Issuer, disc.JWKSURI}, []string{url, url + devissuer.JWKSPath}); diff != "" {
				t.Errorf("discovery (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(disc.Algs, []string{alg}); diff != "" {
				t.Errorf("algorithms (-got +want):\n%s", diff)
			}
			var set jose.JSONWebKeySet
			getJSON(t, disc.JWKSURI, &set)
			keys := set.Key(iss.KeyID())
			if len(keys) != 1 {
				t.Fatalf("JWKS has %d keys with kid %q, want 1", len(keys), iss.KeyID())
			}

			raw, err := iss.Mint(devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", "42", "credmatrix"), 5*time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(alg)})
			if err != nil {
				t.Fatal(err)
			}
			if got := jws.Signatures[0].Header.KeyID; got != iss.KeyID() {
				t.Errorf("kid = %q, want %q", got, iss.KeyID())
			}
			payload, err := jws.Verify(keys[0])
			if err != nil {
				t.Fatalf("signature does not verify with the published key: %v", err)
			}
			var claims map[string]any
			if err := json.Unmarshal(payload, &claims); err != nil {
				t.Fatal(err)
			}
			got := []any{claims["iss"], claims["sub"], claims["aud"], claims["repository"], claims["ref"]}
			want := []any{url, "repo:acme/app:ref:refs/heads/main", "credmatrix", "acme/app", "refs/heads/main"}
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("claims (-got +want):\n%s", diff)
			}
			if exp, iat := claims["exp"].(float64), claims["iat"].(float64); exp-iat != 300 {
				t.Errorf("exp - iat = %v, want 300", exp-iat)
			}
		})
	}
}

func TestRotateKeyKeepsOldKeysPublished(t *testing.T) {
	iss, url := start(t)
	old := iss.KeyID()
	if err := iss.RotateKey(); err != nil {
		t.Fatal(err)
	}
	if iss.KeyID() == old {
		t.Fatal("RotateKey kept the kid")
	}
	var set jose.JSONWebKeySet
	getJSON(t, url+devissuer.JWKSPath, &set)
	if len(set.Key(old)) != 1 || len(set.Key(iss.KeyID())) != 1 {
		t.Errorf("JWKS should publish both keys, got %d keys", len(set.Keys))
	}
}

func TestStartRefusesNonLoopback(t *testing.T) {
	iss, err := devissuer.New()
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:0", "example.com:0"} {
		if _, err := iss.Start(addr); err == nil {
			t.Errorf("Start(%q) succeeded, want refusal", addr)
			_ = iss.Close()
		}
	}
}

func TestMintNeedsURL(t *testing.T) {
	iss, err := devissuer.New()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := iss.Mint(nil, time.Minute); err == nil {
		t.Error("Mint without a URL succeeded")
	}
}

func TestNewRejectsUnknownAlgorithm(t *testing.T) {
	if _, err := devissuer.New(devissuer.WithAlgorithm("HS256")); err == nil {
		t.Error("New accepted HS256")
	}
}
