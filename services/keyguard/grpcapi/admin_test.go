package grpcapi_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	keyguardv1 "github.com/credmatrix/credmatrix/proto/credmatrix/keyguard/v1"

	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/grpcapi"
	"github.com/credmatrix/credmatrix/services/keyguard/localkms"
)

const admin = "spiffe://credmatrix.dev/admin"

// newAdminStack serves a Service with an administrator and rings in two
// regions; extra options (such as WithBearer) go to the API server.
func newAdminStack(t *testing.T, opts ...grpcapi.Option) keyguardv1.KeyguardServiceClient {
	t.Helper()
	kr, err := localkms.Open(filepath.Join(t.TempDir(), "keystore.json"), bytes.Repeat([]byte{3}, 32))
	if err != nil {
		t.Fatal(err)
	}
	rings := []keyguard.Ring{{DataClass: "confidential", Region: "eu-west-1"}, {DataClass: "confidential", Region: "us-east-1"}}
	for _, r := range rings {
		if err := kr.EnsureRing(context.Background(), r.DataClass, r.Region); err != nil {
			t.Fatal(err)
		}
	}
	svc, err := keyguard.New(context.Background(), keyguard.Config{
		Backend: kr, Auditor: &fakeAuditor{}, BackendName: "local", Rings: rings, Admins: []string{admin},
	})
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, svc, opts...)
}

