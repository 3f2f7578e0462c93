// Package keyguardclient is the Go client of credmatrix keyguard: envelope
// encryption by data class and region.
//
// Three ways to encrypt, from small to large data:
//   - Encrypt / Decrypt (and BatchEncrypt / BatchDecrypt) send the data to
//     keyguard: simplest, every record audited, up to 64 KiB each.
//   - EncryptLocal / DecryptLocal seal with a data key from GenerateDataKey,
//     here, in the caller's process: the data never crosses the network.
//     Data keys are cached, bounded by age, messages and bytes, with one
//     fetch in flight per (ring, context), so a burst of callers makes one
//     call to keyguard. Each envelope still derives its own AES key from a
//     fresh salt.
//   - NewEncryptWriter / NewDecryptReader stream large payloads in chunks
//     (chunked AES-256-GCM under a per-stream key), detecting truncation,
//     reordering and extension.
//
// Formats are specified in docs/envelope-format.md of the repository.
package keyguardclient

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/credmatrix/credmatrix/clients/keyguardclient/envelope"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Client calls one keyguard. It is safe for concurrent use; share one per
// connection, so its data-key cache is shared too.
type Client struct {
	rpc     keyguardv1.KeyguardServiceClient
	enc     *keyCache
	dec     *keyCache
	rand    io.Reader
	limits  CacheLimits
	nowFunc func() time.Time
	token   func(ctx context.Context) (string, error)
	observe func(cache, result string)
}

// Option configures a Client.
type Option func(*Client)

// WithCacheLimits sets the data-key cache bounds (DefaultCacheLimits
// otherwise).
func WithCacheLimits(l CacheLimits) Option { return func(c *Client) { c.limits = l } }

// WithBearerToken identifies the caller by an OIDC token (from token,
// called for every request) instead of its client certificate: keyguard
// verifies it and names the caller "<issuer>#<sub>". The connection itself
// still needs TLS (and, with the local stack, mTLS).
func WithBearerToken(token func(ctx context.Context) (string, error)) Option {
	return func(c *Client) { c.token = token }
}

// WithClock sets the clock of the cache's age limit (time.Now otherwise).
func WithClock(now func() time.Time) Option { return func(c *Client) { c.nowFunc = now } }

// New returns a client using conn (see platform/grpcclient.Dial for mTLS).
func New(conn grpc.ClientConnInterface, opts ...Option) *Client {
	c := &Client{rpc: keyguardv1.NewKeyguardServiceClient(conn), rand: rand.Reader, nowFunc: time.Now}
	for _, o := range opts {
		o(c)
	}
	if c.token != nil {
		c.rpc = keyguardv1.NewKeyguardServiceClient(bearerConn{conn, c.token})
	}
	c.enc = newKeyCache(c.limits, c.nowFunc)
	c.dec = newKeyCache(c.limits, c.nowFunc)
	if obs := c.observe; obs != nil {
		c.enc.observe = func(r string) { obs("encrypt", r) }
		c.dec.observe = func(r string) { obs("decrypt", r) }
	}
	return c
}

// bearerConn adds "authorization: Bearer <token>" to every call.
type bearerConn struct {
	grpc.ClientConnInterface
	token func(ctx context.Context) (string, error)
}

func (b bearerConn) withToken(ctx context.Context) (context.Context, error) {
	tok, err := b.token(ctx)
	if err != nil {
		return nil, fmt.Errorf("keyguardclient: bearer token: %w", err)
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok), nil
}

// Invoke implements grpc.ClientConnInterface.
func (b bearerConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	ctx, err := b.withToken(ctx)
	if err != nil {
		return err
	}
	return b.ClientConnInterface.Invoke(ctx, method, args, reply, opts...)
}

// NewStream implements grpc.ClientConnInterface.
func (b bearerConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	ctx, err := b.withToken(ctx)
	if err != nil {
		return nil, err
	}
	return b.ClientConnInterface.NewStream(ctx, desc, method, opts...)
}

// RPC returns the raw API client, for the operations this package does not
// wrap (grants, rotation, describe).
func (c *Client) RPC() keyguardv1.KeyguardServiceClient { return c.rpc }

// Encrypt seals plaintext under the newest key of the (dataClass, region)
// ring, binding encCtx; the same encCtx is needed to decrypt.
func (c *Client) Encrypt(ctx context.Context, dataClass, region string, plaintext []byte, encCtx map[string]string) ([]byte, *keyguardv1.KeyRef, error) {
	resp, err := c.rpc.Encrypt(ctx, &keyguardv1.EncryptRequest{
		DataClass: dataClass, Region: region, Plaintext: plaintext, EncryptionContext: encCtx,
	})
	if err != nil {
		return nil, nil, err
	}
	return resp.GetCiphertext(), resp.GetKey(), nil
}

// Decrypt opens an envelope made by Encrypt with the same encCtx.
func (c *Client) Decrypt(ctx context.Context, ciphertext []byte, encCtx map[string]string) ([]byte, *keyguardv1.KeyRef, error) {
	resp, err := c.rpc.Decrypt(ctx, &keyguardv1.DecryptRequest{Ciphertext: ciphertext, EncryptionContext: encCtx})
	if err != nil {
		return nil, nil, err
	}
	return resp.GetPlaintext(), resp.GetKey(), nil
}

