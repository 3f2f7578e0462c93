package awskms_test

import (
	"bytes"
	"context"
	"database/sql"
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
	"github.com/credmatrix/credmatrix/services/keyguard/sqlite"
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

var macKey = bytes.Repeat([]byte{0x42}, awskms.MACKeySize)

func open(t *testing.T, store awskms.VersionStore, clients map[string]*kms.Client, rings ...keyguard.Ring) *awskms.Backend {
	t.Helper()
	b, err := openErr(store, macKey, clients, rings...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return b
}

func openErr(store awskms.VersionStore, key []byte, clients map[string]*kms.Client, rings ...keyguard.Ring) (*awskms.Backend, error) {
	var rks []awskms.RingKey
	api := map[string]awskms.KMS{}
	for region, c := range clients {
		api[region] = c
	}
	for _, r := range rings {
		rks = append(rks, awskms.RingKey{Ring: r, KeyID: aliasFor(r)})
	}
	return awskms.Open(context.Background(), store, key, rks, api)
}

// sqliteStore is a state store in a file the test can also write with SQL,
// as an attacker with database access would.
func sqliteStore(t *testing.T) (*sqlite.Store, *sql.DB) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return s, db
}

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T, rings ...keyguard.Ring) keyguard.KeyBackend {
		clients := kmsPerRegion(t, rings...)
		return open(t, keyguard.NewMemoryStore(), clients, rings...)
	})
}

// TestRotateToNewKey: pointing the alias at a new KMS key and rotating
// makes a version under the new key; the old version still unwraps under
// the old key, and another replica (or a restart) on the same store sees
// both.
func TestRotateToNewKey(t *testing.T) {
	ctx := context.Background()
	ring := keyguard.Ring{DataClass: "restricted", Region: "eu-central-1"}
	clients := kmsPerRegion(t, ring)
	store, _ := sqliteStore(t)
	b := open(t, store, clients, ring)
	other := open(t, store, clients, ring)
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
	// The other replica has not refreshed: its rotation would fork
	// version 2, and is refused.
	if _, err := other.Rotate(ctx, ring.DataClass, ring.Region); !errors.Is(err, keyguard.ErrConflict) {
		t.Fatalf("Rotate by a stale replica: %v, want ErrConflict", err)
	}
	if err := other.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	for name, be := range map[string]*awskms.Backend{"other replica": other, "restart": open(t, store, clients, ring)} {
		vs, err := be.Versions(ctx, ring.DataClass, ring.Region)
		if err != nil || len(vs) != 2 || vs[1].BackendKey != *out.KeyMetadata.Arn || vs[0].BackendKey == vs[1].BackendKey {
			t.Fatalf("%s: Versions: %+v %v", name, vs, err)
		}
		if p, err := be.Primary(ctx, ring.DataClass, ring.Region); p != 2 || err != nil {
			t.Errorf("%s: Primary = %d, %v; want 2", name, p, err)
		}
		got, err := be.Unwrap(ctx, ring.DataClass, ring.Region, 1, w1)
		if err != nil || !bytes.Equal(got, dk) {
			t.Fatalf("%s: Unwrap of version 1 after rotation: %v", name, err)
		}
		if _, err := be.Unwrap(ctx, ring.DataClass, ring.Region, 2, w1); !errors.Is(err, keyguard.ErrUnwrap) {
			t.Fatalf("%s: Unwrap of a version-1 key as version 2: %v, want ErrUnwrap", name, err)
		}
	}
}

// TestReplicasOpeningTogetherAgree: replicas that start at once on an
// empty store end up with one version 1, not one each.
func TestReplicasOpeningTogetherAgree(t *testing.T) {
	ring := keyguard.Ring{DataClass: "confidential", Region: "eu-west-1"}
	clients := kmsPerRegion(t, ring)
	store, _ := sqliteStore(t)
	const n = 4
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := openErr(store, macKey, clients, ring)
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("Open: %v", err)
		}
	}
	vs, err := store.KeyVersions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(vs[ring]) != 1 {
		t.Errorf("%d versions of %s after %d replicas opened, want 1", len(vs[ring]), ring, n)
	}
}

