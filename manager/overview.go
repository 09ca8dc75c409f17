package manager

import (
	"context"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
)

// Sample is the state of one cluster (or of all) at one moment. Byte and
// count fields are running totals: a scheduler's first sample adds all it
// counted since it started, later ones what its counters grew by (a scheduler that
// restarted, told by its start time, counts from zero again), so the
// difference between two samples is what happened in between; the others
// are the state then.
type Sample struct {
	At              int64   `json:"at"`
	PeerBytes       int64   `json:"peer_bytes"`
	OriginBytes     int64   `json:"origin_bytes"`
	BackToSource    int64   `json:"back_to_source"`
	Registrations   int64   `json:"registrations"`
	ActivePeers     int     `json:"active_peers"`
	ActiveDownloads int     `json:"active_downloads"`
	Tasks           int     `json:"tasks"`
	Hosts           int     `json:"hosts"`
	LatencyP50      float64 `json:"piece_latency_p50"`
	LatencyP90      float64 `json:"piece_latency_p90"`
	LatencyP99      float64 `json:"piece_latency_p99"`
	Schedulers      int     `json:"schedulers"`
}

// HostRate is a host's traffic as its schedulers report it.
type HostRate struct {
	UploadBytes, DownloadBytes int64
	UploadRate, DownloadRate   float64 // bytes/s over the last interval
	at                         int64
}

// hostForget is how long a host's traffic is kept after no scheduler
// reports it any more.
const hostForget = 10 * time.Minute

// overview keeps bounded rings of samples per cluster and the hosts'
// latest traffic.
type overview struct {
	mu     sync.Mutex
	max    int
	series map[int64][]Sample                   // cluster ID → ring (oldest first)
	last   map[int64]*schedulerv1.StatsResponse // scheduler ID → last stats
	totals map[int64]Sample                     // cluster ID → running totals
	hosts  map[string]HostRate
}

func newOverview(samples int) *overview {
	return &overview{max: samples, series: map[int64][]Sample{}, last: map[int64]*schedulerv1.StatsResponse{},
		totals: map[int64]Sample{}, hosts: map[string]HostRate{}}
}

func (o *overview) host(id string) (HostRate, bool) {
	if o == nil {
		return HostRate{}, false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	h, ok := o.hosts[id]
	return h, ok
}

// delta is what a counter grew by since the previous stats (all of it when
// it went back, as a safety net; a restart is told by the start time).
func delta(cur, prev int64) int64 {
	if cur >= prev {
		return cur - prev
	}
	return cur
}

// add folds one round of stats (scheduler i of refs answered stats[i]) in.
func (o *overview) add(now time.Time, refs []schedRef, stats []*schedulerv1.StatsResponse) {
	o.mu.Lock()
	defer o.mu.Unlock()
	at := now.UnixMilli()
	cur := map[int64]*Sample{}
	lat := map[int64][3]float64{}
	for i, st := range stats {
		cid := refs[i].ClusterID
		s := cur[cid]
		if s == nil {
			t := o.totals[cid]
			s = &Sample{At: at, PeerBytes: t.PeerBytes, OriginBytes: t.OriginBytes, BackToSource: t.BackToSource, Registrations: t.Registrations}
			cur[cid] = s
		}
		prev := o.last[refs[i].ID]
		if prev == nil || prev.GetStartedAtMs() != st.GetStartedAtMs() {
			prev = &schedulerv1.StatsResponse{} // new, or restarted: counts from zero
		}
		s.PeerBytes += delta(st.GetPeerBytes(), prev.GetPeerBytes())
		s.OriginBytes += delta(st.GetOriginBytes(), prev.GetOriginBytes())
		s.BackToSource += delta(st.GetBackToSource(), prev.GetBackToSource())
		s.Registrations += delta(st.GetRegistrations(), prev.GetRegistrations())
		s.ActivePeers += int(st.GetActivePeers())
		s.ActiveDownloads += int(st.GetActiveDownloads())
		s.Tasks += int(st.GetTasks())
		s.Hosts += int(st.GetHosts())
		s.Schedulers++
		// The slowest scheduler's quantiles stand for the cluster: an
		// operator looks for the worst.
		l := lat[cid]
		l[0], l[1], l[2] = max(l[0], st.GetPieceLatencyP50()), max(l[1], st.GetPieceLatencyP90()), max(l[2], st.GetPieceLatencyP99())
		lat[cid] = l
		o.last[refs[i].ID] = st
		for _, h := range st.GetHostTraffic() {
			old, seen := o.hosts[h.GetHostId()]
			n := HostRate{UploadBytes: h.GetUploadBytes(), DownloadBytes: h.GetDownloadBytes(), at: at}
			if seen && at > old.at {
				secs := float64(at-old.at) / 1000
				n.UploadRate = float64(delta(n.UploadBytes, old.UploadBytes)) / secs
				n.DownloadRate = float64(delta(n.DownloadBytes, old.DownloadBytes)) / secs
			}
			o.hosts[h.GetHostId()] = n
		}
	}
	// Hosts no scheduler has reported for a while are gone.
	for id, h := range o.hosts {
		if at-h.at > hostForget.Milliseconds() {
			delete(o.hosts, id)
		}
	}
	for cid, s := range cur {
		l := lat[cid]
		s.LatencyP50, s.LatencyP90, s.LatencyP99 = l[0], l[1], l[2]
		o.totals[cid] = *s
		ring := o.series[cid]
		// Two samples in one millisecond (the ticker and a ?refresh=1):
		// the later one, cumulative like every sample, replaces the
		// earlier, or the snapshot's sum over a sample time would count
		// the cluster twice.
		if n := len(ring); n > 0 && ring[n-1].At >= s.At {
			s.At = ring[n-1].At
			ring = ring[:n-1]
		}
		ring = append(ring, *s)
		if len(ring) > o.max {
			ring = ring[len(ring)-o.max:]
		}
		o.series[cid] = ring
	}
}

// sample asks every active scheduler for its stats once.
func (m *Manager) sample(ctx context.Context) {
	scheds, err := m.activeSchedulers(ctx, nil)
	if err != nil {
		m.log.Warn("overview sample", "err", err)
		return
	}
	stats, refs, _ := fanOut(ctx, m, scheds, func(ctx context.Context, c schedulerv1.SchedulerClient) (*schedulerv1.StatsResponse, error) {
		return c.Stats(ctx, &schedulerv1.StatsRequest{})
	})
	m.overview.add(time.Now(), refs, stats)
}

// sampleLoop samples every SampleInterval until ctx ends.
func (m *Manager) sampleLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.Console.SampleInterval.D())
	defer t.Stop()
	m.sample(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.sample(ctx)
		}
	}
}

