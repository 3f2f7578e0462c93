// Package awskms is keyguard's production KEK backend: AWS KMS, one KMS key
// (or alias) per key ring, in the ring's own region, so key material for
// a region never leaves it.
//
// Key versions are keyguard's: each version of a ring records the KMS key
// ARN its alias resolved to when the version was created (DescribeKey), in
// the state store every replica shares (keyguard.Store). To rotate, an
// operator points the ring's alias at a new KMS key (or keeps one key and
// lets KMS rotate its material) and calls RotateKey; envelopes of older
// versions keep unwrapping with the ARN their version recorded. Data keys
// are wrapped with KMS Encrypt and unwrapped with KMS Decrypt naming that
// ARN, with the ring and version passed as KMS encryption context, so a
// wrapped key unwraps under no other ring, version or key (and CloudTrail
// shows which ring asked).
//
// Whoever can write the state store must not be able to point a ring's
// version at a key of their choosing: every version record carries an
// HMAC-SHA256, under a key only keyguard holds, over the ring, the version,
// its creation time, the ARN and the previous record's MAC. A record that
// does not verify, a gap, or fewer versions than this process saw before
// refuses to load, and the Service then fails closed. (A store rolled back
// to an older, complete history cannot be told from the history itself by a
// process that never saw the newer one; the audit log records every
// rotation.)
//
// Any failure to reach KMS, throttling included, is
// keyguard.ErrBackendUnavailable: the request fails with UNAVAILABLE and
// nothing is ever encrypted or returned without KMS.
package awskms

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"

	"github.com/credmatrix/credmatrix/clients/keyguardclient/envelope"
	"github.com/credmatrix/credmatrix/services/keyguard"
)

// KMS is the part of the AWS KMS API the backend uses; *kms.Client
// implements it.
type KMS interface {
	Encrypt(ctx context.Context, in *kms.EncryptInput, opts ...func(*kms.Options)) (*kms.EncryptOutput, error)
	Decrypt(ctx context.Context, in *kms.DecryptInput, opts ...func(*kms.Options)) (*kms.DecryptOutput, error)
	DescribeKey(ctx context.Context, in *kms.DescribeKeyInput, opts ...func(*kms.Options)) (*kms.DescribeKeyOutput, error)
}

var _ KMS = (*kms.Client)(nil)

// VersionStore keeps the key versions of the rings; keyguard.Store (sqlite,
// postgres) implements it.
type VersionStore interface {
	KeyVersions(ctx context.Context) (map[keyguard.Ring][]keyguard.StoredKeyVersion, error)
	AddKeyVersion(ctx context.Context, r keyguard.Ring, v keyguard.StoredKeyVersion) error
}

// Encryption-context keys the backend sends to KMS with every call.
const (
	ContextDataClass = "credmatrix:data_class"
	ContextRegion    = "credmatrix:region"
	ContextVersion   = "credmatrix:key_version"
)

// MACKeySize is the size of the key that authenticates version records.
const MACKeySize = 32

// RingKey names the KMS key of one ring.
type RingKey struct {
	// Ring is the key ring.
	Ring keyguard.Ring
	// KeyID is a key id, key ARN, alias name or alias ARN, in the ring's
	// region.
	KeyID string
}

// secret holds key bytes and refuses to print them, whatever the verb.
type secret []byte

// Format prints "[redacted]" for every verb.
func (secret) Format(f fmt.State, _ rune) { io.WriteString(f, "[redacted]") }

// LogValue keeps the key out of structured logs.
func (secret) LogValue() slog.Value { return slog.StringValue("[redacted]") }

// Backend is an AWS KMS KEK backend. It is safe for concurrent use; several
// processes may share one VersionStore.
type Backend struct {
	clients map[string]KMS // by region
	keys    map[keyguard.Ring]string
	store   VersionStore
	macKey  secret
	clock   func() time.Time

	mu       sync.RWMutex
	versions map[keyguard.Ring][]keyguard.StoredKeyVersion
}

var _ keyguard.KeyBackend = (*Backend)(nil)

// ErrIntegrity means a stored version record did not verify: the state
// store holds a record keyguard did not write (or a record was removed).
var ErrIntegrity = errors.New("key version record fails its integrity check")

// Option configures a Backend.
type Option func(*Backend)

// WithClock sets the clock stamping new versions.
func WithClock(now func() time.Time) Option { return func(b *Backend) { b.clock = now } }

