// Package pemfile reads CA bundles for the TLS set-up shared by grpcserver
// and grpcclient, so both fail the same way on a missing or empty bundle.
package pemfile

import (
	"crypto/x509"
	"fmt"
	"os"
)

// CertPool reads the PEM CA bundle at path. A file without a single
// certificate is an error: an empty pool would silently trust nothing (or,
// for a client, nothing but what the caller did not mean).
func CertPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("CA bundle %s holds no PEM certificate", path)
	}
	return pool, nil
}
