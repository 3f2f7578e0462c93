package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/credmatrix/credmatrix/platform/grpcclient"
)

// probeTimeout bounds each network step of a probe.
const probeTimeout = 5 * time.Second

// probeReport is what one look at a service's address found: whether the
// TLS (or plaintext) conversation a gRPC client needs can happen there,
// and if not, why and how to fix it. The CLI probes only after a call
// failed, to turn a transport error into an explanation; `doctor` probes
// every service.
type probeReport struct {
	// OK: the address speaks gRPC over the configured transport and
	// accepted the client (certificate).
	OK bool
	// Transient problems may go away by themselves (nothing listening,
	// timeouts); the others need the setup changed.
	Transient bool
	// Problem and Fix explain a failure for humans.
	Problem, Fix string

	// What the handshake showed, for doctor.
	TLSVersion      uint16
	ServerCert      *x509.Certificate
	ClientCertAsked bool // the server asked for a client certificate (an mTLS port)
	ClientCertSent  bool
}

// probe connects to cfg.Target the way grpcclient would (the same TLS
// settings, the clock now for certificate validity) and checks the
// conversation up to the server's first HTTP/2 frame. It sends no RPC.
func probe(ctx context.Context, cfg grpcclient.Config, flags flagNames, now func() time.Time) probeReport {
	addr := dialAddr(cfg.Target)
	d := net.Dialer{Timeout: probeTimeout}
	ctx, cancel := context.WithTimeout(ctx, 3*probeTimeout)
	defer cancel()
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return dialProblem(addr, err, flags)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(2 * probeTimeout))
	if cfg.DevPlaintext {
		return probePlaintext(ctx, raw, cfg, flags)
	}
	tcfg, err := grpcclient.TLSConfig(cfg)
	if err != nil {
		return probeReport{Problem: err.Error(), Fix: fmt.Sprintf("check %s, %s and %s: each must be a readable PEM file", flags.ca, flags.cert, flags.key)}
	}
	if tcfg.ServerName == "" {
		tcfg.ServerName, _, _ = net.SplitHostPort(addr)
	}
	tcfg.NextProtos = []string{"h2"}
	tcfg.Time = now
	var rep probeReport
	certs := tcfg.Certificates
	tcfg.Certificates = nil
	tcfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		rep.ClientCertAsked = true
		if len(certs) == 0 {
			return &tls.Certificate{}, nil
		}
		rep.ClientCertSent = true
		return &certs[0], nil
	}
	conn := tls.Client(raw, tcfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		p := handshakeProblem(addr, cfg, flags, now, err)
		p.ClientCertAsked, p.ClientCertSent = rep.ClientCertAsked, rep.ClientCertSent
		return p
	}
	st := conn.ConnectionState()
	rep.TLSVersion = st.Version
	if len(st.PeerCertificates) > 0 {
		rep.ServerCert = st.PeerCertificates[0]
	}
	if st.NegotiatedProtocol != "h2" {
		rep.Problem = fmt.Sprintf("%s speaks TLS but not gRPC (it did not offer HTTP/2): it is some other kind of server", addr)
		rep.Fix = "point " + flags.addr + " at the credmatrix service's gRPC port"
		return rep
	}
	// TLS 1.3 servers refuse a client certificate (or its absence) only
	// after the client's handshake is done: the verdict comes with the
	// first read. An HTTP/2 server answers the preface with SETTINGS.
	if _, err := conn.Write(http2Preface); err != nil {
		return postHandshakeProblem(addr, cfg, flags, rep, err)
	}
	if _, err := io.ReadFull(conn, make([]byte, 9)); err != nil {
		return postHandshakeProblem(addr, cfg, flags, rep, err)
	}
	rep.OK = true
	return rep
}

// http2Preface is the client connection preface and an empty SETTINGS
// frame (RFC 9113 section 3.4).
var http2Preface = append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)

// dialAddr turns a gRPC target into host:port.
func dialAddr(target string) string {
	for _, p := range []string{"dns:///", "passthrough:///", "dns:"} {
		target = strings.TrimPrefix(target, p)
	}
	return target
}

// flagNames name the settings a fix refers to, for the service at hand.
type flagNames struct {
	service, addr, ca, cert, key string
}

