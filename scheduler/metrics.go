package scheduler

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Decision labels.
const (
	decisionParents      = "parents"
	decisionBackToSource = "back_to_source"
	decisionWait         = "wait"
	decisionFail         = "fail"
)

type metrics struct {
	decisions        *prometheus.CounterVec
	decisionParents  prometheus.Counter
	decisionB2S      prometheus.Counter
	decisionWait     prometheus.Counter
	decisionFail     prometheus.Counter
	decisionDuration prometheus.Histogram
	peers            [numStates]prometheus.Gauge
	tasks            prometheus.Gauge
	seedTriggers     prometheus.Counter
	pieceSuccess     prometheus.Counter
	pieceFailed      prometheus.Counter
	pieceCorrupt     prometheus.Counter
	peersLeft        prometheus.Counter
	slowParents      prometheus.Counter
	specRefused      prometheus.Counter // registers refused: spec or role
	contentCorrupt   *prometheus.CounterVec
	trustRestored    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "damselfly", "scheduler"
	m := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "decisions_total",
			Help: "Scheduling decisions sent to peers, by decision.",
		}, []string{"decision"}),
		decisionDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "decision_duration_seconds",
			Help: "Time to compute one scheduling decision (excluding lock waits and sending).",
			// 10µs doubling up to ~80ms: the target is well under 5ms.
			Buckets: prometheus.ExponentialBuckets(10e-6, 2, 14),
		}),
		tasks: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "tasks",
			Help: "Tasks the scheduler knows.",
		}),
		seedTriggers: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "seed_triggers_total",
			Help: "SeedTask messages pushed to seed peers.",
		}),
		slowParents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "damselfly_scheduler_slow_parents_replaced_total",
			Help: "Parent links dropped because the parent's host uploaded far below the task's median.",
		}),
		specRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "registers_refused_total",
			Help: "Registers refused: a task ID that does not follow from its spec, a URL scheme the swarm does not fetch, or a role the caller lacks.",
		}),
		contentCorrupt: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "content_corrupt_total",
			Help: "Whole-content digest failures and their outcome (reported, self, ignored, confirmed, cleared).",
		}, []string{"outcome"}),
		trustRestored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "trust_restored_total",
			Help: "Tasks whose piece digests were restored from holders' re-announcements, by rule (seed, content_digest, two_hosts).",
		}, []string{"rule"}),
		peersLeft: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "peers_left_total",
			Help: "Peers removed from their task (stream ended, failed, replaced or dropped).",
		}),
	}
	peers := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: ns, Subsystem: sub, Name: "peers",
		Help: "Peers the scheduler tracks, by state.",
	}, []string{"state"})
	pieces := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "piece_results_total",
		Help: "Piece results reported by peers, by result.",
	}, []string{"result"})
	// Resolve label values once: the hot path then only touches atomics.
	m.decisionParents = m.decisions.WithLabelValues(decisionParents)
	m.decisionB2S = m.decisions.WithLabelValues(decisionBackToSource)
	m.decisionWait = m.decisions.WithLabelValues(decisionWait)
	m.decisionFail = m.decisions.WithLabelValues(decisionFail)
	for st := range numStates {
		if st == stateLeft {
			continue // left peers are no longer tracked; see peers_left_total
		}
		m.peers[st] = peers.WithLabelValues(st.String())
	}
	m.pieceSuccess = pieces.WithLabelValues("success")
	m.pieceFailed = pieces.WithLabelValues("failed")
	m.pieceCorrupt = pieces.WithLabelValues("corrupt")

	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{
		m.decisions, m.decisionDuration, peers, m.tasks, m.seedTriggers, pieces, m.peersLeft, m.slowParents,
		m.specRefused, m.contentCorrupt, m.trustRestored,
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register scheduler metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) decision(kind string) {
	switch kind {
	case decisionParents:
		m.decisionParents.Inc()
	case decisionBackToSource:
		m.decisionB2S.Inc()
	case decisionWait:
		m.decisionWait.Inc()
	case decisionFail:
		m.decisionFail.Inc()
	}
}

// stateChanged moves a peer between the per-state gauges.
func (m *metrics) stateChanged(from, to peerState) {
	if from == to {
		return
	}
	if g := m.peers[from]; g != nil && from != stateNone {
		g.Dec()
	}
	if g := m.peers[to]; g != nil && to != stateNone {
		g.Inc()
	}
}
