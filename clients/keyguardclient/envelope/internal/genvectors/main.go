// Command genvectors writes the envelope format's test vectors
// (envelope/testdata/vectors.json). Every input is fixed, the salt included
// (read from a reader over fixed bytes), so running it again reproduces the
// file byte for byte; the envelope tests check that Seal still does.
//
// Run it through go generate in the envelope package:
//
//	go generate ./envelope
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/credmatrix/credmatrix/clients/keyguardclient/envelope"
)

// File is the layout of vectors.json; the envelope tests decode the same
// layout.
type File struct {
	Comment  string    `json:"comment"`
	Vectors  []Vector  `json:"vectors"`
	Failures []Failure `json:"failures"`
}

// Vector is one envelope that must open to its plaintext and that Seal must
// reproduce from its inputs. Byte strings are hex.
type Vector struct {
	Name              string            `json:"name"`
	DataKey           string            `json:"data_key"`
	Salt              string            `json:"salt"`
	DataClass         string            `json:"data_class"`
	Region            string            `json:"region"`
	KeyVersion        uint32            `json:"key_version"`
	WrappedKey        string            `json:"wrapped_key"`
	EncryptionContext map[string]string `json:"encryption_context"`
	Plaintext         string            `json:"plaintext"`
	EncodedContext    string            `json:"encoded_context"`
	Commitment        string            `json:"commitment"`
	Envelope          string            `json:"envelope"`
}

// Failure is an envelope that must not open, and the class of error
// ("malformed", "unsupported_version" or "authentication").
type Failure struct {
	Name              string            `json:"name"`
	DataKey           string            `json:"data_key"`
	EncryptionContext map[string]string `json:"encryption_context"`
	Envelope          string            `json:"envelope"`
	Error             string            `json:"error"`
}

// input is what one vector is sealed from.
type input struct {
	name       string
	class      string
	region     string
	keyVersion uint32
	wrappedKey []byte
	ctx        map[string]string
	plaintext  []byte
}

// fixed returns n deterministic bytes labelled by label: SHA-256 in counter
// mode, so that the vectors look random but never change.
func fixed(label string, n int) []byte {
	var out []byte
	for i := 0; len(out) < n; i++ {
		sum := sha256.Sum256(fmt.Appendf(nil, "credmatrix envelope test vectors/%s/%d", label, i))
		out = append(out, sum[:]...)
	}
	return out[:n]
}

// dataKey is the data key of every vector.
func dataKey() []byte {
	k := make([]byte, envelope.DataKeySize)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}

func inputs() []input {
	return []input{
		{
			name: "minimal", class: "public", region: "eu-west-1", keyVersion: 1,
			wrappedKey: fixed("minimal/wrapped", 81),
		},
		{
			name: "with-context", class: "confidential", region: "us-east-1", keyVersion: 7,
			wrappedKey: fixed("with-context/wrapped", 81),
			ctx:        map[string]string{"tenant": "acme", "purpose": "invoice", "record": "42"},
			plaintext:  []byte("hello, credmatrix"),
		},
		{
			name: "unicode-context-and-empty-value", class: "restricted", region: "ap-southeast-2", keyVersion: 300,
			wrappedKey: fixed("unicode/wrapped", 184),
			ctx:        map[string]string{"owner": "Zoë Ångström", "empty": "", "z": "last"},
			plaintext:  fixed("unicode/plaintext", 1000),
		},
		{
			name: "limits", class: strings.Repeat("a", envelope.MaxNameLen), region: strings.Repeat("9", envelope.MaxNameLen),
			keyVersion: 0xFFFFFFFF, wrappedKey: fixed("limits/wrapped", envelope.MaxWrappedKeyLen),
			plaintext: fixed("limits/plaintext", 4096),
		},
	}
}

func seal(in input) (Vector, error) {
	key := dataKey()
	salt := fixed(in.name+"/salt", envelope.SaltSize)
	env, err := envelope.Seal(key, envelope.Header{
		DataClass: in.class, Region: in.region, KeyVersion: in.keyVersion, WrappedKey: in.wrappedKey,
	}, in.ctx, in.plaintext, bytes.NewReader(salt))
	if err != nil {
		return Vector{}, fmt.Errorf("vector %s: %w", in.name, err)
	}
	h, _, err := envelope.ParseHeader(env)
	if err != nil {
		return Vector{}, fmt.Errorf("vector %s: %w", in.name, err)
	}
	ctx := in.ctx
	if ctx == nil {
		ctx = map[string]string{}
	}
	return Vector{
		Name: in.name, DataKey: hex.EncodeToString(key), Salt: hex.EncodeToString(salt),
		DataClass: in.class, Region: in.region, KeyVersion: in.keyVersion,
		WrappedKey: hex.EncodeToString(in.wrappedKey), EncryptionContext: ctx,
		Plaintext:      hex.EncodeToString(in.plaintext),
		EncodedContext: hex.EncodeToString(envelope.EncodeContext(in.ctx)),
		Commitment:     hex.EncodeToString(h.Commitment[:]), Envelope: hex.EncodeToString(env),
	}, nil
}