// TestLifecycleOverGRPC drives grants, data keys, rotation, rewrap,
// retirement and describe through the API.
func TestLifecycleOverGRPC(t *testing.T) {
	c := newAdminStack(t)
	ops := []keyguardv1.Operation{keyguardv1.Operation_OPERATION_ENCRYPT, keyguardv1.Operation_OPERATION_DECRYPT, keyguardv1.Operation_OPERATION_GENERATE_DATA_KEY, keyguardv1.Operation_OPERATION_REWRAP, keyguardv1.Operation_OPERATION_DESCRIBE}
	g, err := c.CreateGrant(as(admin), &keyguardv1.CreateGrantRequest{Grant: &keyguardv1.Grant{
		Principal: app, DataClass: "confidential", Operations: ops, Regions: []string{"eu-west-1"},
		RequiredContext: map[string]string{"tenant": "acme"}, ExpireTime: timestamppb.New(time.Now().Add(time.Hour)),
	}})
	if err != nil {
		t.Fatalf("CreateGrant: %v", err)
	}
	enc := encryptOK(t, c)
	dk, err := c.GenerateDataKey(as(app), &keyguardv1.GenerateDataKeyRequest{DataClass: "confidential", Region: "eu-west-1", EncryptionContext: encCtx})
	if err != nil || len(dk.GetPlaintextDataKey()) != 32 {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	rot, err := c.RotateKey(as(admin), &keyguardv1.RotateKeyRequest{DataClass: "confidential", Region: "eu-west-1", Reason: "test"})
	if err != nil || rot.GetKey().GetVersion() != 2 {
		t.Fatalf("RotateKey: %v %v", rot, err)
	}
	rw, err := c.Rewrap(as(app), &keyguardv1.RewrapRequest{Ciphertext: enc, EncryptionContext: encCtx})
	if err != nil || rw.GetFromKey().GetVersion() != 1 || rw.GetToKey().GetVersion() != 2 {
		t.Fatalf("Rewrap: %v %v", rw, err)
	}
	if _, err := c.SetMinDecryptVersion(as(admin), &keyguardv1.SetMinDecryptVersionRequest{DataClass: "confidential", Region: "eu-west-1", MinDecryptVersion: 2}); err != nil {
		t.Fatalf("SetMinDecryptVersion: %v", err)
	}
	if _, err := c.Decrypt(as(app), &keyguardv1.DecryptRequest{Ciphertext: enc, EncryptionContext: encCtx}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Decrypt of a retired version: %v, want FailedPrecondition", err)
	}
	if _, err := c.Decrypt(as(app), &keyguardv1.DecryptRequest{Ciphertext: rw.GetCiphertext(), EncryptionContext: encCtx}); err != nil {
		t.Fatalf("Decrypt of the rewrapped envelope: %v", err)
	}
	d, err := c.DescribeKeyRing(as(app), &keyguardv1.DescribeKeyRingRequest{DataClass: "confidential", Region: "eu-west-1"})
	if err != nil || d.GetPrimaryVersion() != 2 || d.GetMinDecryptVersion() != 2 || len(d.GetVersions()) != 2 ||
		d.GetVersions()[0].GetState() != keyguardv1.KeyVersionState_KEY_VERSION_STATE_PRIMARY || d.GetVersions()[1].GetState() != keyguardv1.KeyVersionState_KEY_VERSION_STATE_RETIRED {
		t.Fatalf("DescribeKeyRing: %v %v", d, err)
	}
	list, err := c.ListGrants(as(admin), &keyguardv1.ListGrantsRequest{Principal: app})
	if err != nil || len(list.GetGrants()) != 1 || list.GetGrants()[0].GetGrantId() != g.GetGrant().GetGrantId() || len(list.GetGrants()[0].GetOperations()) != len(ops) {
		t.Fatalf("ListGrants: %v %v", list, err)
	}
	if _, err := c.RevokeGrant(as(admin), &keyguardv1.RevokeGrantRequest{GrantId: g.GetGrant().GetGrantId()}); err != nil {
		t.Fatalf("RevokeGrant: %v", err)
	}
	if _, err := c.Encrypt(as(app), &keyguardv1.EncryptRequest{DataClass: "confidential", Region: "eu-west-1", EncryptionContext: encCtx}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Encrypt after revocation: %v, want PermissionDenied", err)
	}
}

func TestAdminStatus(t *testing.T) {
	c := newAdminStack(t)
	future := timestamppb.New(time.Now().Add(time.Hour))
	tests := []struct {
		name     string
		call     func() error
		wantCode codes.Code
		wantMsg  string
	}{
		{"deny/rotate-not-admin", func() error {
			_, err := c.RotateKey(as(app), &keyguardv1.RotateKeyRequest{DataClass: "confidential", Region: "eu-west-1"})
			return err
		}, codes.PermissionDenied, app + " is not a keyguard administrator"},
		{"invalid/create-grant-nil", func() error { _, err := c.CreateGrant(as(admin), &keyguardv1.CreateGrantRequest{}); return err }, codes.InvalidArgument, "grant: required"},
		{"invalid/create-grant-operation", func() error {
			_, err := c.CreateGrant(as(admin), &keyguardv1.CreateGrantRequest{Grant: &keyguardv1.Grant{Principal: app, DataClass: "confidential", Operations: []keyguardv1.Operation{99}, Regions: []string{"eu-west-1"}, ExpireTime: future}})
			return err
		}, codes.InvalidArgument, "grant.operations[0]: unknown operation 99"},
		{"invalid/create-grant-expire", func() error {
			_, err := c.CreateGrant(as(admin), &keyguardv1.CreateGrantRequest{Grant: &keyguardv1.Grant{Principal: app, DataClass: "confidential", Operations: []keyguardv1.Operation{1}, Regions: []string{"eu-west-1"}}})
			return err
		}, codes.InvalidArgument, "grant.expire_time: required (grants always expire)"},
		{"invalid/revoke-empty", func() error { _, err := c.RevokeGrant(as(admin), &keyguardv1.RevokeGrantRequest{}); return err }, codes.InvalidArgument, "grant_id: required"},
		{"not-found/revoke", func() error {
			_, err := c.RevokeGrant(as(admin), &keyguardv1.RevokeGrantRequest{GrantId: "g-0"})
			return err
		}, codes.NotFound, `grant "g-0" not found`},
		{"not-found/describe", func() error {
			_, err := c.DescribeKeyRing(as(admin), &keyguardv1.DescribeKeyRingRequest{DataClass: "restricted", Region: "eu-west-1"})
			return err
		}, codes.NotFound, "no key ring for data class restricted in region eu-west-1"},
		{"invalid/describe-region", func() error {
			_, err := c.DescribeKeyRing(as(admin), &keyguardv1.DescribeKeyRingRequest{DataClass: "confidential"})
			return err
		}, codes.InvalidArgument, "region: required"},
		{"invalid/list-page-size", func() error {
			_, err := c.ListGrants(as(admin), &keyguardv1.ListGrantsRequest{PageSize: 5000})
			return err
		}, codes.InvalidArgument, "page_size: must be 0 to 1000"},
		{"invalid/list-page-token", func() error {
			_, err := c.ListGrants(as(admin), &keyguardv1.ListGrantsRequest{PageToken: "!!"})
			return err
		}, codes.InvalidArgument, "page_token: not a token from ListGrants"},
		{"invalid/min-version", func() error {
			_, err := c.SetMinDecryptVersion(as(admin), &keyguardv1.SetMinDecryptVersionRequest{DataClass: "confidential", Region: "eu-west-1", MinDecryptVersion: 7})
			return err
		}, codes.InvalidArgument, "min_decrypt_version: must be 1 to the primary version 1"},
		{"unauthenticated/no-identity", func() error {
			_, err := c.DescribeKeyRing(context.Background(), &keyguardv1.DescribeKeyRingRequest{DataClass: "confidential", Region: "eu-west-1"})
			return err
		}, codes.Unauthenticated, "caller identity required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := status.Convert(tc.call())
			if st.Code() != tc.wantCode || st.Message() != tc.wantMsg {
				t.Fatalf("status %v %q, want %v %q", st.Code(), st.Message(), tc.wantCode, tc.wantMsg)
			}
		})
	}
}

