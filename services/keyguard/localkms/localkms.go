// Package localkms is keyguard's embedded KEK backend: the key-encryption
// keys of every key ring live in one JSON keystore file, each sealed with
// AES-256-GCM under a 32-byte root key that the caller supplies (the cmd
// reads it from a file or an environment variable). It needs nothing but a
// writable directory, so `make demo` and tests run anywhere; production uses
// AWS KMS instead.
//
// Keys derived from the root key (HKDF-SHA256, one label each) seal the
// KEKs, authenticate the whole file (HMAC-SHA256, so a version cannot be
// dropped or swapped between rings unnoticed) and fingerprint the root key
// (so that a wrong root key is reported as such at Open rather than as a
// corrupt file). Data keys are wrapped under a key derived per wrap from
// the KEK and a random salt, so no AES key ever approaches the AES-GCM
// random-nonce limit however many data keys a KEK wraps.
//
// One process owns a keystore file: changes are written atomically (temp
// file, fsync, rename) and never merged with another writer's. Replicated
// deployments use the awskms backend.
package localkms

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/credmatrix/credmatrix/clients/keyguardclient/envelope"
	"github.com/credmatrix/credmatrix/services/keyguard"
)

// Sizes of the keys this package handles.
const (
	// RootKeySize is the size of the root key given to Open.
	RootKeySize = 32
	// KEKSize is the size of each key-encryption key.
	KEKSize = 32
	// MaxDataKeySize bounds what Wrap accepts: data keys, not payloads.
	MaxDataKeySize = 64
)

const (
	fileFormat   = "credmatrix-localkms/v1"
	labelPrefix  = "credmatrix/localkms/v1 "
	wrapFormat   = 0x01
	wrapSaltSize = 32
	gcmNonceSize = 12
	gcmTagSize   = 16
)

// secret holds key bytes and refuses to print them, whatever the verb.
type secret []byte

// Format prints "[redacted]" for every verb.
func (secret) Format(f fmt.State, _ rune) { io.WriteString(f, "[redacted]") }

// LogValue keeps the key out of structured logs.
func (secret) LogValue() slog.Value { return slog.StringValue("[redacted]") }

// Option configures a Keyring.
type Option func(*Keyring)

// WithClock sets the clock that stamps new key versions; the default is
// time.Now.
func WithClock(now func() time.Time) Option { return func(k *Keyring) { k.clock = now } }

// WithRand sets the source of new KEKs, nonces and salts; the default is
// crypto/rand.Reader. It must be safe for concurrent use.
func WithRand(r io.Reader) Option { return func(k *Keyring) { k.rand = r } }

// Keyring is an open keystore. It is safe for concurrent use by one
// process.
type Keyring struct {
	path      string
	sealKey   secret
	macKey    secret
	rootKeyID string
	clock     func() time.Time
	rand      io.Reader

	mu    sync.RWMutex
	rings map[keyguard.Ring][]*kekVersion
}

var _ keyguard.KeyBackend = (*Keyring)(nil)

// kekVersion is one unsealed key version of a ring.
type kekVersion struct {
	version uint32
	created time.Time
	sealed  []byte
	kek     secret
}

// The keystore file. Rings are sorted by data class then region, versions
// ascending from 1, so the file only changes where the keys do.
type fileJSON struct {
	Format    string     `json:"format"`
	RootKeyID string     `json:"root_key_id"`
	Rings     []ringJSON `json:"rings"`
	MAC       []byte     `json:"mac"`
}

type ringJSON struct {
	DataClass string        `json:"data_class"`
	Region    string        `json:"region"`
	Versions  []versionJSON `json:"versions"`
}

type versionJSON struct {
	Version    uint32    `json:"version"`
	CreateTime time.Time `json:"create_time"`
	SealedKey  []byte    `json:"sealed_key"`
}

