package localkms_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/backendtest"
	"github.com/credmatrix/credmatrix/services/keyguard/localkms"
)

var (
	rootKey  = bytes.Repeat([]byte{0xa1}, localkms.RootKeySize)
	otherKey = bytes.Repeat([]byte{0xb2}, localkms.RootKeySize)
	fixedNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
)

func clock() time.Time { return fixedNow }

func openNew(t *testing.T) (*localkms.Keyring, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keystore.json")
	k, err := localkms.Open(path, rootKey, localkms.WithClock(clock))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return k, path
}

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T, rings ...keyguard.Ring) keyguard.KeyBackend {
		k, _ := openNew(t)
		for _, r := range rings {
			if err := k.EnsureRing(context.Background(), r.DataClass, r.Region); err != nil {
				t.Fatalf("EnsureRing(%s): %v", r, err)
			}
		}
		return k
	})
}

func TestCreatesFile(t *testing.T) {
	_, path := openNew(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("keystore not created: %v", err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("keystore mode = %v, want 0600", got)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the keystore (no temp files left)", len(entries))
	}
}

func TestPersistAndReopen(t *testing.T) {
	ctx := context.Background()
	k, path := openNew(t)
	if err := k.EnsureRing(ctx, "confidential", "eu-west-1"); err != nil {
		t.Fatal(err)
	}
	if err := k.EnsureRing(ctx, "confidential", "eu-west-1"); err != nil {
		t.Fatalf("EnsureRing of an existing ring: %v", err)
	}
	dataKey := bytes.Repeat([]byte{7}, 32)
	wrapped, err := k.Wrap(ctx, "confidential", "eu-west-1", 1, dataKey)
	if err != nil {
		t.Fatal(err)
	}

	k2, err := localkms.Open(path, rootKey)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if v, err := k2.Primary(ctx, "confidential", "eu-west-1"); err != nil || v != 1 {
		t.Fatalf("Primary after reopen = %d, %v; want 1", v, err)
	}
	got, err := k2.Unwrap(ctx, "confidential", "eu-west-1", 1, wrapped)
	if err != nil {
		t.Fatalf("Unwrap after reopen: %v", err)
	}
	if !bytes.Equal(got, dataKey) {
		t.Fatal("Unwrap after reopen returned another key")
	}
}

func TestRotate(t *testing.T) {
	ctx := context.Background()
	k, path := openNew(t)
	if _, err := k.Rotate(ctx, "internal", "eu-west-1"); !errors.Is(err, keyguard.ErrKeyNotFound) {
		t.Fatalf("Rotate of a missing ring: error %v, want ErrKeyNotFound", err)
	}
	if err := k.EnsureRing(ctx, "internal", "eu-west-1"); err != nil {
		t.Fatal(err)
	}
	dataKey := bytes.Repeat([]byte{9}, 32)
	w1, err := k.Wrap(ctx, "internal", "eu-west-1", 1, dataKey)
	if err != nil {
		t.Fatal(err)
	}
	for want := uint32(2); want <= 3; want++ {
		v, err := k.Rotate(ctx, "internal", "eu-west-1")
		if err != nil || v != want {
			t.Fatalf("Rotate = %d, %v; want %d", v, err, want)
		}
	}
	k2, err := localkms.Open(path, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := k2.Primary(ctx, "internal", "eu-west-1"); err != nil || v != 3 {
		t.Fatalf("Primary after rotate and reopen = %d, %v; want 3", v, err)
	}
	if got, err := k2.Unwrap(ctx, "internal", "eu-west-1", 1, w1); err != nil || !bytes.Equal(got, dataKey) {
		t.Fatalf("Unwrap under the old version after rotation: %v", err)
	}
	if _, err := k2.Unwrap(ctx, "internal", "eu-west-1", 3, w1); !errors.Is(err, keyguard.ErrUnwrap) {
		t.Fatalf("Unwrap under another version: error %v, want ErrUnwrap", err)
	}
}

func TestWrongRootKey(t *testing.T) {
	k, path := openNew(t)
	if err := k.EnsureRing(context.Background(), "public", "eu-west-1"); err != nil {
		t.Fatal(err)
	}
	_, err := localkms.Open(path, otherKey)
	if err == nil || !strings.Contains(err.Error(), "wrong root key") {
		t.Fatalf("Open with another root key: error %v, want a wrong root key error", err)
	}
	for _, key := range [][]byte{rootKey, otherKey} {
		if strings.Contains(err.Error(), hex.EncodeToString(key)) || strings.Contains(err.Error(), string(key)) {
			t.Fatal("error text contains a root key")
		}
	}
	if _, err := localkms.Open(path, rootKey[:16]); err == nil {
		t.Fatal("Open with a 16-byte root key succeeded")
	}
}

// editKeystore rewrites the keystore's JSON through edit.
func editKeystore(t *testing.T, path string, edit func(m map[string]any)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestTamperedKeystore(t *testing.T) {
	ring := func(m map[string]any, i int) map[string]any { return m["rings"].([]any)[i].(map[string]any) }
	version := func(m map[string]any, i, j int) map[string]any {
		return ring(m, i)["versions"].([]any)[j].(map[string]any)
	}
	tests := []struct {
		name    string
		edit    func(m map[string]any)
		raw     []byte
		wantMsg string
	}{
		{"not-json", nil, []byte("{"), "not a keystore"},
		{"unknown-field", func(m map[string]any) { m["extra"] = 1 }, nil, "not a keystore"},
		{"format", func(m map[string]any) { m["format"] = "v2" }, nil, "format"},
		{"root-key-id", func(m map[string]any) { m["root_key_id"] = "0000000000000000" }, nil, "wrong root key"},
		{"mac", func(m map[string]any) { m["mac"] = "AAAA" }, nil, "integrity check failed"},
		{"rename-ring", func(m map[string]any) { ring(m, 0)["region"] = "us-east-1" }, nil, "integrity check failed"},
		{"drop-version", func(m map[string]any) {
			r := ring(m, 1)
			r["versions"] = r["versions"].([]any)[:1]
		}, nil, "integrity check failed"},
		{"swap-sealed-keys", func(m map[string]any) {
			a, b := version(m, 0, 0), version(m, 1, 0)
			a["sealed_key"], b["sealed_key"] = b["sealed_key"], a["sealed_key"]
		}, nil, "integrity check failed"},
		{"created-time", func(m map[string]any) { version(m, 0, 0)["create_time"] = "2020-01-01T00:00:00Z" }, nil, "integrity check failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			k, path := openNew(t)
			if err := errors.Join(k.EnsureRing(ctx, "confidential", "eu-west-1"), k.EnsureRing(ctx, "confidential", "eu-west-2")); err != nil {
				t.Fatal(err)
			}
			if _, err := k.Rotate(ctx, "confidential", "eu-west-2"); err != nil {
				t.Fatal(err)
			}
			if tc.raw != nil {
				if err := os.WriteFile(path, tc.raw, 0o600); err != nil {
					t.Fatal(err)
				}
			} else {
				editKeystore(t, path, tc.edit)
			}
			_, err := localkms.Open(path, rootKey)
			if err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("Open of a tampered keystore: error %v, want one saying %q", err, tc.wantMsg)
			}
		})
	}
}

func TestEnsureRingRejectsBadNames(t *testing.T) {
	k, _ := openNew(t)
	for _, r := range []keyguard.Ring{{DataClass: "", Region: "eu-west-1"}, {DataClass: "Confidential", Region: "eu-west-1"}, {DataClass: "public", Region: "eu_west_1"}, {DataClass: "public", Region: strings.Repeat("a", 64)}} {
		if err := k.EnsureRing(context.Background(), r.DataClass, r.Region); err == nil {
			t.Errorf("EnsureRing(%q, %q) succeeded", r.DataClass, r.Region)
		}
	}
}

func TestKeystoreLayout(t *testing.T) {
	ctx := context.Background()
	k, path := openNew(t)
	for _, r := range []keyguard.Ring{{DataClass: "restricted", Region: "us-east-1"}, {DataClass: "public", Region: "eu-west-1"}, {DataClass: "public", Region: "ap-south-1"}} {
		if err := k.EnsureRing(ctx, r.DataClass, r.Region); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Format    string `json:"format"`
		RootKeyID string `json:"root_key_id"`
		Rings     []struct {
			DataClass string `json:"data_class"`
			Region    string `json:"region"`
			Versions  []struct {
				Version    uint32    `json:"version"`
				CreateTime time.Time `json:"create_time"`
			} `json:"versions"`
		} `json:"rings"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range f.Rings {
		for _, v := range r.Versions {
			got = append(got, fmt.Sprintf("%s/%s v%d %s", r.DataClass, r.Region, v.Version, v.CreateTime.Format(time.RFC3339)))
		}
	}
	want := []string{
		"public/ap-south-1 v1 2026-03-01T12:00:00Z",
		"public/eu-west-1 v1 2026-03-01T12:00:00Z",
		"restricted/us-east-1 v1 2026-03-01T12:00:00Z",
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("rings in the keystore (-got +want):\n%s", diff)
	}
	if f.Format != "credmatrix-localkms/v1" || f.RootKeyID != k.RootKeyID() {
		t.Errorf("format %q, root key id %q (keyring says %q)", f.Format, f.RootKeyID, k.RootKeyID())
	}
}

func TestNoKeyMaterialInOutput(t *testing.T) {
	k, path := openNew(t)
	if err := k.EnsureRing(context.Background(), "public", "eu-west-1"); err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		if got := fmt.Sprintf(verb, k); got != k.String() {
			t.Errorf("Sprintf(%s, keyring) = %q, want %q", verb, got, k.String())
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, rootKey) || bytes.Contains(b, []byte(hex.EncodeToString(rootKey))) {
		t.Error("keystore file contains the root key")
	}
}

func TestConcurrentUse(t *testing.T) {
	ctx := context.Background()
	k, path := openNew(t)
	if err := k.EnsureRing(ctx, "internal", "eu-west-1"); err != nil {
		t.Fatal(err)
	}
	dataKey := bytes.Repeat([]byte{4}, 32)
	errs := make(chan error, 40)
	for i := range 40 {
		go func() {
			if i%10 == 0 {
				_, err := k.Rotate(ctx, "internal", "eu-west-1")
				errs <- err
				return
			}
			v, err := k.Primary(ctx, "internal", "eu-west-1")
			if err != nil {
				errs <- err
				return
			}
			w, err := k.Wrap(ctx, "internal", "eu-west-1", v, dataKey)
			if err != nil {
				errs <- err
				return
			}
			got, err := k.Unwrap(ctx, "internal", "eu-west-1", v, w)
			if err == nil && !bytes.Equal(got, dataKey) {
				err = errors.New("unwrapped another key")
			}
			errs <- err
		}()
	}
	for range 40 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	k2, err := localkms.Open(path, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := k2.Primary(ctx, "internal", "eu-west-1"); err != nil || v != 5 {
		t.Fatalf("Primary after 4 concurrent rotations = %d, %v; want 5", v, err)
	}
}
