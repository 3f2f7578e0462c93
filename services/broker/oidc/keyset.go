package oidc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// DefaultKeyRefreshCooldown is the least time between two JWKS fetches of
// one issuer caused by tokens naming an unknown kid.
const DefaultKeyRefreshCooldown = 30 * time.Second

// maxJWKSBytes bounds a JWKS response.
const maxJWKSBytes = 1 << 20

// keySet is one issuer's JWKS, parsed once and cached. A token naming a
// kid the cache lacks triggers a refresh, at most once per cooldown and
// coalesced across concurrent callers, so forged kids cannot turn the
// broker into a JWKS request amplifier. A token whose kid is known but
// whose signature fails never triggers a fetch.
type keySet struct {
	url      string
	client   *http.Client
	cooldown time.Duration
	now      func() time.Time
	algs     []jose.SignatureAlgorithm // the issuer's, for the record

	mu       sync.Mutex
	keys     []jose.JSONWebKey
	fetched  time.Time // last fetch attempt
	inflight *keyFetch
}

type keyFetch struct {
	done chan struct{}
	keys []jose.JSONWebKey
	err  error
}

// verify checks jws's signature with the issuer's key named by its kid,
// refreshing the key set when the kid is unknown (at most once per
// cooldown).
func (k *keySet) verify(ctx context.Context, jws *jose.JSONWebSignature) error {
	kid := jws.Signatures[0].Header.KeyID
	k.mu.Lock()
	keys, fetched := k.keys, k.fetched
	k.mu.Unlock()
	if found, err := verifyWith(jws, keys, kid); found {
		return err
	}
	if !fetched.IsZero() && k.now().Sub(fetched) < k.cooldown {
		return fmt.Errorf("no key with kid %q (key set refreshed %s ago)", truncate(kid, 64), k.now().Sub(fetched).Round(time.Millisecond))
	}
	keys, err := k.refresh(ctx)
	if err != nil {
		return fmt.Errorf("fetch key set: %w", err)
	}
	found, err := verifyWith(jws, keys, kid)
	if !found {
		return fmt.Errorf("no key with kid %q", truncate(kid, 64))
	}
	return err
}

// verifyWith verifies with the keys named kid (every key when kid is
// empty); found reports whether any key was tried. go-jose checks that
// the key's type suits the header's algorithm.
func verifyWith(jws *jose.JSONWebSignature, keys []jose.JSONWebKey, kid string) (bool, error) {
	found := false
	for i := range keys {
		if kid != "" && keys[i].KeyID != kid {
			continue
		}
		found = true
		if _, err := jws.Verify(&keys[i]); err == nil {
			return true, nil
		}
	}
	return found, errors.New("signature does not verify")
}

// refresh fetches the key set, coalescing concurrent callers.
func (k *keySet) refresh(ctx context.Context) ([]jose.JSONWebKey, error) {
	k.mu.Lock()
	f := k.inflight
	if f == nil {
		f = &keyFetch{done: make(chan struct{})}
		k.inflight = f
		k.fetched = k.now()
		go func() {
			// The fetch outlives a cancelled caller so that the others
			// waiting on it still get keys; the client has a timeout.
			keys, err := k.fetch(context.WithoutCancel(ctx))
			k.mu.Lock()
			if err == nil {
				k.keys = keys
			}
			k.inflight = nil
			k.mu.Unlock()
			f.keys, f.err = keys, err
			close(f.done)
		}()
	}
	k.mu.Unlock()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-f.done:
		return f.keys, f.err
	}
}

func (k *keySet) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", k.url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("%s: key set exceeds %d bytes", k.url, maxJWKSBytes)
	}
	return parseJWKS(body)
}

// parseJWKS keeps the public signing keys of a JWKS and skips keys it
// cannot use (unknown types, encryption keys, private keys), so one odd
// key does not make the issuer unusable.
func parseJWKS(body []byte) ([]jose.JSONWebKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("key set: %v", err)
	}
	var keys []jose.JSONWebKey
	for _, raw := range set.Keys {
		var key jose.JSONWebKey
		if err := key.UnmarshalJSON(raw); err != nil {
			continue
		}
		if !key.Valid() || !key.IsPublic() || (key.Use != "" && key.Use != "sig") {
			continue
		}
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		return nil, errors.New("key set has no usable public signing key")
	}
	return keys, nil
}
