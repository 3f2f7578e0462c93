// Package stream is the chunked streaming format of keyguard's client-side
// encryption (docs/envelope-format.md, "Stream format"): a header naming
// the wrapped data key, then AES-256-GCM chunks under a per-stream key
// derived from the data key and a fresh salt, with the chunk index and a
// final flag in each nonce, so truncation, reordering, duplication and
// extension fail to authenticate. It knows nothing of keyguard's API: the
// keyguardclient package gets the data key and hands it over.
package stream

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

	"github.com/credmatrix/credmatrix/clients/keyguardclient/envelope"
)

// Format constants (docs/envelope-format.md, "Stream format").
const (
	// Magic opens every stream.
	Magic = "CMKS"
	// Version1 is the stream format this package writes and reads.
	Version1 uint8 = 1
	// DefaultChunkSize is the plaintext size of every chunk but the last.
	DefaultChunkSize = 1 << 20
	// MinChunkSize and MaxChunkSize bound the chunk size a stream may use.
	MinChunkSize, MaxChunkSize = 1 << 10, 16 << 20
	// KDFLabel starts the HKDF info of the stream key derivation.
	KDFLabel = "credmatrix/keyguard/stream/v1"

	streamSaltSize   = 32
	streamCommitSize = 32
	tagSize          = 16
)

// Errors of the stream format, wrapped with a detail.
var (
	// ErrMalformed means the stream header is not well formed.
	ErrMalformed = errors.New("stream: malformed")
	// ErrAuthentication means a chunk did not authenticate: tampered,
	// reordered, truncated or extended stream, or wrong context or key.
	ErrAuthentication = errors.New("stream: authentication failed")
)

// headerPrefix is the start of a stream, without its commitment.
func headerPrefix(chunkSize uint32, wrapped []byte, salt []byte) []byte {
	b := make([]byte, 0, 4+2+4+2+len(wrapped)+len(salt)+streamCommitSize)
	b = append(b, Magic...)
	b = append(b, Version1, envelope.SuiteHKDFSHA256AES256GCMCommit)
	b = binary.BigEndian.AppendUint32(b, chunkSize)
	b = binary.BigEndian.AppendUint16(b, uint16(len(wrapped)))
	b = append(b, wrapped...)
	return append(b, salt...)
}

// derive derives the stream's AES-GCM and its commitment.
func derive(dataKey, salt, prefix []byte, encCtx map[string]string) (cipher.AEAD, []byte, error) {
	info := append([]byte(KDFLabel), prefix...)
	info = append(info, envelope.EncodeContext(encCtx)...)
	okm, err := hkdf.Key(sha256.New, dataKey, salt, string(info), 64)
	if err != nil {
		return nil, nil, err
	}
	defer clear(okm[:32])
	block, err := aes.NewCipher(okm[:32])
	if err != nil {
		return nil, nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, nil, err
	}
	return aead, okm[32:], nil
}

// chunkNonce is the nonce of chunk i: its index, big-endian, then 3 zero
// bytes and the final flag. Each stream has its own key, so the index alone
// keeps nonces unique; the flag marks the last chunk, so a stream cut at a
// chunk boundary does not authenticate.
func chunkNonce(n *[12]byte, i uint64, final bool) {
	binary.BigEndian.PutUint64(n[:8], i)
	n[8], n[9], n[10], n[11] = 0, 0, 0, 0
	if final {
		n[11] = 1
	}
}

// Writer seals what is written to it as a stream of chunks. Close writes
// the final chunk; a stream without it does not decrypt.
type Writer struct {
	w         io.Writer
	aead      cipher.AEAD
	chunkSize int
	buf       []byte
	out       []byte
	index     uint64
	nonce     [12]byte
	closed    bool
	err       error
}

