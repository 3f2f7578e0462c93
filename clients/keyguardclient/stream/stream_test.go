package stream

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"testing"

	"github.com/credmatrix/credmatrix/clients/keyguardclient/envelope"
)

// testKey is a data key with a well-formed (but not really wrapped) wrapped
// key, for tests of the stream format alone.
type testDataKey struct{ plaintext, Wrapped []byte }

func testKey(t testing.TB) *testDataKey {
	t.Helper()
	pt := bytes.Repeat([]byte{7}, 32)
	// A fixed salt, so that the key is the same in every process (the fuzz
	// workers rebuild it): test data only.
	wrapped, err := envelope.Seal(bytes.Repeat([]byte{9}, 32), envelope.Header{DataClass: "confidential", Region: "eu-west-1", KeyVersion: 1, WrappedKey: []byte{1, 2, 3}}, nil, pt, bytes.NewReader(make([]byte, 32)))
	if err != nil {
		t.Fatal(err)
	}
	return &testDataKey{plaintext: pt, Wrapped: wrapped}
}

var streamCtx = map[string]string{"file": "backup.tar"}

func sealStream(t testing.TB, dk *testDataKey, chunk int, data []byte, writes int) []byte {
	t.Helper()
	return sealStreamSalt(t, dk, chunk, data, writes, rand.Reader)
}

func sealStreamSalt(t testing.TB, dk *testDataKey, chunk int, data []byte, writes int, salt io.Reader) []byte {
	t.Helper()
	var out bytes.Buffer
	w, err := NewWriter(&out, dk.plaintext, dk.Wrapped, streamCtx, chunk, salt)
	if err != nil {
		t.Fatal(err)
	}
	step := max(1, len(data)/max(writes, 1))
	for p := data; len(p) > 0; {
		n := min(step, len(p))
		if _, err := w.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// openStream reads the header and decrypts with the test key.
func openStream(dk *testDataKey, b []byte, encCtx map[string]string) ([]byte, error) {
	r := bytes.NewReader(b)
	h, err := ReadHeader(r)
	if err != nil {
		return nil, err
	}
	sr, err := NewReader(r, h, dk.plaintext, encCtx)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(sr)
}

func TestStreamRoundTrip(t *testing.T) {
	dk := testKey(t)
	const chunk = MinChunkSize
	for _, tc := range []struct {
		name   string
		size   int
		writes int
	}{
		{"empty", 0, 1},
		{"one-byte", 1, 1},
		{"chunk-minus-one", chunk - 1, 3},
		{"exact-chunk", chunk, 1},
		{"chunk-plus-one", chunk + 1, 7},
		{"three-chunks-exact", 3 * chunk, 1},
		{"many-small-writes", 5*chunk + 17, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := make([]byte, tc.size)
			rand.Read(data)
			got, err := openStream(dk, sealStream(t, dk, chunk, data, tc.writes), streamCtx)
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("round trip of %d bytes returned %d different bytes", len(data), len(got))
			}
		})
	}
}

// TestStreamTamper: every bit flip, every truncation, chunk reordering,
// chunk removal, extension and a wrong context fail.
func TestStreamTamper(t *testing.T) {
	dk := testKey(t)
	const chunk = MinChunkSize
	data := make([]byte, 2*chunk+100)
	rand.Read(data)
	s := sealStream(t, dk, chunk, data, 1)
	hl := len(s) - (2*(chunk+tagSize) + 100 + tagSize)
	c0, c1 := s[hl:hl+chunk+tagSize], s[hl+chunk+tagSize:hl+2*(chunk+tagSize)]
	last := s[hl+2*(chunk+tagSize):]
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	fails := func(b []byte, c map[string]string) bool {
		_, err := openStream(dk, b, c)
		return err != nil
	}
	t.Run("bit-flips", func(t *testing.T) {
		for i := range len(s) * 8 {
			b := bytes.Clone(s)
			b[i/8] ^= 1 << (i % 8)
			if !fails(b, streamCtx) {
				t.Fatalf("bit %d flipped: stream still decrypted", i)
			}
		}
	})
	t.Run("truncations", func(t *testing.T) {
		for n := range len(s) {
			if !fails(s[:n], streamCtx) {
				t.Fatalf("truncated to %d of %d bytes: decrypted", n, len(s))
			}
		}
	})
	for _, tc := range []struct {
		name string
		b    []byte
		ctx  map[string]string
	}{
		{"reorder/swap-chunks", cat(s[:hl], c1, c0, last), streamCtx},
		{"drop/middle-chunk", cat(s[:hl], c0, last), streamCtx},
		{"drop/final-chunk", cat(s[:hl], c0, c1), streamCtx},
		{"duplicate/chunk", cat(s[:hl], c0, c0, c1, last), streamCtx},
		{"extend/byte", cat(s, []byte{0}), streamCtx},
		{"extend/chunk", cat(s, c0), streamCtx},
		{"wrong-context", s, map[string]string{"file": "other.tar"}},
		{"no-context", s, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !fails(tc.b, tc.ctx) {
				t.Fatal("tampered stream decrypted")
			}
		})
	}
	t.Run("error-is-authentication", func(t *testing.T) {
		_, err := openStream(dk, cat(s[:hl], c1, c0, last), streamCtx)
		if !errors.Is(err, ErrAuthentication) {
			t.Fatalf("error %v, want ErrAuthentication", err)
		}
	})
}

// BenchmarkStreamEncrypt measures client-side streaming encryption with one
// data key and 1 MiB chunks (the keyguard round trip for the key is not
// included: it happens once per stream, or once per cache lifetime).
func BenchmarkStreamEncrypt(b *testing.B) {
	dk := testKey(b)
	data := make([]byte, 64<<20)
	rand.Read(data)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		w, err := NewWriter(io.Discard, dk.plaintext, dk.Wrapped, streamCtx, DefaultChunkSize, rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		for p := data; len(p) > 0; p = p[DefaultChunkSize:] {
			if _, err := w.Write(p[:DefaultChunkSize]); err != nil {
				b.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStreamDecrypt measures the matching decryption.
func BenchmarkStreamDecrypt(b *testing.B) {
	dk := testKey(b)
	data := make([]byte, 64<<20)
	rand.Read(data)
	s := sealStream(b, dk, DefaultChunkSize, data, 64)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		br := bytes.NewReader(s)
		h, err := ReadHeader(br)
		if err != nil {
			b.Fatal(err)
		}
		r, err := NewReader(br, h, dk.plaintext, streamCtx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := r.WriteTo(io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzOpenStream feeds arbitrary bytes, and mutations of a valid stream, to
// the stream reader: it must never panic, and never return plaintext for
// anything but the exact stream that was sealed.
func FuzzOpenStream(f *testing.F) {
	dk := testKey(f)
	data := bytes.Repeat([]byte("fuzz"), MinChunkSize/2)
	// Deterministic, so every fuzz worker process computes the same stream.
	valid := sealStreamSalt(f, dk, MinChunkSize, data, 1, bytes.NewReader(bytes.Repeat([]byte{5}, 32)))
	f.Add(valid)
	f.Add(valid[:len(valid)-1])
	f.Add([]byte("CMKS"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := openStream(dk, b, streamCtx)
		if err == nil && !bytes.Equal(b, valid) {
			t.Fatalf("a %d-byte input other than the sealed stream decrypted to %d bytes", len(b), len(got))
		}
	})
}
