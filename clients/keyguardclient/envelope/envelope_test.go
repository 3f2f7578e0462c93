package envelope_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/credmatrix/credmatrix/clients/keyguardclient/envelope"
)

// vectorFile mirrors the layout written by internal/genvectors.
type vectorFile struct {
	Vectors []struct {
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
	} `json:"vectors"`
	Failures []struct {
		Name              string            `json:"name"`
		DataKey           string            `json:"data_key"`
		EncryptionContext map[string]string `json:"encryption_context"`
		Envelope          string            `json:"envelope"`
		Error             string            `json:"error"`
	} `json:"failures"`
}

func loadVectors(t testing.TB) vectorFile {
	t.Helper()
	b, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatalf("read vectors (regenerate with go generate): %v", err)
	}
	var f vectorFile
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("decode vectors: %v", err)
	}
	if len(f.Vectors) == 0 || len(f.Failures) == 0 {
		t.Fatal("vectors.json has no vectors")
	}
	return f
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

func TestVectors(t *testing.T) {
	for _, v := range loadVectors(t).Vectors {
		t.Run(v.Name, func(t *testing.T) {
			key, env, want := unhex(t, v.DataKey), unhex(t, v.Envelope), unhex(t, v.Plaintext)

			got, h, err := envelope.Open(key, env, v.EncryptionContext)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Open plaintext = %x, want %x", got, want)
			}
			wantHeader := &envelope.Header{
				Version: 1, Suite: 1, DataClass: v.DataClass, Region: v.Region,
				KeyVersion: v.KeyVersion, WrappedKey: unhex(t, v.WrappedKey),
			}
			copy(wantHeader.Salt[:], unhex(t, v.Salt))
			copy(wantHeader.Commitment[:], unhex(t, v.Commitment))
			if diff := cmp.Diff(h, wantHeader); diff != "" {
				t.Errorf("header (-got +want):\n%s", diff)
			}

			resealed, err := envelope.Seal(key, envelope.Header{
				DataClass: v.DataClass, Region: v.Region, KeyVersion: v.KeyVersion, WrappedKey: unhex(t, v.WrappedKey),
			}, v.EncryptionContext, want, bytes.NewReader(unhex(t, v.Salt)))
			if err != nil {
				t.Fatalf("Seal: %v", err)
			}
			if !bytes.Equal(resealed, env) {
				t.Errorf("Seal does not reproduce the vector:\n got %x\nwant %x", resealed, env)
			}
			if got := envelope.EncodeContext(v.EncryptionContext); !bytes.Equal(got, unhex(t, v.EncodedContext)) {
				t.Errorf("EncodeContext = %x, want %x", got, v.EncodedContext)
			}
		})
	}
}

// TestVectorsFollowSpec opens each vector with nothing but the standard
// library and the steps of docs/envelope-format.md, so that the document,
// and not only this package, is what the vectors pin down.
func TestVectorsFollowSpec(t *testing.T) {
	for _, v := range loadVectors(t).Vectors {
		t.Run(v.Name, func(t *testing.T) {
			env := unhex(t, v.Envelope)
			headerLen := 4 + 1 + 1 + 1 + len(v.DataClass) + 1 + len(v.Region) + 4 + 2 + len(v.WrappedKey)/2 + 32 + 32
			okm, err := hkdf.Key(sha256.New, unhex(t, v.DataKey), unhex(t, v.Salt),
				"credmatrix/keyguard/v1"+string(env[:headerLen-32]), 64)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(okm[32:], env[headerLen-32:headerLen]) {
				t.Fatalf("commitment is not HKDF output bytes 32..63")
			}
			block, err := aes.NewCipher(okm[:32])
			if err != nil {
				t.Fatal(err)
			}
			aead, err := cipher.NewGCM(block)
			if err != nil {
				t.Fatal(err)
			}
			aad := append(bytes.Clone(env[:headerLen]), unhex(t, v.EncodedContext)...)
			pt, err := aead.Open(nil, make([]byte, 12), env[headerLen:], aad)
			if err != nil {
				t.Fatalf("AES-GCM open with the documented key, nonce and AAD: %v", err)
			}
			if !bytes.Equal(pt, unhex(t, v.Plaintext)) {
				t.Errorf("plaintext = %x, want %s", pt, v.Plaintext)
			}
		})
	}
}

