package keyguard_test

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/keyguard"
	"github.com/credmatrix/credmatrix/services/keyguard/localkms"

	"github.com/credmatrix/credmatrix/platform/domainerr"
)

// TestRecordStaticGrants: the static grants, which no API call creates,
// are recorded as one load (same load id, count), with everything a replay
// needs; an empty set is one marker event; audit down fails closed.
func TestRecordStaticGrants(t *testing.T) {
	h := newHarness(t)
	if err := h.svc.RecordStaticGrants(context.Background()); err != nil {
		t.Fatal(err)
	}
	evs := h.auditor.recorded()
	type row struct {
		Kind             auditv1.Kind
		Grant, Grantee   string
		Class, Operation string
		Ops, Regions     []string
		Count            uint32
	}
	var got []row
	for _, e := range evs {
		k := e.GetKey()
		got = append(got, row{e.GetKind(), k.GetGrantId(), k.GetGrantee(), k.GetDataClass(), k.GetOperation(), k.GetGrantOperations(), k.GetGrantRegions(), k.GetItemCount()})
		if k.GetStaticLoad() == "" || k.GetStaticLoad() != evs[0].GetKey().GetStaticLoad() || e.GetDecision() != auditv1.Decision_DECISION_ALLOW {
			t.Errorf("event %v: not one load", e)
		}
	}
	want := []row{
		{auditv1.Kind_KIND_GRANT_CREATE, "app-eu", app, "confidential", "static-grant", []string{"encrypt", "decrypt"}, []string{"eu-west-1"}, 2},
		{auditv1.Kind_KIND_GRANT_CREATE, "config/1", writer, "confidential", "static-grant", []string{"encrypt"}, []string{"eu-west-1", "us-east-1"}, 2},
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Fatalf("static grant events (-got +want):\n%s", diff)
	}

	// No static grant: one marker, so a replay ends the earlier ones.
	kr, err := localkms.Open(filepath.Join(t.TempDir(), "keystore.json"), bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	a := &fakeAuditor{}
	svc, err := keyguard.New(context.Background(), keyguard.Config{Backend: kr, Auditor: a, BackendName: "local", Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.RecordStaticGrants(context.Background()); err != nil {
		t.Fatal(err)
	}
	if evs := a.recorded(); len(evs) != 1 || evs[0].GetKind() != auditv1.Kind_KIND_GRANT_REVOKE || evs[0].GetKey().GetOperation() != "static-grant" ||
		evs[0].GetKey().GetGrantId() != "" || evs[0].GetKey().GetItemCount() != 0 {
		t.Fatalf("empty load: %v", evs)
	}
	a.setDown(true)
	if err := svc.RecordStaticGrants(context.Background()); domainerr.CodeOf(err) != domainerr.Unavailable {
		t.Fatalf("audit down: %v, want Unavailable", err)
	}
}
