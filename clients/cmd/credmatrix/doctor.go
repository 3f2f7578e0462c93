package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
)

// maxClockSkew is the largest difference with a server's clock doctor
// accepts: OIDC verifiers allow about a minute of leeway.
const maxClockSkew = time.Minute

// certWarnAhead: a certificate expiring sooner than this is worth a warning.
const certWarnAhead = 14 * 24 * time.Hour

func (a *app) doctorCommand() *cobra.Command {
	var (
		tf   tokenFlags
		only []string
	)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this machine's credmatrix setup and explain each problem with its fix",
		Long: `doctor checks, in order, what a credmatrix command needs and says what is
wrong and how to fix it:

  configuration  the service addresses, the CA bundle and the client
                 certificate (files, expiry, identity)
  token          the OIDC token source (found, a JWT, not expired, its
                 issuer and audience — never the token itself)
  clock          this machine's clock against the token issuer's
  each service   reachable, TLS (the CA, a client certificate where the
                 port asks for one), the right service at the address,
                 and whether it accepts this caller (the broker: the token,
                 with the roles it may assume; audit: the certificate)

It checks the services whose address is set (flag or environment), or all
three when none is, or those named with --service. It sends no credential
request and changes nothing.

Exit codes: 0 every check passed, 2 a setup problem, 4 only a service that
is down or unreachable (retry later).`,
		Example: `  credmatrix doctor
  credmatrix doctor --service broker          # a CI runner: the broker only`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			svcs, err := a.doctorServices(cmd, only)
			if err != nil {
				return err
			}
			d := &doctor{app: a, ctx: cmd.Context(), now: a.clock()}
			d.configuration(cmd, svcs)
			tok := d.token(&tf)
			d.clock(tok)
			for _, s := range svcs {
				d.service(s, tok)
			}
			return d.report(a.out)
		},
	}
	tf.register(cmd)
	cmd.Flags().StringSliceVar(&only, "service", nil, "check only these services: broker, keyguard, audit (default: those whose address is set, else all)")
	return cmd
}

// clock is the app's clock (time.Now unless a test set one).
func (a *app) clock() func() time.Time {
	if a.now != nil {
		return a.now
	}
	return time.Now
}

