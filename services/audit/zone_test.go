package audit_test

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/credmatrix/credmatrix/platform/domainerr"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/audittest"
	"github.com/credmatrix/credmatrix/services/audit/memstore"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

func zoned(id, zone string) *auditv1.Event {
	e := event(id)
	e.ResidencyZone = zone
	return e
}

// TestResidencyZoneLog: a log kept for one zone records that zone's
// events and refuses every other, so a misrouted event lands nowhere.
func TestResidencyZoneLog(t *testing.T) {
	ctx := context.Background()
	store := memstore.New()
	l := audittest.OpenLog(t, store, audit.WithClock(fixedClock), audit.WithResidencyZone("eu"))
	if _, err := l.Append(ctx, broker, []*auditv1.Event{zoned("eu-1", "eu")}); err != nil {
		t.Fatalf("Append of an eu event: %v", err)
	}
	for _, e := range []*auditv1.Event{zoned("us-1", "us"), zoned("none-1", "")} {
		if _, err := l.Append(ctx, broker, []*auditv1.Event{zoned("eu-2", "eu"), e}); domainerr.CodeOf(err) != domainerr.Invalid {
			t.Errorf("Append of a batch holding an event of zone %q = %v, want Invalid", e.GetResidencyZone(), err)
		}
	}
	outcomes, err := l.AppendEach(ctx, broker, []*auditv1.Event{zoned("eu-3", "eu"), zoned("us-2", "us"), zoned("eu-4", "eu")})
	if err != nil {
		t.Fatal(err)
	}
	var refused []bool
	for _, o := range outcomes {
		refused = append(refused, o.Err != nil)
	}
	if diff := cmp.Diff(refused, []bool{false, true, false}); diff != "" {
		t.Errorf("AppendEach refusals (-got +want):\n%s", diff)
	}
	var ids []string
	for _, e := range readAll(t, store) {
		ids = append(ids, e.GetId()+"/"+e.GetResidencyZone())
	}
	if diff := cmp.Diff(ids, []string{"eu-1/eu", "eu-3/eu", "eu-4/eu"}); diff != "" {
		t.Errorf("stored events (-got +want):\n%s", diff)
	}
}

// TestResidencyZoneNameChecked: a zone name is bounded and plain, in any
// log.
func TestResidencyZoneNameChecked(t *testing.T) {
	l := audittest.OpenLog(t, memstore.New(), audit.WithClock(fixedClock))
	for _, z := range []string{"EU", "eu west", "-eu", "eu\x00", "e" + string(make([]byte, 40))} {
		if _, err := l.Append(context.Background(), broker, []*auditv1.Event{zoned("x", z)}); domainerr.CodeOf(err) != domainerr.Invalid {
			t.Errorf("zone %q: %v, want Invalid", z, err)
		}
	}
	if _, err := l.Append(context.Background(), broker, []*auditv1.Event{zoned("ok", "eu-2")}); err != nil {
		t.Errorf("zone eu-2: %v", err)
	}
}
