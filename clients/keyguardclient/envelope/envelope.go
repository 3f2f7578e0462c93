// Package envelope reads and writes keyguard's ciphertext format, version 1:
// a self-describing binary header (which key ring, which key version, the
// wrapped data key, a salt and a key commitment) followed by AES-256-GCM
// ciphertext.
//
// The format is specified, byte for byte, in docs/envelope-format.md of the
// repository, and testdata/vectors.json holds test vectors any other
// implementation can check itself against. The package knows nothing about
// key rings, KEK backends or grants: it is handed the plaintext data key and
// the header fields, so that it can be reused by the client library for
// local envelopes and tested on its own.
//
// Three properties hold by construction:
//   - Every byte is authenticated. The whole header and the caller's
//     encryption context are the AES-GCM additional data, and the header is
//     also bound into the key derivation, so changing any byte of an
//     envelope, or giving another context, fails decryption.
//   - Nonces cannot repeat. Each envelope gets its own AES key, derived from
//     the data key and 32 random bytes of salt, so each AES key encrypts one
//     message only and a fixed nonce is safe (see Seal).
//   - The format is key-committing. The header carries a commitment derived
//     alongside the encryption key and checked before decryption, so one
//     envelope cannot decrypt validly under two different data keys.
//
// Headers are parsed and checked completely, with errors saying what is
// wrong, before any cryptography runs.
//
//go:generate go run ./internal/genvectors -out testdata/vectors.json
package envelope

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// Format constants of version 1. They are part of the wire format: changing
// any of them means a new format version or algorithm suite.
const (
	// Magic opens every envelope, so a keyguard ciphertext is recognisable
	// in a database column or a file.
	Magic = "CMKG"
	// Version1 is the only format version this package reads and writes.
	Version1 uint8 = 1
	// SuiteHKDFSHA256AES256GCMCommit is algorithm suite 1: per-message key
	// derivation with HKDF-SHA256, AES-256-GCM with a 16-byte tag, and a
	// 32-byte key commitment.
	SuiteHKDFSHA256AES256GCMCommit uint8 = 1

	// DataKeySize is the size of the data key suite 1 derives from.
	DataKeySize = 32
	// SaltSize is the size of the random per-envelope salt.
	SaltSize = 32
	// CommitmentSize is the size of the key commitment.
	CommitmentSize = 32
	// TagSize is the size of the AES-GCM authentication tag that ends every
	// envelope.
	TagSize = 16
	// MaxNameLen bounds the data class and region names.
	MaxNameLen = 63
	// MaxWrappedKeyLen bounds the wrapped data key. 1024 bytes leaves room
	// for any KEK backend's wrapping (AWS KMS ciphertext blobs of a 32-byte
	// key are under 200 bytes).
	MaxWrappedKeyLen = 1024
	// MaxHeaderSize is the largest possible header, with both names and the
	// wrapped key at their limits.
	MaxHeaderSize = len(Magic) + 1 + 1 + (1 + MaxNameLen) + (1 + MaxNameLen) + 4 + (2 + MaxWrappedKeyLen) + SaltSize + CommitmentSize
	// MaxPlaintextSize is the largest plaintext AES-GCM may encrypt under one
	// key and nonce (2^39 - 256 bits, per NIST SP 800-38D).
	MaxPlaintextSize = (1<<32 - 2) * aes.BlockSize

	// KDFLabel starts the HKDF info of suite 1, separating its keys from any
	// other use of the same data key.
	KDFLabel = "credmatrix/keyguard/v1"
)

// Errors, always returned wrapped with a detail that says what is wrong
// (never a key or plaintext byte). Test with errors.Is.
var (
	// ErrMalformed means the bytes are not a well-formed envelope: wrong
	// magic, truncated, a length out of range, a bad character in a name.
	ErrMalformed = errors.New("envelope: malformed")
	// ErrUnsupportedVersion means a well-formed start of an envelope whose
	// format version or algorithm suite this build does not know: it may
	// come from a newer keyguard.
	ErrUnsupportedVersion = errors.New("envelope: unsupported version")
	// ErrAuthentication means the envelope did not authenticate: wrong data
	// key, wrong encryption context, or tampered bytes. The detail says only
	// whether the key commitment or the AES-GCM tag failed.
	ErrAuthentication = errors.New("envelope: authentication failed")
)

