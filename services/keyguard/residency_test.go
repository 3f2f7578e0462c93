package keyguard_test

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/credmatrix/credmatrix/clients/keyguardclient/envelope"
	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/localkms"
)

// residencySeed is the seed of the residency property test: random, or
// CREDMATRIX_RESIDENCY_SEED to replay a failure.
func residencySeed(t *testing.T) uint64 {
	seed := rand.Uint64()
	if s := os.Getenv("CREDMATRIX_RESIDENCY_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("CREDMATRIX_RESIDENCY_SEED: %v", err)
		}
	}
	t.Logf("seed %d (replay: CREDMATRIX_RESIDENCY_SEED=%d)", seed, seed)
	return seed
}

// oracleGrant is a grant as the test made it: what the property is
// checked against.
type oracleGrant struct {
	principal, class string
	ops              []keyguard.Operation
	regions          []string
	context          map[string]string
}

func (g oracleGrant) permits(principal string, op keyguard.Operation, ring keyguard.Ring, ctx map[string]string) bool {
	if g.principal != principal || g.class != ring.DataClass || !slices.Contains(g.ops, op) || !slices.Contains(g.regions, ring.Region) {
		return false
	}
	for k, v := range g.context {
		if ctx[k] != v {
			return false
		}
	}
	return true
}