// NewWriter writes a stream header to w and returns a Writer sealing
// chunks of chunkSize plaintext bytes under dataKey (32 bytes), bound to
// encCtx. wrappedKey is the data key's keyguard envelope, stored in the
// header; rand supplies the salt (crypto/rand.Reader).
func NewWriter(w io.Writer, dataKey, wrappedKey []byte, encCtx map[string]string, chunkSize int, rand io.Reader) (*Writer, error) {
	if len(dataKey) != envelope.DataKeySize {
		return nil, fmt.Errorf("stream: data key is %d bytes, want %d", len(dataKey), envelope.DataKeySize)
	}
	if chunkSize < MinChunkSize || chunkSize > MaxChunkSize {
		return nil, fmt.Errorf("stream: chunk size %d out of range %d..%d", chunkSize, MinChunkSize, MaxChunkSize)
	}
	if len(wrappedKey) == 0 || len(wrappedKey) > envelope.MaxWrappedKeyLen {
		return nil, fmt.Errorf("stream: wrapped data key of %d bytes", len(wrappedKey))
	}
	salt := make([]byte, streamSaltSize)
	if _, err := io.ReadFull(rand, salt); err != nil {
		return nil, fmt.Errorf("stream: read salt: %w", err)
	}
	prefix := headerPrefix(uint32(chunkSize), wrappedKey, salt)
	aead, commit, err := derive(dataKey, salt, prefix, encCtx)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(append(prefix, commit...)); err != nil {
		return nil, err
	}
	return &Writer{w: w, aead: aead, chunkSize: chunkSize, buf: make([]byte, 0, chunkSize), out: make([]byte, 0, chunkSize+tagSize)}, nil
}

func (e *Writer) seal(p []byte, final bool) error {
	chunkNonce(&e.nonce, e.index, final)
	e.index++
	e.out = e.aead.Seal(e.out[:0], e.nonce[:], p, nil)
	_, err := e.w.Write(e.out)
	return err
}

// Write encrypts p. Every full chunk is sealed at once (whole chunks of p
// straight from p, without a copy); Close seals the rest as the final
// chunk, which may be empty.
func (e *Writer) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	if e.closed {
		return 0, errors.New("stream: write after Close")
	}
	n := len(p)
	for len(p) > 0 {
		if len(e.buf) == 0 && len(p) >= e.chunkSize {
			if e.err = e.seal(p[:e.chunkSize], false); e.err != nil {
				return n - len(p), e.err
			}
			p = p[e.chunkSize:]
			continue
		}
		k := copy(e.buf[len(e.buf):e.chunkSize], p)
		e.buf = e.buf[:len(e.buf)+k]
		p = p[k:]
		if len(e.buf) == e.chunkSize {
			if e.err = e.seal(e.buf, false); e.err != nil {
				return n - len(p), e.err
			}
			e.buf = e.buf[:0]
		}
	}
	return n, nil
}

// Close seals the final chunk (possibly empty). It does not close the
// underlying writer.
func (e *Writer) Close() error {
	if e.err != nil || e.closed {
		return e.err
	}
	e.closed = true
	e.err = e.seal(e.buf, true)
	clear(e.buf)
	return e.err
}

// Reader opens a stream made by Writer. Read returns
// plaintext only from chunks that authenticated, in order; a tampered,
// reordered, truncated or extended stream ends in ErrAuthentication.
// Plaintext already returned before such an error must be discarded by the
// caller if the stream as a whole must be authentic.
type Reader struct {
	r         io.Reader
	aead      cipher.AEAD
	chunkSize int
	in        []byte // one sealed chunk plus one lookahead byte; opened in place
	look      byte   // the lookahead byte, first byte of the next chunk
	hasLook   bool
	plain     []byte // unread plaintext, within in
	index     uint64
	nonce     [12]byte
	done      bool
	err       error
}

// Header is a parsed stream header.
type Header struct {
	// ChunkSize is the plaintext size of every chunk but the last.
	ChunkSize int
	// WrappedKey is the data key's keyguard envelope: unwrap it (keyguard
	// Decrypt with the stream's context) to get the data key.
	WrappedKey []byte

	prefix, salt, commit []byte
}