// derive derives one purpose-specific key from the root key.
func derive(rootKey []byte, purpose string, n int) []byte {
	k, err := hkdf.Key(sha256.New, rootKey, nil, labelPrefix+purpose, n)
	if err != nil {
		// Only possible for n > 255*32, which no caller asks for.
		panic("localkms: " + err.Error())
	}
	return k
}

// Open opens the keystore at path with rootKey, creating an empty one (mode
// 0600, written atomically) when the file does not exist. It checks the
// root key first, then the integrity of the whole file, then unseals every
// KEK, so a wrong key or a modified file is reported here and not at the
// first request. The root key is not retained.
func Open(path string, rootKey []byte, opts ...Option) (*Keyring, error) {
	if len(rootKey) != RootKeySize {
		return nil, fmt.Errorf("localkms: root key must be %d bytes, got %d", RootKeySize, len(rootKey))
	}
	k := &Keyring{
		path:      path,
		sealKey:   derive(rootKey, "kek-seal", 32),
		macKey:    derive(rootKey, "keystore-mac", 32),
		rootKeyID: hex.EncodeToString(derive(rootKey, "root-key-id", 8)),
		clock:     time.Now,
		rand:      rand.Reader,
		rings:     map[keyguard.Ring][]*kekVersion{},
	}
	for _, o := range opts {
		o(k)
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := k.persist(k.rings); err != nil {
			return nil, err
		}
		return k, nil
	}
	if err != nil {
		return nil, fmt.Errorf("localkms: read keystore: %w", err)
	}
	if err := k.load(b); err != nil {
		return nil, fmt.Errorf("localkms: keystore %s: %w", path, err)
	}
	return k, nil
}

// load checks and unseals a keystore file's contents into k.
func (k *Keyring) load(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var f fileJSON
	if err := dec.Decode(&f); err != nil {
		return fmt.Errorf("not a keystore: %w", err)
	}
	if f.Format != fileFormat {
		return fmt.Errorf("format %q, want %q", f.Format, fileFormat)
	}
	if f.RootKeyID != k.rootKeyID {
		return fmt.Errorf("wrong root key: the keystore was sealed by root key %s, this one is %s", f.RootKeyID, k.rootKeyID)
	}
	if !hmac.Equal(f.MAC, k.mac(f.Rings)) {
		return errors.New("integrity check failed: the file was modified outside keyguard")
	}
	rings := map[keyguard.Ring][]*kekVersion{}
	for _, rj := range f.Rings {
		ring := keyguard.Ring{DataClass: rj.DataClass, Region: rj.Region}
		if err := checkRing(ring); err != nil {
			return err
		}
		if _, dup := rings[ring]; dup {
			return fmt.Errorf("ring %s listed twice", ring)
		}
		for i, vj := range rj.Versions {
			if vj.Version != uint32(i+1) {
				return fmt.Errorf("ring %s: version %d out of sequence", ring, vj.Version)
			}
			kek, err := k.unseal(ring, vj.Version, vj.SealedKey)
			if err != nil {
				return err
			}
			rings[ring] = append(rings[ring], &kekVersion{version: vj.Version, created: vj.CreateTime, sealed: vj.SealedKey, kek: kek})
		}
		if len(rings[ring]) == 0 {
			return fmt.Errorf("ring %s has no versions", ring)
		}
	}
	k.rings = rings
	return nil
}

// binding encodes a ring and version for AAD and derivation labels: each
// name length-prefixed (names are at most 63 bytes), the version big-endian.
func binding(ring keyguard.Ring, version uint32) []byte {
	b := make([]byte, 0, 2+len(ring.DataClass)+len(ring.Region)+4)
	b = append(b, byte(len(ring.DataClass)))
	b = append(b, ring.DataClass...)
	b = append(b, byte(len(ring.Region)))
	b = append(b, ring.Region...)
	return binary.BigEndian.AppendUint32(b, version)
}

