package devstack_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/devstack"
	"github.com/credmatrix/credmatrix/platform/auditappend"
	"github.com/credmatrix/credmatrix/platform/auditevent"
	"github.com/credmatrix/credmatrix/platform/grpcclient"
	"github.com/credmatrix/credmatrix/platform/grpcserver"
	"github.com/credmatrix/credmatrix/platform/keyfile"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	brokerv1 "github.com/credmatrix/credmatrix/proto/credmatrix/broker/v1"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"
	"github.com/credmatrix/credmatrix/services/broker/devissuer"
)

// The hostile payloads every caller-controlled field gets.
var payloads = []struct{ name, value string }{
	// A real-looking signed JWT: what a CI job might paste by mistake, or
	// an attacker on purpose, to make its own event unrecordable.
	{"jwt", "eyJhbGciOiJSUzI1NiIsImtpZCI6InBvaXNvbiJ9.eyJpc3MiOiJodHRwczovL2V2aWwiLCJzdWIiOiJyZXBvOmV2aWwvYXBwIn0.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmUtc2lnbmF0dXJl"},
	// Four times the normaliser's limit for one string.
	{"oversized", strings.Repeat("A", 4096)},
	// Terminal escapes, a forged log line, a bidi override.
	{"control", "main\x1b[2J\x1b]0;pwned\x07\r\nFAKE audit line\u202etxt"},
	// Not UTF-8. gRPC string fields cannot carry it (the request is sent
	// as raw bytes to show what the server does); JSON claims turn it into
	// U+FFFD before the broker or keyguard see it.
	{"invalid-utf8", "ref-\xff\xfe-end"},
}

// appendGate is an audit-service interceptor: it records the event ids of
// every Append and, once armed, holds the next Append until released, so
// that the events of concurrent callers provably queue in a producer's
// appender and leave together in the following Append.
type appendGate struct {
	mu      sync.Mutex
	appends []recordedAppend
	armed   bool
	entered chan struct{}
	release chan struct{}
}

type recordedAppend struct {
	source string
	ids    []string
}

func (g *appendGate) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	if r, ok := req.(*auditv1.AppendRequest); ok && info.FullMethod == auditv1.AuditService_Append_FullMethodName {
		src, _ := grpcserver.PeerIdentity(ctx)
		rec := recordedAppend{source: src}
		for _, e := range r.GetEvents() {
			rec.ids = append(rec.ids, e.GetId())
		}
		g.mu.Lock()
		g.appends = append(g.appends, rec)
		held := g.armed
		g.armed = false
		entered, release := g.entered, g.release
		g.mu.Unlock()
		if held {
			close(entered)
			<-release
		}
	}
	return next(ctx, req)
}

// arm makes the next Append wait; it returns that Append's index.
func (g *appendGate) arm() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.armed, g.entered, g.release = true, make(chan struct{}), make(chan struct{})
	return len(g.appends)
}

func (g *appendGate) get(i int) recordedAppend {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.appends[i]
}

// poisonRow is one request of the poison table.
type poisonRow struct {
	producer, field, scenario, payload string
	// call makes the request; marker identifies its events.
	call   func(ctx context.Context) error
	marker func(*auditv1.Event) bool
	want   codes.Code
	events int // audited events the request must yield
	// results
	got    codes.Code
	gotEvs []*auditv1.Event
	gotErr string
}

