// Package pkitest makes throwaway certificate authorities whose leaves carry
// whatever URI SANs a test asks for — none, several, non-SPIFFE ones — so
// the services' identity checks can be tested through their real TLS
// wiring with the certificates an attacker or a misconfigured issuer would
// present. Leaves are valid for server and client authentication on
// localhost, 127.0.0.1 and ::1. Nothing here is for production use.
package pkitest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a certificate authority whose files live in a test's temp dir.
type CA struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// File is the PEM file of the CA certificate (a CA bundle).
	File string
}

// New creates a CA valid for an hour around now.
func New(t testing.TB) *CA {
	t.Helper()
	key := newKey(t)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: "pkitest CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &CA{dir: t.TempDir(), cert: cert, key: key}
	ca.File = ca.write(t, "ca.pem", "CERTIFICATE", der)
	return ca
}

// Leaf is a certificate and key pair written by Issue.
type Leaf struct {
	CertFile, KeyFile string
}

// Issue signs a leaf named name (its file names and common name) whose URI
// SANs are exactly uris, parsed as given and never checked, and returns its
// files (the key 0600).
func (ca *CA) Issue(t testing.TB, name string, uris ...string) Leaf {
	t.Helper()
	key := newKey(t)
	var us []*url.URL
	for _, u := range uris {
		p, err := url.Parse(u)
		if err != nil {
			t.Fatalf("pkitest: URI SAN %q: %v", u, err)
		}
		us = append(us, p)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    ca.cert.NotBefore,
		NotAfter:     ca.cert.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		URIs:         us,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return Leaf{
		CertFile: ca.write(t, name+".pem", "CERTIFICATE", der),
		KeyFile:  ca.write(t, name+"-key.pem", "PRIVATE KEY", keyDER),
	}
}

func (ca *CA) write(t testing.TB, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(ca.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// BadIdentity is a set of URI SANs a client certificate may carry that
// must never give its holder an identity.
type BadIdentity struct {
	// Name names the case in subtests ("two-uri-sans").
	Name string
	// URIs are the certificate's URI SANs.
	URIs []string
}

// BadIdentities returns the URI SAN sets every credmatrix service must
// refuse, built around good, a SPIFFE ID the service otherwise authorises
// (e.g. spiffe://credmatrix.dev/cli): no URI SAN, good plus another (in
// both orders, so "take the first" fails), a non-SPIFFE URI, and SPIFFE
// look-alikes that are not strict SPIFFE IDs.
func BadIdentities(good string) []BadIdentity {
	u, err := url.Parse(good)
	if err != nil || u.Scheme != "spiffe" {
		panic("pkitest: BadIdentities needs a spiffe:// ID, got " + good)
	}
	td, path := u.Host, u.Path
	return []BadIdentity{
		{Name: "no-uri-san"},
		{Name: "two-uri-sans/good-first", URIs: []string{good, "spiffe://" + td + "/other"}},
		{Name: "two-uri-sans/good-second", URIs: []string{"spiffe://" + td + "/other", good}},
		{Name: "two-uri-sans/same-twice", URIs: []string{good, good}},
		{Name: "non-spiffe-uri/https", URIs: []string{"https://" + td + path}},
		{Name: "non-spiffe-uri/urn", URIs: []string{"urn:spiffe:" + td + path}},
		{Name: "spiffe-uppercase-trust-domain", URIs: []string{"spiffe://" + upper(td) + path}},
		{Name: "spiffe-no-path", URIs: []string{"spiffe://" + td}},
		{Name: "spiffe-trailing-slash", URIs: []string{good + "/"}},
		{Name: "spiffe-dot-dot-segment", URIs: []string{good + "/../x"}},
		{Name: "spiffe-port", URIs: []string{"spiffe://" + td + ":8443" + path}},
		{Name: "spiffe-user-info", URIs: []string{"spiffe://admin@" + td + path}},
		{Name: "spiffe-query", URIs: []string{good + "?admin=1"}},
		{Name: "spiffe-fragment", URIs: []string{good + "#admin"}},
		{Name: "spiffe-percent-encoded", URIs: []string{good + "%2Fx"}},
	}
}

func upper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'a' && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}
