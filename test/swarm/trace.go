package swarm

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"
)

// traceInterval is how often a run samples every host link's counters.
const traceInterval = 500 * time.Millisecond

// linkTrace samples the byte counters of every host's link during a run:
// the bridge-side end of each host's veth, in the switch namespace, where
// what the port receives is the host's upload and what it sends is the
// host's download. One `ip` call reads them all. It shows which uplinks sit
// idle while hosts are behind, which the completion times alone cannot.
type linkTrace struct {
	netw  *Network
	hosts []*Host // those with a link of their own
	t0    time.Time

	mu      sync.Mutex
	samples []linkSample
	err     error
}

// linkSample is every traced host's cumulative counters at T seconds after
// the start: Up[i] and Down[i] for hosts[i].
type linkSample struct {
	T        float64
	Up, Down []int64
}

func newLinkTrace(n *Network) *linkTrace {
	lt := &linkTrace{netw: n}
	for _, h := range n.Hosts {
		if h.On == "" && h.port != "" {
			lt.hosts = append(lt.hosts, h)
		}
	}
	return lt
}

// portCounters reads every port in the switch namespace: name → rx, tx bytes.
func (n *Network) portCounters(ctx context.Context) (map[string][2]int64, error) {
	out, err := run(ctx, "ip", "-n", n.switchNS, "-j", "-s", "link", "show")
	if err != nil {
		return nil, err
	}
	var links []ipLink
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("parse port stats in %s: %w", n.switchNS, err)
	}
	m := make(map[string][2]int64, len(links))
	for _, l := range links {
		m[l.Name] = [2]int64{l.Stats64.RX.Bytes, l.Stats64.TX.Bytes}
	}
	return m, nil
}

// sample takes one sample, timed from lt.t0.
func (lt *linkTrace) sample(ctx context.Context) {
	m, err := lt.netw.portCounters(ctx)
	now := time.Now()
	lt.mu.Lock()
	defer lt.mu.Unlock()
	if err != nil {
		if lt.err == nil {
			lt.err = err
		}
		return
	}
	s := linkSample{T: now.Sub(lt.t0).Seconds(), Up: make([]int64, len(lt.hosts)), Down: make([]int64, len(lt.hosts))}
	for i, h := range lt.hosts {
		c := m[h.port]
		s.Up[i], s.Down[i] = c[0], c[1]
	}
	lt.samples = append(lt.samples, s)
}

// run samples every traceInterval, from t0 on, until ctx ends.
func (lt *linkTrace) run(ctx context.Context, t0 time.Time) {
	lt.mu.Lock()
	lt.t0 = t0
	lt.mu.Unlock()
	tick := time.NewTicker(traceInterval)
	defer tick.Stop()
	for {
		lt.sample(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// upUse is the share of host i's uplink capacity it used from the first
// sample to time t (seconds after the start), or -1 if the trace cannot say.
func (lt *linkTrace) upUse(i int, t float64) float64 {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	if len(lt.samples) < 2 || t <= 0 || lt.hosts[i].Up <= 0 {
		return -1
	}
	first := lt.samples[0]
	last := first
	for _, s := range lt.samples[1:] {
		if s.T > t {
			break
		}
		last = s
	}
	if last.T <= first.T {
		return -1
	}
	bytes := float64(last.Up[i] - first.Up[i])
	return bytes * 8 / (float64(lt.hosts[i].Up) * (last.T - first.T))
}

// write saves the trace as a table: one row per sample and host, with the
// bytes the host's link carried up and down since the first sample.
func (lt *linkTrace) write(path string) error {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "t_s\thost\tup_bytes\tdown_bytes")
	if len(lt.samples) > 0 {
		first := lt.samples[0]
		for _, s := range lt.samples {
			for i, h := range lt.hosts {
				fmt.Fprintf(w, "%.2f\t%s\t%d\t%d\n", s.T, h.Name, s.Up[i]-first.Up[i], s.Down[i]-first.Down[i])
			}
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// qdiscDrops is the packets dropped by the root qdisc of dev in ns (the
// tbf that shapes the link: a full queue drops).
func qdiscDrops(ctx context.Context, ns, dev string) (int64, error) {
	out, err := run(ctx, "tc", "-n", ns, "-s", "-j", "qdisc", "show", "dev", dev)
	if err != nil {
		return 0, err
	}
	var qs []struct {
		Root  bool  `json:"root"`
		Drops int64 `json:"drops"`
	}
	if err := json.Unmarshal(out, &qs); err != nil {
		return 0, fmt.Errorf("parse qdisc stats of %s in %s: %w", dev, ns, err)
	}
	for _, q := range qs {
		if q.Root {
			return q.Drops, nil
		}
	}
	return 0, fmt.Errorf("no root qdisc on %s in %s", dev, ns)
}

// drops is every traced host's tbf drops: on its uplink (eth0 in its
// namespace) and on its downlink (its port in the switch namespace).
func (lt *linkTrace) drops(ctx context.Context) ([][2]int64, error) {
	out := make([][2]int64, len(lt.hosts))
	for i, h := range lt.hosts {
		up, err := qdiscDrops(ctx, h.NS, "eth0")
		if err != nil {
			return nil, err
		}
		down, err := qdiscDrops(ctx, lt.netw.switchNS, h.port)
		if err != nil {
			return nil, err
		}
		out[i] = [2]int64{up, down}
	}
	return out, nil
}

// LinkStats is what a run's link trace says about one host.
type LinkStats struct {
	// UpUse is the share of the host's uplink capacity it used from the
	// start to the median peer's finish (-1: unknown).
	UpUse     float64 `json:"uplink_use_to_median"`
	UpDrops   int64   `json:"uplink_tbf_drops"`
	DownDrops int64   `json:"downlink_tbf_drops"`
}

// stats sums the trace up per host name, with drops between d0 and d1
// (either may be nil).
func (lt *linkTrace) stats(tMedian float64, d0, d1 [][2]int64) map[string]LinkStats {
	m := make(map[string]LinkStats, len(lt.hosts))
	for i, h := range lt.hosts {
		s := LinkStats{UpUse: lt.upUse(i, tMedian)}
		if d0 != nil && d1 != nil {
			s.UpDrops, s.DownDrops = d1[i][0]-d0[i][0], d1[i][1]-d0[i][1]
		}
		m[h.Name] = s
	}
	return m
}
