// Package devpki generates a throw-away certificate authority and
// certificates for the local stack and tests, so that development runs with
// the same mutual TLS as production instead of a plaintext shortcut.
//
// Each leaf certificate carries the SPIFFE-style identity
// spiffe://credmatrix.dev/<name> that grpcserver.PeerIdentity reports, and is
// valid for both server and client authentication on localhost.
//
// Never use these certificates outside development: the CA key is discarded
// after signing, nothing is revocable, and the validity is short.
package devpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
)

// TrustDomain is the SPIFFE trust domain of development identities.
const TrustDomain = "credmatrix.dev"

// Validity is how long generated certificates (CA and leaves) are valid.
const Validity = 30 * 24 * time.Hour

// Bundle locates the files Generate wrote.
type Bundle struct {
	// Dir is the directory holding every file.
	Dir string
	// CAFile is the PEM certificate of the development CA.
	CAFile string
}

// Files returns the server TLS files for name: its certificate and key, and
// the CA as client CA, so a server built from them requires mutual TLS.
func (b *Bundle) Files(name string) grpcserver.TLSFiles {
	return grpcserver.TLSFiles{
		CertFile:     b.certFile(name),
		KeyFile:      b.keyFile(name),
		ClientCAFile: b.CAFile,
	}
}

// Client returns a client configuration that dials target as name,
// presenting name's certificate and trusting the development CA.
func (b *Bundle) Client(name, target string) grpcclient.Config {
	return grpcclient.Config{
		Target:   target,
		CAFile:   b.CAFile,
		CertFile: b.certFile(name),
		KeyFile:  b.keyFile(name),
	}
}

// SPIFFEID returns the URI SAN Generate puts in name's certificate.
func SPIFFEID(name string) string {
	return (&url.URL{Scheme: "spiffe", Host: TrustDomain, Path: "/" + name}).String()
}

func (b *Bundle) certFile(name string) string { return filepath.Join(b.Dir, name+".pem") }
func (b *Bundle) keyFile(name string) string  { return filepath.Join(b.Dir, name+"-key.pem") }

// validName keeps names safe as file names, DNS names and SPIFFE path
// segments.
var validName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Generate creates, in dir (made 0700 if it does not exist), a fresh ECDSA
// P-256 CA (ca.pem) and for each name a certificate and key (<name>.pem,
// <name>-key.pem, keys 0600) with DNS SANs localhost and name, IP SANs
// 127.0.0.1 and ::1, and URI SAN spiffe://credmatrix.dev/<name>. Existing
// files are replaced atomically. Names are lower-case DNS labels; "ca" is
// reserved.
func Generate(dir string, names ...string) (*Bundle, error) {
	seen := make(map[string]bool, len(names))
	for _, n := range names {
		if !validName.MatchString(n) || n == "ca" {
			return nil, fmt.Errorf("devpki: invalid name %q (want a lower-case DNS label other than \"ca\")", n)
		}
		if seen[n] {
			return nil, fmt.Errorf("devpki: duplicate name %q", n)
		}
		seen[n] = true
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devpki: create %s: %w", dir, err)
	}
	b := &Bundle{Dir: dir, CAFile: filepath.Join(dir, "ca.pem")}

	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("devpki: generate CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "credmatrix development CA", Organization: []string{"credmatrix dev"}},
		NotBefore:             now.Add(-5 * time.Minute), // tolerate clock skew
		NotAfter:              now.Add(Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caCert, caDER, err := sign(caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("devpki: sign CA: %w", err)
	}
	if err := writeFile(b.CAFile, pemBlock("CERTIFICATE", caDER), 0o644); err != nil {
		return nil, err
	}

	for _, name := range names {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("devpki: generate key for %s: %w", name, err)
		}
		dns := []string{"localhost"}
		if name != "localhost" {
			dns = append(dns, name)
		}
		id, err := url.Parse(SPIFFEID(name))
		if err != nil {
			return nil, fmt.Errorf("devpki: identity for %s: %w", name, err)
		}
		tmpl := &x509.Certificate{
			Subject:     pkix.Name{CommonName: name, Organization: []string{"credmatrix dev"}},
			NotBefore:   caTmpl.NotBefore,
			NotAfter:    caTmpl.NotAfter,
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			DNSNames:    dns,
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
			URIs:        []*url.URL{id},
		}
		_, der, err := sign(tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return nil, fmt.Errorf("devpki: sign certificate for %s: %w", name, err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("devpki: encode key for %s: %w", name, err)
		}
		if err := writeFile(b.keyFile(name), pemBlock("PRIVATE KEY", keyDER), 0o600); err != nil {
			return nil, err
		}
		if err := writeFile(b.certFile(name), pemBlock("CERTIFICATE", der), 0o644); err != nil {
			return nil, err
		}
	}
	return b, nil
}

func sign(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) (*x509.Certificate, []byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, der, nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// writeFile replaces path atomically with data at mode perm. The temporary
// file is created 0600, so a key is never readable by others, even briefly.
func writeFile(path string, data []byte, perm os.FileMode) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".devpki-*")
	if err != nil {
		return fmt.Errorf("devpki: write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}()
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("devpki: write %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), perm); err != nil {
		return fmt.Errorf("devpki: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("devpki: write %s: %w", path, err)
	}
	return nil
}
