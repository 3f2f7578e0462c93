package replay_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credmatrix/credmatrix/clients/auditclient/replay"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

// staticLoad is a keyguard start as it records its key-ring file's static
// grants: one event per grant (or one revoke marker for none), all with
// the same load id and count.
func staticLoad(at time.Time, load string, grants ...*auditv1.KeyDetail) []*auditv1.Event {
	if len(grants) == 0 {
		return []*auditv1.Event{{
			Time: timestamppb.New(at), Kind: auditv1.Kind_KIND_GRANT_REVOKE, Decision: auditv1.Decision_DECISION_ALLOW,
			Detail: &auditv1.Event_Key{Key: &auditv1.KeyDetail{Operation: replay.StaticGrantOperation, StaticLoad: load}},
		}}
	}
	var out []*auditv1.Event
	for _, g := range grants {
		kd := &auditv1.KeyDetail{
			GrantId: g.GrantId, Grantee: g.Grantee, DataClass: g.DataClass, GrantRegions: g.GrantRegions, GrantOperations: g.GrantOperations,
			Operation: replay.StaticGrantOperation, StaticLoad: load, ItemCount: uint32(len(grants)),
		}
		out = append(out, &auditv1.Event{
			Time: timestamppb.New(at), Kind: auditv1.Kind_KIND_GRANT_CREATE, Decision: auditv1.Decision_DECISION_ALLOW,
			Detail: &auditv1.Event_Key{Key: kd},
		})
	}
	return out
}

func TestStaticGrants(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	a := &auditv1.KeyDetail{GrantId: "cli-eu", Grantee: "spiffe://x/cli", DataClass: "confidential", GrantRegions: []string{"eu-west-1"}, GrantOperations: []string{"encrypt"}}
	b := &auditv1.KeyDetail{GrantId: "app", Grantee: "spiffe://x/app", DataClass: "internal", GrantRegions: []string{"us-east-1"}, GrantOperations: []string{"decrypt"}}
	a2 := &auditv1.KeyDetail{GrantId: "cli-eu", Grantee: "spiffe://x/cli", DataClass: "confidential", GrantRegions: []string{"eu-west-1"}, GrantOperations: []string{"encrypt", "decrypt"}}

	var log []*auditv1.Event
	log = append(log, staticLoad(at(0), "l1", a, b)...)
	log = append(log, staticLoad(at(10), "l2", b, a)...) // a restart: the same grants
	log = append(log, staticLoad(at(20), "l3", a2)...)   // a changed, b removed
	log = append(log, staticLoad(at(30), "l4")...)       // none left
	r := replay.New()
	for i, e := range log {
		e.Sequence = uint64(i)
		r.Apply(e)
	}
	type g struct {
		ID      string
		Ops     int
		Created time.Time
	}
	view := func(gs []replay.Grant) []g {
		var out []g
		for _, x := range gs {
			if !x.Static {
				t.Errorf("grant %s not marked static", x.GrantID)
			}
			out = append(out, g{x.GrantID, len(x.Operations), x.Created})
		}
		return out
	}
	for _, tc := range []struct {
		name string
		t    time.Time
		want []g
	}{
		{"before", at(0).Add(-time.Second), nil},
		{"first-load", at(5), []g{{"cli-eu", 1, at(0)}, {"app", 1, at(0)}}},
		{"restart-keeps-them", at(15), []g{{"cli-eu", 1, at(0)}, {"app", 1, at(0)}}},
		{"changed-and-removed", at(25), []g{{"cli-eu", 2, at(20)}}},
		{"all-removed", at(35), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(view(r.GrantsAt(tc.t, "")), tc.want); diff != "" {
				t.Fatalf("GrantsAt (-got +want):\n%s", diff)
			}
		})
	}
	// An incomplete load (its other events missing) changes nothing.
	part := staticLoad(at(40), "l5", a, b)[:1]
	r.Apply(part[0])
	if got := r.GrantsAt(at(45), ""); len(got) != 0 {
		t.Fatalf("an incomplete load took effect: %+v", got)
	}
}