// Header is the self-describing start of an envelope. Nothing in it is
// secret: the data key is only present wrapped by a key-encryption key.
type Header struct {
	// Version is the format version (Version1).
	Version uint8
	// Suite is the algorithm suite (SuiteHKDFSHA256AES256GCMCommit).
	Suite uint8
	// DataClass names the key ring's data class: 1 to 63 bytes of
	// [a-z0-9-].
	DataClass string
	// Region names the key ring's region: 1 to 63 bytes of [a-z0-9-].
	Region string
	// KeyVersion is the version of the ring's key-encryption key that
	// wrapped the data key, from 1.
	KeyVersion uint32
	// WrappedKey is the data key wrapped by the KEK backend: 1 to 1024
	// opaque bytes.
	WrappedKey []byte
	// Salt is the random per-envelope input of the key derivation.
	Salt [SaltSize]byte
	// Commitment commits the envelope to one data key (see Seal).
	Commitment [CommitmentSize]byte
}

// ValidName reports whether s may be a data class or region: 1 to 63 bytes
// of lowercase ASCII letters, digits and '-'. The restriction keeps names
// unambiguous in logs, file names and AWS resource names.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// check validates the fields every header must have, for Seal and
// AppendBinary. ParseHeader makes the same checks on the wire bytes.
func (h *Header) check() error {
	switch {
	case h.Version != Version1:
		return fmt.Errorf("%w: format version %d (this build knows %d)", ErrUnsupportedVersion, h.Version, Version1)
	case h.Suite != SuiteHKDFSHA256AES256GCMCommit:
		return fmt.Errorf("%w: algorithm suite %d (this build knows %d)", ErrUnsupportedVersion, h.Suite, SuiteHKDFSHA256AES256GCMCommit)
	case !ValidName(h.DataClass):
		return fmt.Errorf("%w: data class must be 1 to %d bytes of [a-z0-9-]", ErrMalformed, MaxNameLen)
	case !ValidName(h.Region):
		return fmt.Errorf("%w: region must be 1 to %d bytes of [a-z0-9-]", ErrMalformed, MaxNameLen)
	case h.KeyVersion == 0:
		return fmt.Errorf("%w: key version 0 (versions start at 1)", ErrMalformed)
	case len(h.WrappedKey) == 0 || len(h.WrappedKey) > MaxWrappedKeyLen:
		return fmt.Errorf("%w: wrapped key is %d bytes, want 1 to %d", ErrMalformed, len(h.WrappedKey), MaxWrappedKeyLen)
	}
	return nil
}

// appendPrefix appends the header without its commitment: the bytes bound
// into the key derivation.
func (h *Header) appendPrefix(b []byte) []byte {
	b = append(b, Magic...)
	b = append(b, h.Version, h.Suite)
	b = append(b, byte(len(h.DataClass)))
	b = append(b, h.DataClass...)
	b = append(b, byte(len(h.Region)))
	b = append(b, h.Region...)
	b = binary.BigEndian.AppendUint32(b, h.KeyVersion)
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.WrappedKey)))
	b = append(b, h.WrappedKey...)
	b = append(b, h.Salt[:]...)
	return b
}

// Size returns the encoded size of the header in bytes.
func (h *Header) Size() int {
	return len(Magic) + 2 + 1 + len(h.DataClass) + 1 + len(h.Region) + 4 + 2 + len(h.WrappedKey) + SaltSize + CommitmentSize
}

// AppendBinary appends the encoded header, commitment included, to b. It
// fails with ErrMalformed or ErrUnsupportedVersion for a header that
// ParseHeader would refuse, so it never writes what cannot be read back.
func (h *Header) AppendBinary(b []byte) ([]byte, error) {
	if err := h.check(); err != nil {
		return b, err
	}
	b = h.appendPrefix(b)
	return append(b, h.Commitment[:]...), nil
}

// headerReader walks the header bytes, turning every shortfall into a
// truncation error that names the field.
type headerReader struct {
	b   []byte
	off int
}

func (r *headerReader) take(n int, field string) ([]byte, error) {
	if len(r.b)-r.off < n {
		return nil, fmt.Errorf("%w: truncated at %s (offset %d: need %d bytes, have %d)", ErrMalformed, field, r.off, n, len(r.b)-r.off)
	}
	p := r.b[r.off : r.off+n]
	r.off += n
	return p, nil
}