func TestFailureVectors(t *testing.T) {
	sentinels := map[string]error{
		"malformed":           envelope.ErrMalformed,
		"unsupported_version": envelope.ErrUnsupportedVersion,
		"authentication":      envelope.ErrAuthentication,
	}
	for _, f := range loadVectors(t).Failures {
		t.Run(f.Name, func(t *testing.T) {
			want, ok := sentinels[f.Error]
			if !ok {
				t.Fatalf("unknown error class %q", f.Error)
			}
			pt, h, err := envelope.Open(unhex(t, f.DataKey), unhex(t, f.Envelope), f.EncryptionContext)
			if !errors.Is(err, want) {
				t.Fatalf("Open error = %v, want %v", err, want)
			}
			if pt != nil || h != nil {
				t.Errorf("Open returned plaintext or header with an error")
			}
		})
	}
}

// fixture is one freshly sealed envelope and what it was sealed from.
type fixture struct {
	key       []byte
	ctx       map[string]string
	plaintext []byte
	env       []byte
}

func newFixture(t testing.TB) fixture {
	t.Helper()
	return newFixtureFrom(t, rand.Reader)
}

// newFixtureFrom seals the fixture with salt from r.
func newFixtureFrom(t testing.TB, r io.Reader) fixture {
	t.Helper()
	f := fixture{
		key:       bytes.Repeat([]byte{0x42}, envelope.DataKeySize),
		ctx:       map[string]string{"tenant": "acme", "table": "invoices"},
		plaintext: []byte("the quick brown fox"),
	}
	var err error
	f.env, err = envelope.Seal(f.key, envelope.Header{
		DataClass: "confidential", Region: "eu-west-1", KeyVersion: 3, WrappedKey: []byte("wrapped-data-key"),
	}, f.ctx, f.plaintext, r)
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	return f
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name      string
		ctx       map[string]string
		plaintext []byte
	}{
		{"empty-plaintext-nil-context", nil, nil},
		{"small", map[string]string{"a": "b"}, []byte("x")},
		{"64KiB", map[string]string{"k": strings.Repeat("v", 256)}, bytes.Repeat([]byte{7}, 64<<10)},
	}
	key := bytes.Repeat([]byte{1}, 32)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := envelope.Header{DataClass: "internal", Region: "us-east-1", KeyVersion: 1, WrappedKey: []byte{9}}
			env, err := envelope.Seal(key, in, tc.ctx, tc.plaintext, rand.Reader)
			if err != nil {
				t.Fatalf("Seal: %v", err)
			}
			if want := in.Size() + len(tc.plaintext) + envelope.TagSize; len(env) != want {
				t.Errorf("len(envelope) = %d, want %d", len(env), want)
			}
			got, h, err := envelope.Open(key, env, tc.ctx)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !bytes.Equal(got, tc.plaintext) {
				t.Errorf("plaintext = %q, want %q", got, tc.plaintext)
			}
			if h.DataClass != "internal" || h.Region != "us-east-1" || h.KeyVersion != 1 || h.Version != 1 || h.Suite != 1 {
				t.Errorf("header = %+v", h)
			}
		})
	}
}

func TestSaltMakesEnvelopesDistinct(t *testing.T) {
	f := newFixture(t)
	other, err := envelope.Seal(f.key, envelope.Header{
		DataClass: "confidential", Region: "eu-west-1", KeyVersion: 3, WrappedKey: []byte("wrapped-data-key"),
	}, f.ctx, f.plaintext, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(f.env, other) {
		t.Fatal("two seals of the same input are identical: salt not random")
	}
}

func TestTamperEveryByte(t *testing.T) {
	f := newFixture(t)
	for i := range f.env {
		for _, mask := range []byte{0x01, 0x80} {
			b := bytes.Clone(f.env)
			b[i] ^= mask
			if pt, _, err := envelope.Open(f.key, b, f.ctx); err == nil {
				t.Fatalf("byte %d ^ %#x: Open succeeded with %q", i, mask, pt)
			}
		}
	}
}

func TestTruncateAndExtend(t *testing.T) {
	f := newFixture(t)
	for n := 0; n < len(f.env); n++ {
		if _, _, err := envelope.Open(f.key, f.env[:n], f.ctx); err == nil {
			t.Fatalf("Open of the first %d bytes succeeded", n)
		}
	}
	if _, _, err := envelope.Open(f.key, append(bytes.Clone(f.env), 0), f.ctx); !errors.Is(err, envelope.ErrAuthentication) {
		t.Fatalf("Open with a trailing byte: error %v, want ErrAuthentication", err)
	}
}

func TestContext(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name    string
		ctx     map[string]string
		wantErr error
	}{
		{"ok/same", map[string]string{"tenant": "acme", "table": "invoices"}, nil},
		{"ok/reordered", map[string]string{"table": "invoices", "tenant": "acme"}, nil},
		{"fail/other-value", map[string]string{"tenant": "acme", "table": "invoice"}, envelope.ErrAuthentication},
		{"fail/missing-pair", map[string]string{"tenant": "acme"}, envelope.ErrAuthentication},
		{"fail/extra-pair", map[string]string{"tenant": "acme", "table": "invoices", "x": ""}, envelope.ErrAuthentication},
		{"fail/nil", nil, envelope.ErrAuthentication},
		// The length prefixes make moving bytes between key and value a
		// different encoding.
		{"fail/shifted-boundary", map[string]string{"tenan": "tacme", "table": "invoices"}, envelope.ErrAuthentication},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pt, _, err := envelope.Open(f.key, f.env, tc.ctx)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Open error = %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == nil && !bytes.Equal(pt, f.plaintext) {
				t.Errorf("plaintext = %q, want %q", pt, f.plaintext)
			}
		})
	}
}