// ClusterOverview is one cluster's latest sample and its series.
type ClusterOverview struct {
	ClusterID int64    `json:"cluster_id"`
	Current   Sample   `json:"current"`
	Series    []Sample `json:"series"`
}

// Overview is what GET /api/v1/overview returns: the sum over the
// clusters (current and series, aligned on sample times) and each cluster.
type Overview struct {
	IntervalMs int64             `json:"interval_ms"`
	Current    Sample            `json:"current"`
	Series     []Sample          `json:"series"`
	Clusters   []ClusterOverview `json:"clusters"`
}

func (o *overview) snapshot(interval time.Duration) Overview {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := Overview{IntervalMs: interval.Milliseconds(), Series: []Sample{}, Clusters: []ClusterOverview{}}
	sum := map[int64]*Sample{}
	for cid, ring := range o.series {
		c := ClusterOverview{ClusterID: cid, Series: append([]Sample(nil), ring...)}
		if len(ring) > 0 {
			c.Current = ring[len(ring)-1]
		}
		out.Clusters = append(out.Clusters, c)
		for _, s := range ring {
			a := sum[s.At]
			if a == nil {
				a = &Sample{At: s.At}
				sum[s.At] = a
			}
			a.PeerBytes += s.PeerBytes
			a.OriginBytes += s.OriginBytes
			a.BackToSource += s.BackToSource
			a.Registrations += s.Registrations
			a.ActivePeers += s.ActivePeers
			a.ActiveDownloads += s.ActiveDownloads
			a.Tasks += s.Tasks
			a.Hosts += s.Hosts
			a.Schedulers += s.Schedulers
			a.LatencyP50, a.LatencyP90, a.LatencyP99 = max(a.LatencyP50, s.LatencyP50), max(a.LatencyP90, s.LatencyP90), max(a.LatencyP99, s.LatencyP99)
		}
	}
	sort.Slice(out.Clusters, func(i, j int) bool { return out.Clusters[i].ClusterID < out.Clusters[j].ClusterID })
	for _, s := range sum {
		out.Series = append(out.Series, *s)
	}
	sort.Slice(out.Series, func(i, j int) bool { return out.Series[i].At < out.Series[j].At })
	if len(out.Series) > 0 {
		out.Current = out.Series[len(out.Series)-1]
	}
	return out
}

func (m *Manager) handleOverview(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("refresh") == "1" {
		m.sample(r.Context())
	}
	writeJSON(w, http.StatusOK, m.overview.snapshot(m.cfg.Console.SampleInterval.D()))
}
