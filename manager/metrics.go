package manager

import (
	"context"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/damselfly-io/damselfly/internal/obs"
)

// componentsCollector reports the active schedulers, seed peers and peers
// (daemons) from the database at scrape time, so every replica tells the
// same and nothing goes stale.
type componentsCollector struct {
	m    *Manager
	desc *prometheus.Desc
}

func newComponentsCollector(m *Manager) *componentsCollector {
	return &componentsCollector{m: m, desc: prometheus.NewDesc("damselfly_manager_components",
		"Active components known to the manager, by type: scheduler and seed_peer (kept alive within keepalive_timeout), peer (daemons that asked for their schedulers within peer_ttl).",
		[]string{"type"}, nil)}
}

func (c *componentsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *componentsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m := c.m
	for _, q := range []struct {
		typ, table, col string
		since           int64
	}{
		{"scheduler", "schedulers", "last_keepalive", m.activeSince()},
		{"seed_peer", "seed_peers", "last_keepalive", m.activeSince()},
		{"peer", "peers", "last_seen", nowMs() - m.cfg.PeerTTL.D().Milliseconds()},
	} {
		var n int64
		if err := m.db.QueryRow(ctx, "SELECT COUNT(*) FROM "+q.table+" WHERE "+q.col+" >= ?", q.since).Scan(&n); err != nil {
			ch <- prometheus.NewInvalidMetric(c.desc, err)
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), q.typ)
	}
}

// buildInfo is the binary's version and commit, as the Go toolchain
// recorded them.
func buildInfo() (version, commit string) {
	version = "unknown"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return version, ""
	}
	version = bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			commit = s.Value
		}
	}
	return version, commit
}

// dragonflyAliases are Dragonfly's names of the manager's metrics
// (metrics.dragonfly_compat).
func dragonflyAliases(comps *componentsCollector) []prometheus.Collector {
	version, commit := buildInfo()
	return []prometheus.Collector{
		&obs.Alias{Name: "dragonfly_manager_peer_total",
			Help:   "Active peers (Dragonfly name; from damselfly_manager_components{type=\"peer\"}).",
			Labels: []string{"version", "commit"}, Src: comps,
			Map: func(in map[string]string) (map[string]string, bool) {
				return map[string]string{"version": version, "commit": commit}, in["type"] == "peer"
			}},
	}
}