// doctorServices picks the services to check.
func (a *app) doctorServices(cmd *cobra.Command, only []string) ([]service, error) {
	if len(only) > 0 {
		var out []service
		for _, name := range only {
			found := false
			for _, s := range allServices {
				if strings.HasPrefix(s.name, strings.ToLower(name)) {
					out, found = append(out, s), true
				}
			}
			if !found {
				return nil, usagef("--service %q: want broker, keyguard or audit", name)
			}
		}
		return out, nil
	}
	var out []service
	for _, s := range allServices {
		if f := cmd.Flags().Lookup(strings.TrimPrefix(s.flag, "--")); (f != nil && f.Changed) || a.getenv(s.envAddr) != "" {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return allServices, nil
	}
	return out, nil
}

// doctor collects the checks' results.
type doctor struct {
	app      *app
	ctx      context.Context
	now      func() time.Time
	sections []*section
	cur      *section
	fails    int // setup problems
	down     int // services down or unreachable
	warns    int
}

type section struct {
	title string
	lines []finding
}

type finding struct {
	status, text, fix string
}

func (d *doctor) section(title string) {
	d.cur = &section{title: title}
	d.sections = append(d.sections, d.cur)
}

func (d *doctor) ok(format string, args ...any) {
	d.cur.lines = append(d.cur.lines, finding{status: "ok", text: fmt.Sprintf(format, args...)})
}

func (d *doctor) info(format string, args ...any) {
	d.cur.lines = append(d.cur.lines, finding{status: "-", text: fmt.Sprintf(format, args...)})
}

func (d *doctor) warn(text, fix string) {
	d.warns++
	d.cur.lines = append(d.cur.lines, finding{status: "warn", text: text, fix: fix})
}

func (d *doctor) fail(text, fix string) {
	d.fails++
	d.cur.lines = append(d.cur.lines, finding{status: "FAIL", text: text, fix: fix})
}

func (d *doctor) unreachable(text, fix string) {
	d.down++
	d.cur.lines = append(d.cur.lines, finding{status: "FAIL", text: text, fix: fix})
}

// report prints every section and returns the exit status.
func (d *doctor) report(w io.Writer) error {
	var b strings.Builder
	for _, s := range d.sections {
		fmt.Fprintf(&b, "%s\n", s.title)
		for _, f := range s.lines {
			fmt.Fprintf(&b, "  %-5s %s\n", f.status, f.text)
			if f.fix != "" {
				fmt.Fprintf(&b, "        fix: %s\n", f.fix)
			}
		}
	}
	switch {
	case d.fails+d.down == 0 && d.warns == 0:
		b.WriteString("\nevery check passed\n")
	case d.fails+d.down == 0:
		fmt.Fprintf(&b, "\nno problem found (%d warning%s)\n", d.warns, plural(d.warns))
	default:
		fmt.Fprintf(&b, "\n%d problem%s found", d.fails+d.down, plural(d.fails+d.down))
		if d.warns > 0 {
			fmt.Fprintf(&b, ", %d warning%s", d.warns, plural(d.warns))
		}
		b.WriteString("\n")
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	switch {
	case d.fails > 0:
		return childExit{code: exitUsage}
	case d.down > 0:
		return childExit{code: exitUnavailable}
	}
	return nil
}

// configuration checks the addresses and the TLS files.
func (d *doctor) configuration(cmd *cobra.Command, svcs []service) {
	a := d.app
	d.section("configuration")
	for _, s := range svcs {
		addr := a.addrOf(s)
		from := "default"
		if f := cmd.Flags().Lookup(strings.TrimPrefix(s.flag, "--")); f != nil && f.Changed {
			from = s.flag
		} else if a.getenv(s.envAddr) != "" {
			from = s.envAddr
		}
		if _, _, err := net.SplitHostPort(dialAddr(addr)); err != nil {
			d.fail(fmt.Sprintf("%s address %q (%s) is not host:port", s.name, addr, from), "set "+s.flag+" ("+s.envAddr+") to host:port")
			continue
		}
		d.ok("%s address %s (%s)", s.name, addr, from)
	}
	if a.devPlaintext {
		d.warn("--dev-plaintext (CREDMATRIX_DEV_PLAINTEXT): connecting without TLS; only loopback development stacks accept this", "")
		return
	}
	if a.caFile == "" {
		d.info("CA bundle: none given; the system's trusted roots verify the services (--ca-file, CREDMATRIX_CA_FILE)")
	} else if certs, err := readCerts(a.caFile); err != nil {
		d.fail(fmt.Sprintf("CA bundle %s: %v", a.caFile, err), "set --ca-file (CREDMATRIX_CA_FILE) to a PEM file of the CA certificates that sign the services' certificates")
	} else {
		var names []string
		for _, c := range certs {
			names = append(names, c.Subject.CommonName)
			d.certExpiry("CA certificate "+c.Subject.CommonName, c)
		}
		d.ok("CA bundle %s: %d certificate%s (%s)", a.caFile, len(certs), plural(len(certs)), strings.Join(names, ", "))
	}
	switch {
	case a.certFile == "" && a.keyFile == "":
		d.info("client certificate: none (enough for the broker's public listener, where the OIDC token is the credential; operators need one for audit and keyguard administration)")
	case a.certFile == "" || a.keyFile == "":
		d.fail("--cert-file and --key-file go together; one is missing", "set both (CREDMATRIX_CERT_FILE, CREDMATRIX_KEY_FILE) or neither")
	default:
		certs, err := readCerts(a.certFile)
		if err != nil {
			d.fail(fmt.Sprintf("client certificate %s: %v", a.certFile, err), "set --cert-file (CREDMATRIX_CERT_FILE) to your PEM certificate")
			return
		}
		c := certs[0]
		if _, err := tls.LoadX509KeyPair(a.certFile, a.keyFile); err != nil {
			d.fail(fmt.Sprintf("client certificate %s and key %s: %v", a.certFile, a.keyFile, err), "the key file must hold the private key of the certificate")
			return
		}
		var ids []string
		for _, u := range c.URIs {
			ids = append(ids, u.String())
		}
		if len(ids) != 1 || !strings.HasPrefix(ids[0], "spiffe://") {
			d.fail(fmt.Sprintf("client certificate %s names %d URI identities %v; the services want exactly one spiffe:// URI", a.certFile, len(ids), ids),
				"ask for a certificate with one SPIFFE ID as its URI SAN (spiffe://<trust-domain>/<path>)")
			return
		}
		d.certExpiry("client certificate", c)
		d.ok("client certificate %s: %s, issued by %s", a.certFile, ids[0], c.Issuer.CommonName)
	}
}

func (a *app) addrOf(s service) string {
	switch s.name {
	case keyguardService.name:
		return a.keyguardAddr
	case auditService.name:
		return a.auditAddr
	}
	return a.brokerAddr
}

func (d *doctor) certExpiry(what string, c *x509.Certificate) {
	now := d.now()
	switch {
	case now.After(c.NotAfter):
		d.fail(fmt.Sprintf("%s expired at %s (this machine's clock says %s)", what, c.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339)),
			"renew it, or fix this machine's clock if it is ahead")
	case now.Before(c.NotBefore):
		d.fail(fmt.Sprintf("%s is not valid before %s (this machine's clock says %s)", what, c.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339)),
			"fix this machine's clock if it is behind (NTP)")
	case c.NotAfter.Sub(now) < certWarnAhead:
		d.warn(fmt.Sprintf("%s expires at %s, in %s", what, c.NotAfter.UTC().Format(time.RFC3339), c.NotAfter.Sub(now).Round(time.Hour)), "renew it soon")
	}
}

func readCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("a certificate does not parse: %v", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate in it")
	}
	return certs, nil
}

// tokenInfo is what doctor learnt about the token (never printed whole).
type tokenInfo struct {
	raw      string
	source   string
	iss, sub string
	aud      []string
	exp, iat time.Time
}

func (d *doctor) token(tf *tokenFlags) *tokenInfo {
	a := d.app
	d.section("token")
	auto := tf.source == "auto" && tf.file == "" && tf.execCmd == ""
	src, err := a.tokenSource(tf)
	if err != nil {
		if auto {
			d.warn("no OIDC token: "+err.Error()+" (creds and serve-credentials need one; the other commands do not)", tokenFix(""))
		} else {
			d.fail(err.Error(), "see credmatrix creds --help for the token sources")
		}
		return nil
	}
	raw, err := src.Token(d.ctx)
	if err != nil {
		text, fix := fmt.Sprintf("no OIDC token from %s: %v", src.Name(), err), tokenFix(src.Name())
		if auto {
			d.warn(text+" (creds and serve-credentials need one; the other commands do not)", fix)
		} else {
			d.fail(text, fix)
		}
		return nil
	}
	t := &tokenInfo{raw: raw, source: src.Name()}
	if err := t.parse(); err != nil {
		d.fail(fmt.Sprintf("the token from %s is not a JWT the broker can read: %v", src.Name(), err), tokenFix(src.Name()))
		return nil
	}
	now := d.now()
	d.ok("source %s: issuer %s, subject %s, audience %s", t.source, t.iss, t.sub, strings.Join(t.aud, ","))
	switch {
	case t.exp.IsZero():
		d.fail("the token has no expiry (exp); the broker refuses it", tokenFix(src.Name()))
	case !now.Before(t.exp):
		d.fail(fmt.Sprintf("the token expired at %s, %s ago", t.exp.UTC().Format(time.RFC3339), now.Sub(t.exp).Round(time.Second)), tokenFix(src.Name()))
	default:
		d.ok("valid until %s (%s left)", t.exp.UTC().Format(time.RFC3339), t.exp.Sub(now).Round(time.Second))
	}
	if tf.audience != "" && !contains(t.aud, tf.audience) && src.Name() == "github-actions" {
		d.warn(fmt.Sprintf("the token's audience %v lacks %q", t.aud, tf.audience), "request the broker's audience (--audience)")
	}
	return t
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func tokenFix(source string) string {
	switch source {
	case "github-actions":
		return "give the job `permissions: id-token: write`; the token is fetched fresh for each call"
	case "gitlab":
		return "declare the job's id_tokens (CREDMATRIX_ID_TOKEN: {aud: credmatrix}); a GitLab ID token lives as long as the job"
	case "file":
		return "check the token file (a Kubernetes projected service-account token is renewed by the kubelet; mount it with the broker's audience)"
	case "exec":
		return "check the --token-exec command: it must print a fresh JWT"
	}
	return "set CREDMATRIX_OIDC_TOKEN (or --token-env, --token-file) to a fresh OIDC token; for the local stack: credmatrix-dev token"
}

// parse reads the claims doctor shows, without verifying the signature
// (the broker does that).
func (t *tokenInfo) parse() error {
	parts := strings.Split(t.raw, ".")
	if len(parts) != 3 {
		return errors.New("want header.payload.signature")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return errors.New("the payload is not base64url")
	}
	var c struct {
		Iss string          `json:"iss"`
		Sub string          `json:"sub"`
		Aud json.RawMessage `json:"aud"`
		Exp json.Number     `json:"exp"`
		Iat json.Number     `json:"iat"`
	}
	dec := json.NewDecoder(strings.NewReader(string(payload)))
	dec.UseNumber()
	if err := dec.Decode(&c); err != nil {
		return errors.New("the payload is not a JSON object")
	}
	t.iss, t.sub = c.Iss, c.Sub
	var one string
	if json.Unmarshal(c.Aud, &one) == nil {
		t.aud = []string{one}
	} else {
		_ = json.Unmarshal(c.Aud, &t.aud)
	}
	if n, err := c.Exp.Float64(); err == nil && n > 0 {
		t.exp = time.Unix(int64(n), 0)
	}
	if n, err := c.Iat.Float64(); err == nil && n > 0 {
		t.iat = time.Unix(int64(n), 0)
	}
	return nil
}

// clock compares this machine's clock with the token issuer's (its HTTP
// Date), and with the token's issue time.
func (d *doctor) clock(t *tokenInfo) {
	d.section("clock")
	now := d.now()
	if t != nil && !t.iat.IsZero() && t.iat.Sub(now) > maxClockSkew {
		d.fail(fmt.Sprintf("the token was issued at %s, %s after this machine's time %s: this machine's clock is behind", t.iat.UTC().Format(time.RFC3339),
			t.iat.Sub(now).Round(time.Second), now.UTC().Format(time.RFC3339)), "fix the clock (NTP): tokens and certificates are checked against it")
		return
	}
	if t == nil || t.iss == "" {
		d.info("no token issuer to compare this machine's clock with")
		return
	}
	u, err := url.Parse(t.iss)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") {
		d.info("the token's issuer %q is not a URL to compare the clock with", t.iss)
		return
	}
	ctx, cancel := context.WithTimeout(d.ctx, probeTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(t.iss, "/")+"/.well-known/openid-configuration", nil)
	sent := d.now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		d.info("could not ask the issuer %s for its time: %v", t.iss, err)
		return
	}
	resp.Body.Close()
	theirs, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		d.info("the issuer %s sends no Date header to compare the clock with", t.iss)
		return
	}
	// The Date header has whole seconds: allow for that and the trip.
	mine := sent.Add(d.now().Sub(sent) / 2).Truncate(time.Second)
	skew := mine.Sub(theirs)
	switch {
	case skew > maxClockSkew:
		d.fail(fmt.Sprintf("this machine's clock is %s ahead of the issuer %s (it says %s, this machine %s)", skew.Round(time.Second), t.iss,
			theirs.UTC().Format(time.RFC3339), mine.UTC().Format(time.RFC3339)), "fix the clock (NTP): tokens look expired and certificates invalid to a clock that is off")
	case skew < -maxClockSkew:
		d.fail(fmt.Sprintf("this machine's clock is %s behind the issuer %s (it says %s, this machine %s)", (-skew).Round(time.Second), t.iss,
			theirs.UTC().Format(time.RFC3339), mine.UTC().Format(time.RFC3339)), "fix the clock (NTP): tokens and certificates look not yet valid to a clock that is behind")
	default:
		d.ok("in step with the issuer %s (within %s)", t.iss, max(skew, -skew).Round(time.Second)+time.Second)
	}
}