// Open returns a backend for rings, with a KMS client per region from
// clients (clients[region]), keeping key versions in store, authenticated
// with macKey (MACKeySize bytes; Open keeps a copy). Every ring without a
// version gets version 1, resolved through DescribeKey, so a wrong key id
// or unreachable KMS is reported at start-up. Replicas opening together
// agree on version 1: only one record is stored, the others load it.
func Open(ctx context.Context, store VersionStore, macKey []byte, rings []RingKey, clients map[string]KMS, opts ...Option) (*Backend, error) {
	if len(macKey) != MACKeySize {
		return nil, fmt.Errorf("awskms: MAC key: %d bytes, want %d", len(macKey), MACKeySize)
	}
	b := &Backend{clients: clients, keys: map[keyguard.Ring]string{}, store: store, macKey: secret(append([]byte(nil), macKey...)),
		clock: time.Now, versions: map[keyguard.Ring][]keyguard.StoredKeyVersion{}}
	for _, o := range opts {
		o(b)
	}
	for i, rk := range rings {
		if !envelope.ValidName(rk.Ring.DataClass) || !envelope.ValidName(rk.Ring.Region) || rk.KeyID == "" {
			return nil, fmt.Errorf("awskms: rings[%d]: data class, region and key id required", i)
		}
		if clients[rk.Ring.Region] == nil {
			return nil, fmt.Errorf("awskms: rings[%d]: no KMS client for region %s", i, rk.Ring.Region)
		}
		b.keys[rk.Ring] = rk.KeyID
	}
	if err := b.Refresh(ctx); err != nil {
		return nil, err
	}
	for _, rk := range rings {
		b.mu.RLock()
		n := len(b.versions[rk.Ring])
		b.mu.RUnlock()
		if n > 0 {
			continue
		}
		if _, err := b.addVersion(ctx, rk.Ring, 0); err != nil {
			if !errors.Is(err, keyguard.ErrConflict) {
				return nil, err
			}
			// Another replica created version 1 first: use its.
			if err := b.Refresh(ctx); err != nil {
				return nil, err
			}
		}
	}
	return b, nil
}