// TestBearer: a bearer token identifies the caller on its own; a bad one is
// Unauthenticated, never a fall back to the certificate identity.
func TestBearer(t *testing.T) {
	verify := func(_ context.Context, tok string) (string, error) {
		if tok == "good" {
			return admin, nil
		}
		return "", errors.New("bad signature")
	}
	withToken := func(ctx context.Context, vals ...string) context.Context {
		for _, v := range vals {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", v)
		}
		return ctx
	}
	describe := &keyguardv1.DescribeKeyRingRequest{DataClass: "confidential", Region: "eu-west-1"}
	c := newAdminStack(t, grpcapi.WithBearer(verify))
	noBearer := newAdminStack(t)
	tests := []struct {
		name     string
		client   keyguardv1.KeyguardServiceClient
		ctx      context.Context
		wantCode codes.Code
		wantMsg  string
	}{
		{"allow/token-only", c, withToken(context.Background(), "Bearer good"), codes.OK, ""},
		{"allow/token-beats-cert", c, withToken(as(app), "Bearer good"), codes.OK, ""},
		{"deny/bad-token-no-fallback", c, withToken(as(admin), "Bearer forged"), codes.Unauthenticated, "invalid bearer token"},
		{"deny/not-bearer", c, withToken(as(admin), "Basic Zm9vOmJhcg=="), codes.Unauthenticated, `authorization: want one "Bearer <token>"`},
		{"deny/two-headers", c, withToken(context.Background(), "Bearer good", "Bearer good"), codes.Unauthenticated, `authorization: want one "Bearer <token>"`},
		{"deny/bearer-not-configured", noBearer, withToken(as(admin), "Bearer good"), codes.Unauthenticated, "authorization: bearer tokens are not accepted by this keyguard"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.client.DescribeKeyRing(tc.ctx, describe)
			st := status.Convert(err)
			if st.Code() != tc.wantCode || (tc.wantMsg != "" && st.Message() != tc.wantMsg) {
				t.Fatalf("status %v %q, want %v %q", st.Code(), st.Message(), tc.wantCode, tc.wantMsg)
			}
		})
	}
}
