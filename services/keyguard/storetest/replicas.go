package storetest

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"

	"github.com/credmatrix/credmatrix/platform/domainerr"
	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/localkms"
)

// auditor records events in memory.
type auditor struct {
	mu  sync.Mutex
	evs []*auditv1.Event
}

func (a *auditor) Append(_ context.Context, ev *auditv1.Event) (*auditv1.AppendResult, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.evs = append(a.evs, ev)
	return &auditv1.AppendResult{Id: ev.GetId(), Sequence: uint64(len(a.evs))}, nil
}

// RunReplicas runs keyguard Services as replicas over stores that share
// one state (newPair returns two handles on one fresh, empty state, as two
// processes would open it) and checks what replication must guarantee: a
// change acknowledged at one replica binds the other's very next request,
// with no notification delivered, and rotation happens once however many
// replicas find it due.
func RunReplicas(t *testing.T, newPair func(t *testing.T) (keyguard.Store, keyguard.Store)) {
	ctx := context.Background()
	const (
		admin = "spiffe://credmatrix.dev/admin"
		app   = "spiffe://credmatrix.dev/app"
	)
	eu := keyguard.Ring{DataClass: "confidential", Region: "eu-west-1"}
	encCtx := map[string]string{"tenant": "acme"}
	setup := func(t *testing.T, policies ...keyguard.RingPolicy) (a, b *keyguard.Service, aud *auditor) {
		t.Helper()
		// One keystore for both: the KEK backend is not under test.
		kr, err := localkms.Open(filepath.Join(t.TempDir(), "keystore.json"), bytes.Repeat([]byte{7}, 32))
		if err != nil {
			t.Fatal(err)
		}
		if err := kr.EnsureRing(ctx, eu.DataClass, eu.Region); err != nil {
			t.Fatal(err)
		}
		sa, sb := newPair(t)
		aud = &auditor{}
		mk := func(s keyguard.Store) *keyguard.Service {
			svc, err := keyguard.New(ctx, keyguard.Config{
				Backend: kr, BackendName: "local", Auditor: aud, Store: s, Rings: []keyguard.Ring{eu},
				RingPolicies: policies, Admins: []string{admin},
			})
			if err != nil {
				t.Fatal(err)
			}
			return svc
		}
		return mk(sa), mk(sb), aud
	}
	encrypt := func(svc *keyguard.Service) (keyguard.EncryptOutput, error) {
		return svc.Encrypt(ctx, app, keyguard.EncryptInput{DataClass: eu.DataClass, Region: eu.Region, Plaintext: []byte("secret"), Context: encCtx})
	}
	grant := keyguard.Grant{Principal: app, DataClass: eu.DataClass, Operations: []keyguard.Operation{keyguard.OpEncrypt, keyguard.OpDecrypt},
		Regions: []string{eu.Region}, ExpireTime: time.Now().Add(time.Hour)}

	t.Run("grant-revoked-at-one-denies-at-the-other-at-once", func(t *testing.T) {
		a, b, _ := setup(t)
		for i := range 20 {
			creator, revoker := a, b
			if i%2 == 1 {
				creator, revoker = b, a
			}
			g, _, err := creator.CreateGrant(ctx, admin, grant)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := revoker.Encrypt(ctx, app, keyguard.EncryptInput{DataClass: eu.DataClass, Region: eu.Region, Plaintext: []byte("x"), Context: encCtx}); err != nil {
				t.Fatalf("round %d: Encrypt at the replica that did not create the grant: %v", i, err)
			}
			if _, err := revoker.RevokeGrant(ctx, admin, g.ID, "test"); err != nil {
				t.Fatal(err)
			}
			// The creator has a copy holding the grant; its very next
			// request must not use it.
			if _, err := encrypt(creator); domainerr.CodeOf(err) != domainerr.PermissionDenied {
				t.Fatalf("round %d: Encrypt at the other replica right after RevokeGrant returned = %v, want PermissionDenied", i, err)
			}
		}
	})

	t.Run("minimum-version-binds-the-other", func(t *testing.T) {
		a, b, _ := setup(t)
		if _, _, err := a.CreateGrant(ctx, admin, grant); err != nil {
			t.Fatal(err)
		}
		old, err := encrypt(b)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := a.RotateKey(ctx, admin, eu.DataClass, eu.Region, "test"); err != nil {
			t.Fatal(err)
		}
		if _, err := a.SetMinDecryptVersion(ctx, admin, eu.DataClass, eu.Region, 2, "retire v1"); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Decrypt(ctx, app, keyguard.DecryptInput{Ciphertext: old.Ciphertext, Context: encCtx}); domainerr.CodeOf(err) != domainerr.FailedPrecondition {
			t.Errorf("Decrypt of a retired version at the other replica = %v, want FailedPrecondition", err)
		}
		d, err := b.DescribeKeyRing(ctx, admin, eu.DataClass, eu.Region)
		if err != nil || d.MinDecryptVersion != 2 || d.Primary != 2 {
			t.Errorf("Describe at the other replica: min %d primary %d (%v); want 2 and 2", d.MinDecryptVersion, d.Primary, err)
		}
	})

	t.Run("due-rotation-happens-once", func(t *testing.T) {
		a, b, aud := setup(t, keyguard.RingPolicy{Ring: eu, MaxEncryptions: 10})
		if _, _, err := a.CreateGrant(ctx, admin, grant); err != nil {
			t.Fatal(err)
		}
		for range 6 {
			for _, svc := range []*keyguard.Service{a, b} {
				if _, err := encrypt(svc); err != nil {
					t.Fatal(err)
				}
			}
		}
		// Neither replica alone reached 10; together they did. Both
		// look at once.
		var wg sync.WaitGroup
		refs := make(chan []keyguard.KeyRef, 2)
		for _, svc := range []*keyguard.Service{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := svc.RotateDue(ctx)
				if err != nil {
					t.Error(err)
				}
				refs <- r
			}()
		}
		wg.Wait()
		close(refs)
		var rotated []keyguard.KeyRef
		for r := range refs {
			rotated = append(rotated, r...)
		}
		if len(rotated) != 1 || rotated[0].Version != 2 {
			t.Fatalf("rotations by two replicas = %v, want exactly one to version 2", rotated)
		}
		aud.mu.Lock()
		n := 0
		for _, ev := range aud.evs {
			if ev.GetKind() == auditv1.Kind_KIND_KEY_ROTATE {
				n++
			}
		}
		aud.mu.Unlock()
		if n != 1 {
			t.Errorf("%d rotation events audited, want 1", n)
		}
		for name, svc := range map[string]*keyguard.Service{"a": a, "b": b} {
			d, err := svc.DescribeKeyRing(ctx, admin, eu.DataClass, eu.Region)
			if err != nil {
				t.Fatal(err)
			}
			if d.Primary != 2 || len(d.Versions) != 2 || d.Versions[1].EncryptCount != 12 {
				t.Errorf("replica %s: primary %d, versions %+v; want primary 2 and 12 messages under version 1 from both replicas", name, d.Primary, d.Versions)
			}
		}
	})

	t.Run("state-unreadable-fails-closed", func(t *testing.T) {
		a, _, _ := setup(t)
		if _, _, err := a.CreateGrant(ctx, admin, grant); err != nil {
			t.Fatal(err)
		}
		sa, _ := newPair(t)
		down := &downStore{Store: sa}
		svc, err := keyguard.New(ctx, keyguard.Config{Backend: mustKeyring(t, eu), BackendName: "local", Auditor: &auditor{}, Store: down, Rings: []keyguard.Ring{eu},
			Grants: []keyguard.Grant{{ID: "static", Principal: app, DataClass: eu.DataClass, Operations: []keyguard.Operation{keyguard.OpEncrypt}, Regions: []string{eu.Region}}}})
		if err != nil {
			t.Fatal(err)
		}
		down.mu.Lock()
		down.down = true
		down.mu.Unlock()
		out, err := encrypt(svc)
		if domainerr.CodeOf(err) != domainerr.Unavailable || out.Ciphertext != nil {
			t.Fatalf("Encrypt while the state store is unreadable = %v (ciphertext %d bytes), want Unavailable and nothing", err, len(out.Ciphertext))
		}
		if got := domainerr.MessageOf(err); got != "state store unavailable; operation not performed" {
			t.Errorf("message %q", got)
		}
	})
}

func mustKeyring(t *testing.T, rings ...keyguard.Ring) *localkms.Keyring {
	t.Helper()
	kr, err := localkms.Open(filepath.Join(t.TempDir(), "keystore.json"), bytes.Repeat([]byte{8}, 32))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rings {
		if err := kr.EnsureRing(context.Background(), r.DataClass, r.Region); err != nil {
			t.Fatal(err)
		}
	}
	return kr
}

// downStore is a store whose database stops answering.
type downStore struct {
	keyguard.Store
	mu   sync.Mutex
	down bool
}

func (d *downStore) Version(ctx context.Context) (uint64, error) {
	d.mu.Lock()
	down := d.down
	d.mu.Unlock()
	if down {
		return 0, errDown
	}
	return d.Store.Version(ctx)
}

var errDown = errors.New("connection refused")