// mac authenticates the rings of a keystore file as written, under the key
// derived from the root key.
func (k *Keyring) mac(rings []ringJSON) []byte {
	m := hmac.New(sha256.New, k.macKey)
	io.WriteString(m, labelPrefix+"keystore\x00"+k.rootKeyID)
	var buf []byte
	for _, r := range rings {
		buf = binary.BigEndian.AppendUint32(buf[:0], uint32(len(r.Versions)))
		m.Write(binding(keyguard.Ring{DataClass: r.DataClass, Region: r.Region}, 0))
		m.Write(buf)
		for _, v := range r.Versions {
			buf = binary.BigEndian.AppendUint32(buf[:0], v.Version)
			buf = binary.BigEndian.AppendUint64(buf, uint64(v.CreateTime.UnixNano()))
			buf = binary.BigEndian.AppendUint16(buf, uint16(len(v.SealedKey)))
			m.Write(buf)
			m.Write(v.SealedKey)
		}
	}
	return m.Sum(nil)
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// seal encrypts a new KEK under the sealing key: nonce || ciphertext || tag,
// with the ring and version as AAD so a sealed key cannot be moved.
func (k *Keyring) seal(ring keyguard.Ring, version uint32, kek []byte) ([]byte, error) {
	aead, err := newGCM(k.sealKey)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, gcmNonceSize, gcmNonceSize+len(kek)+gcmTagSize)
	if _, err := io.ReadFull(k.rand, nonce); err != nil {
		return nil, fmt.Errorf("read nonce: %w", err)
	}
	return aead.Seal(nonce, nonce, kek, append([]byte(labelPrefix+"kek\x00"), binding(ring, version)...)), nil
}

func (k *Keyring) unseal(ring keyguard.Ring, version uint32, sealed []byte) (secret, error) {
	aead, err := newGCM(k.sealKey)
	if err != nil {
		return nil, err
	}
	if len(sealed) != gcmNonceSize+KEKSize+gcmTagSize {
		return nil, fmt.Errorf("ring %s version %d: sealed key is %d bytes, want %d", ring, version, len(sealed), gcmNonceSize+KEKSize+gcmTagSize)
	}
	kek, err := aead.Open(nil, sealed[:gcmNonceSize], sealed[gcmNonceSize:], append([]byte(labelPrefix+"kek\x00"), binding(ring, version)...))
	if err != nil {
		return nil, fmt.Errorf("ring %s version %d: sealed key did not authenticate", ring, version)
	}
	return kek, nil
}

// persist writes rings to the keystore file atomically. The caller holds
// the write lock (or is Open, before k is shared).
func (k *Keyring) persist(rings map[keyguard.Ring][]*kekVersion) error {
	f := fileJSON{Format: fileFormat, RootKeyID: k.rootKeyID, Rings: []ringJSON{}}
	keys := make([]keyguard.Ring, 0, len(rings))
	for r := range rings {
		keys = append(keys, r)
	}
	slices.SortFunc(keys, func(a, b keyguard.Ring) int {
		if c := strings.Compare(a.DataClass, b.DataClass); c != 0 {
			return c
		}
		return strings.Compare(a.Region, b.Region)
	})
	for _, r := range keys {
		rj := ringJSON{DataClass: r.DataClass, Region: r.Region}
		for _, v := range rings[r] {
			rj.Versions = append(rj.Versions, versionJSON{Version: v.version, CreateTime: v.created, SealedKey: v.sealed})
		}
		f.Rings = append(f.Rings, rj)
	}
	f.MAC = k.mac(f.Rings)
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("localkms: encode keystore: %w", err)
	}
	if err := writeFileAtomic(k.path, append(b, '\n')); err != nil {
		return fmt.Errorf("localkms: write keystore: %w", err)
	}
	return nil
}

// writeFileAtomic replaces path with data (mode 0600) so that a crash
// leaves either the old file or the new one, never a mix.
func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	// Make the rename itself durable. Not every platform can sync a
	// directory; the file is in place either way.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

func checkRing(r keyguard.Ring) error {
	if !envelope.ValidName(r.DataClass) || !envelope.ValidName(r.Region) {
		return fmt.Errorf("ring %q: data class and region must be 1 to 63 bytes of [a-z0-9-]", r.String())
	}
	return nil
}