// Refresh re-reads the versions from the store, verifying every record.
// A store that fails verification, or holds fewer versions of a ring than
// this backend saw before, is refused and the versions held stay.
func (b *Backend) Refresh(ctx context.Context) error {
	all, err := b.store.KeyVersions(ctx)
	if err != nil {
		return fmt.Errorf("awskms: read key versions: %w", err)
	}
	for ring, vs := range all {
		if err := b.verify(ring, vs); err != nil {
			return err
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for ring, held := range b.versions {
		if len(all[ring]) < len(held) {
			return fmt.Errorf("awskms: ring %s: the store holds %d key versions, %d were seen before (rolled back?): %w", ring, len(all[ring]), len(held), ErrIntegrity)
		}
	}
	b.versions = all
	return nil
}

// verify checks that vs are versions 1..n of ring, each authenticated and
// chained to its predecessor.
func (b *Backend) verify(ring keyguard.Ring, vs []keyguard.StoredKeyVersion) error {
	var prev []byte
	for i, v := range vs {
		if v.Version != uint32(i+1) || v.BackendKey == "" {
			return fmt.Errorf("awskms: ring %s: key version %d out of sequence: %w", ring, v.Version, ErrIntegrity)
		}
		if !hmac.Equal(v.MAC, b.mac(ring, v, prev)) {
			return fmt.Errorf("awskms: ring %s: key version %d: %w (the state store holds a record keyguard did not write)", ring, v.Version, ErrIntegrity)
		}
		prev = v.MAC
	}
	return nil
}

// mac authenticates one version record and its predecessor's MAC.
func (b *Backend) mac(ring keyguard.Ring, v keyguard.StoredKeyVersion, prev []byte) []byte {
	m := hmac.New(sha256.New, b.macKey)
	m.Write([]byte("credmatrix/awskms/v1 key version\x00"))
	for _, s := range []string{ring.DataClass, ring.Region, v.BackendKey, string(prev)} {
		m.Write(binary.BigEndian.AppendUint32(nil, uint32(len(s))))
		m.Write([]byte(s))
	}
	m.Write(binary.BigEndian.AppendUint32(nil, v.Version))
	m.Write(binary.BigEndian.AppendUint64(nil, uint64(v.Created.UnixNano())))
	return m.Sum(nil)
}

// addVersion resolves the ring's key to an ARN and stores it as version
// cur+1, cur being the version the caller saw as primary (0 for none).
// Another replica having stored that version first is keyguard.ErrConflict.
func (b *Backend) addVersion(ctx context.Context, ring keyguard.Ring, cur uint32) (uint32, error) {
	keyID, ok := b.keys[ring]
	if !ok {
		return 0, fmt.Errorf("awskms: ring %s: %w", ring, keyguard.ErrKeyNotFound)
	}
	out, err := b.clients[ring.Region].DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: &keyID})
	if err != nil {
		return 0, fmt.Errorf("awskms: ring %s: describe key %s: %w", ring, keyID, classify(err))
	}
	md := out.KeyMetadata
	if md == nil || md.Arn == nil {
		return 0, fmt.Errorf("awskms: ring %s: key %s has no ARN", ring, keyID)
	}
	if md.KeyState != types.KeyStateEnabled {
		return 0, fmt.Errorf("awskms: ring %s: key %s is %s, not Enabled", ring, *md.Arn, md.KeyState)
	}
	b.mu.RLock()
	vs := b.versions[ring]
	b.mu.RUnlock()
	if len(vs) != int(cur) {
		return 0, fmt.Errorf("awskms: ring %s: primary version is %d, not %d: %w", ring, len(vs), cur, keyguard.ErrConflict)
	}
	var prev []byte
	if len(vs) > 0 {
		prev = vs[len(vs)-1].MAC
	}
	next := keyguard.StoredKeyVersion{Version: cur + 1, BackendKey: *md.Arn, Created: b.clock().UTC()}
	next.MAC = b.mac(ring, next, prev)
	if err := b.store.AddKeyVersion(ctx, ring, next); err != nil {
		return 0, fmt.Errorf("awskms: ring %s: %w", ring, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.versions[ring]) == int(cur) {
		b.versions[ring] = append(b.versions[ring][:cur:cur], next)
	}
	return next.Version, nil
}

// lookup returns the ARN of one version of a ring.
func (b *Backend) lookup(ring keyguard.Ring, v uint32) (string, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	vs := b.versions[ring]
	if v == 0 || int(v) > len(vs) {
		return "", fmt.Errorf("awskms: ring %s version %d: %w", ring, v, keyguard.ErrKeyNotFound)
	}
	return vs[v-1].BackendKey, nil
}

func encryptionContext(ring keyguard.Ring, v uint32) map[string]string {
	return map[string]string{ContextDataClass: ring.DataClass, ContextRegion: ring.Region, ContextVersion: strconv.FormatUint(uint64(v), 10)}
}

// Primary returns the newest version of the ring.
func (b *Backend) Primary(ctx context.Context, dataClass, region string) (uint32, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	ring := keyguard.Ring{DataClass: dataClass, Region: region}
	b.mu.RLock()
	defer b.mu.RUnlock()
	vs := b.versions[ring]
	if len(vs) == 0 || b.keys[ring] == "" {
		return 0, fmt.Errorf("awskms: ring %s: %w", ring, keyguard.ErrKeyNotFound)
	}
	return vs[len(vs)-1].Version, nil
}

// Wrap encrypts dataKey with KMS under the version's key ARN, in the ring's
// region, with the ring and version as KMS encryption context.
func (b *Backend) Wrap(ctx context.Context, dataClass, region string, v uint32, dataKey []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ring := keyguard.Ring{DataClass: dataClass, Region: region}
	arn, err := b.lookup(ring, v)
	if err != nil {
		return nil, err
	}
	out, err := b.clients[region].Encrypt(ctx, &kms.EncryptInput{KeyId: &arn, Plaintext: dataKey, EncryptionContext: encryptionContext(ring, v)})
	if err != nil {
		return nil, fmt.Errorf("awskms: ring %s version %d: encrypt: %w", ring, v, classify(err))
	}
	if len(out.CiphertextBlob) == 0 || 1+len(out.CiphertextBlob)+bindingTagSize > envelope.MaxWrappedKeyLen {
		return nil, fmt.Errorf("awskms: ring %s version %d: KMS returned a %d-byte ciphertext", ring, v, len(out.CiphertextBlob))
	}
	w := make([]byte, 0, 1+len(out.CiphertextBlob)+bindingTagSize)
	w = append(w, wrapFormat)
	w = append(w, out.CiphertextBlob...)
	return append(w, bindingTag(dataKey, w)...), nil
}

// The wrapped-key format: 0x01, the KMS ciphertext blob, then an
// HMAC-SHA256 of both under the data key itself. Some bytes of a KMS blob
// are not authenticated by KMS when the key id is given explicitly (local-
// kms accepts a blob with its key-id header altered); the tag makes every
// byte count, so a wrapped key unwraps only exactly as it was made.
const (
	wrapFormat     = 0x01
	bindingTagSize = 32
)

func bindingTag(dataKey, prefix []byte) []byte {
	m := hmac.New(sha256.New, dataKey)
	m.Write([]byte("credmatrix/awskms/v1 wrapped key\x00"))
	m.Write(prefix)
	return m.Sum(nil)
}

// Unwrap decrypts a wrapped key with KMS, naming the version's key ARN and
// the same encryption context: a blob of another ring, version or key is
// keyguard.ErrUnwrap.
func (b *Backend) Unwrap(ctx context.Context, dataClass, region string, v uint32, wrapped []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ring := keyguard.Ring{DataClass: dataClass, Region: region}
	arn, err := b.lookup(ring, v)
	if err != nil {
		return nil, err
	}
	if len(wrapped) < 2+bindingTagSize || wrapped[0] != wrapFormat {
		return nil, fmt.Errorf("awskms: ring %s version %d: not a wrapped key of this backend: %w", ring, v, keyguard.ErrUnwrap)
	}
	body, tag := wrapped[:len(wrapped)-bindingTagSize], wrapped[len(wrapped)-bindingTagSize:]
	out, err := b.clients[region].Decrypt(ctx, &kms.DecryptInput{KeyId: &arn, CiphertextBlob: body[1:], EncryptionContext: encryptionContext(ring, v)})
	if err != nil {
		err = classify(err)
		if !errors.Is(err, keyguard.ErrBackendUnavailable) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			// Whatever KMS says about a blob it will not decrypt under
			// this key and context, the blob is not ours.
			err = fmt.Errorf("%w: %v", keyguard.ErrUnwrap, err)
		}
		return nil, fmt.Errorf("awskms: ring %s version %d: decrypt: %w", ring, v, err)
	}
	if !hmac.Equal(tag, bindingTag(out.Plaintext, body)) {
		clear(out.Plaintext)
		return nil, fmt.Errorf("awskms: ring %s version %d: wrapped key altered: %w", ring, v, keyguard.ErrUnwrap)
	}
	return out.Plaintext, nil
}