func dialProblem(addr string, err error, f flagNames) probeReport {
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return probeReport{
			Problem: fmt.Sprintf("the host in %s does not exist (DNS: %s)", addr, dnsErr.Err),
			Fix:     "check " + f.addr + " for typos; it must be host:port of the " + f.service,
		}
	case errors.Is(err, syscall.ECONNREFUSED):
		return probeReport{
			Transient: true,
			Problem:   fmt.Sprintf("nothing is listening at %s (connection refused): the %s is down or this is the wrong port", addr, f.service),
			Fix:       "start the " + f.service + " (credmatrix-dev for the local stack), or check the port in " + f.addr,
		}
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		return probeReport{
			Transient: true,
			Problem:   fmt.Sprintf("no answer from %s within %s (a firewall, a NetworkPolicy or a host that is down)", addr, probeTimeout),
			Fix:       "check that this machine may reach " + addr + " and that the " + f.service + " runs",
		}
	case strings.Contains(err.Error(), "missing port"):
		return probeReport{Problem: fmt.Sprintf("%q is not host:port", addr), Fix: "set " + f.addr + " to host:port, e.g. broker.example.com:443"}
	}
	return probeReport{Transient: true, Problem: fmt.Sprintf("cannot connect to %s: %v", addr, err), Fix: "check the network path to " + addr}
}

func handshakeProblem(addr string, cfg grpcclient.Config, f flagNames, now func() time.Time, err error) probeReport {
	var (
		rhe      tls.RecordHeaderError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		verify   *tls.CertificateVerificationError
		op       *net.OpError
	)
	switch {
	case errors.As(err, &rhe):
		what := "something that is not TLS"
		fix := "point " + f.addr + " at the " + f.service + "'s TLS port"
		switch h := rhe.RecordHeader[:]; {
		case bytes.HasPrefix(h, []byte("HTTP/")):
			what = "plain HTTP (a web server, an OIDC issuer or a metrics endpoint?)"
		case h[3] == 0x04 && h[4] == 0:
			// An HTTP/2 SETTINGS frame: a gRPC server without TLS.
			what = "gRPC without TLS (a service started with dev_plaintext)"
			fix = "point " + f.addr + " at the TLS port, or, for a loopback development stack started that way, pass --dev-plaintext"
		}
		return probeReport{Problem: fmt.Sprintf("%s is not a TLS port: it answered with %s", addr, what), Fix: fix}
	case errors.As(err, &unknown):
		issuer := "an unknown CA"
		if unknown.Cert != nil {
			issuer = fmt.Sprintf("%q", unknown.Cert.Issuer.String())
		}
		if errors.As(err, &verify) && len(verify.UnverifiedCertificates) > 0 {
			issuer = fmt.Sprintf("%q", verify.UnverifiedCertificates[0].Issuer.String())
		}
		which := "which is not among the system's trusted roots (no " + f.ca + " was given)"
		if cfg.CAFile != "" {
			which = "which " + f.ca + " (" + cfg.CAFile + ") does not contain"
		}
		return probeReport{
			Problem: fmt.Sprintf("the certificate of %s is signed by %s, %s", addr, issuer, which),
			Fix:     "set " + f.ca + " to the CA bundle that signs the " + f.service + "'s certificate (for the local stack: .dev/pki/ca.pem)",
		}
	case errors.As(err, &hostname):
		names := hostname.Certificate.DNSNames
		for _, ip := range hostname.Certificate.IPAddresses {
			names = append(names, ip.String())
		}
		return probeReport{
			Problem: fmt.Sprintf("the certificate of %s is for %s, not for %q", addr, strings.Join(names, ", "), hostname.Host),
			Fix:     "connect by one of the names in the certificate (" + f.addr + ")",
		}
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		c := invalid.Cert
		t := now()
		if t.Before(c.NotBefore) {
			return probeReport{
				Problem: fmt.Sprintf("the certificate of %s is not valid before %s, and this machine's clock says %s", addr, c.NotBefore.UTC().Format(time.RFC3339), t.UTC().Format(time.RFC3339)),
				Fix:     "if the clock is behind, fix it (NTP); otherwise the certificate was issued with a future start",
			}
		}
		return probeReport{
			Problem: fmt.Sprintf("the certificate of %s expired at %s (this machine's clock says %s)", addr, c.NotAfter.UTC().Format(time.RFC3339), t.UTC().Format(time.RFC3339)),
			Fix:     "renew the " + f.service + "'s certificate, or fix this machine's clock if it is ahead",
		}
	case errors.As(err, &op) && op.Op == "remote error":
		return alertProblem(addr, f, op.Err.Error(), cfg)
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
		return probeReport{
			Problem: fmt.Sprintf("%s closed the connection during the TLS handshake: it does not speak TLS 1.3, or it is not a credmatrix service", addr),
			Fix:     "point " + f.addr + " at the " + f.service + "'s TLS port",
		}
	}
	return probeReport{Problem: fmt.Sprintf("TLS handshake with %s failed: %v", addr, err), Fix: "check " + f.addr + " and " + f.ca}
}

