// Package auditmetrics instruments the audit service by wrapping its
// store (commit latency, batch size, events by kind and decision,
// checkpoints) and reading the log's own gauges (queue depth, tree size,
// checkpoint age) at scrape time. The audit domain package stays free of
// Prometheus.
//
// Label values are bounded and never secret: the store backend name and
// the event kind and decision enums. Subjects, ids and hashes are never
// labels.
package auditmetrics

import (
	"context"
	"strings"
	"sync/atomic"
	"time"

	"github.com/credmatrix/credmatrix/platform/metrics"
	"github.com/credmatrix/credmatrix/services/audit"
	"github.com/prometheus/client_golang/prometheus"
)

// Metric names.
const (
	EventsTotal          = "credmatrix_audit_events_total"
	CommitDuration       = "credmatrix_audit_commit_duration_seconds"
	CommitBatchEvents    = "credmatrix_audit_commit_batch_events"
	CommitErrorsTotal    = "credmatrix_audit_commit_errors_total"
	CheckpointsTotal     = "credmatrix_audit_checkpoints_total"
	CheckpointAge        = "credmatrix_audit_checkpoint_age_seconds"
	QueueEvents          = "credmatrix_audit_queue_events"
	TreeSize             = "credmatrix_audit_tree_size"
	CheckpointSizeBehind = "credmatrix_audit_checkpoint_lag_events"
)

// Metrics are the audit service's metrics.
type Metrics struct {
	now       func() time.Time
	events    *prometheus.CounterVec
	commitDur prometheus.Observer
	batch     prometheus.Observer
	commitErr prometheus.Counter
	cps       prometheus.Counter
	// lastCPTime is the time (unix nanoseconds) of the newest stored
	// checkpoint; 0 when there is none.
	lastCPTime atomic.Int64
	reg        prometheus.Registerer
}

// New creates the audit metrics for a store named storeName ("sqlite",
// "postgres") and registers them with reg (nil: not registered).
func New(reg prometheus.Registerer, storeName string) *Metrics {
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: EventsTotal,
		Help: "Events made durable by this process, by kind and decision.",
	}, []string{"kind", "decision"})
	commitDur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    CommitDuration,
		Help:    "Time of one group commit in the store (one transaction, one fsync), by store.",
		Buckets: metrics.LatencyBuckets,
	}, []string{"store"})
	batch := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    CommitBatchEvents,
		Help:    "Events per group commit, by store.",
		Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000},
	}, []string{"store"})
	commitErr := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: CommitErrorsTotal,
		Help: "Group commits the store refused or failed (the appends answer UNAVAILABLE), by store.",
	}, []string{"store"})
	cps := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: CheckpointsTotal,
		Help: "Signed checkpoints stored by this process, by store.",
	}, []string{"store"})
	m := &Metrics{
		now:       time.Now,
		events:    events,
		commitDur: commitDur.WithLabelValues(storeName),
		batch:     batch.WithLabelValues(storeName),
		commitErr: commitErr.WithLabelValues(storeName),
		cps:       cps.WithLabelValues(storeName),
		reg:       reg,
	}
	if reg != nil {
		reg.MustRegister(events, commitDur, batch, commitErr, cps,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: CheckpointAge,
				Help: "Seconds since the newest signed checkpoint was made (0 before the first): every commit batch is signed, so it is the time since the last append.",
			}, m.checkpointAge))
	}
	return m
}

func (m *Metrics) checkpointAge() float64 {
	t := m.lastCPTime.Load()
	if t == 0 {
		return 0
	}
	return m.now().Sub(time.Unix(0, t)).Seconds()
}

// ObserveLog registers the gauges read from the open log at scrape time:
// QueueEvents (events waiting for a commit: the audit lag in events),
// TreeSize and CheckpointSizeBehind (durable events not yet covered by a
// signed checkpoint).
func (m *Metrics) ObserveLog(l *audit.Log) {
	if m.reg == nil {
		return
	}
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: QueueEvents,
			Help: "Events waiting for a group commit (the audit lag, in events); appends get RESOURCE_EXHAUSTED at commit.queue_limit.",
		}, func() float64 { return float64(l.Queued()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: TreeSize,
			Help: "Durable events in the log (the Merkle tree size).",
		}, func() float64 { return float64(l.Size()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: CheckpointSizeBehind,
			Help: "Durable events not yet covered by a signed checkpoint.",
		}, func() float64 {
			size, cp := l.Size(), l.SignedSize()
			if cp > size {
				return 0
			}
			return float64(size - cp)
		}),
	)
}

// Store wraps s so its commits and checkpoints are measured. It reads the
// newest stored checkpoint once, for the checkpoint age.
func (m *Metrics) Store(ctx context.Context, s audit.Store) audit.Store {
	if cp, ok, err := s.LatestCheckpoint(ctx); err == nil && ok {
		m.noteCheckpoint(cp)
	}
	return &store{Store: s, m: m}
}

func (m *Metrics) noteCheckpoint(cp audit.StoredCheckpoint) {
	m.lastCPTime.Store(cp.Time.UnixNano())
}

func (m *Metrics) committed(start time.Time, b audit.Batch, err error) {
	m.commitDur.Observe(time.Since(start).Seconds())
	if err != nil {
		m.commitErr.Inc()
		return
	}
	m.batch.Observe(float64(len(b.Records)))
	for _, r := range b.Records {
		m.events.WithLabelValues(enumLabel(r.Event.GetKind().String(), "KIND_"), enumLabel(r.Event.GetDecision().String(), "DECISION_")).Inc()
	}
	if b.Checkpoint != nil {
		m.cps.Inc()
		m.noteCheckpoint(*b.Checkpoint)
	}
}

// enumLabel turns KIND_SESSION_ISSUE into session_issue.
func enumLabel(s, prefix string) string { return strings.ToLower(strings.TrimPrefix(s, prefix)) }

type store struct {
	audit.Store
	m *Metrics
}

func (s *store) Append(ctx context.Context, b audit.Batch) error {
	start := time.Now()
	err := s.Store.Append(ctx, b)
	s.m.committed(start, b, err)
	return err
}

func (s *store) AddCheckpoint(ctx context.Context, cp audit.StoredCheckpoint) error {
	err := s.Store.AddCheckpoint(ctx, cp)
	if err == nil {
		s.m.cps.Inc()
		s.m.noteCheckpoint(cp)
	}
	return err
}