// service checks one service end to end.
func (d *doctor) service(s service, t *tokenInfo) {
	a := d.app
	addr := a.addrOf(s)
	d.section(s.name + " at " + addr)
	cfg := a.clientConfig(addr)
	if err := cfg.Validate(); err != nil {
		d.fail(err.Error(), "fix the TLS flags")
		return
	}
	rep := probe(d.ctx, cfg, s.flags(), d.now)
	switch {
	case !rep.OK && rep.Transient:
		d.unreachable(rep.Problem, rep.Fix)
		return
	case !rep.OK:
		d.fail(rep.Problem, rep.Fix)
		return
	}
	if !a.devPlaintext {
		sc := rep.ServerCert
		names := append([]string(nil), sc.DNSNames...)
		for _, ip := range sc.IPAddresses {
			names = append(names, ip.String())
		}
		d.ok("TLS 1.3; its certificate is for %s, issued by %s, valid until %s", strings.Join(names, ", "), sc.Issuer.CommonName, sc.NotAfter.UTC().Format(time.RFC3339))
		d.certExpiry("its certificate", sc)
		switch {
		case rep.ClientCertAsked:
			d.ok("a mutual-TLS port: it asked for a client certificate and accepted %s", a.certFile)
		case s == brokerService:
			d.ok("asks for no client certificate (a public listener: the OIDC token is the credential)")
		case s == keyguardService:
			d.warn("asks for no client certificate: this is keyguard's public listener, for apps with a bearer token; the credmatrix CLI's encrypt, decrypt and keyguard commands use the mutual-TLS service port",
				"set --keyguard-addr (CREDMATRIX_KEYGUARD_ADDR) to keyguard's service port, with a client certificate")
		}
	}
	conn, err := a.dial(addr)
	if err != nil {
		d.fail(err.Error(), "fix the flags")
		return
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(d.ctx, 2*probeTimeout)
	defer cancel()
	hr, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: s.grpc})
	switch {
	case status.Code(err) == codes.NotFound:
		if other := identifyService(ctx, conn); other != "" {
			d.fail(fmt.Sprintf("this address is the %s, not the %s", other, s.name), "set "+s.flag+" ("+s.envAddr+") to the "+s.name+"'s address")
		} else {
			d.fail("this address does not serve "+s.grpc, "set "+s.flag+" ("+s.envAddr+") to the "+s.name+"'s address")
		}
		return
	case status.Code(err) == codes.Unimplemented:
		d.fail("this address answers gRPC but no health checks: it is not a credmatrix service", "set "+s.flag+" ("+s.envAddr+") to the "+s.name+"'s address")
		return
	case err != nil:
		var se *setupError
		if errors.As(err, &se) {
			d.fail(se.problem, se.fix)
		} else {
			d.unreachable(fmt.Sprintf("health check failed: %v", err), "retry; if it persists, look at the "+s.name+"'s log")
		}
		return
	case hr.GetStatus() != healthpb.HealthCheckResponse_SERVING:
		d.unreachable(fmt.Sprintf("it is %s (starting, stopping, or its dependencies are down)", hr.GetStatus()), "retry; if it persists, look at the "+s.name+"'s log")
		return
	}
	d.ok("serves %s (health: SERVING)", s.grpc)
	switch s {
	case brokerService:
		d.brokerAccepts(ctx, conn, t)
	case auditService:
		d.auditAccepts(ctx, conn)
	}
}