// newVersion generates and seals a new KEK for the ring.
func (k *Keyring) newVersion(ring keyguard.Ring, version uint32) (*kekVersion, error) {
	kek := make(secret, KEKSize)
	if _, err := io.ReadFull(k.rand, kek); err != nil {
		return nil, fmt.Errorf("localkms: generate key: %w", err)
	}
	sealed, err := k.seal(ring, version, kek)
	if err != nil {
		return nil, fmt.Errorf("localkms: seal key: %w", err)
	}
	return &kekVersion{version: version, created: k.clock().UTC(), sealed: sealed, kek: kek}, nil
}

// addVersion adds the next version to a ring (creating the ring) and
// persists the keystore; on failure nothing changes.
func (k *Keyring) addVersion(ring keyguard.Ring) (uint32, error) {
	next := uint32(len(k.rings[ring]) + 1)
	v, err := k.newVersion(ring, next)
	if err != nil {
		return 0, err
	}
	rings := make(map[keyguard.Ring][]*kekVersion, len(k.rings)+1)
	for r, vs := range k.rings {
		rings[r] = vs
	}
	rings[ring] = append(slices.Clip(k.rings[ring]), v)
	if err := k.persist(rings); err != nil {
		return 0, err
	}
	k.rings = rings
	return next, nil
}

// EnsureRing creates the ring of (dataClass, region) with a first key
// version, unless it exists. The cmd calls it for every configured ring at
// start-up.
func (k *Keyring) EnsureRing(ctx context.Context, dataClass, region string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ring := keyguard.Ring{DataClass: dataClass, Region: region}
	if err := checkRing(ring); err != nil {
		return fmt.Errorf("localkms: %w", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.rings[ring]) > 0 {
		return nil
	}
	_, err := k.addVersion(ring)
	return err
}

// Rotate adds a new key version to an existing ring and makes it primary.
// Older versions keep unwrapping what they wrapped.
func (k *Keyring) Rotate(ctx context.Context, dataClass, region string) (uint32, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	ring := keyguard.Ring{DataClass: dataClass, Region: region}
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.rings[ring]) == 0 {
		return 0, fmt.Errorf("localkms: ring %s: %w", ring, keyguard.ErrKeyNotFound)
	}
	return k.addVersion(ring)
}

// Primary returns the newest key version of the ring.
func (k *Keyring) Primary(ctx context.Context, dataClass, region string) (uint32, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	ring := keyguard.Ring{DataClass: dataClass, Region: region}
	k.mu.RLock()
	defer k.mu.RUnlock()
	vs := k.rings[ring]
	if len(vs) == 0 {
		return 0, fmt.Errorf("localkms: ring %s: %w", ring, keyguard.ErrKeyNotFound)
	}
	return vs[len(vs)-1].version, nil
}

// kek returns one key version's KEK.
func (k *Keyring) kek(ring keyguard.Ring, version uint32) (secret, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	vs := k.rings[ring]
	if version == 0 || int(version) > len(vs) {
		return nil, fmt.Errorf("localkms: ring %s version %d: %w", ring, version, keyguard.ErrKeyNotFound)
	}
	return vs[version-1].kek, nil
}

// wrapKey derives the one-use key of a wrap from the KEK, the salt, the
// ring and the version.
func wrapKey(kek, salt []byte, ring keyguard.Ring, version uint32) ([]byte, error) {
	return hkdf.Key(sha256.New, kek, salt, labelPrefix+"wrap\x00"+string(binding(ring, version)), 32)
}

