package grpcapi_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"

	"github.com/credmatrix/credmatrix/platform/domainerr"
	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/grpcapi"
	"github.com/credmatrix/credmatrix/services/keyguard/localkms"
)

const (
	app      = "spiffe://credmatrix.dev/app"
	intruder = "spiffe://credmatrix.dev/intruder"
	// callerKey is the metadata key the test identity function reads, in
	// place of the mTLS certificate.
	callerKey = "x-test-caller"
)

// fakeAuditor records events, or fails while down.
type fakeAuditor struct {
	mu     sync.Mutex
	events []*auditv1.Event
	down   bool
}

func (a *fakeAuditor) Append(_ context.Context, ev *auditv1.Event) (*auditv1.AppendResult, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.down {
		return nil, errors.New("audit: connection refused")
	}
	a.events = append(a.events, proto.Clone(ev).(*auditv1.Event))
	return &auditv1.AppendResult{Id: ev.GetId(), Sequence: uint64(len(a.events) - 1)}, nil
}

func (a *fakeAuditor) setDown(down bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.down = down
}

func identityFromMetadata(ctx context.Context) (string, bool) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(callerKey); len(v) == 1 {
		return v[0], true
	}
	return "", false
}

// as returns a context whose requests come from caller.
func as(caller string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), callerKey, caller)
}

// serve starts a Server for svc on an in-memory connection and returns a
// client for it.
func serve(t testing.TB, svc grpcapi.Service, opts ...grpcapi.Option) keyguardv1.KeyguardServiceClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	keyguardv1.RegisterKeyguardServiceServer(srv, grpcapi.New(svc, append([]grpcapi.Option{grpcapi.WithIdentity(identityFromMetadata)}, opts...)...))
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return keyguardv1.NewKeyguardServiceClient(conn)
}