// TestResidencyProperty: over random rings, grants (created and revoked
// through the API), principals and encryption contexts, no ciphertext is
// ever decrypted (or sealed) for a principal without a live grant covering
// its ring's region, and no ciphertext relabelled with another region
// opens at all.
func TestResidencyProperty(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(residencySeed(t), 1))
	classes := []string{"public", "internal", "confidential", "restricted"}
	regionsAll := []string{"eu-west-1", "eu-central-1", "us-east-1", "ap-southeast-1"}
	principals := []string{"spiffe://t/a", "spiffe://t/b", "spiffe://t/c", "https://iss#d"}
	ctxs := []map[string]string{{"tenant": "acme"}, {"tenant": "beta"}, {"tenant": "acme", "app": "x"}}
	var decrypted, refused, relabelled, encrypted int
	for round := range 4 {
		var rings []keyguard.Ring
		for _, c := range classes {
			for _, reg := range regionsAll {
				if r.IntN(3) > 0 {
					rings = append(rings, keyguard.Ring{DataClass: c, Region: reg})
				}
			}
		}
		kr, err := localkms.Open(filepath.Join(t.TempDir(), "keystore.json"), bytes.Repeat([]byte{byte(round + 1)}, 32))
		if err != nil {
			t.Fatal(err)
		}
		for _, ring := range rings {
			if err := kr.EnsureRing(ctx, ring.DataClass, ring.Region); err != nil {
				t.Fatal(err)
			}
		}
		svc, err := keyguard.New(ctx, keyguard.Config{Backend: kr, BackendName: "local", Auditor: &fakeAuditor{}, Rings: rings, Admins: []string{admin}})
		if err != nil {
			t.Fatal(err)
		}
		regionsOf := func(class string) []string {
			var out []string
			for _, ring := range rings {
				if ring.DataClass == class {
					out = append(out, ring.Region)
				}
			}
			return out
		}
		// Grants through the API; a third revoked again.
		live := map[string]oracleGrant{}
		for range 12 {
			ring := rings[r.IntN(len(rings))]
			g := oracleGrant{principal: principals[r.IntN(len(principals))], class: ring.DataClass}
			for _, reg := range regionsOf(g.class) {
				if reg == ring.Region || r.IntN(3) == 0 {
					g.regions = append(g.regions, reg)
				}
			}
			for _, op := range []keyguard.Operation{keyguard.OpEncrypt, keyguard.OpDecrypt} {
				if r.IntN(3) > 0 {
					g.ops = append(g.ops, op)
				}
			}
			if len(g.ops) == 0 {
				g.ops = []keyguard.Operation{keyguard.OpDecrypt}
			}
			if r.IntN(2) == 0 {
				g.context = maps.Clone(ctxs[r.IntN(len(ctxs))])
			}
			created, _, err := svc.CreateGrant(ctx, admin, keyguard.Grant{Principal: g.principal, DataClass: g.class, Operations: g.ops,
				Regions: g.regions, RequiredContext: g.context, ExpireTime: time.Now().Add(time.Hour)})
			if err != nil {
				t.Fatalf("CreateGrant: %v", err)
			}
			live[created.ID] = g
		}
		for id := range live {
			if r.IntN(3) == 0 {
				if _, err := svc.RevokeGrant(ctx, admin, id, "property"); err != nil {
					t.Fatal(err)
				}
				delete(live, id)
			}
		}
		permitted := func(principal string, op keyguard.Operation, ring keyguard.Ring, c map[string]string) bool {
			for _, g := range live {
				if g.permits(principal, op, ring, c) {
					return true
				}
			}
			return false
		}

		type sealed struct {
			ring keyguard.Ring
			ctx  map[string]string
			ct   []byte
			pt   []byte
		}
		var cts []sealed
		for range 150 {
			ring := rings[r.IntN(len(rings))]
			p, c := principals[r.IntN(len(principals))], ctxs[r.IntN(len(ctxs))]
			pt := fmt.Appendf(nil, "secret %d", r.Uint64())
			out, err := svc.Encrypt(ctx, p, keyguard.EncryptInput{DataClass: ring.DataClass, Region: ring.Region, Plaintext: pt, Context: c})
			if err == nil {
				encrypted++
				if !permitted(p, keyguard.OpEncrypt, ring, c) {
					t.Errorf("%s sealed in %s without a grant", p, ring)
				}
				cts = append(cts, sealed{ring: ring, ctx: c, ct: out.Ciphertext, pt: pt})
			}
		}
		for _, s := range cts {
			for _, p := range principals {
				out, err := svc.Decrypt(ctx, p, keyguard.DecryptInput{Ciphertext: s.ct, Context: s.ctx})
				switch {
				case err == nil && !permitted(p, keyguard.OpDecrypt, s.ring, s.ctx):
					t.Errorf("%s decrypted a ciphertext of %s without a grant in its region", p, s.ring)
				case err == nil && !bytes.Equal(out.Plaintext, s.pt):
					t.Errorf("decrypt of a ciphertext of %s returned another plaintext", s.ring)
				case err == nil:
					decrypted++
				case permitted(p, keyguard.OpDecrypt, s.ring, s.ctx):
					t.Errorf("%s holds a grant for %s but was refused: %v", p, s.ring, err)
				default:
					refused++
				}
			}
			// Relabel the envelope with every other region of its class
			// and try it as every principal: it must open nowhere.
			h, rest, err := envelope.ParseHeader(s.ct)
			if err != nil {
				t.Fatal(err)
			}
			for _, reg := range regionsOf(s.ring.DataClass) {
				if reg == s.ring.Region {
					continue
				}
				forged := *h
				forged.Region = reg
				b, err := forged.AppendBinary(nil)
				if err != nil {
					t.Fatal(err)
				}
				b = append(b, rest...)
				for _, p := range principals {
					if _, err := svc.Decrypt(ctx, p, keyguard.DecryptInput{Ciphertext: b, Context: s.ctx}); err == nil {
						t.Errorf("a ciphertext of %s relabelled %s opened for %s", s.ring, reg, p)
					}
					relabelled++
				}
			}
		}
	}
	if decrypted == 0 || refused == 0 || relabelled == 0 || encrypted == 0 {
		t.Fatalf("encrypted %d, decrypted %d, refused %d, relabelled %d: the random operations did not exercise the property", encrypted, decrypted, refused, relabelled)
	}
	t.Logf("%d ciphertexts; %d decryptions with a grant, %d refused without one, %d relabelled ciphertexts tried, none opened", encrypted, decrypted, refused, relabelled)
}