// Wrap encrypts dataKey under a key version of the ring. The result is
// 0x01 || 32-byte salt || AES-256-GCM ciphertext and tag, under a key
// derived from the KEK, the salt, the ring and the version (zero nonce: the
// key is used once), so it unwraps only with that ring and version.
func (k *Keyring) Wrap(ctx context.Context, dataClass, region string, version uint32, dataKey []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(dataKey) == 0 || len(dataKey) > MaxDataKeySize {
		return nil, fmt.Errorf("localkms: data key is %d bytes, want 1 to %d", len(dataKey), MaxDataKeySize)
	}
	ring := keyguard.Ring{DataClass: dataClass, Region: region}
	kek, err := k.kek(ring, version)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 1+wrapSaltSize, 1+wrapSaltSize+len(dataKey)+gcmTagSize)
	out[0] = wrapFormat
	if _, err := io.ReadFull(k.rand, out[1:]); err != nil {
		return nil, fmt.Errorf("localkms: read salt: %w", err)
	}
	key, err := wrapKey(kek, out[1:], ring, version)
	if err != nil {
		return nil, fmt.Errorf("localkms: derive wrapping key: %w", err)
	}
	defer clear(key)
	aead, err := newGCM(key)
	if err != nil {
		return nil, fmt.Errorf("localkms: %w", err)
	}
	return aead.Seal(out, make([]byte, gcmNonceSize), dataKey, out[:1]), nil
}

// Unwrap reverses Wrap. A wrapped key that does not authenticate under this
// ring and version (tampered, or wrapped elsewhere) wraps
// keyguard.ErrUnwrap; an unknown ring or version wraps
// keyguard.ErrKeyNotFound.
func (k *Keyring) Unwrap(ctx context.Context, dataClass, region string, version uint32, wrapped []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ring := keyguard.Ring{DataClass: dataClass, Region: region}
	kek, err := k.kek(ring, version)
	if err != nil {
		return nil, err
	}
	if len(wrapped) < 1+wrapSaltSize+gcmTagSize || wrapped[0] != wrapFormat {
		return nil, fmt.Errorf("localkms: ring %s version %d: not a wrapped key of this backend: %w", ring, version, keyguard.ErrUnwrap)
	}
	key, err := wrapKey(kek, wrapped[1:1+wrapSaltSize], ring, version)
	if err != nil {
		return nil, fmt.Errorf("localkms: derive wrapping key: %w", err)
	}
	defer clear(key)
	aead, err := newGCM(key)
	if err != nil {
		return nil, fmt.Errorf("localkms: %w", err)
	}
	dataKey, err := aead.Open(nil, make([]byte, gcmNonceSize), wrapped[1+wrapSaltSize:], wrapped[:1])
	if err != nil {
		return nil, fmt.Errorf("localkms: ring %s version %d: %w", ring, version, keyguard.ErrUnwrap)
	}
	return dataKey, nil
}

// RootKeyID is a fingerprint of the root key (not secret): operators can
// check which root key a keystore needs without seeing either.
func (k *Keyring) RootKeyID() string { return k.rootKeyID }

// String describes the keyring without any key material.
func (k *Keyring) String() string {
	return fmt.Sprintf("localkms.Keyring(%s, root key %s)", k.path, k.rootKeyID)
}

// GoString is String, so that %#v does not dump the keys either.
func (k *Keyring) GoString() string { return k.String() }

// Refresh does nothing: one process owns the keystore file, and its
// versions change only through this Keyring.
func (k *Keyring) Refresh(context.Context) error { return nil }

// Versions describes the ring's key versions, oldest first. The backend key
// of a version is "local:<root key id>/<class>/<region>/v<version>".
func (k *Keyring) Versions(ctx context.Context, dataClass, region string) ([]keyguard.VersionInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ring := keyguard.Ring{DataClass: dataClass, Region: region}
	k.mu.RLock()
	defer k.mu.RUnlock()
	vs := k.rings[ring]
	if len(vs) == 0 {
		return nil, fmt.Errorf("localkms: ring %s: %w", ring, keyguard.ErrKeyNotFound)
	}
	out := make([]keyguard.VersionInfo, len(vs))
	for i, v := range vs {
		out[i] = keyguard.VersionInfo{Version: v.version, Created: v.created, BackendKey: fmt.Sprintf("local:%s/%s/v%d", k.rootKeyID, ring, v.version)}
	}
	return out, nil
}
