package replay_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/credmatrix/credmatrix/clients/auditclient/auditclienttest"
	"github.com/credmatrix/credmatrix/clients/auditclient/leaf"
	"github.com/credmatrix/credmatrix/clients/auditclient/replay"
)

func scenario(t *testing.T) *replay.Replayer {
	t.Helper()
	r := replay.New()
	for i, e := range auditclienttest.Scenario() {
		e.Sequence = uint64(i)
		r.Apply(e)
	}
	return r
}

// scenarioLeaves replays the scenario from its leaf bytes (ApplyLeaf).
func scenarioLeaves(t *testing.T) *replay.Replayer {
	t.Helper()
	r := replay.New()
	for i, e := range auditclienttest.Scenario() {
		e.Sequence = uint64(i)
		data, err := leaf.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		l, err := replay.ReadLeaf(data)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.ApplyLeaf(l); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// TestLeavesReplayLikeEvents: replaying leaf bytes (only state-changing
// events decoded whole) answers every question exactly as replaying the
// decoded events does.
func TestLeavesReplayLikeEvents(t *testing.T) {
	want, got := scenario(t), scenarioLeaves(t)
	at := auditclienttest.At
	opt := cmp.AllowUnexported(replay.Session{})
	for s := -1; s <= 110; s++ {
		if diff := cmp.Diff(got.SessionsAt(at(s), replay.SessionFilter{}), want.SessionsAt(at(s), replay.SessionFilter{}), opt); diff != "" {
			t.Errorf("SessionsAt(%d) (-leaves +events):\n%s", s, diff)
		}
		if diff := cmp.Diff(got.GrantsAt(at(s), ""), want.GrantsAt(at(s), "")); diff != "" {
			t.Errorf("GrantsAt(%d) (-leaves +events):\n%s", s, diff)
		}
	}
	for _, sub := range []string{auditclienttest.Alice, auditclienttest.Billing, auditclienttest.GitHub + "#" + auditclienttest.Bob, "nobody"} {
		if diff := cmp.Diff(got.Timeline(sub), want.Timeline(sub)); diff != "" {
			t.Errorf("Timeline(%s) (-leaves +events):\n%s", sub, diff)
		}
	}
	if diff := cmp.Diff(got.KeyOps("", "", time.Time{}, time.Time{}), want.KeyOps("", "", time.Time{}, time.Time{})); diff != "" {
		t.Errorf("KeyOps (-leaves +events):\n%s", diff)
	}
	if got.Events() != want.Events() {
		t.Errorf("Events() = %d, want %d", got.Events(), want.Events())
	}
}

// TestReadLeafRefusesBrokenBytes: truncated or garbled leaf bytes are an
// error, never a half-read event.
func TestReadLeafRefusesBrokenBytes(t *testing.T) {
	e := auditclienttest.Scenario()[0]
	e.Sequence = 7
	data, err := leaf.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	l, err := replay.ReadLeaf(data)
	if err != nil || l.Sequence != 7 || !l.Time.Equal(e.GetTime().AsTime()) || l.Kind != e.GetKind() || l.Decision != e.GetDecision() ||
		l.Subject != e.GetActor().GetSubject() || l.Principal != e.GetActor().GetPrincipal() {
		t.Fatalf("ReadLeaf = %+v, %v; want the event's fields", l, err)
	}
	for _, bad := range [][]byte{data[:len(data)-1], {0x0a, 0x05, 'a'}, {0xff}} {
		if _, err := replay.ReadLeaf(bad); err == nil {
			t.Errorf("ReadLeaf(%x) succeeded", bad)
		}
	}
	// An actor subject that is not UTF-8.
	if _, err := replay.ReadLeaf([]byte{0x4a, 0x03, 0x1a, 0x01, 0xff}); err == nil {
		t.Error("ReadLeaf with a non-UTF-8 subject succeeded")
	}
}

func sessionIDs(ss []replay.Session) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.SessionID)
	}
	return out
}

func seqs(es []replay.Entry) []uint64 {
	var out []uint64
	for _, e := range es {
		out = append(out, e.Sequence)
	}
	return out
}