// TestPoisonTable runs every caller-controlled field that reaches an audit
// event, with every hostile payload, through the real stack (mTLS gRPC to
// the broker and keyguard built by their server packages, the real audit
// service on SQLite). For each producer, all its hostile requests and a
// few innocent ones are made while the audit service holds one Append, so
// their events provably leave in one Append request. Each hostile request
// must get its usual answer and exactly the events it always yields (one
// when it is decided, none when it is refused as malformed before any
// decision), no event may hold the raw payload, and every innocent request
// in the same batch must succeed.
//
// With -v the test prints the table (field × payload → outcome).
func TestPoisonTable(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole stack; run without -short")
	}
	ctx := context.Background()
	gate := &appendGate{}
	stack, err := devstack.Start(ctx, devstack.Config{
		StateDir: t.TempDir(), Ports: devstack.EphemeralPorts(), LogLevel: "error",
		AuditOptions: []grpcserver.Option{grpcserver.WithUnaryInterceptors(gate.intercept)},
		// One request in flight: while it is held, every other event queues.
		AuditBatch: &auditappend.Config{MaxEvents: auditappend.MaxEventsPerAppend, MaxInFlight: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	auditAddr, brokerAddr, keyguardAddr := stack.Addrs()
	dial := func(addr string) *grpc.ClientConn {
		conn, err := grpcclient.Dial(stack.PKI().Client("cli", addr))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	brokerConn, keyguardConn, auditConn := dial(brokerAddr), dial(keyguardAddr), dial(auditAddr)
	broker := brokerv1.NewBrokerServiceClient(brokerConn)
	keyguard := keyguardv1.NewKeyguardServiceClient(keyguardConn)
	key, err := keyfile.Read(stack.AuditHMACKeyFile(), auditevent.MinKeyBytes)
	if err != nil {
		t.Fatal(err)
	}
	hasher, err := auditevent.NewHasher(key)
	if err != nil {
		t.Fatal(err)
	}
	brokerAppender, keyguardAppender := stack.AuditAppenders()

	runs := 0
	mint := func(claims map[string]any, aud string) string {
		t.Helper()
		runs++
		c := devissuer.GitHubActionsClaims("acme/app", "refs/heads/main", fmt.Sprint(90000+runs), aud)
		for k, v := range claims {
			c[k] = v
		}
		tok, err := stack.Issuer().Mint(c, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	byToken := func(tok string) func(*auditv1.Event) bool {
		h := hasher.Ref("oidc_token", []byte(tok)).GetHmacSha256()
		return func(e *auditv1.Event) bool {
			return slices.ContainsFunc(e.GetSecretRefs(), func(r *auditv1.SecretRef) bool {
				return r.GetName() == "oidc_token" && bytes.Equal(r.GetHmacSha256(), h)
			})
		}
	}
	byRow := func(id string) func(*auditv1.Event) bool {
		return func(e *auditv1.Event) bool { return e.GetKey().GetEncryptionContext()["row"] == id }
	}
	// bearer mints a keyguard token for sub now (not in the request's
	// goroutine) and returns what adds it to a request.
	bearer := func(sub string) func(context.Context) context.Context {
		tok := mint(map[string]any{"sub": sub}, devstack.KeyguardAudience)
		return func(ctx context.Context) context.Context {
			return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
		}
	}

	// A ciphertext for the denied decryptions.
	sealed, err := keyguard.Encrypt(ctx, &keyguardv1.EncryptRequest{DataClass: "internal", Region: "eu-west-1", Plaintext: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}

	var rows []*poisonRow
	add := func(r *poisonRow) { rows = append(rows, r) }
	for _, p := range payloads {
		invalid := p.name == "invalid-utf8"
		// send makes a gRPC string-field request; invalid UTF-8 goes as raw
		// bytes, since a Go client cannot marshal it.
		send := func(ctx context.Context, conn *grpc.ClientConn, method string, req proto.Message, call func() error) error {
			if !invalid {
				return call()
			}
			return sendRaw(ctx, conn, method, req, p.value)
		}
		field := func(v string) string {
			if invalid {
				return placeholder(p.value)
			}
			return v
		}
		code := func(valid, tooLong codes.Code) codes.Code {
			switch p.name {
			case "invalid-utf8":
				return codes.InvalidArgument // the request does not decode (platform/grpcserver answers for gRPC's codec)
			case "oversized":
				return tooLong
			}
			return valid
		}
		// Requests refused as malformed before any decision are not
		// audited (they never were); every decided request is.
		events := func(c codes.Code) int {
			if c == codes.InvalidArgument || c == codes.Unauthenticated {
				return 0
			}
			return 1
		}

		// broker: request fields (gRPC strings).
		for _, f := range []struct {
			field, scenario string
			valid, tooLong  codes.Code
			target          func(v string) *brokerv1.SessionTarget
			reason          bool
		}{
			{"reason", "allowed issuance", codes.OK, codes.InvalidArgument, nil, true},
			{"targets[0].account", "unknown account: denied", codes.PermissionDenied, codes.InvalidArgument, func(v string) *brokerv1.SessionTarget {
				return &brokerv1.SessionTarget{Role: "deploy", Account: v}
			}, false},
			{"targets[0].role", "unknown role: denied", codes.PermissionDenied, codes.InvalidArgument, func(v string) *brokerv1.SessionTarget {
				return &brokerv1.SessionTarget{Role: v, Account: "sandbox"}
			}, false},
			{"targets[0].region", "malformed region", codes.InvalidArgument, codes.InvalidArgument, func(v string) *brokerv1.SessionTarget {
				return &brokerv1.SessionTarget{Role: "deploy", Account: "sandbox", Region: v}
			}, false},
		} {
			tok := mint(nil, "credmatrix")
			req := &brokerv1.IssueSessionRequest{Token: tok, Targets: []*brokerv1.SessionTarget{{Role: "deploy", Account: "sandbox"}}}
			if f.reason {
				req.Reason = field(p.value)
			} else {
				req.Targets = []*brokerv1.SessionTarget{f.target(field(p.value))}
			}
			want := code(f.valid, f.tooLong)
			add(&poisonRow{producer: "broker", field: f.field, scenario: f.scenario, payload: p.name, want: want, events: events(want), marker: byToken(tok),
				call: func(ctx context.Context) error {
					return send(ctx, brokerConn, brokerv1.BrokerService_IssueSession_FullMethodName, req, func() error {
						_, err := broker.IssueSession(ctx, req)
						return err
					})
				}})
		}
		// broker: claims copied into events (JSON in the token).
		for _, claim := range []string{"sub", "repository", "ref", "sha", "run_id", "workflow", "event_name", "job_workflow_ref", "namespace", "environment"} {
			tok := mint(map[string]any{claim: p.value}, "credmatrix")
			want, scenario := codes.OK, "allowed issuance"
			if claim == "repository" || claim == "ref" {
				want, scenario = codes.PermissionDenied, "no rule matches: denied"
			}
			req := &brokerv1.IssueSessionRequest{Token: tok, Targets: []*brokerv1.SessionTarget{{Role: "deploy", Account: "sandbox"}}}
			add(&poisonRow{producer: "broker", field: "claim " + claim, scenario: scenario, payload: p.name, want: want, events: 1, marker: byToken(tok),
				call: func(ctx context.Context) error {
					_, err := broker.IssueSession(ctx, req)
					return err
				}})
		}

		// keyguard: encryption context (gRPC map).
		for _, f := range []struct {
			field, scenario string
			valid           codes.Code
			nobody          bool // called with a bearer token of a principal without grants
			context         func(id, v string) map[string]string
		}{
			{"encryption_context key", "allowed encrypt", codes.OK, false, func(id, v string) map[string]string { return map[string]string{"row": id, v: "v"} }},
			{"encryption_context value", "allowed encrypt", codes.OK, false, func(id, v string) map[string]string { return map[string]string{"row": id, "k": v} }},
			{"encryption_context value", "decrypt without grant: denied", codes.PermissionDenied, true, func(id, v string) map[string]string { return map[string]string{"row": id, "k": v} }},
		} {
			id := fmt.Sprint("row-", len(rows))
			want := code(f.valid, codes.InvalidArgument)
			r := &poisonRow{producer: "keyguard", field: f.field, scenario: f.scenario, payload: p.name, want: want, events: events(want), marker: byRow(id)}
			ectx := f.context(id, field(p.value))
			if f.nobody {
				req := &keyguardv1.DecryptRequest{Ciphertext: sealed.GetCiphertext(), EncryptionContext: ectx}
				as := bearer("nobody-" + id)
				r.call = func(ctx context.Context) error {
					ctx = as(ctx)
					return send(ctx, keyguardConn, keyguardv1.KeyguardService_Decrypt_FullMethodName, req, func() error {
						_, err := keyguard.Decrypt(ctx, req)
						return err
					})
				}
			} else {
				req := &keyguardv1.EncryptRequest{DataClass: "internal", Region: "eu-west-1", Plaintext: []byte("p"), EncryptionContext: ectx}
				r.call = func(ctx context.Context) error {
					return send(ctx, keyguardConn, keyguardv1.KeyguardService_Encrypt_FullMethodName, req, func() error {
						_, err := keyguard.Encrypt(ctx, req)
						return err
					})
				}
			}
			add(r)
		}
		// keyguard: grant fields, by the administrator and by a caller
		// who is not one (refused before validation: the denial records
		// the grant asked for).
		for _, f := range []struct {
			field, scenario  string
			valid, malformed codes.Code // malformed: the value breaks a grant rule
			admin            bool
			grant            func(id, v string) *keyguardv1.Grant
		}{
			{"grant.principal", "admin creates grant", codes.OK, codes.InvalidArgument, true, func(id, v string) *keyguardv1.Grant {
				return grant(v, "internal", "eu-west-1", map[string]string{"row": id})
			}},
			{"grant.required_context key", "admin creates grant", codes.OK, codes.OK, true, func(id, v string) *keyguardv1.Grant {
				return grant("spiffe://credmatrix.dev/app", "internal", "eu-west-1", map[string]string{"row": id, v: "v"})
			}},
			{"grant.required_context value", "admin creates grant", codes.OK, codes.OK, true, func(id, v string) *keyguardv1.Grant {
				return grant("spiffe://credmatrix.dev/app", "internal", "eu-west-1", map[string]string{"row": id, "k": v})
			}},
			{"grant.principal", "non-admin: denied", codes.PermissionDenied, codes.PermissionDenied, false, func(id, v string) *keyguardv1.Grant {
				return grant(v, "internal", "eu-west-1", map[string]string{"row": id})
			}},
			{"grant.data_class", "non-admin: denied", codes.PermissionDenied, codes.PermissionDenied, false, func(id, v string) *keyguardv1.Grant {
				return grant("spiffe://credmatrix.dev/app", v, "eu-west-1", map[string]string{"row": id})
			}},
			{"grant.regions[0]", "non-admin: denied", codes.PermissionDenied, codes.PermissionDenied, false, func(id, v string) *keyguardv1.Grant {
				return grant("spiffe://credmatrix.dev/app", "internal", v, map[string]string{"row": id})
			}},
			{"grant.required_context value", "non-admin: denied", codes.PermissionDenied, codes.PermissionDenied, false, func(id, v string) *keyguardv1.Grant {
				return grant("spiffe://credmatrix.dev/app", "internal", "eu-west-1", map[string]string{"row": id, "k": v})
			}},
		} {
			id := fmt.Sprint("row-", len(rows))
			want := f.valid
			switch {
			case invalid:
				want = codes.InvalidArgument
			case f.admin && p.name == "oversized":
				want = codes.InvalidArgument // beyond the request's limits
			case p.name == "control":
				want = f.malformed // a grant principal has no spaces or line breaks
			}
			req := &keyguardv1.CreateGrantRequest{Grant: f.grant(id, field(p.value))}
			as := func(ctx context.Context) context.Context { return ctx } // the admin's certificate
			if !f.admin {
				as = bearer("not-an-admin-" + id)
			}
			add(&poisonRow{producer: "keyguard", field: f.field, scenario: f.scenario, payload: p.name, want: want, events: events(want), marker: byRow(id),
				call: func(ctx context.Context) error {
					ctx = as(ctx)
					return send(ctx, keyguardConn, keyguardv1.KeyguardService_CreateGrant_FullMethodName, req, func() error {
						_, err := keyguard.CreateGrant(ctx, req)
						return err
					})
				}})
		}
		// keyguard: the caller's principal, from a bearer token's sub.
		{
			id := fmt.Sprint("row-", len(rows))
			req := &keyguardv1.EncryptRequest{DataClass: "internal", Region: "eu-west-1", Plaintext: []byte("p"), EncryptionContext: map[string]string{"row": id}}
			tok := mint(map[string]any{"sub": p.value}, devstack.KeyguardAudience)
			as := func(ctx context.Context) context.Context {
				return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
			}
			// keyguard takes a sub of at most 512 bytes of printable UTF-8
			// as a principal and refuses other tokens at its edge, where
			// the refusal is audited by the token's HMAC (nothing else of
			// the request is recorded).
			want, marker := codes.PermissionDenied, byRow(id)
			if p.name == "oversized" || p.name == "control" {
				want, marker = codes.Unauthenticated, byToken(tok)
			}
			add(&poisonRow{producer: "keyguard", field: "principal (token sub)", scenario: "no grant: denied", payload: p.name, want: want, events: 1, marker: marker,
				call: func(ctx context.Context) error {
					_, err := keyguard.Encrypt(as(ctx), req)
					return err
				}})
		}
	}

	// Innocent callers, batched with the hostile ones.
	var innocents []*poisonRow
	for i := range 4 {
		tok := mint(nil, "credmatrix")
		innocents = append(innocents, &poisonRow{producer: "broker", field: "innocent", payload: "-", want: codes.OK, events: 1, marker: byToken(tok),
			call: func(ctx context.Context) error {
				_, err := broker.IssueSession(ctx, &brokerv1.IssueSessionRequest{Token: tok, Targets: []*brokerv1.SessionTarget{{Role: "deploy", Account: "sandbox"}}, Reason: "release 1.2"})
				return err
			}})
		id := fmt.Sprint("innocent-", i)
		innocents = append(innocents, &poisonRow{producer: "keyguard", field: "innocent", payload: "-", want: codes.OK, events: 1, marker: byRow(id),
			call: func(ctx context.Context) error {
				_, err := keyguard.Encrypt(ctx, &keyguardv1.EncryptRequest{DataClass: "internal", Region: "eu-west-1", Plaintext: []byte("p"), EncryptionContext: map[string]string{"row": id, "tenant": "acme"}})
				return err
			}})
	}

	// One phase per producer: hold an Append, make every request, wait
	// until all their events wait in the producer's appender, release.
	shared := map[string]recordedAppend{}
	for _, ph := range []struct {
		producer string
		appender *auditappend.Appender
		plug     func(ctx context.Context) error
	}{
		{"broker", brokerAppender, innocents[0].call},
		{"keyguard", keyguardAppender, innocents[1].call},
	} {
		var batch []*poisonRow
		expected := 0
		for _, r := range append(slices.Clone(rows), innocents[2:]...) {
			if r.producer == ph.producer {
				batch = append(batch, r)
				expected += r.events
			}
		}
		held := gate.arm()
		plugErr := make(chan error, 1)
		go func() { plugErr <- ph.plug(ctx) }()
		<-gate.entered
		var wg sync.WaitGroup
		for _, r := range batch {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := r.call(ctx)
				r.got = status.Code(err)
				if err != nil {
					r.gotErr = status.Convert(err).Message()
				}
			}()
		}
		deadline := time.Now().Add(30 * time.Second)
		for ph.appender.Queued() != expected {
			if time.Now().After(deadline) {
				gate.mu.Lock()
				close(gate.release)
				gate.mu.Unlock()
				wg.Wait()
				for _, r := range batch {
					t.Logf("%s %s %s: %v %s", r.producer, r.field, r.payload, r.got, r.gotErr)
				}
				gate.mu.Lock()
				for i, a := range gate.appends {
					t.Logf("append %d from %s: %d events", i, a.source, len(a.ids))
				}
				gate.mu.Unlock()
				t.Fatalf("%s: %d events queued, want %d (one per decided request)", ph.producer, ph.appender.Queued(), expected)
			}
			time.Sleep(time.Millisecond)
		}
		close(gate.release)
		wg.Wait()
		if err := <-plugErr; err != nil {
			t.Fatalf("%s plug request: %v", ph.producer, err)
		}
		shared[ph.producer] = gate.get(held + 1)
	}

	// What the log holds, through the audit service's Query API.
	var all []*auditv1.Event
	audit := auditv1.NewAuditServiceClient(auditConn)
	for page := ""; ; {
		resp, err := audit.Query(ctx, &auditv1.QueryRequest{PageSize: 1000, PageToken: page})
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, resp.GetEvents()...)
		if page = resp.GetNextPageToken(); page == "" {
			break
		}
	}
	// The text of the log: every string of every event.
	var texts []string
	for _, e := range all {
		texts = appendStrings(texts, e.ProtoReflect())
	}
	raw := []byte(strings.Join(texts, "\x00"))
	for _, p := range payloads {
		if p.name != "oversized" && bytes.Contains(raw, []byte(p.value)) {
			t.Errorf("the log holds the raw %s payload", p.name)
		}
	}
	for _, b := range [][]byte{[]byte("\x1b"), []byte("\xff\xfe"), []byte("\u202e"), []byte("\r\nFAKE")} {
		if bytes.Contains(raw, b) {
			t.Errorf("the log holds the raw bytes %q", b)
		}
	}

	var table strings.Builder
	table.WriteString("| producer | field | scenario | payload | answer | events | recorded as |\n|---|---|---|---|---|---|---|\n")
	for _, r := range append(rows, innocents...) {
		for _, e := range all {
			if r.marker(e) {
				r.gotEvs = append(r.gotEvs, e)
			}
		}
		if r.got != r.want || len(r.gotEvs) != r.events {
			t.Errorf("%s %s (%s) %s: answer %v (%s), %d events; want %v, %d events", r.producer, r.field, r.scenario, r.payload, r.got, r.gotErr, len(r.gotEvs), r.want, r.events)
		}
		for _, e := range r.gotEvs {
			if !slices.Contains(shared[r.producer].ids, e.GetId()) && r != innocents[0] && r != innocents[1] {
				t.Errorf("%s %s %s: event %s was not in the shared Append of %s", r.producer, r.field, r.payload, e.GetId(), r.producer)
			}
		}
		if r.field != "innocent" {
			fmt.Fprintf(&table, "| %s | %s | %s | %s | %v | %d | %s |\n", r.producer, r.field, r.scenario, r.payload, r.got, len(r.gotEvs), recordedAs(r.gotEvs))
		}
	}
	for _, producer := range []string{"broker", "keyguard"} {
		ok := 0
		for _, r := range innocents[2:] {
			if r.producer == producer && r.got == codes.OK && len(r.gotEvs) == 1 {
				ok++
			}
		}
		fmt.Fprintf(&table, "\n%s: one Append of %d events carried every decided hostile request and %d innocent ones, which all succeeded: %d\n",
			producer, len(shared[producer].ids), len(innocents)/2-1, ok)
	}
	t.Logf("poison table:\n%s", table.String())
}

// grant is a CreateGrant grant for internal data.
func grant(principal, dataClass, region string, required map[string]string) *keyguardv1.Grant {
	return &keyguardv1.Grant{
		Principal: principal, DataClass: dataClass, Regions: []string{region},
		Operations:      []keyguardv1.Operation{keyguardv1.Operation_OPERATION_ENCRYPT},
		RequiredContext: required, ExpireTime: timestamppb.New(time.Now().Add(time.Hour)),
	}
}

// recordedAs summarises how the normaliser recorded hostile text in evs.
func recordedAs(evs []*auditv1.Event) string {
	if len(evs) == 0 {
		return "—"
	}
	var notes []string
	for _, e := range evs {
		var refs []string
		for _, r := range e.GetSecretRefs() {
			if n := r.GetName(); n != "oidc_token" && n != "session_token" {
				refs = append(refs, n)
			}
		}
		if len(refs) > 0 {
			notes = append(notes, "SecretRef "+strings.Join(refs, ", "))
		}
		text := protojson.Format(e)
		if strings.Contains(text, "…[truncated") {
			notes = append(notes, "cut with …[truncated N bytes]")
		}
		if strings.Contains(text, `\\x1b`) {
			notes = append(notes, `escaped (\x1b, \r\n, \u202e)`)
		}
		if strings.Contains(text, "\ufffd") || strings.Contains(text, `\ufffd`) {
			notes = append(notes, "U+FFFD (from JSON)")
		}
	}
	if len(notes) == 0 {
		return "as sent (nothing hostile reached the event)"
	}
	return strings.Join(notes, "; ")
}

// placeholder stands, in a request marshalled normally, for a payload that
// cannot be marshalled (invalid UTF-8): same length, replaced in the wire
// bytes by sendRaw.
func placeholder(payload string) string { return strings.Repeat("Q", len(payload)) }

// rawCodec sends pre-marshalled bytes as they are.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// sendRaw marshals req, puts payload in place of its placeholder in the
// wire bytes and sends them, as a client that does not check UTF-8 would.
func sendRaw(ctx context.Context, conn *grpc.ClientConn, method string, req proto.Message, payload string) error {
	b, err := proto.Marshal(req)
	if err != nil {
		return err
	}
	ph := []byte(placeholder(payload))
	if bytes.Count(b, ph) != 1 {
		return fmt.Errorf("placeholder not unique in the request")
	}
	b = bytes.Replace(b, ph, []byte(payload), 1)
	var out []byte
	return conn.Invoke(ctx, method, b, &out, grpc.ForceCodec(rawCodec{}))
}

// appendStrings appends every string of m (fields, lists, map keys and
// values, at any depth).
func appendStrings(out []string, m protoreflect.Message) []string {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		one := func(v protoreflect.Value, kind protoreflect.Kind) {
			switch kind {
			case protoreflect.StringKind:
				out = append(out, v.String())
			case protoreflect.MessageKind:
				out = appendStrings(out, v.Message())
			}
		}
		switch {
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				out = append(out, k.String())
				one(mv, fd.MapValue().Kind())
				return true
			})
		case fd.IsList():
			for i := 0; i < v.List().Len(); i++ {
				one(v.List().Get(i), fd.Kind())
			}
		default:
			one(v, fd.Kind())
		}
		return true
	})
	return out
}
