// Package awskms is keyguard's production KEK backend: AWS KMS, one KMS key
// (or alias) per key ring, in the ring's own region, so key material for
// a region never leaves it.
//
// Key versions are keyguard's: each version of a ring records the KMS key
// ARN its alias resolved to when the version was created (DescribeKey), in a
// small versions file. To rotate, an operator points the ring's alias at a
// new KMS key (or keeps one key and lets KMS rotate its material) and calls
// RotateKey; envelopes of older versions keep unwrapping with the ARN their
// version recorded. Data keys are wrapped with KMS Encrypt and unwrapped
// with KMS Decrypt naming that ARN, with the ring and version passed as KMS
// encryption context, so a wrapped key unwraps under no other ring, version
// or key (and CloudTrail shows which ring asked).
//
// Any failure to reach KMS, throttling included, is
// keyguard.ErrBackendUnavailable: the request fails with UNAVAILABLE and
// nothing is ever encrypted or returned without KMS.
package awskms

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
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

// Encryption-context keys the backend sends to KMS with every call.
const (
	ContextDataClass = "credmatrix:data_class"
	ContextRegion    = "credmatrix:region"
	ContextVersion   = "credmatrix:key_version"
)

// RingKey names the KMS key of one ring.
type RingKey struct {
	// Ring is the key ring.
	Ring keyguard.Ring
	// KeyID is a key id, key ARN, alias name or alias ARN, in the ring's
	// region.
	KeyID string
}

// Backend is an AWS KMS KEK backend. It is safe for concurrent use by one
// process (the versions file has one writer).
type Backend struct {
	clients map[string]KMS // by region
	keys    map[keyguard.Ring]string
	path    string
	clock   func() time.Time

	mu       sync.RWMutex
	versions map[keyguard.Ring][]version
}

var _ keyguard.KeyBackend = (*Backend)(nil)

type version struct {
	Version uint32    `json:"version"`
	KeyARN  string    `json:"key_arn"`
	Created time.Time `json:"create_time"`
}

type fileJSON struct {
	Format string             `json:"format"`
	Rings  []ringVersionsJSON `json:"rings"`
}

type ringVersionsJSON struct {
	DataClass string    `json:"data_class"`
	Region    string    `json:"region"`
	Versions  []version `json:"versions"`
}

const fileFormat = "credmatrix-awskms-versions/v1"

// Option configures a Backend.
type Option func(*Backend)

// WithClock sets the clock stamping new versions.
func WithClock(now func() time.Time) Option { return func(b *Backend) { b.clock = now } }

// Open returns a backend for rings, with a KMS client per region from
// clients (clients[region]), keeping key versions in versionsFile (created
// when missing, mode 0600). Every ring without a version gets version 1,
// resolved through DescribeKey, so a wrong key id or unreachable KMS is
// reported at start-up.
func Open(ctx context.Context, versionsFile string, rings []RingKey, clients map[string]KMS, opts ...Option) (*Backend, error) {
	b := &Backend{clients: clients, keys: map[keyguard.Ring]string{}, path: versionsFile, clock: time.Now, versions: map[keyguard.Ring][]version{}}
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
	data, err := os.ReadFile(versionsFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("awskms: versions file: %w", err)
	default:
		var f fileJSON
		if err := json.Unmarshal(data, &f); err != nil || f.Format != fileFormat {
			return nil, fmt.Errorf("awskms: versions file %s: not a %s file", versionsFile, fileFormat)
		}
		for _, r := range f.Rings {
			ring := keyguard.Ring{DataClass: r.DataClass, Region: r.Region}
			for i, v := range r.Versions {
				if v.Version != uint32(i+1) || v.KeyARN == "" {
					return nil, fmt.Errorf("awskms: versions file %s: ring %s: version %d out of sequence", versionsFile, ring, v.Version)
				}
			}
			b.versions[ring] = r.Versions
		}
	}
	for _, rk := range rings {
		if len(b.versions[rk.Ring]) > 0 {
			continue
		}
		if _, err := b.addVersion(ctx, rk.Ring); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// addVersion resolves the ring's key to an ARN and records it as the next
// version. The caller holds mu or is Open.
func (b *Backend) addVersion(ctx context.Context, ring keyguard.Ring) (uint32, error) {
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
	vs := b.versions[ring]
	next := version{Version: uint32(len(vs) + 1), KeyARN: *md.Arn, Created: b.clock().UTC()}
	all := make(map[keyguard.Ring][]version, len(b.versions))
	for r, v := range b.versions {
		all[r] = v
	}
	all[ring] = append(slices.Clip(vs), next)
	if err := b.persist(all); err != nil {
		return 0, err
	}
	b.versions = all
	return next.Version, nil
}

func (b *Backend) persist(all map[keyguard.Ring][]version) error {
	f := fileJSON{Format: fileFormat}
	for r, vs := range all {
		f.Rings = append(f.Rings, ringVersionsJSON{DataClass: r.DataClass, Region: r.Region, Versions: vs})
	}
	slices.SortFunc(f.Rings, func(a, b ringVersionsJSON) int {
		if a.DataClass != b.DataClass {
			return cmpString(a.DataClass, b.DataClass)
		}
		return cmpString(a.Region, b.Region)
	})
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("awskms: encode versions: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(b.path), "."+filepath.Base(b.path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("awskms: write versions: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("awskms: write versions: %w", err)
	}
	if err := errors.Join(tmp.Chmod(0o600), tmp.Sync(), tmp.Close()); err != nil {
		return fmt.Errorf("awskms: write versions: %w", err)
	}
	if err := os.Rename(tmp.Name(), b.path); err != nil {
		return fmt.Errorf("awskms: write versions: %w", err)
	}
	return nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// lookup returns the ARN of one version of a ring.
func (b *Backend) lookup(ring keyguard.Ring, v uint32) (string, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	vs := b.versions[ring]
	if v == 0 || int(v) > len(vs) {
		return "", fmt.Errorf("awskms: ring %s version %d: %w", ring, v, keyguard.ErrKeyNotFound)
	}
	return vs[v-1].KeyARN, nil
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
// version.
func (b *Backend) Rotate(ctx context.Context, dataClass, region string) (uint32, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.addVersion(ctx, keyguard.Ring{DataClass: dataClass, Region: region})
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
		out[i] = keyguard.VersionInfo{Version: v.Version, Created: v.Created, BackendKey: v.KeyARN}
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