// ReadHeader reads and checks a stream header from r, before any
// cryptography.
func ReadHeader(r io.Reader) (*Header, error) {
	fixed := make([]byte, 4+2+4+2)
	if _, err := io.ReadFull(r, fixed); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrMalformed, err)
	}
	if string(fixed[:4]) != Magic {
		return nil, fmt.Errorf("%w: bad magic (want %q)", ErrMalformed, Magic)
	}
	if fixed[4] != Version1 || fixed[5] != envelope.SuiteHKDFSHA256AES256GCMCommit {
		return nil, fmt.Errorf("%w: unknown stream version %d suite %d", ErrMalformed, fixed[4], fixed[5])
	}
	chunkSize := int(binary.BigEndian.Uint32(fixed[6:10]))
	if chunkSize < MinChunkSize || chunkSize > MaxChunkSize {
		return nil, fmt.Errorf("%w: chunk size %d out of range %d..%d", ErrMalformed, chunkSize, MinChunkSize, MaxChunkSize)
	}
	wl := int(binary.BigEndian.Uint16(fixed[10:12]))
	if wl == 0 || wl > envelope.MaxWrappedKeyLen {
		return nil, fmt.Errorf("%w: wrapped key length %d", ErrMalformed, wl)
	}
	rest := make([]byte, wl+streamSaltSize+streamCommitSize)
	if _, err := io.ReadFull(r, rest); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrMalformed, err)
	}
	h := &Header{ChunkSize: chunkSize, WrappedKey: rest[:wl], salt: rest[wl : wl+streamSaltSize], commit: rest[wl+streamSaltSize:]}
	if _, _, err := envelope.ParseHeader(h.WrappedKey); err != nil {
		return nil, fmt.Errorf("%w: wrapped key: %v", ErrMalformed, err)
	}
	h.prefix = append(fixed, rest[:wl+streamSaltSize]...)
	return h, nil
}

// NewReader returns a reader of the plaintext of the stream whose header h
// was read from r, given its data key and encryption context. A wrong key,
// context or tampered header fails here, on the key commitment.
func NewReader(r io.Reader, h *Header, dataKey []byte, encCtx map[string]string) (*Reader, error) {
	if len(dataKey) != envelope.DataKeySize {
		return nil, fmt.Errorf("stream: data key is %d bytes, want %d", len(dataKey), envelope.DataKeySize)
	}
	aead, want, err := derive(dataKey, h.salt, h.prefix, encCtx)
	if err != nil {
		return nil, err
	}
	chunkSize, commit := h.ChunkSize, h.commit
	if subtle.ConstantTimeCompare(want, commit) != 1 {
		return nil, fmt.Errorf("%w: key commitment mismatch (wrong context or key, or tampered header)", ErrAuthentication)
	}
	return &Reader{r: r, aead: aead, chunkSize: chunkSize, in: make([]byte, chunkSize+tagSize+1)}, nil
}

// next reads and opens the next chunk into d.plain.
func (d *Reader) next() error {
	// Fill: up to one whole sealed chunk plus one byte, to learn whether
	// this chunk is the last. The previous chunk's plaintext, opened in
	// place in d.in, has been consumed by now.
	have := 0
	if d.hasLook {
		d.in[0] = d.look
		have = 1
	}
	n, err := io.ReadFull(d.r, d.in[have:])
	have += n
	switch {
	case err == nil:
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		err = nil
	default:
		return err
	}
	final := have <= d.chunkSize+tagSize
	sealed := d.in[:min(have, d.chunkSize+tagSize)]
	if len(sealed) < tagSize {
		return fmt.Errorf("%w: truncated (chunk %d)", ErrAuthentication, d.index)
	}
	d.hasLook = !final
	if !final {
		d.look = d.in[have-1]
	}
	chunkNonce(&d.nonce, d.index, final)
	plain, oerr := d.aead.Open(sealed[:0], d.nonce[:], sealed, nil)
	if oerr != nil {
		return fmt.Errorf("%w: chunk %d", ErrAuthentication, d.index)
	}
	d.plain = plain
	d.index++
	d.done = final
	return err
}

// Read returns plaintext of authenticated chunks.
func (d *Reader) Read(p []byte) (int, error) {
	for len(d.plain) == 0 {
		if d.err != nil {
			return 0, d.err
		}
		if d.done {
			return 0, io.EOF
		}
		if err := d.next(); err != nil {
			d.err = err
			d.plain = d.plain[:0]
		}
	}
	n := copy(p, d.plain)
	d.plain = d.plain[n:]
	return n, nil
}

// WriteTo decrypts the rest of the stream into w, chunk by chunk without an
// extra copy; io.Copy uses it.
func (d *Reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if len(d.plain) > 0 {
			n, err := w.Write(d.plain)
			total += int64(n)
			d.plain = d.plain[n:]
			if err != nil {
				return total, err
			}
		}
		if d.err != nil {
			return total, d.err
		}
		if d.done {
			return total, nil
		}
		if err := d.next(); err != nil {
			d.err = err
			d.plain = d.plain[:0]
		}
	}
}