// Rotate records the key the ring's key id resolves to now as a new
// version. The caller (the Service) holds the store's rotation lock and
// has refreshed the versions; a version created meanwhile by another
// replica is keyguard.ErrConflict, never a second version of one number.
func (b *Backend) Rotate(ctx context.Context, dataClass, region string) (uint32, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	ring := keyguard.Ring{DataClass: dataClass, Region: region}
	b.mu.RLock()
	cur := uint32(len(b.versions[ring]))
	b.mu.RUnlock()
	return b.addVersion(ctx, ring, cur)
}

// Versions describes the ring's versions, oldest first; the backend key is
// the KMS key ARN.
func (b *Backend) Versions(ctx context.Context, dataClass, region string) ([]keyguard.VersionInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ring := keyguard.Ring{DataClass: dataClass, Region: region}
	b.mu.RLock()
	defer b.mu.RUnlock()
	vs := b.versions[ring]
	if len(vs) == 0 {
		return nil, fmt.Errorf("awskms: ring %s: %w", ring, keyguard.ErrKeyNotFound)
	}
	out := make([]keyguard.VersionInfo, len(vs))
	for i, v := range vs {
		out[i] = keyguard.VersionInfo{Version: v.Version, Created: v.Created, BackendKey: v.BackendKey}
	}
	return out, nil
}

// classify maps a KMS error to the keyguard sentinels: a ciphertext or key
// that does not match is ErrUnwrap, a missing or disabled key is
// ErrKeyNotFound, and everything else (network, throttling, KMS faults,
// cancelled or timed-out calls aside) is ErrBackendUnavailable. The KMS
// text stays in the chain for the log, never for the caller.
func classify(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var (
		invalid   *types.InvalidCiphertextException
		incorrect *types.IncorrectKeyException
		notFound  *types.NotFoundException
		disabled  *types.DisabledException
	)
	switch {
	case errors.As(err, &invalid), errors.As(err, &incorrect):
		return fmt.Errorf("%w: %v", keyguard.ErrUnwrap, err)
	case errors.As(err, &notFound), errors.As(err, &disabled):
		return fmt.Errorf("%w: %v", keyguard.ErrKeyNotFound, err)
	}
	var api smithy.APIError
	if errors.As(err, &api) && api.ErrorFault() == smithy.FaultClient {
		switch api.ErrorCode() {
		case "ThrottlingException", "LimitExceededException", "RequestLimitExceeded":
		default:
			// A request KMS refuses as malformed is our bug, not an outage.
			return fmt.Errorf("KMS refused the request: %w", err)
		}
	}
	return fmt.Errorf("%w: %v", keyguard.ErrBackendUnavailable, err)
}
