package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// doctorAt runs `credmatrix doctor args…` with the app's clock at now.
func doctorAt(t *testing.T, now time.Time, env map[string]string, args ...string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	a := &app{
		streams: streams{in: strings.NewReader(""), out: &out, err: &errb},
		getenv:  func(k string) string { return env[k] },
		now:     func() time.Time { return now },
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code := a.execute(ctx, append([]string{"doctor"}, args...))
	return code, out.String() + errb.String()
}

// unsignedJWT is a token with these claims (doctor reads, never verifies).
func unsignedJWT(t *testing.T, claims map[string]any) string {
	t.Helper()
	b, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256","kid":"k"}`)) + "." + enc(b) + "." + enc([]byte("signature"))
}

// TestDoctorClockSkew: doctor compares this machine's clock (injected
// here) with the time the token's issuer reports, and says which way it
// is off; it also reads a token issued "in the future" as a clock behind.
func TestDoctorClockSkew(t *testing.T) {
	issuer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/openid-configuration" {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": "x"})
	}))
	defer issuer.Close()
	real := time.Now()
	token := unsignedJWT(t, map[string]any{"iss": issuer.URL, "sub": "repo:acme/app:ref:refs/heads/main", "aud": "credmatrix",
		"iat": real.Unix(), "exp": real.Add(time.Hour).Unix()})
	env := map[string]string{"CREDMATRIX_OIDC_TOKEN": token, "CREDMATRIX_BROKER_ADDR": "127.0.0.1:1"}
	for _, tc := range []struct {
		name string
		skew time.Duration
		want []string
	}{
		{"in-step", 0, []string{"ok    in step with the issuer " + issuer.URL}},
		{"ahead", 10 * time.Minute, []string{"this machine's clock is 10m0s ahead of the issuer " + issuer.URL, "fix: fix the clock (NTP)"}},
		{"behind", -10 * time.Minute, []string{"this machine's clock is behind", "fix: fix the clock (NTP)"}},
		{"far-ahead-token-expired", 2 * time.Hour, []string{"ahead of the issuer", "the token expired at"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := doctorAt(t, real.Add(tc.skew), env, "--service", "broker")
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("doctor output lacks %q:\n%s", w, out)
				}
			}
			// The broker is down in every case (port 1); a skewed clock
			// is a setup problem on top.
			wantCode := exitUnavailable
			if tc.skew != 0 {
				wantCode = exitUsage
			}
			if code != wantCode {
				t.Fatalf("exit %d, want %d:\n%s", code, wantCode, out)
			}
		})
	}
}

// testCA makes a CA and a server certificate for 127.0.0.1 valid for a
// month from now, as PEM files in dir.
func testCA(t *testing.T, dir string) (caFile string, cert tls.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "doctor test CA"}, NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(30 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "broker"}, NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(30 * 24 * time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return caFile, tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}
}

// TestDoctorClockAgainstCertificates: with the clock (injected) past a
// service's certificate, doctor blames the certificate or the clock —
// never "unavailable".
func TestDoctorClockAgainstCertificates(t *testing.T) {
	caFile, cert := testCA(t, t.TempDir())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})))
	hs := health.NewServer()
	hs.SetServingStatus(brokerService.grpc, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(lis)
	defer srv.Stop()
	env := map[string]string{"CREDMATRIX_BROKER_ADDR": lis.Addr().String(), "CREDMATRIX_CA_FILE": caFile}

	code, out := doctorAt(t, time.Now(), env, "--service", "broker")
	if code != exitOK || !strings.Contains(out, "serves credmatrix.broker.v1.BrokerService (health: SERVING)") || !strings.Contains(out, "asks for no client certificate") ||
		!strings.Contains(out, "warn  no OIDC token") {
		t.Fatalf("healthy: exit %d\n%s", code, out)
	}
	for _, tc := range []struct {
		name string
		now  time.Time
		want string
	}{
		{"clock-ahead", time.Now().Add(60 * 24 * time.Hour), "expired at"},
		{"clock-behind", time.Now().Add(-48 * time.Hour), "is not valid before"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := doctorAt(t, tc.now, env, "--service", "broker")
			if code != exitUsage || !strings.Contains(out, tc.want) || !strings.Contains(out, "clock") || strings.Contains(out, "unavailable") {
				t.Fatalf("exit %d\n%s", code, out)
			}
		})
	}
}

func TestDoctorUsage(t *testing.T) {
	if code, out := doctorAt(t, time.Now(), nil, "--service", "nosuch"); code != exitUsage || !strings.Contains(out, "--service \"nosuch\"") {
		t.Fatalf("exit %d\n%s", code, out)
	}
}
