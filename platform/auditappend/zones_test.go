package auditappend

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

func zoneEvent(id, zone string) *auditv1.Event {
	return &auditv1.Event{Id: id, Time: timestamppb.Now(), Kind: auditv1.Kind_KIND_KEY_ENCRYPT, Decision: auditv1.Decision_DECISION_ALLOW, ResidencyZone: zone}
}

// TestZonesRouteEachEventToItsZone: every event lands in its zone's log
// and nowhere else; an event of a zone without a log is refused, not
// diverted; a zone that is down fails its own events only.
func TestZonesRouteEachEventToItsZone(t *testing.T) {
	ctx := context.Background()
	global, eu, us := &fakeAudit{}, &fakeAudit{}, &fakeAudit{}
	z := NewZones(serve(t, global), map[string]*Appender{"eu": serve(t, eu), "us": serve(t, us)})

	for _, ev := range []*auditv1.Event{zoneEvent("g1", ""), zoneEvent("e1", "eu"), zoneEvent("u1", "us")} {
		if _, err := z.Append(ctx, ev); err != nil {
			t.Fatalf("Append %s: %v", ev.GetId(), err)
		}
	}
	res, err := z.AppendBatch(ctx, []*auditv1.Event{zoneEvent("e2", "eu"), zoneEvent("g2", ""), zoneEvent("u2", "us"), zoneEvent("e3", "eu")})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range res {
		ids = append(ids, r.GetId())
	}
	if diff := cmp.Diff(ids, []string{"e2", "g2", "u2", "e3"}); diff != "" {
		t.Errorf("batch results out of order (-got +want):\n%s", diff)
	}
	got := map[string][]string{"global": global.recorded(), "eu": eu.recorded(), "us": us.recorded()}
	want := map[string][]string{"global": {"g1", "g2"}, "eu": {"e1", "e2", "e3"}, "us": {"u1", "u2"}}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("events per log (-got +want):\n%s", diff)
	}

	if _, err := z.Append(ctx, zoneEvent("a1", "ap")); !errors.Is(err, ErrNoZoneLog) {
		t.Errorf("event of a zone without a log: %v, want ErrNoZoneLog", err)
	}
	if _, err := z.AppendBatch(ctx, []*auditv1.Event{zoneEvent("e4", "eu"), zoneEvent("a2", "ap")}); !errors.Is(err, ErrNoZoneLog) {
		t.Errorf("batch with an event of a zone without a log: %v, want ErrNoZoneLog", err)
	}

	us.mu.Lock()
	us.fail = status.Error(codes.Unavailable, "us audit down")
	us.mu.Unlock()
	if _, err := z.Append(ctx, zoneEvent("u3", "us")); err == nil {
		t.Error("Append to a zone whose log is down succeeded")
	}
	for _, ev := range []*auditv1.Event{zoneEvent("e5", "eu"), zoneEvent("g3", "")} {
		if _, err := z.Append(ctx, ev); err != nil {
			t.Errorf("%s with the us log down: %v", ev.GetId(), err)
		}
	}
	for name, f := range map[string]*fakeAudit{"global": global, "eu": eu} {
		for _, id := range f.recorded() {
			if id == "a1" || id == "a2" || id == "u3" {
				t.Errorf("%s recorded in the %s log", id, name)
			}
		}
	}
}

// TestZonesWithoutZonesIsOneLog: with no zone logs, every event goes to
// the one log (zones in events or not).
func TestZonesWithoutZonesIsOneLog(t *testing.T) {
	one := &fakeAudit{}
	z := NewZones(serve(t, one), nil)
	for _, ev := range []*auditv1.Event{zoneEvent("g", ""), zoneEvent("e", "eu")} {
		if _, err := z.Append(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff(one.recorded(), []string{"e", "g"}); diff != "" {
		t.Errorf("(-got +want):\n%s", diff)
	}
}

// TestParseZoneTargets: each zone once, by a plain name that is not the
// global log's, with a target.
func TestParseZoneTargets(t *testing.T) {
	got, err := ParseZoneTargets([]string{"eu=audit-eu:7403", "us-east=10.0.0.1:7403"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, map[string]string{"eu": "audit-eu:7403", "us-east": "10.0.0.1:7403"}); diff != "" {
		t.Errorf("(-got +want):\n%s", diff)
	}
	for name, entries := range map[string][]string{
		"no-target":  {"eu="},
		"no-equals":  {"eu"},
		"bad-name":   {"EU=x:1"},
		"hostile":    {"eu\n=x:1"},
		"global":     {"global=x:1"},
		"twice":      {"eu=x:1", "eu=y:1"},
		"empty-zone": {"=x:1"},
	} {
		if _, err := ParseZoneTargets(entries); err == nil {
			t.Errorf("%s: %q accepted", name, entries)
		}
	}
}