// failures derives the negative vectors from the positive ones.
func failures(vs []Vector) []Failure {
	base := vs[1] // with-context
	env, _ := hex.DecodeString(base.Envelope)
	h, _, _ := envelope.ParseHeader(env)
	headerLen := h.Size()
	mutate := func(f func(b []byte) []byte) string {
		return hex.EncodeToString(f(bytes.Clone(env)))
	}
	flip := func(i int) func([]byte) []byte {
		return func(b []byte) []byte { b[i] ^= 0x01; return b }
	}
	otherCtx := map[string]string{"tenant": "acme", "purpose": "invoice", "record": "43"}
	fail := func(name, e string, ctx map[string]string, envHex string) Failure {
		return Failure{Name: name, DataKey: base.DataKey, EncryptionContext: ctx, Envelope: envHex, Error: e}
	}
	wrongKey := fixed("wrong-data-key", envelope.DataKeySize)
	return []Failure{
		fail("wrong-context", "authentication", otherCtx, base.Envelope),
		fail("missing-context", "authentication", map[string]string{}, base.Envelope),
		{Name: "wrong-data-key", DataKey: hex.EncodeToString(wrongKey), EncryptionContext: base.EncryptionContext, Envelope: base.Envelope, Error: "authentication"},
		fail("tampered-tag", "authentication", base.EncryptionContext, mutate(flip(len(env)-1))),
		fail("tampered-ciphertext", "authentication", base.EncryptionContext, mutate(flip(headerLen))),
		fail("tampered-salt", "authentication", base.EncryptionContext, mutate(flip(headerLen-envelope.CommitmentSize-1))),
		fail("tampered-commitment", "authentication", base.EncryptionContext, mutate(flip(headerLen-1))),
		fail("tampered-key-version", "authentication", base.EncryptionContext, mutate(flip(4+2+1+len(base.DataClass)+1+len(base.Region)+3))),
		fail("bad-magic", "malformed", base.EncryptionContext, mutate(flip(0))),
		fail("unknown-version", "unsupported_version", base.EncryptionContext, mutate(func(b []byte) []byte { b[4] = 2; return b })),
		fail("unknown-suite", "unsupported_version", base.EncryptionContext, mutate(func(b []byte) []byte { b[5] = 2; return b })),
		fail("truncated-header", "malformed", base.EncryptionContext, mutate(func(b []byte) []byte { return b[:headerLen-1] })),
		fail("truncated-tag", "malformed", base.EncryptionContext, mutate(func(b []byte) []byte { return b[:headerLen+envelope.TagSize-1] })),
		fail("zero-key-version", "malformed", base.EncryptionContext, mutate(func(b []byte) []byte {
			off := 4 + 2 + 1 + len(base.DataClass) + 1 + len(base.Region)
			copy(b[off:off+4], []byte{0, 0, 0, 0})
			return b
		})),
		fail("uppercase-data-class", "malformed", base.EncryptionContext, mutate(func(b []byte) []byte { b[7] = 'C'; return b })),
	}
}

func generate() ([]byte, error) {
	f := File{Comment: "credmatrix keyguard envelope format v1 test vectors (docs/envelope-format.md). " +
		"Generated by envelope/internal/genvectors through go generate; do not edit. Byte strings are hex."}
	for _, in := range inputs() {
		v, err := seal(in)
		if err != nil {
			return nil, err
		}
		f.Vectors = append(f.Vectors, v)
	}
	f.Failures = failures(f.Vectors)
	out, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

func run(args []string) error {
	fs := flag.NewFlagSet("genvectors", flag.ContinueOnError)
	out := fs.String("out", "", "file to write the vectors to (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("-out is required")
	}
	b, err := generate()
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		return fmt.Errorf("write vectors: %w", err)
	}
	return nil
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "genvectors:", err)
		os.Exit(1)
	}
}
