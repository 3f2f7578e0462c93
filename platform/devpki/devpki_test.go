package devpki_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/credmatrix/credmatrix/platform/devpki"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s: no CERTIFICATE block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestGenerate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	b, err := devpki.Generate(dir, "broker", "keyguard", "audit", "localhost")
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	if got := mode(t, dir); got != 0o700 {
		t.Errorf("dir mode = %v, want 0700", got)
	}
	ca := readCert(t, b.CAFile)
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate: IsCA=%v KeyUsage=%v, want a signing CA", ca.IsCA, ca.KeyUsage)
	}
	if pub, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("CA key = %T, want ECDSA P-256", ca.PublicKey)
	}
	if ca.NotAfter.Sub(ca.NotBefore) > devpki.Validity+time.Hour {
		t.Errorf("CA validity %v, want about %v", ca.NotAfter.Sub(ca.NotBefore), devpki.Validity)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)

	tests := []struct {
		name    string
		wantDNS []string
	}{
		{name: "broker", wantDNS: []string{"localhost", "broker"}},
		{name: "keyguard", wantDNS: []string{"localhost", "keyguard"}},
		{name: "audit", wantDNS: []string{"localhost", "audit"}},
		{name: "localhost", wantDNS: []string{"localhost"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			files := b.Files(tc.name)
			want := grpcserver.TLSFiles{
				CertFile:     filepath.Join(dir, tc.name+".pem"),
				KeyFile:      filepath.Join(dir, tc.name+"-key.pem"),
				ClientCAFile: filepath.Join(dir, "ca.pem"),
			}
			if diff := cmp.Diff(files, want); diff != "" {
				t.Errorf("Files mismatch (-got +want):\n%s", diff)
			}
			if got := mode(t, files.KeyFile); got != 0o600 {
				t.Errorf("key mode = %v, want 0600", got)
			}
			cert := readCert(t, files.CertFile)
			var uris, ips []string
			for _, u := range cert.URIs {
				uris = append(uris, u.String())
			}
			for _, ip := range cert.IPAddresses {
				ips = append(ips, ip.String())
			}
			got := [][]string{cert.DNSNames, ips, uris}
			wantSANs := [][]string{tc.wantDNS, {"127.0.0.1", "::1"}, {"spiffe://credmatrix.dev/" + tc.name}}
			if diff := cmp.Diff(got, wantSANs); diff != "" {
				t.Errorf("SANs (DNS, IP, URI) mismatch (-got +want):\n%s", diff)
			}
			if cert.IsCA {
				t.Error("leaf certificate is a CA")
			}
			for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
					t.Errorf("verify for usage %v: %v", usage, err)
				}
			}
			for _, host := range append([]string{"127.0.0.1", "::1"}, tc.wantDNS...) {
				if err := cert.VerifyHostname(host); err != nil {
					t.Errorf("VerifyHostname(%s): %v", host, err)
				}
			}
			if _, err := grpcserver.TLSConfig(files); err != nil {
				t.Errorf("files do not load as a server TLS config: %v", err)
			}
		})
	}
}

func TestBundleClient(t *testing.T) {
	b := &devpki.Bundle{Dir: "/pki", CAFile: "/pki/ca.pem"}
	got := b.Client("broker", "127.0.0.1:8443")
	want := grpcclient.Config{Target: "127.0.0.1:8443", CAFile: "/pki/ca.pem", CertFile: "/pki/broker.pem", KeyFile: "/pki/broker-key.pem"}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("Client mismatch (-got +want):\n%s", diff)
	}
}

func TestGenerateReplacesFiles(t *testing.T) {
	dir := t.TempDir()
	first, err := devpki.Generate(dir, "audit")
	if err != nil {
		t.Fatal(err)
	}
	firstCA := readCert(t, first.CAFile)
	// A key left readable by mistake is tightened on regeneration.
	if err := os.Chmod(first.Files("audit").KeyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	second, err := devpki.Generate(dir, "audit")
	if err != nil {
		t.Fatal(err)
	}
	if readCert(t, second.CAFile).SerialNumber.Cmp(firstCA.SerialNumber) == 0 {
		t.Error("second Generate kept the old CA")
	}
	if got := mode(t, second.Files("audit").KeyFile); got != 0o600 {
		t.Errorf("key mode = %v, want 0600", got)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if diff := cmp.Diff(names, []string{"audit-key.pem", "audit.pem", "ca.pem"}); diff != "" {
		t.Errorf("files left in dir (-got +want):\n%s", diff)
	}
}

func TestGenerateInvalidNames(t *testing.T) {
	tests := []struct {
		name  string
		names []string
		want  string
	}{
		{name: "reserved-ca", names: []string{"ca"}, want: `devpki: invalid name "ca" (want a lower-case DNS label other than "ca")`},
		{name: "path-traversal", names: []string{"../x"}, want: `devpki: invalid name "../x" (want a lower-case DNS label other than "ca")`},
		{name: "upper-case", names: []string{"Broker"}, want: `devpki: invalid name "Broker" (want a lower-case DNS label other than "ca")`},
		{name: "empty", names: []string{""}, want: `devpki: invalid name "" (want a lower-case DNS label other than "ca")`},
		{name: "duplicate", names: []string{"audit", "audit"}, want: `devpki: duplicate name "audit"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pki")
			_, err := devpki.Generate(dir, tc.names...)
			if err == nil {
				t.Fatal("Generate succeeded, want error")
			}
			if diff := cmp.Diff(err.Error(), tc.want); diff != "" {
				t.Errorf("error mismatch (-got +want):\n%s", diff)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("Generate created %s despite invalid names", dir)
			}
		})
	}
}

func TestSPIFFEID(t *testing.T) {
	if got, want := devpki.SPIFFEID("broker"), "spiffe://credmatrix.dev/broker"; got != want {
		t.Errorf("SPIFFEID = %q, want %q", got, want)
	}
}