// postHandshakeProblem explains an error on the first read or write after
// a completed handshake: how TLS 1.3 servers refuse client certificates.
func postHandshakeProblem(addr string, cfg grpcclient.Config, f flagNames, rep probeReport, err error) probeReport {
	var op *net.OpError
	var p probeReport
	switch {
	case errors.As(err, &op) && op.Op == "remote error":
		p = alertProblem(addr, f, op.Err.Error(), cfg)
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		if rep.ClientCertAsked && !rep.ClientCertSent {
			p = certRequired(addr, f)
		} else {
			p = probeReport{
				Problem: fmt.Sprintf("%s closed the connection right after the TLS handshake", addr),
				Fix:     "check that " + f.addr + " is the " + f.service + "'s gRPC port",
			}
		}
	case errors.Is(err, os.ErrDeadlineExceeded):
		p = probeReport{Problem: fmt.Sprintf("%s completed TLS but sent no HTTP/2 frame: it is not a gRPC server", addr), Fix: "point " + f.addr + " at the " + f.service + "'s gRPC port"}
	default:
		p = probeReport{Problem: fmt.Sprintf("%s: %v", addr, err), Fix: "check " + f.addr}
	}
	p.TLSVersion, p.ServerCert, p.ClientCertAsked, p.ClientCertSent = rep.TLSVersion, rep.ServerCert, rep.ClientCertAsked, rep.ClientCertSent
	return p
}

// alertProblem explains a TLS alert the server sent.
func alertProblem(addr string, f flagNames, alert string, cfg grpcclient.Config) probeReport {
	switch alert {
	case "tls: certificate required":
		return certRequired(addr, f)
	case "tls: bad certificate", "tls: unknown certificate authority", "tls: certificate unknown", "tls: unsupported certificate", "tls: access denied":
		return probeReport{
			Problem: fmt.Sprintf("%s refused the client certificate %s (%s)", addr, cfg.CertFile, strings.TrimPrefix(alert, "tls: ")),
			Fix:     "use a client certificate signed by the CA the " + f.service + " trusts for clients (" + f.cert + ", " + f.key + ")",
		}
	case "tls: expired certificate", "tls: certificate expired":
		return probeReport{
			Problem: fmt.Sprintf("%s says the client certificate %s has expired", addr, cfg.CertFile),
			Fix:     "renew the client certificate (" + f.cert + "), or fix this machine's clock",
		}
	case "tls: protocol version not supported":
		return probeReport{Problem: fmt.Sprintf("%s does not accept TLS 1.3", addr), Fix: "credmatrix services speak TLS 1.3 only: point " + f.addr + " at one"}
	}
	return probeReport{Problem: fmt.Sprintf("%s refused the TLS connection: %s", addr, alert), Fix: "check " + f.addr + ", " + f.ca + " and the client certificate"}
}

func certRequired(addr string, f flagNames) probeReport {
	fix := "set " + f.cert + " and " + f.key + " to a client certificate the " + f.service + " trusts"
	if f.service == "broker" {
		fix = "CI runners and apps: use the broker's public listener (public.listen_addr), which needs only the CA bundle; operators: " + fix
	}
	return probeReport{
		Problem: fmt.Sprintf("%s requires a client certificate (it is a mutual-TLS service port) and none was given", addr),
		Fix:     fix,
	}
}

// probePlaintext checks a --dev-plaintext target: the server should answer
// the HTTP/2 preface with a frame; a TLS server instead waits for a
// ClientHello and drops the connection.
func probePlaintext(ctx context.Context, raw net.Conn, cfg grpcclient.Config, f flagNames) probeReport {
	if _, err := raw.Write(http2Preface); err == nil {
		hdr := make([]byte, 9)
		if _, err := io.ReadFull(raw, hdr); err == nil {
			if bytes.HasPrefix(hdr, []byte("HTTP/")) {
				return probeReport{Problem: fmt.Sprintf("%s is plain HTTP, not gRPC", cfg.Target), Fix: "point " + f.addr + " at the " + f.service + "'s gRPC port"}
			}
			return probeReport{OK: true}
		}
	}
	// Does it speak TLS? Then the flag is the mistake.
	c, err := (&net.Dialer{Timeout: probeTimeout}).DialContext(ctx, "tcp", dialAddr(cfg.Target))
	if err == nil {
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(probeTimeout))
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) //nolint:gosec // only asks whether the port speaks TLS; nothing is sent
		if tc.HandshakeContext(ctx) == nil {
			return probeReport{
				Problem: fmt.Sprintf("%s speaks TLS, but --dev-plaintext connects without it", cfg.Target),
				Fix:     "drop --dev-plaintext (CREDMATRIX_DEV_PLAINTEXT) and set " + f.ca,
			}
		}
	}
	return probeReport{Problem: fmt.Sprintf("%s did not answer as a plaintext gRPC server", cfg.Target), Fix: "check " + f.addr}
}