// TestVersionRecordsResistTampering: whoever can write the state store
// cannot point a ring at another key, move versions between rings, drop
// the newest version, or add records, without keyguard refusing the store.
func TestVersionRecordsResistTampering(t *testing.T) {
	ctx := context.Background()
	eu := keyguard.Ring{DataClass: "confidential", Region: "eu-west-1"}
	us := keyguard.Ring{DataClass: "confidential", Region: "us-east-1"}
	clients := kmsPerRegion(t, eu, us)
	attackerKey := kmstest.CreateKey(t, clients[eu.Region], "alias/attacker")
	setup := func(t *testing.T) (*sqlite.Store, *sql.DB, *awskms.Backend) {
		store, db := sqliteStore(t)
		b := open(t, store, clients, eu, us)
		if _, err := b.Rotate(ctx, eu.DataClass, eu.Region); err != nil {
			t.Fatal(err)
		}
		return store, db, b
	}
	for _, tc := range []struct {
		name   string
		attack string
		args   []any
	}{
		{"repoint-primary", `UPDATE key_versions SET backend_key = ? WHERE region = 'eu-west-1' AND version = 2`, []any{attackerKey}},
		{"repoint-old-version", `UPDATE key_versions SET backend_key = ? WHERE region = 'eu-west-1' AND version = 1`, []any{attackerKey}},
		{"move-a-version-to-another-ring", `UPDATE key_versions SET region = 'us-east-1', version = 2 WHERE region = 'eu-west-1' AND version = 2`, nil},
		{"copy-a-mac", `UPDATE key_versions SET mac = (SELECT mac FROM key_versions WHERE region = 'us-east-1' AND version = 1) WHERE region = 'eu-west-1' AND version = 1`, nil},
		{"add-a-version", `INSERT INTO key_versions SELECT data_class, region, 3, create_unix_nano, ?, mac FROM key_versions WHERE region = 'eu-west-1' AND version = 2`, []any{attackerKey}},
		{"backdate-a-version", `UPDATE key_versions SET create_unix_nano = create_unix_nano - 86400000000000 WHERE region = 'eu-west-1' AND version = 2`, nil},
		{"renumber", `UPDATE key_versions SET version = version + 10 WHERE region = 'eu-west-1'`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store, db, running := setup(t)
			if _, err := db.Exec(tc.attack, tc.args...); err != nil {
				t.Fatal(err)
			}
			if err := running.Refresh(ctx); !errors.Is(err, awskms.ErrIntegrity) {
				t.Errorf("Refresh of a running backend = %v, want ErrIntegrity", err)
			}
			if _, err := openErr(store, macKey, clients, eu, us); !errors.Is(err, awskms.ErrIntegrity) {
				t.Errorf("Open on the altered store = %v, want ErrIntegrity", err)
			}
			// The running backend keeps the versions it verified.
			if p, err := running.Primary(ctx, eu.DataClass, eu.Region); p != 2 || err != nil {
				t.Errorf("Primary after a refused refresh = %d, %v; want 2", p, err)
			}
		})
	}
	t.Run("drop-the-newest-version", func(t *testing.T) {
		_, db, running := setup(t)
		if _, err := db.Exec(`DELETE FROM key_versions WHERE region = 'eu-west-1' AND version = 2`); err != nil {
			t.Fatal(err)
		}
		if err := running.Refresh(ctx); !errors.Is(err, awskms.ErrIntegrity) {
			t.Errorf("Refresh after the newest version was dropped = %v, want ErrIntegrity", err)
		}
	})
	t.Run("wrong-mac-key", func(t *testing.T) {
		store, _, _ := setup(t)
		if _, err := openErr(store, bytes.Repeat([]byte{0x43}, awskms.MACKeySize), clients, eu, us); !errors.Is(err, awskms.ErrIntegrity) {
			t.Errorf("Open with another MAC key = %v, want ErrIntegrity", err)
		}
	})
	t.Run("short-mac-key", func(t *testing.T) {
		if _, err := openErr(keyguard.NewMemoryStore(), macKey[:16], clients, eu); err == nil {
			t.Error("Open with a 16-byte MAC key succeeded")
		}
	})
}

// TestKMSDown: with KMS unreachable, every operation fails with
// ErrBackendUnavailable; nothing falls back to anything local.
func TestKMSDown(t *testing.T) {
	ctx := context.Background()
	ring := keyguard.Ring{DataClass: "confidential", Region: "eu-west-1"}
	clients := kmsPerRegion(t, ring)
	b := open(t, keyguard.NewMemoryStore(), clients, ring)
	dk := bytes.Repeat([]byte{3}, 32)
	w, err := b.Wrap(ctx, ring.DataClass, ring.Region, 1, dk)
	if err != nil {
		t.Fatal(err)
	}
	// A client for a port nobody listens on stands for KMS being down.
	down := kms.New(kms.Options{Region: ring.Region, BaseEndpoint: aws.String("http://127.0.0.1:1"),
		Credentials: credentials.NewStaticCredentialsProvider("AKID", "secret", ""), RetryMaxAttempts: 1})
	downBackend, err := awskms.Open(ctx, keyguard.NewMemoryStore(), macKey, []awskms.RingKey{{Ring: ring, KeyID: aliasFor(ring)}}, map[string]awskms.KMS{ring.Region: down})
	if !errors.Is(err, keyguard.ErrBackendUnavailable) || downBackend != nil {
		t.Fatalf("Open with KMS down: %v, want ErrBackendUnavailable", err)
	}
	// An open backend whose KMS goes away.
	flaky := &switchable{KMS: clients[ring.Region]}
	fb, err := awskms.Open(ctx, keyguard.NewMemoryStore(), macKey, []awskms.RingKey{{Ring: ring, KeyID: aliasFor(ring)}}, map[string]awskms.KMS{ring.Region: flaky})
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