func TestEncodeContext(t *testing.T) {
	got := envelope.EncodeContext(map[string]string{"b": "2", "a": "", "c": strings.Repeat("x", 200)})
	want := append([]byte{1, 'a', 0, 1, 'b', 1, '2', 1, 'c', 0xc8, 0x01}, strings.Repeat("x", 200)...)
	if !bytes.Equal(got, want) {
		t.Errorf("EncodeContext = %x, want %x", got, want)
	}
	if got := envelope.EncodeContext(map[string]string{}); len(got) != 0 {
		t.Errorf("empty context encodes to %x, want nothing", got)
	}
}

func TestCommitmentMismatch(t *testing.T) {
	f := newFixture(t)
	otherKey := bytes.Repeat([]byte{0x43}, envelope.DataKeySize)
	_, _, err := envelope.Open(otherKey, f.env, f.ctx)
	if !errors.Is(err, envelope.ErrAuthentication) || !strings.Contains(err.Error(), "commitment") {
		t.Fatalf("Open with another data key: error %v, want a commitment mismatch", err)
	}

	// A commitment that matches the key but a tag that does not is caught
	// by AES-GCM instead, and the error says which check failed.
	b := bytes.Clone(f.env)
	b[len(b)-1] ^= 1
	_, _, err = envelope.Open(f.key, b, f.ctx)
	if !errors.Is(err, envelope.ErrAuthentication) || strings.Contains(err.Error(), "commitment") {
		t.Fatalf("Open with a bad tag: error %v, want a tag failure", err)
	}
}

// TestRejectedBeforeCrypto passes a data key of the wrong size: had Open
// got as far as any cryptography it would fail on the key, so a
// header error proves the header was checked first.
func TestRejectedBeforeCrypto(t *testing.T) {
	f := newFixture(t)
	h, _, err := envelope.ParseHeader(f.env)
	if err != nil {
		t.Fatal(err)
	}
	headerLen := h.Size()
	set := func(i int, v byte) []byte { b := bytes.Clone(f.env); b[i] = v; return b }
	tests := []struct {
		name    string
		env     []byte
		wantErr error
		wantMsg string
	}{
		{"malformed/empty", nil, envelope.ErrMalformed, "truncated at magic"},
		{"malformed/short-magic", []byte("CMK"), envelope.ErrMalformed, "truncated at magic"},
		{"malformed/bad-magic", set(0, 'X'), envelope.ErrMalformed, "bad magic"},
		{"malformed/truncated-version", f.env[:4], envelope.ErrMalformed, "truncated at format version"},
		{"unsupported/version-0", set(4, 0), envelope.ErrUnsupportedVersion, "format version 0"},
		{"unsupported/version-2", set(4, 2), envelope.ErrUnsupportedVersion, "format version 2"},
		{"unsupported/suite-0", set(5, 0), envelope.ErrUnsupportedVersion, "algorithm suite 0"},
		{"unsupported/suite-255", set(5, 255), envelope.ErrUnsupportedVersion, "algorithm suite 255"},
		{"malformed/data-class-length-0", set(6, 0), envelope.ErrMalformed, "data class length 0"},
		{"malformed/data-class-length-64", set(6, 64), envelope.ErrMalformed, "data class length 64"},
		{"malformed/data-class-char", set(7, 'A'), envelope.ErrMalformed, "data class has a character"},
		{"malformed/truncated-data-class", f.env[:10], envelope.ErrMalformed, "truncated at data class"},
		{"malformed/truncated-salt", f.env[:headerLen-40], envelope.ErrMalformed, "truncated at salt"},
		{"malformed/truncated-commitment", f.env[:headerLen-1], envelope.ErrMalformed, "truncated at commitment"},
		{"malformed/no-tag", f.env[:headerLen+envelope.TagSize-1], envelope.ErrMalformed, "truncated ciphertext"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := envelope.Open([]byte("not a 32-byte key"), tc.env, f.ctx)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Open error = %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("Open error %q does not say %q", err, tc.wantMsg)
			}
		})
	}
}