// newStack serves a real keyguard.Service over a local keystore.
func newStack(t *testing.T) (keyguardv1.KeyguardServiceClient, *fakeAuditor) {
	t.Helper()
	kr, err := localkms.Open(filepath.Join(t.TempDir(), "keystore.json"), bytes.Repeat([]byte{3}, 32))
	if err != nil {
		t.Fatal(err)
	}
	if err := kr.EnsureRing(context.Background(), "confidential", "eu-west-1"); err != nil {
		t.Fatal(err)
	}
	a := &fakeAuditor{}
	svc, err := keyguard.New(context.Background(), keyguard.Config{
		Backend: kr, Auditor: a, BackendName: "local",
		Rings: []keyguard.Ring{{DataClass: "confidential", Region: "eu-west-1"}},
		Grants: []keyguard.Grant{{
			Principal: app, DataClass: "confidential", Regions: []string{"eu-west-1"},
			Operations: []keyguard.Operation{keyguard.OpEncrypt, keyguard.OpDecrypt},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, svc), a
}

var encCtx = map[string]string{"tenant": "acme"}

func encryptOK(t *testing.T, c keyguardv1.KeyguardServiceClient) []byte {
	t.Helper()
	resp, err := c.Encrypt(as(app), &keyguardv1.EncryptRequest{
		DataClass: "confidential", Region: "eu-west-1", Plaintext: []byte("hello"), EncryptionContext: encCtx,
	})
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	return resp.GetCiphertext()
}

func TestRoundTrip(t *testing.T) {
	c, _ := newStack(t)
	enc, err := c.Encrypt(as(app), &keyguardv1.EncryptRequest{
		DataClass: "confidential", Region: "eu-west-1", Plaintext: []byte("hello"), EncryptionContext: encCtx,
	})
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	wantKey := &keyguardv1.KeyRef{DataClass: "confidential", Region: "eu-west-1", Version: 1}
	if diff := cmp.Diff(enc.GetKey(), wantKey, protocmp.Transform()); diff != "" {
		t.Errorf("Encrypt key (-got +want):\n%s", diff)
	}
	dec, err := c.Decrypt(as(app), &keyguardv1.DecryptRequest{Ciphertext: enc.GetCiphertext(), EncryptionContext: encCtx})
	if err != nil {
		t.Fatalf("Decrypt: %v", err)
	}
	want := &keyguardv1.DecryptResponse{Plaintext: []byte("hello"), Key: wantKey, AuditSequence: 1}
	if diff := cmp.Diff(dec, want, protocmp.Transform()); diff != "" {
		t.Errorf("Decrypt (-got +want):\n%s", diff)
	}
}

func TestInvalidArgument(t *testing.T) {
	c, _ := newStack(t)
	ct := encryptOK(t, c)
	manyPairs := map[string]string{}
	for i := range 17 {
		manyPairs[fmt.Sprintf("k%d", i)] = "v"
	}
	set := func(i int, v byte) []byte { b := bytes.Clone(ct); b[i] = v; return b }
	enc := func(req *keyguardv1.EncryptRequest) func() error {
		return func() error { _, err := c.Encrypt(as(app), req); return err }
	}
	dec := func(req *keyguardv1.DecryptRequest) func() error {
		return func() error { _, err := c.Decrypt(as(app), req); return err }
	}
	tests := []struct {
		name      string
		call      func() error
		wantField string
	}{
		{"invalid/empty-data-class", enc(&keyguardv1.EncryptRequest{Region: "eu-west-1"}), "data_class: required"},
		{"invalid/bad-data-class", enc(&keyguardv1.EncryptRequest{DataClass: "Top_Secret", Region: "eu-west-1"}), "data_class: must match"},
		{"invalid/empty-region", enc(&keyguardv1.EncryptRequest{DataClass: "confidential"}), "region: required"},
		{"invalid/oversized-plaintext", enc(&keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1", Plaintext: make([]byte, 64<<10+1)}), "plaintext: exceeds 65536 bytes"},
		{"invalid/too-many-context-pairs", enc(&keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1", EncryptionContext: manyPairs}), "encryption_context: at most 16 pairs"},
		{"invalid/reserved-context-key", enc(&keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1", EncryptionContext: map[string]string{"credmatrix:x": "1"}}), `encryption_context["credmatrix:x"]: reserved prefix`},
		{"invalid/long-context-value", enc(&keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1", EncryptionContext: map[string]string{"k": strings.Repeat("v", 257)}}), `encryption_context["k"]: value exceeds 256 bytes`},
		{"invalid/empty-ciphertext", dec(&keyguardv1.DecryptRequest{}), "ciphertext: required"},
		{"invalid/oversized-ciphertext", dec(&keyguardv1.DecryptRequest{Ciphertext: make([]byte, keyguard.MaxCiphertextSize+1)}), "ciphertext: exceeds"},
		{"invalid/garbage-ciphertext", dec(&keyguardv1.DecryptRequest{Ciphertext: []byte("garbage garbage garbage")}), "ciphertext: envelope: malformed: bad magic"},
		{"invalid/truncated-header", dec(&keyguardv1.DecryptRequest{Ciphertext: ct[:30]}), "ciphertext: envelope: malformed: truncated"},
		{"invalid/unknown-version", dec(&keyguardv1.DecryptRequest{Ciphertext: set(4, 2)}), "ciphertext: envelope: unsupported version: format version 2"},
		{"invalid/unknown-suite", dec(&keyguardv1.DecryptRequest{Ciphertext: set(5, 9)}), "ciphertext: envelope: unsupported version: algorithm suite 9"},
		{"invalid/wrong-context", dec(&keyguardv1.DecryptRequest{Ciphertext: ct, EncryptionContext: map[string]string{"tenant": "other"}}), "ciphertext: authentication failed"},
		{"invalid/tampered-ciphertext", dec(&keyguardv1.DecryptRequest{Ciphertext: set(len(ct)-1, ct[len(ct)-1]^1), EncryptionContext: encCtx}), "ciphertext: authentication failed"},
		{"invalid/batch-no-items", func() error { _, err := c.BatchEncrypt(as(app), &keyguardv1.BatchEncryptRequest{}); return err }, "items: required"},
		{"invalid/batch-too-many-items", func() error {
			items := make([]*keyguardv1.EncryptRequest, 101)
			for i := range items {
				items[i] = &keyguardv1.EncryptRequest{}
			}
			_, err := c.BatchEncrypt(as(app), &keyguardv1.BatchEncryptRequest{Items: items})
			return err
		}, "items: at most 100"},
		{"invalid/batch-too-large", func() error {
			items := make([]*keyguardv1.DecryptRequest, 20)
			for i := range items {
				items[i] = &keyguardv1.DecryptRequest{Ciphertext: make([]byte, 60<<10)}
			}
			_, err := c.BatchDecrypt(as(app), &keyguardv1.BatchDecryptRequest{Items: items})
			return err
		}, "items: exceed 1048576 bytes in total"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := status.Convert(tc.call())
			if st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), tc.wantField) {
				t.Fatalf("status %v %q, want InvalidArgument starting %q", st.Code(), st.Message(), tc.wantField)
			}
		})
	}
}

func TestStatusCodes(t *testing.T) {
	c, a := newStack(t)
	ct := encryptOK(t, c)
	tests := []struct {
		name     string
		call     func() error
		wantCode codes.Code
		wantMsg  string
	}{
		{"unauthenticated/encrypt", func() error {
			_, err := c.Encrypt(context.Background(), &keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1"})
			return err
		}, codes.Unauthenticated, "caller identity required"},
		{"unauthenticated/batch-decrypt", func() error {
			_, err := c.BatchDecrypt(context.Background(), &keyguardv1.BatchDecryptRequest{Items: []*keyguardv1.DecryptRequest{{Ciphertext: ct}}})
			return err
		}, codes.Unauthenticated, "caller identity required"},
		{"deny/encrypt", func() error {
			_, err := c.Encrypt(as(intruder), &keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1"})
			return err
		}, codes.PermissionDenied, "no grant allows " + intruder + " to encrypt data class confidential in region eu-west-1"},
		{"deny/decrypt", func() error {
			_, err := c.Decrypt(as(intruder), &keyguardv1.DecryptRequest{Ciphertext: ct, EncryptionContext: encCtx})
			return err
		}, codes.PermissionDenied, "no grant allows " + intruder + " to decrypt data class confidential in region eu-west-1"},
		{"not-found/ring", func() error {
			_, err := c.Encrypt(as(app), &keyguardv1.EncryptRequest{DataClass: "confidential", Region: "us-east-1"})
			return err
		}, codes.NotFound, "no key ring for data class confidential in region us-east-1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := status.Convert(tc.call())
			if st.Code() != tc.wantCode || st.Message() != tc.wantMsg {
				t.Fatalf("status %v %q, want %v %q", st.Code(), st.Message(), tc.wantCode, tc.wantMsg)
			}
		})
	}

	t.Run("unavailable/audit-down", func(t *testing.T) {
		a.setDown(true)
		defer a.setDown(false)
		resp, err := c.Decrypt(as(app), &keyguardv1.DecryptRequest{Ciphertext: ct, EncryptionContext: encCtx})
		st := status.Convert(err)
		if st.Code() != codes.Unavailable || st.Message() != "audit log unavailable; operation not performed" {
			t.Fatalf("status %v %q, want Unavailable", st.Code(), st.Message())
		}
		if resp != nil {
			t.Fatalf("response with audit down: %v", resp)
		}
	})
}

func TestBatch(t *testing.T) {
	c, _ := newStack(t)
	enc, err := c.BatchEncrypt(as(app), &keyguardv1.BatchEncryptRequest{Items: []*keyguardv1.EncryptRequest{
		{DataClass: "confidential", Region: "eu-west-1", Plaintext: []byte("one"), EncryptionContext: encCtx},
		{DataClass: "", Region: "eu-west-1"},
		{DataClass: "confidential", Region: "us-east-1"},
		{DataClass: "confidential", Region: "eu-west-1", Plaintext: []byte("two")},
	}})
	if err != nil {
		t.Fatalf("BatchEncrypt: %v", err)
	}
	var got []string
	for _, r := range enc.GetResults() {
		if e := r.GetError(); e != nil {
			got = append(got, fmt.Sprintf("error %d %s", e.GetCode(), e.GetMessage()))
			continue
		}
		got = append(got, fmt.Sprintf("ok v%d", r.GetResponse().GetKey().GetVersion()))
	}
	want := []string{"ok v1", "error 3 data_class: required", "error 5 no key ring for data class confidential in region us-east-1", "ok v1"}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Fatalf("BatchEncrypt results (-got +want):\n%s", diff)
	}

	dec, err := c.BatchDecrypt(as(app), &keyguardv1.BatchDecryptRequest{Items: []*keyguardv1.DecryptRequest{
		{Ciphertext: enc.GetResults()[3].GetResponse().GetCiphertext()},
		{Ciphertext: enc.GetResults()[0].GetResponse().GetCiphertext()},
		{Ciphertext: enc.GetResults()[0].GetResponse().GetCiphertext(), EncryptionContext: encCtx},
	}})
	if err != nil {
		t.Fatalf("BatchDecrypt: %v", err)
	}
	got = nil
	for _, r := range dec.GetResults() {
		if e := r.GetError(); e != nil {
			got = append(got, fmt.Sprintf("error %d %s", e.GetCode(), e.GetMessage()))
			continue
		}
		got = append(got, "ok "+string(r.GetResponse().GetPlaintext()))
	}
	want = []string{"ok two", "error 3 ciphertext: authentication failed (wrong encryption context or tampered data)", "ok one"}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Fatalf("BatchDecrypt results (-got +want):\n%s", diff)
	}
}

// stubService returns a fixed error from Encrypt and Decrypt; the other
// methods are not called by the tests that use it.
type stubService struct {
	grpcapi.Service
	err error
}

func (s stubService) Encrypt(context.Context, string, keyguard.EncryptInput) (keyguard.EncryptOutput, error) {
	return keyguard.EncryptOutput{}, s.err
}

func (s stubService) Decrypt(context.Context, string, keyguard.DecryptInput) (keyguard.DecryptOutput, error) {
	return keyguard.DecryptOutput{}, s.err
}

func TestErrorMapping(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		wantCode codes.Code
		wantMsg  string
		wantLog  bool
	}{
		{"invalid", &domainerr.Error{Code: domainerr.Invalid, Message: "region: required"}, codes.InvalidArgument, "region: required", false},
		{"not-found", &domainerr.Error{Code: domainerr.NotFound, Message: "no ring"}, codes.NotFound, "no ring", false},
		{"permission-denied", &domainerr.Error{Code: domainerr.PermissionDenied, Message: "no grant"}, codes.PermissionDenied, "no grant", false},
		{"unavailable", fmt.Errorf("wrapped: %w", &domainerr.Error{Code: domainerr.Unavailable, Message: "audit down", Err: errors.New("dial 10.0.0.7")}), codes.Unavailable, "audit down", true},
		{"internal-domain", &domainerr.Error{Code: domainerr.Internal, Message: "bad config detail", Err: errors.New("cause")}, codes.Internal, "internal error", true},
		{"internal-unknown", errors.New("kms: AccessDeniedException arn:aws:kms:secret"), codes.Internal, "internal error", true},
		{"unknown-code", &domainerr.Error{Code: "weird", Message: "do not show"}, codes.Internal, "internal error", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			c := serve(t, stubService{err: tc.err}, grpcapi.WithLogger(hclog.New(&hclog.LoggerOptions{Output: &logs})))
			_, err := c.Encrypt(as(app), &keyguardv1.EncryptRequest{})
			st := status.Convert(err)
			if st.Code() != tc.wantCode || st.Message() != tc.wantMsg {
				t.Fatalf("status %v %q, want %v %q", st.Code(), st.Message(), tc.wantCode, tc.wantMsg)
			}
			if logged := strings.Contains(logs.String(), tc.err.Error()); logged != tc.wantLog {
				t.Errorf("cause logged = %v, want %v; log: %s", logged, tc.wantLog, logs.String())
			}
		})
	}
}