// DataKey is a data key from GenerateDataKey. Its plaintext half never
// leaves the package through this type: it prints as [redacted].
type DataKey struct {
	plaintext []byte
	// Wrapped is the data key sealed by keyguard (an envelope): stored with
	// the data, it is unwrapped through Decrypt with the same context.
	Wrapped []byte
	// Key is the ring version that wraps it.
	Key *keyguardv1.KeyRef
}

// String never shows the key.
func (k *DataKey) String() string {
	return fmt.Sprintf("DataKey{%s/%s v%d, [redacted]}", k.Key.GetDataClass(), k.Key.GetRegion(), k.Key.GetVersion())
}

// LogValue keeps the key out of structured logs.
func (k *DataKey) LogValue() slog.Value { return slog.StringValue(k.String()) }

// GenerateDataKey asks keyguard for a fresh data key of the ring, bound to
// encCtx. It is not cached; EncryptLocal and NewEncryptWriter use the
// cache.
func (c *Client) GenerateDataKey(ctx context.Context, dataClass, region string, encCtx map[string]string) (*DataKey, error) {
	resp, err := c.rpc.GenerateDataKey(ctx, &keyguardv1.GenerateDataKeyRequest{DataClass: dataClass, Region: region, EncryptionContext: encCtx})
	if err != nil {
		return nil, err
	}
	if len(resp.GetPlaintextDataKey()) != envelope.DataKeySize {
		return nil, fmt.Errorf("keyguard returned a %d-byte data key, want %d", len(resp.GetPlaintextDataKey()), envelope.DataKeySize)
	}
	return &DataKey{plaintext: resp.GetPlaintextDataKey(), Wrapped: resp.GetWrappedDataKey(), Key: resp.GetKey()}, nil
}

func cacheKey(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		var l [8]byte
		n := len(p)
		for i := range l {
			l[i] = byte(n >> (8 * i))
		}
		h.Write(l[:])
		h.Write(p)
	}
	return string(h.Sum(nil))
}

// encKey returns a cached (or fresh) data key of the ring for encCtx, for a
// message of n bytes.
func (c *Client) encKey(ctx context.Context, dataClass, region string, encCtx map[string]string, n uint64) (*DataKey, error) {
	k := cacheKey([]byte(dataClass), []byte(region), envelope.EncodeContext(encCtx))
	return c.enc.get(ctx, k, n, func(ctx context.Context) (*DataKey, error) {
		return c.GenerateDataKey(ctx, dataClass, region, encCtx)
	})
}

// decKey unwraps a wrapped data key through keyguard's Decrypt (so the
// caller's decrypt grant and the audit log apply), with caching.
func (c *Client) decKey(ctx context.Context, wrapped []byte, encCtx map[string]string, n uint64) (*DataKey, error) {
	k := cacheKey(wrapped, envelope.EncodeContext(encCtx))
	return c.dec.get(ctx, k, n, func(ctx context.Context) (*DataKey, error) {
		resp, err := c.rpc.Decrypt(ctx, &keyguardv1.DecryptRequest{Ciphertext: wrapped, EncryptionContext: encCtx})
		if err != nil {
			return nil, err
		}
		if len(resp.GetPlaintext()) != envelope.DataKeySize {
			return nil, ErrNotLocal
		}
		return &DataKey{plaintext: resp.GetPlaintext(), Wrapped: wrapped, Key: resp.GetKey()}, nil
	})
}

// ErrNotLocal means an envelope was not made by EncryptLocal (its wrapped
// key is not a keyguard envelope of a data key): use Decrypt.
var ErrNotLocal = errors.New("keyguardclient: not a client-side envelope (use Decrypt)")

// EncryptLocal seals plaintext in this process under a (cached) data key of
// the ring, bound to encCtx. The result is a keyguard envelope whose
// wrapped-key field holds the data key's own envelope; DecryptLocal opens
// it. The plaintext never leaves the process.
func (c *Client) EncryptLocal(ctx context.Context, dataClass, region string, plaintext []byte, encCtx map[string]string) ([]byte, error) {
	dk, err := c.encKey(ctx, dataClass, region, encCtx, uint64(len(plaintext)))
	if err != nil {
		return nil, err
	}
	return envelope.Seal(dk.plaintext, envelope.Header{
		DataClass: dk.Key.GetDataClass(), Region: dk.Key.GetRegion(), KeyVersion: dk.Key.GetVersion(), WrappedKey: dk.Wrapped,
	}, encCtx, plaintext, c.rand)
}

// DecryptLocal opens an envelope made by EncryptLocal with the same
// encCtx, unwrapping its data key through keyguard (cached).
func (c *Client) DecryptLocal(ctx context.Context, ciphertext []byte, encCtx map[string]string) ([]byte, error) {
	h, _, err := envelope.ParseHeader(ciphertext)
	if err != nil {
		return nil, err
	}
	inner, _, err := envelope.ParseHeader(h.WrappedKey)
	if err != nil {
		return nil, ErrNotLocal
	}
	if inner.DataClass != h.DataClass || inner.Region != h.Region || inner.KeyVersion != h.KeyVersion {
		return nil, fmt.Errorf("%w: header names %s/%s v%d, its data key is from %s/%s v%d", envelope.ErrMalformed, h.DataClass, h.Region, h.KeyVersion, inner.DataClass, inner.Region, inner.KeyVersion)
	}
	dk, err := c.decKey(ctx, h.WrappedKey, encCtx, uint64(len(ciphertext)))
	if err != nil {
		return nil, err
	}
	pt, _, err := envelope.Open(dk.plaintext, ciphertext, encCtx)
	return pt, err
}