func (r *headerReader) name(field string) (string, error) {
	l, err := r.take(1, field+" length")
	if err != nil {
		return "", err
	}
	if l[0] == 0 || l[0] > MaxNameLen {
		return "", fmt.Errorf("%w: %s length %d out of range 1..%d", ErrMalformed, field, l[0], MaxNameLen)
	}
	p, err := r.take(int(l[0]), field)
	if err != nil {
		return "", err
	}
	if !ValidName(string(p)) {
		return "", fmt.Errorf("%w: %s has a character outside [a-z0-9-]", ErrMalformed, field)
	}
	return string(p), nil
}

// ParseHeader parses and checks the header at the start of b and returns it
// with the bytes that follow it (the ciphertext and tag). It does no
// cryptography: an unknown magic, format version or algorithm suite, a
// truncated header or a length out of range is reported here, with an error
// wrapping ErrMalformed or ErrUnsupportedVersion that names the field.
//
// The returned header does not alias b.
func ParseHeader(b []byte) (*Header, []byte, error) {
	r := &headerReader{b: b}
	magic, err := r.take(len(Magic), "magic")
	if err != nil {
		return nil, nil, err
	}
	if string(magic) != Magic {
		return nil, nil, fmt.Errorf("%w: bad magic 0x%x (want %q): not a keyguard envelope", ErrMalformed, magic, Magic)
	}
	v, err := r.take(1, "format version")
	if err != nil {
		return nil, nil, err
	}
	if v[0] != Version1 {
		return nil, nil, fmt.Errorf("%w: format version %d (this build knows %d)", ErrUnsupportedVersion, v[0], Version1)
	}
	s, err := r.take(1, "algorithm suite")
	if err != nil {
		return nil, nil, err
	}
	if s[0] != SuiteHKDFSHA256AES256GCMCommit {
		return nil, nil, fmt.Errorf("%w: algorithm suite %d (this build knows %d)", ErrUnsupportedVersion, s[0], SuiteHKDFSHA256AES256GCMCommit)
	}
	h := &Header{Version: v[0], Suite: s[0]}
	if h.DataClass, err = r.name("data class"); err != nil {
		return nil, nil, err
	}
	if h.Region, err = r.name("region"); err != nil {
		return nil, nil, err
	}
	kv, err := r.take(4, "key version")
	if err != nil {
		return nil, nil, err
	}
	if h.KeyVersion = binary.BigEndian.Uint32(kv); h.KeyVersion == 0 {
		return nil, nil, fmt.Errorf("%w: key version 0 (versions start at 1)", ErrMalformed)
	}
	wl, err := r.take(2, "wrapped key length")
	if err != nil {
		return nil, nil, err
	}
	n := int(binary.BigEndian.Uint16(wl))
	if n == 0 || n > MaxWrappedKeyLen {
		return nil, nil, fmt.Errorf("%w: wrapped key length %d out of range 1..%d", ErrMalformed, n, MaxWrappedKeyLen)
	}
	wk, err := r.take(n, "wrapped key")
	if err != nil {
		return nil, nil, err
	}
	h.WrappedKey = append([]byte(nil), wk...)
	salt, err := r.take(SaltSize, "salt")
	if err != nil {
		return nil, nil, err
	}
	copy(h.Salt[:], salt)
	c, err := r.take(CommitmentSize, "commitment")
	if err != nil {
		return nil, nil, err
	}
	copy(h.Commitment[:], c)
	return h, b[r.off:], nil
}

