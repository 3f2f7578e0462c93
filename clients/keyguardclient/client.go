// Package keyguardclient is the Go client of credmatrix keyguard: envelope
// encryption by data class and region, through the service.
package keyguardclient

import (
	"context"

	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
	"google.golang.org/grpc"
)

// Client calls one keyguard. It is safe for concurrent use; share one per
// connection.
type Client struct {
	rpc keyguardv1.KeyguardServiceClient
}

// New returns a client using conn (see platform/grpcclient.Dial for mTLS).
func New(conn grpc.ClientConnInterface) *Client {
	return &Client{rpc: keyguardv1.NewKeyguardServiceClient(conn)}
}

// Encrypt seals plaintext under the newest key of the (dataClass, region)
// ring, binding encCtx; the same encCtx is needed to decrypt.
func (c *Client) Encrypt(ctx context.Context, dataClass, region string, plaintext []byte, encCtx map[string]string) ([]byte, *keyguardv1.KeyRef, error) {
	resp, err := c.rpc.Encrypt(ctx, &keyguardv1.EncryptRequest{
		DataClass: dataClass, Region: region, Plaintext: plaintext, EncryptionContext: encCtx,
	})
	if err != nil {
		return nil, nil, err
	}
	return resp.GetCiphertext(), resp.GetKey(), nil
}

// Decrypt opens an envelope made by Encrypt with the same encCtx.
func (c *Client) Decrypt(ctx context.Context, ciphertext []byte, encCtx map[string]string) ([]byte, *keyguardv1.KeyRef, error) {
	resp, err := c.rpc.Decrypt(ctx, &keyguardv1.DecryptRequest{Ciphertext: ciphertext, EncryptionContext: encCtx})
	if err != nil {
		return nil, nil, err
	}
	return resp.GetPlaintext(), resp.GetKey(), nil
}
