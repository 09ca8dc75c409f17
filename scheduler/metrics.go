package scheduler

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/damselfly-io/damselfly/internal/obs"
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
	registrations    [2]prometheus.Counter  // by host type: normal, seed
	pieceCost        [2]prometheus.Observer // by source: peer, origin
	trustRestored    *prometheus.CounterVec
	announceStreams  prometheus.Gauge
	inventoryStreams prometheus.Gauge
	inventoryHolders prometheus.Gauge
	inventoryRefused prometheus.Counter
	linkTests        prometheus.Counter
	topUps           prometheus.Counter
	sharesSettled    prometheus.Counter
	sunkRelays       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, compat bool) (*metrics, error) {
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
		announceStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "announce_streams",
			Help: "Announce streams open now (one per peer in a task).",
		}),
		inventoryStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "inventory_streams",
			Help: "Inventory streams open now (one per host holding cached tasks whose home this scheduler is).",
		}),
		inventoryHolders: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "inventory_holders",
			Help: "Holder peers that came from hosts' inventories (one per host and cached task).",
		}),
		inventoryRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "inventory_refused_total",
			Help: "Inventory entries refused (a spec that does not hold, a private or dfcache task, a shape or digests other than the task's).",
		}),
		linkTests: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "link_tests_paired_total",
			Help: "Link tests paired: a daemon named a partner to send its link test to.",
		}),
		topUps: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "top_up_shares_total",
			Help: "Paced shares of spare uplinks booked for downloading peers whose parents gave them less than they could take (top-ups).",
		}),
		sharesSettled: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "shares_settled_total",
			Help: "Paced shares of downloading parents cut towards what they delivered: the parent gave its receiver clearly less of its share than the receiver's other parents did.",
		}),
		sunkRelays: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "sunk_relays_total",
			Help: "Times a relay slower than its task's rate traded places with a faster full-rate child, so that it sinks to its pipeline's tail.",
		}),
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
	registrations := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "peer_registrations_total",
		Help: "Peers registered for a task, by host type (normal, seed).",
	}, []string{"host_type"})
	m.registrations[0] = registrations.WithLabelValues("normal")
	m.registrations[1] = registrations.WithLabelValues("seed")
	pieceCost := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: ns, Subsystem: sub, Name: "piece_cost_seconds",
		Help: "Time peers report for fetching one piece, by source (peer, origin).",
		// 1ms doubling up to ~33s, as the daemons' piece histogram.
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	}, []string{"source"})
	m.pieceCost[0] = pieceCost.WithLabelValues("peer")
	m.pieceCost[1] = pieceCost.WithLabelValues("origin")
	m.pieceSuccess = pieces.WithLabelValues("success")
	m.pieceFailed = pieces.WithLabelValues("failed")
	m.pieceCorrupt = pieces.WithLabelValues("corrupt")

	if reg == nil {
		return m, nil
	}
	cs := []prometheus.Collector{
		m.decisions, m.decisionDuration, peers, m.tasks, m.seedTriggers, pieces, m.peersLeft, m.slowParents,
		m.specRefused, m.contentCorrupt, m.trustRestored,
		m.announceStreams, m.inventoryStreams, m.inventoryHolders, m.inventoryRefused, m.linkTests, m.topUps, m.sharesSettled, m.sunkRelays,
		registrations, pieceCost,
	}
	if compat {
		// Dragonfly's names for dashboards built for it; host types as
		// Dragonfly names them (a seed peer is a "super" host).
		cs = append(cs,
			&obs.Alias{Name: "dragonfly_scheduler_download_peer_total",
				Help:   "Peers that started a download, by host type (Dragonfly name; from damselfly_scheduler_peer_registrations_total).",
				Labels: []string{"host_type"}, Src: registrations,
				Map: func(in map[string]string) (map[string]string, bool) {
					t := in["host_type"]
					if t == "seed" {
						t = "super"
					}
					return map[string]string{"host_type": t}, true
				}},
			&obs.Alias{Name: "dragonfly_scheduler_download_piece_cost_seconds",
				Help: "Time peers report for fetching one piece (Dragonfly name; from damselfly_scheduler_piece_cost_seconds, sources summed).",
				Src:  pieceCost, Map: func(map[string]string) (map[string]string, bool) { return nil, true }})
	}
	for _, c := range cs {
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

// registered counts a peer registration.
func (m *metrics) registered(seed bool) {
	if seed {
		m.registrations[1].Inc()
	} else {
		m.registrations[0].Inc()
	}
}

// pieceReported records a piece's reported cost; origin pieces have no parent.
func (m *metrics) pieceReported(fromOrigin bool, costNs int64) {
	if costNs <= 0 {
		return
	}
	i := 0
	if fromOrigin {
		i = 1
	}
	m.pieceCost[i].Observe(float64(costNs) / 1e9)
}