// brokerAccepts asks the broker which roles the token may assume: the
// whole token path (issuer, signature, audience, policy) without issuing.
func (d *doctor) brokerAccepts(ctx context.Context, conn *grpc.ClientConn, t *tokenInfo) {
	if t == nil {
		d.info("no token to try (see token above)")
		return
	}
	r, err := brokerv1.NewBrokerServiceClient(conn).ListRoles(ctx, &brokerv1.ListRolesRequest{Token: t.raw})
	switch status.Code(err) {
	case codes.OK:
	case codes.Unauthenticated:
		d.fail(fmt.Sprintf("the broker refuses the token (%s): issuer %s, audience %s", status.Convert(err).Message(), t.iss, strings.Join(t.aud, ",")),
			"the trust policy must list this issuer (issuers[].url) with this audience (issuers[].audiences), and the token must be fresh")
		return
	case codes.Unavailable, codes.ResourceExhausted:
		d.unreachable("the broker could not check the token now: "+status.Convert(err).Message(), "retry later")
		return
	default:
		var se *setupError
		if errors.As(err, &se) {
			d.fail(se.problem, se.fix)
			return
		}
		d.fail("ListRoles failed: "+err.Error(), "look at the broker's log")
		return
	}
	var roles []string
	for _, rs := range r.GetRoles() {
		roles = append(roles, rs.GetRole()+"@"+rs.GetAccountName())
	}
	if len(roles) == 0 {
		d.warn("the broker accepts the token, but it may assume no role", "credmatrix policy test shows which rule matches and why, offline")
		return
	}
	d.ok("accepts the token; it may assume %d role%s: %s", len(roles), plural(len(roles)), strings.Join(roles, ", "))
}

// auditAccepts checks that this certificate may read the log.
func (d *doctor) auditAccepts(ctx context.Context, conn *grpc.ClientConn) {
	r, err := auditv1.NewAuditServiceClient(conn).GetCheckpoint(ctx, &auditv1.GetCheckpointRequest{})
	switch status.Code(err) {
	case codes.OK:
		d.ok("lets this certificate read the log (%d events)", r.GetTreeSize())
	case codes.PermissionDenied, codes.Unauthenticated:
		d.fail("the audit service refuses this certificate: "+status.Convert(err).Message(),
			"use an operator certificate whose SPIFFE ID is in the audit service's read_principals")
	default:
		d.unreachable("GetCheckpoint failed: "+err.Error(), "retry; if it persists, look at the audit service's log")
	}
}