// TestScenario checks every replay question against the scripted story's
// known truth: issue, deny, expire, revoke, re-issue, grant, rotate.
func TestScenario(t *testing.T) {
	r := scenario(t)
	at := auditclienttest.At
	for _, tc := range []struct {
		name   string
		t      time.Time
		filter replay.SessionFilter
		want   []string
	}{
		{"sessions/before-anything", at(0).Add(-time.Second), replay.SessionFilter{}, nil},
		{"sessions/at-issue-instant", at(0), replay.SessionFilter{}, []string{"s1"}},
		{"sessions/two-live", at(10), replay.SessionFilter{}, []string{"s1", "s2"}},
		{"sessions/denial-issues-nothing", at(10), replay.SessionFilter{AccountID: auditclienttest.Prod, RoleName: "admin"}, nil},
		{"sessions/expired-at-expiry", at(20), replay.SessionFilter{}, []string{"s1"}},
		{"sessions/by-subject", at(38), replay.SessionFilter{Subject: auditclienttest.Alice}, []string{"s1", "s3"}},
		{"sessions/by-account-name", at(38), replay.SessionFilter{AccountID: "sandbox"}, []string{"s1", "s3"}},
		{"sessions/revoked", at(40), replay.SessionFilter{}, nil},
		{"sessions/issued-after-revocation", at(50), replay.SessionFilter{}, []string{"s4"}},
		{"sessions/other-account", at(50), replay.SessionFilter{AccountID: auditclienttest.Prod}, nil},
		{"sessions/s4-expired", at(105), replay.SessionFilter{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(sessionIDs(r.SessionsAt(tc.t, tc.filter)), tc.want); diff != "" {
				t.Errorf("SessionsAt(%s) (-got +want):\n%s", tc.t.Format(time.TimeOnly), diff)
			}
		})
	}
	t.Run("sessions/revocation-recorded", func(t *testing.T) {
		got := r.SessionsAt(at(38), replay.SessionFilter{})
		for _, s := range got {
			if !s.RevokedAt.Equal(at(40)) || s.RevokedBy != 8 {
				t.Errorf("session %s: revoked at %v by %d, want %v by 8", s.SessionID, s.RevokedAt, s.RevokedBy, at(40))
			}
		}
	})
	for _, tc := range []struct {
		name string
		got  []uint64
		want []uint64
	}{
		{"timeline/alice", seqs(r.Timeline(auditclienttest.Alice)), []uint64{0, 2, 7, 9}},
		{"timeline/by-principal", seqs(r.Timeline(auditclienttest.GitHub + "#" + auditclienttest.Bob)), []uint64{1}},
		{"timeline/billing", seqs(r.Timeline(auditclienttest.Billing)), []uint64{4, 6, 11, 12}},
		{"timeline/unknown", seqs(r.Timeline("nobody")), nil},
		{"keyops/confidential-eu", seqs(r.KeyOps("confidential", "eu-west-1", time.Time{}, time.Time{})), []uint64{4, 5, 6, 12}},
		{"keyops/window", seqs(r.KeyOps("confidential", "", at(21), at(56))), []uint64{5, 6}},
		{"keyops/any", seqs(r.KeyOps("", "", time.Time{}, time.Time{})), []uint64{4, 5, 6, 11, 12}},
		{"keyops/other-region", seqs(r.KeyOps("confidential", "us-east-1", time.Time{}, time.Time{})), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.got, tc.want); diff != "" {
				t.Errorf("(-got +want):\n%s", diff)
			}
		})
	}
	for _, tc := range []struct {
		name string
		t    time.Time
		want []string
	}{
		{"grants/before-creation", at(14), nil},
		{"grants/in-force", at(30), []string{"g1"}},
		{"grants/revoked", at(50), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, g := range r.GrantsAt(tc.t, "") {
				got = append(got, g.GrantID)
			}
			if diff := cmp.Diff(got, tc.want, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("GrantsAt (-got +want):\n%s", diff)
			}
		})
	}
}
