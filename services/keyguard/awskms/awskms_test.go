package awskms_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/awskms"
	"github.com/credmatrix/credmatrix/services/keyguard/awskms/kmstest"
	"github.com/credmatrix/credmatrix/services/keyguard/backendtest"
)

func startLocalKMS(t *testing.T, region string) *kms.Client {
	_, c := kmstest.Start(t, region)
	return c
}

func createKey(t *testing.T, c *kms.Client, alias string) string {
	return kmstest.CreateKey(t, c, alias)
}

func aliasFor(r keyguard.Ring) string { return "alias/credmatrix-" + r.DataClass + "-" + r.Region }

// kmsPerRegion starts one local-kms per region of rings.
func kmsPerRegion(t *testing.T, rings ...keyguard.Ring) map[string]*kms.Client {
	t.Helper()
	clients := map[string]*kms.Client{}
	for _, r := range rings {
		if clients[r.Region] == nil {
			clients[r.Region] = startLocalKMS(t, r.Region)
		}
		createKey(t, clients[r.Region], aliasFor(r))
	}
	return clients
}

func open(t *testing.T, path string, clients map[string]*kms.Client, rings ...keyguard.Ring) *awskms.Backend {
	t.Helper()
	var rks []awskms.RingKey
	api := map[string]awskms.KMS{}
	for region, c := range clients {
		api[region] = c
	}
	for _, r := range rings {
		rks = append(rks, awskms.RingKey{Ring: r, KeyID: aliasFor(r)})
	}
	b, err := awskms.Open(context.Background(), path, rks, api)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return b
}

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T, rings ...keyguard.Ring) keyguard.KeyBackend {
		clients := kmsPerRegion(t, rings...)
		return open(t, filepath.Join(t.TempDir(), "versions.json"), clients, rings...)
	})
}

// TestRotateToNewKey: pointing the alias at a new KMS key and rotating
// makes a version under the new key; the old version still unwraps under
// the old key, and versions survive a restart.
func TestRotateToNewKey(t *testing.T) {
	ctx := context.Background()
	ring := keyguard.Ring{DataClass: "restricted", Region: "eu-central-1"}
	clients := kmsPerRegion(t, ring)
	path := filepath.Join(t.TempDir(), "versions.json")
	b := open(t, path, clients, ring)
	dk := bytes.Repeat([]byte{3}, 32)
	w1, err := b.Wrap(ctx, ring.DataClass, ring.Region, 1, dk)
	if err != nil {
		t.Fatal(err)
	}
	c := clients[ring.Region]
	out, err := c.CreateKey(ctx, &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String(aliasFor(ring)), TargetKeyId: out.KeyMetadata.KeyId}); err != nil {
		t.Fatal(err)
	}
	v, err := b.Rotate(ctx, ring.DataClass, ring.Region)
	if err != nil || v != 2 {
		t.Fatalf("Rotate: %d %v", v, err)
	}
	b2 := open(t, path, clients, ring)
	vs, err := b2.Versions(ctx, ring.DataClass, ring.Region)
	if err != nil || len(vs) != 2 || vs[1].BackendKey != *out.KeyMetadata.Arn || vs[0].BackendKey == vs[1].BackendKey {
		t.Fatalf("Versions after restart: %+v %v", vs, err)
	}
	got, err := b2.Unwrap(ctx, ring.DataClass, ring.Region, 1, w1)
	if err != nil || !bytes.Equal(got, dk) {
		t.Fatalf("Unwrap of version 1 after rotation: %v", err)
	}
	if _, err := b2.Unwrap(ctx, ring.DataClass, ring.Region, 2, w1); !errors.Is(err, keyguard.ErrUnwrap) {
		t.Fatalf("Unwrap of a version-1 key as version 2: %v, want ErrUnwrap", err)
	}
}

// TestKMSDown: with KMS unreachable, every operation fails with
// ErrBackendUnavailable; nothing falls back to anything local.
func TestKMSDown(t *testing.T) {
	ctx := context.Background()
	ring := keyguard.Ring{DataClass: "confidential", Region: "eu-west-1"}
	clients := kmsPerRegion(t, ring)
	b := open(t, filepath.Join(t.TempDir(), "versions.json"), clients, ring)
	dk := bytes.Repeat([]byte{3}, 32)
	w, err := b.Wrap(ctx, ring.DataClass, ring.Region, 1, dk)
	if err != nil {
		t.Fatal(err)
	}
	// A client for a port nobody listens on stands for KMS being down.
	down := kms.New(kms.Options{Region: ring.Region, BaseEndpoint: aws.String("http://127.0.0.1:1"),
		Credentials: credentials.NewStaticCredentialsProvider("AKID", "secret", ""), RetryMaxAttempts: 1})
	downBackend, err := awskms.Open(ctx, filepath.Join(t.TempDir(), "v.json"), []awskms.RingKey{{Ring: ring, KeyID: aliasFor(ring)}}, map[string]awskms.KMS{ring.Region: down})
	if !errors.Is(err, keyguard.ErrBackendUnavailable) || downBackend != nil {
		t.Fatalf("Open with KMS down: %v, want ErrBackendUnavailable", err)
	}
	// An open backend whose KMS goes away.
	flaky := &switchable{KMS: clients[ring.Region]}
	fb, err := awskms.Open(ctx, filepath.Join(t.TempDir(), "f.json"), []awskms.RingKey{{Ring: ring, KeyID: aliasFor(ring)}}, map[string]awskms.KMS{ring.Region: flaky})
	if err != nil {
		t.Fatal(err)
	}
	flaky.KMS = down
	for name, call := range map[string]func() error{
		"wrap":   func() error { _, err := fb.Wrap(ctx, ring.DataClass, ring.Region, 1, dk); return err },
		"unwrap": func() error { _, err := fb.Unwrap(ctx, ring.DataClass, ring.Region, 1, w); return err },
		"rotate": func() error { _, err := fb.Rotate(ctx, ring.DataClass, ring.Region); return err },
	} {
		if err := call(); !errors.Is(err, keyguard.ErrBackendUnavailable) {
			t.Errorf("%s with KMS down: %v, want ErrBackendUnavailable", name, err)
		}
	}
}

type switchable struct{ awskms.KMS }

func ExampleOpen() {
	// In production: one KMS client per region from the default AWS config
	// (IRSA, instance role), and one alias per ring.
	fmt.Println(awskms.ContextDataClass, awskms.ContextRegion, awskms.ContextVersion)
	// Output: credmatrix:data_class credmatrix:region credmatrix:key_version
}