func TestSealRejects(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 32)
	ok := envelope.Header{DataClass: "public", Region: "eu-west-1", KeyVersion: 1, WrappedKey: []byte{1}}
	with := func(f func(*envelope.Header)) envelope.Header { h := ok; f(&h); return h }
	tests := []struct {
		name    string
		key     []byte
		h       envelope.Header
		wantErr error
	}{
		{"malformed/empty-class", key, with(func(h *envelope.Header) { h.DataClass = "" }), envelope.ErrMalformed},
		{"malformed/long-region", key, with(func(h *envelope.Header) { h.Region = strings.Repeat("a", 64) }), envelope.ErrMalformed},
		{"malformed/key-version-0", key, with(func(h *envelope.Header) { h.KeyVersion = 0 }), envelope.ErrMalformed},
		{"malformed/no-wrapped-key", key, with(func(h *envelope.Header) { h.WrappedKey = nil }), envelope.ErrMalformed},
		{"malformed/long-wrapped-key", key, with(func(h *envelope.Header) { h.WrappedKey = make([]byte, 1025) }), envelope.ErrMalformed},
		{"unsupported/version", key, with(func(h *envelope.Header) { h.Version = 2 }), envelope.ErrUnsupportedVersion},
		{"unsupported/suite", key, with(func(h *envelope.Header) { h.Suite = 9 }), envelope.ErrUnsupportedVersion},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := envelope.Seal(tc.key, tc.h, nil, nil, rand.Reader); !errors.Is(err, tc.wantErr) {
				t.Fatalf("Seal error = %v, want %v", err, tc.wantErr)
			}
		})
	}
	if _, err := envelope.Seal(key[:16], ok, nil, nil, rand.Reader); err == nil {
		t.Error("Seal with a 16-byte data key succeeded")
	}
	if _, err := envelope.Seal(key, ok, nil, nil, bytes.NewReader(make([]byte, 31))); err == nil {
		t.Error("Seal with a short random source succeeded")
	}
}

func TestAppendBinaryRoundTrip(t *testing.T) {
	f := newFixture(t)
	h, rest, err := envelope.ParseHeader(f.env)
	if err != nil {
		t.Fatal(err)
	}
	b, err := h.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, f.env[:len(f.env)-len(rest)]) {
		t.Errorf("AppendBinary = %x, want the parsed bytes %x", b, f.env[:len(f.env)-len(rest)])
	}
}

func FuzzParseHeader(f *testing.F) {
	// A fixed salt: the fuzzing workers are separate processes and must
	// all build the same fixture.
	fx := newFixtureFrom(f, bytes.NewReader(make([]byte, envelope.SaltSize)))
	f.Add(fx.env)
	f.Add([]byte{})
	f.Add([]byte("CMKG\x01\x01"))
	for _, v := range loadVectors(f).Vectors {
		f.Add(unhex(f, v.Envelope))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, rest, err := envelope.ParseHeader(b)
		if err != nil {
			if h != nil || rest != nil {
				t.Fatalf("ParseHeader returned values with error %v", err)
			}
			if !errors.Is(err, envelope.ErrMalformed) && !errors.Is(err, envelope.ErrUnsupportedVersion) {
				t.Fatalf("ParseHeader error %v is neither ErrMalformed nor ErrUnsupportedVersion", err)
			}
			return
		}
		// Whatever parses re-encodes to exactly the bytes it came from.
		enc, err := h.AppendBinary(nil)
		if err != nil {
			t.Fatalf("AppendBinary of a parsed header: %v", err)
		}
		if !bytes.Equal(enc, b[:len(b)-len(rest)]) {
			t.Fatalf("re-encoded header %x differs from input %x", enc, b[:len(b)-len(rest)])
		}
		// Open never panics either, and never succeeds on a forged input.
		if _, _, err := envelope.Open(fx.key, b, fx.ctx); err == nil && !bytes.Equal(b, fx.env) {
			t.Fatalf("Open accepted a forged envelope")
		}
	})
}