// EncodeContext returns the canonical encoding of an encryption context, as
// appended to the AES-GCM additional data: the pairs sorted by key (byte
// order), each key and each value preceded by its length as an unsigned
// LEB128 varint. An empty or nil context encodes to nothing. The encoding is
// injective, so two different contexts never authenticate each other, and
// independent of map order.
func EncodeContext(ctx map[string]string) []byte {
	if len(ctx) == 0 {
		return nil
	}
	keys := make([]string, 0, len(ctx))
	size := 0
	for k, v := range ctx {
		keys = append(keys, k)
		size += 2*binary.MaxVarintLen64 + len(k) + len(v)
	}
	sort.Strings(keys)
	b := make([]byte, 0, size)
	for _, k := range keys {
		v := ctx[k]
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	return b
}

// nonce is the AES-GCM nonce of suite 1: all zero. See Seal for why a fixed
// nonce is safe here.
var nonce [12]byte

// deriveKeys derives the per-envelope AES key and the key commitment from
// the data key, the salt and the header without its commitment.
func deriveKeys(dataKey []byte, salt []byte, headerPrefix []byte) (encKey, commitment []byte, err error) {
	okm, err := hkdf.Key(sha256.New, dataKey, salt, KDFLabel+string(headerPrefix), 2*32)
	if err != nil {
		return nil, nil, fmt.Errorf("envelope: derive keys: %w", err)
	}
	return okm[:32], okm[32:], nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	return aead, nil
}

func checkDataKey(dataKey []byte) error {
	if len(dataKey) != DataKeySize {
		return fmt.Errorf("envelope: data key is %d bytes, want %d", len(dataKey), DataKeySize)
	}
	return nil
}

// Seal encrypts plaintext into a new envelope.
//
// h gives the ring, key version and wrapped data key; its Salt and
// Commitment are ignored and filled in, and a zero Version or Suite means
// the current one (1). The salt is read from rand (crypto/rand.Reader in
// production; a fixed reader only for test vectors). ctx is the encryption
// context, which Open must be given again; nil and empty are the same.
//
// Derivation: HKDF-SHA256 with the data key as input keying material, the
// salt as salt and KDFLabel followed by the header without its commitment as
// info yields 64 bytes: the AES-256 key, then the commitment. Because every
// envelope has its own 32-byte random salt, every envelope has its own AES
// key, which encrypts exactly one message; a nonce only has to be unique per
// key, so the fixed all-zero nonce is safe, and no key ever comes near
// AES-GCM's random-nonce limits however many messages one data key seals.
func Seal(dataKey []byte, h Header, ctx map[string]string, plaintext []byte, rand io.Reader) ([]byte, error) {
	if h.Version == 0 {
		h.Version = Version1
	}
	if h.Suite == 0 {
		h.Suite = SuiteHKDFSHA256AES256GCMCommit
	}
	if err := h.check(); err != nil {
		return nil, err
	}
	if err := checkDataKey(dataKey); err != nil {
		return nil, err
	}
	if uint64(len(plaintext)) > MaxPlaintextSize {
		return nil, fmt.Errorf("envelope: plaintext of %d bytes exceeds %d", len(plaintext), uint64(MaxPlaintextSize))
	}
	if _, err := io.ReadFull(rand, h.Salt[:]); err != nil {
		return nil, fmt.Errorf("envelope: read salt: %w", err)
	}
	out := make([]byte, 0, h.Size()+len(plaintext)+TagSize)
	out = h.appendPrefix(out)
	encKey, commitment, err := deriveKeys(dataKey, h.Salt[:], out)
	if err != nil {
		return nil, err
	}
	copy(h.Commitment[:], commitment)
	out = append(out, commitment...)
	aead, err := newGCM(encKey)
	clear(encKey)
	if err != nil {
		return nil, err
	}
	aad := append(out[:len(out):len(out)], EncodeContext(ctx)...)
	return aead.Seal(out, nonce[:], plaintext, aad), nil
}

// Open authenticates and decrypts an envelope with its data key and
// encryption context, returning the plaintext and the parsed header.
//
// The header is parsed and checked first (ErrMalformed,
// ErrUnsupportedVersion), then the key commitment is recomputed and compared
// in constant time, before AES-GCM runs; a mismatch of either is
// ErrAuthentication. Nothing is returned on failure.
func Open(dataKey []byte, envelope []byte, ctx map[string]string) ([]byte, *Header, error) {
	h, rest, err := ParseHeader(envelope)
	if err != nil {
		return nil, nil, err
	}
	if len(rest) < TagSize {
		return nil, nil, fmt.Errorf("%w: truncated ciphertext (%d bytes after the header, need at least the %d-byte tag)", ErrMalformed, len(rest), TagSize)
	}
	if err := checkDataKey(dataKey); err != nil {
		return nil, nil, err
	}
	headerLen := len(envelope) - len(rest)
	prefix := envelope[:headerLen-CommitmentSize]
	encKey, commitment, err := deriveKeys(dataKey, h.Salt[:], prefix)
	if err != nil {
		return nil, nil, err
	}
	defer clear(encKey)
	if subtle.ConstantTimeCompare(commitment, h.Commitment[:]) != 1 {
		return nil, nil, fmt.Errorf("%w: key commitment mismatch (wrong data key or tampered header)", ErrAuthentication)
	}
	aead, err := newGCM(encKey)
	if err != nil {
		return nil, nil, err
	}
	aad := append(envelope[:headerLen:headerLen], EncodeContext(ctx)...)
	plaintext, err := aead.Open(nil, nonce[:], rest, aad)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: ciphertext or encryption context does not match the tag", ErrAuthentication)
	}
	return plaintext, h, nil
}
