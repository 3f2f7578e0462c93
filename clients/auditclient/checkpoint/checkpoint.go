// Package checkpoint signs and opens the audit log's checkpoints: C2SP
// tlog-checkpoint bodies (origin, tree size, base64 root hash) in C2SP
// signed notes with Ed25519 keys (golang.org/x/mod/sumdb/note), so that
// any standard transparency-log tooling or witness can check them.
//
// Keys are signed-note keys: the private key is the text
// "PRIVATE+KEY+<name>+<hash>+<key>", the public (verifier) key
// "<name>+<hash>+<key>". The key name is the log origin, which must be
// unique per log; the key id recorded beside each checkpoint is
// "<name>+<hash>".
package checkpoint

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	tlog "github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"
)

// Checkpoint is the signed content: a commitment to the first Size leaves.
type Checkpoint struct {
	// Origin is the unique name of the log.
	Origin string
	// Size is the number of leaves committed to.
	Size uint64
	// Root is the RFC 6962 root hash of those leaves.
	Root []byte
}

// GenerateKey returns a new Ed25519 signed-note key pair named origin.
// A random suffix is not added: choose a unique origin (NewOrigin helps).
func GenerateKey(origin string) (privateKey, publicKey string, err error) {
	skey, vkey, err := note.GenerateKey(rand.Reader, origin)
	if err != nil {
		return "", "", fmt.Errorf("generate checkpoint key %q: %w", origin, err)
	}
	return skey, vkey, nil
}

// NewOrigin returns a fresh, unique log origin under prefix, e.g.
// "credmatrix.local/audit/3f9c1a0b7e2d4c65".
func NewOrigin(prefix string) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("new log origin: %w", err)
	}
	return prefix + "/" + hex.EncodeToString(b[:]), nil
}

// Signer signs checkpoints of one log.
type Signer struct {
	signer   note.Signer
	verifier *Verifier
}

// NewSigner returns the Signer of a private signed-note key. The log origin
// is the key's name.
func NewSigner(privateKey string) (*Signer, error) {
	privateKey = strings.TrimSpace(privateKey)
	s, err := note.NewSigner(privateKey)
	if err != nil {
		return nil, errors.New("checkpoint signing key: not a signed-note Ed25519 private key")
	}
	vkey, err := publicKeyOf(privateKey)
	if err != nil {
		return nil, err
	}
	v, err := NewVerifier(vkey)
	if err != nil {
		return nil, err
	}
	return &Signer{signer: s, verifier: v}, nil
}

// publicKeyOf derives the verifier key text of a private signed-note key
// ("PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>"); note.NewSigner has
// already checked its shape and hash.
func publicKeyOf(privateKey string) (string, error) {
	parts := strings.SplitN(privateKey, "+", 5)
	if len(parts) != 5 {
		return "", errors.New("checkpoint signing key: malformed")
	}
	key, err := base64.StdEncoding.DecodeString(parts[4])
	if err != nil || len(key) != 1+ed25519.SeedSize || key[0] != 1 {
		return "", errors.New("checkpoint signing key: not an Ed25519 key")
	}
	pub := ed25519.NewKeyFromSeed(key[1:]).Public().(ed25519.PublicKey)
	vkey, err := note.NewEd25519VerifierKey(parts[2], pub)
	if err != nil {
		return "", fmt.Errorf("checkpoint signing key: %w", err)
	}
	return vkey, nil
}

// Origin is the log origin (the key name).
func (s *Signer) Origin() string { return s.signer.Name() }

// KeyID is "<name>+<hash>" of the signing key.
func (s *Signer) KeyID() string { return s.verifier.KeyID() }

// PublicKey returns the verifier key text to hand to investigators.
func (s *Signer) PublicKey() string { return s.verifier.text }

// Verifier returns the verifier of the signing key.
func (s *Signer) Verifier() *Verifier { return s.verifier }

// Sign returns the signed note of a checkpoint of this log.
func (s *Signer) Sign(size uint64, root []byte) ([]byte, error) {
	body := tlog.Checkpoint{Origin: s.Origin(), Size: size, Hash: root}.Marshal()
	signed, err := note.Sign(&note.Note{Text: string(body)}, s.signer)
	if err != nil {
		return nil, fmt.Errorf("sign checkpoint: %w", err)
	}
	return signed, nil
}

// Verifier checks checkpoints of one log.
type Verifier struct {
	v    note.Verifier
	text string
}

// NewVerifier returns the Verifier of a public signed-note key
// ("<name>+<hash>+<key>").
func NewVerifier(publicKey string) (*Verifier, error) {
	publicKey = strings.TrimSpace(publicKey)
	v, err := note.NewVerifier(publicKey)
	if err != nil {
		return nil, errors.New("checkpoint public key: not a signed-note Ed25519 verifier key (<name>+<hash>+<key>)")
	}
	return &Verifier{v: v, text: publicKey}, nil
}

// Origin is the log origin the key belongs to.
func (v *Verifier) Origin() string { return v.v.Name() }

// KeyID is "<name>+<hash>".
func (v *Verifier) KeyID() string { return fmt.Sprintf("%s+%08x", v.v.Name(), v.v.KeyHash()) }

// PublicKey is the verifier key text.
func (v *Verifier) PublicKey() string { return v.text }

// ErrSignature means a note is not a checkpoint of this log correctly
// signed by its key.
var ErrSignature = errors.New("checkpoint signature does not verify")

// Open verifies a signed checkpoint and returns its content. Any failure
// (bad signature, other key, other origin, malformed body) wraps
// ErrSignature or names the malformed part.
func (v *Verifier) Open(signed []byte) (Checkpoint, error) {
	cp, _, _, err := tlog.ParseCheckpoint(signed, v.Origin(), v.v)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	if len(cp.Hash) != 32 {
		return Checkpoint{}, fmt.Errorf("%w: root hash is %d bytes, want 32", ErrSignature, len(cp.Hash))
	}
	return Checkpoint{Origin: cp.Origin, Size: cp.Size, Root: bytes.Clone(cp.Hash)}, nil
}
