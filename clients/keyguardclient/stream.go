package keyguardclient

import (
	"context"
	"io"

	"github.com/credmatrix/credmatrix/clients/keyguardclient/stream"
)

// ErrStreamAuthentication means a stream did not authenticate: tampered,
// reordered, truncated or extended, or read with the wrong context.
var ErrStreamAuthentication = stream.ErrAuthentication

// NewEncryptWriter starts an encrypted stream on w under a (cached) data key
// of the ring, bound to encCtx, in stream.DefaultChunkSize chunks. Close it
// to write the final chunk; it does not close w.
func (c *Client) NewEncryptWriter(ctx context.Context, w io.Writer, dataClass, region string, encCtx map[string]string) (*stream.Writer, error) {
	dk, err := c.encKey(ctx, dataClass, region, encCtx, 0)
	if err != nil {
		return nil, err
	}
	return stream.NewWriter(w, dk.plaintext, dk.Wrapped, encCtx, stream.DefaultChunkSize, c.rand)
}

// NewDecryptReader reads a stream's header from r, unwraps its data key
// through keyguard (cached; the caller's decrypt grant and the audit log
// apply) and returns a reader of the plaintext. Read returns plaintext only
// from chunks that authenticated; a damaged stream ends in
// ErrStreamAuthentication.
func (c *Client) NewDecryptReader(ctx context.Context, r io.Reader, encCtx map[string]string) (*stream.Reader, error) {
	h, err := stream.ReadHeader(r)
	if err != nil {
		return nil, err
	}
	dk, err := c.decKey(ctx, h.WrappedKey, encCtx, 0)
	if err != nil {
		return nil, err
	}
	return stream.NewReader(r, h, dk.plaintext, encCtx)
}
