package auditmetrics_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/credmatrix/credmatrix/clients/auditclient/checkpoint"
	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/credmatrix/credmatrix/services/audit/auditmetrics"
	"github.com/credmatrix/credmatrix/services/audit/sqlite"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func ev(id string, k auditv1.Kind, d auditv1.Decision) *auditv1.Event {
	return &auditv1.Event{Id: id, Time: timestamppb.Now(), Kind: k, Decision: d}
}

// TestLogMetrics runs a real log (SQLite, signer, group commit) over the
// wrapped store and checks events, commits, checkpoints and the gauges.
func TestLogMetrics(t *testing.T) {
	ctx := context.Background()
	sq, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := auditmetrics.New(reg, "sqlite")
	store := m.Store(ctx, sq)
	skey, _, err := checkpoint.GenerateKey("test.example/log")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := checkpoint.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.Open(ctx, store, audit.WithSigner(signer))
	if err != nil {
		t.Fatal(err)
	}
	m.ObserveLog(l)
	if got := testutil.ToFloat64(gauge(t, reg, auditmetrics.CheckpointAge)); got != 0 {
		t.Errorf("checkpoint age before any checkpoint = %v, want 0", got)
	}
	if _, err := l.Append(ctx, "spiffe://t/broker", []*auditv1.Event{
		ev("a", auditv1.Kind_KIND_SESSION_ISSUE, auditv1.Decision_DECISION_ALLOW),
		ev("b", auditv1.Kind_KIND_SESSION_ISSUE, auditv1.Decision_DECISION_DENY),
		ev("c", auditv1.Kind_KIND_KEY_ENCRYPT, auditv1.Decision_DECISION_ALLOW),
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.LatestCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	defer sq.Close()

	got := map[string]float64{
		"session_issue/allow": testutil.ToFloat64(eventsCounter(t, reg, "session_issue", "allow")),
		"session_issue/deny":  testutil.ToFloat64(eventsCounter(t, reg, "session_issue", "deny")),
		"key_encrypt/allow":   testutil.ToFloat64(eventsCounter(t, reg, "key_encrypt", "allow")),
		"tree_size":           testutil.ToFloat64(gauge(t, reg, auditmetrics.TreeSize)),
		"queue":               testutil.ToFloat64(gauge(t, reg, auditmetrics.QueueEvents)),
		"checkpoint_lag":      testutil.ToFloat64(gauge(t, reg, auditmetrics.CheckpointSizeBehind)),
	}
	want := map[string]float64{"session_issue/allow": 1, "session_issue/deny": 1, "key_encrypt/allow": 1, "tree_size": 3, "queue": 0, "checkpoint_lag": 0}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("(-got +want):\n%s", diff)
	}
	if n := testutil.CollectAndCount(reg, auditmetrics.CommitDuration); n != 1 {
		t.Errorf("commit duration series %d", n)
	}
	age := testutil.ToFloat64(gauge(t, reg, auditmetrics.CheckpointAge))
	if age <= 0 || age > 60 {
		t.Errorf("checkpoint age %v s right after signing", age)
	}
	if n := testutil.CollectAndCount(reg, auditmetrics.CheckpointsTotal); n != 1 {
		t.Errorf("checkpoints series %d", n)
	}
}

// gauge finds the one registered collector of a gauge metric.
func gauge(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	return &filtered{reg: reg, name: name}
}

func eventsCounter(t *testing.T, reg *prometheus.Registry, kind, decision string) prometheus.Collector {
	t.Helper()
	return &filtered{reg: reg, name: auditmetrics.EventsTotal, labels: map[string]string{"kind": kind, "decision": decision}}
}

// filtered is a collector exposing the series of one metric of reg whose
// labels match, for testutil.ToFloat64.
type filtered struct {
	reg    *prometheus.Registry
	name   string
	labels map[string]string
}

func (f *filtered) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(f, ch) }

func (f *filtered) Collect(ch chan<- prometheus.Metric) {
	mfs, _ := f.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != f.name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range f.labels {
				if got[k] != v {
					continue metric
				}
			}
			v := m.GetGauge().GetValue()
			if m.Counter != nil {
				v = m.GetCounter().GetValue()
			}
			ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(f.name, "test", nil, nil), prometheus.UntypedValue, v)
		}
	}
}
