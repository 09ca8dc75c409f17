package daemon

import (
	"context"
	"fmt"
	"reflect"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/damselfly-io/damselfly/daemon/piece"
	"github.com/damselfly-io/damselfly/daemon/store"
)

// reloadable are the settings a config reload (SIGHUP) changes without a
// restart: limits and cache bounds. Everything else needs a restart.
type reloadable struct {
	downloadRate        int64
	uploadRate          int64
	uploadPeerRate      int64
	uploadMaxConcurrent int
	maxConcurrentOrigin int
	gcInterval          time.Duration
	policy              store.Policy
}

func reloadableOf(c Config) reloadable {
	return reloadable{
		downloadRate:        int64(c.Download.RateLimit),
		uploadRate:          int64(c.Upload.RateLimit),
		uploadPeerRate:      int64(c.Upload.PeerRateLimit),
		uploadMaxConcurrent: c.Upload.MaxConcurrent,
		maxConcurrentOrigin: c.Download.MaxConcurrentOrigin,
		gcInterval:          c.Cache.GCInterval.D(),
		policy: store.Policy{
			TTL:         c.Cache.TaskTTL.D(),
			HighBytes:   int64(c.Cache.HighWatermark),
			LowBytes:    int64(c.Cache.LowWatermark),
			HighPercent: c.Cache.HighWatermarkPercent,
			LowPercent:  c.Cache.LowWatermarkPercent,
		},
	}
}

// Reload applies a new configuration to the running daemon: the host-wide
// download and upload limits, the per-peer upload limit, the caps on
// concurrent uploads and origin fetches, and the cache's TTL, GC interval
// and watermarks change at once (transfers in progress follow the new
// limits). Other settings need a restart; Reload returns which of them
// differ, so the caller can say so. An invalid config changes nothing.
func (d *Daemon) Reload(cfg Config) (needRestart []string, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("reload: %w", err)
	}
	r := reloadableOf(cfg)
	d.limitsMu.Lock()
	d.limits = r
	piece.SetRate(d.dl, r.downloadRate)
	piece.SetRate(d.ul, r.uploadRate)
	d.originSlots.SetMax(r.maxConcurrentOrigin)
	if d.up != nil {
		d.up.SetLimits(r.uploadMaxConcurrent, r.uploadPeerRate)
	}
	d.limitsMu.Unlock()
	d.metrics.cache.setLimits(r)
	if d.store != nil {
		d.store.KickGC() // new watermarks apply now
	}
	// What did not change in place:
	old, cur := d.cfg, cfg
	old.Download.RateLimit, cur.Download.RateLimit = 0, 0
	old.Upload.RateLimit, cur.Upload.RateLimit = 0, 0
	old.Upload.PeerRateLimit, cur.Upload.PeerRateLimit = 0, 0
	old.Upload.MaxConcurrent, cur.Upload.MaxConcurrent = 0, 0
	old.Download.MaxConcurrentOrigin, cur.Download.MaxConcurrentOrigin = 0, 0
	old.Cache, cur.Cache = CacheConfig{}, CacheConfig{}
	if !reflect.DeepEqual(old, cur) {
		needRestart = append(needRestart, "settings other than limits and cache bounds")
	}
	d.log.Info("configuration reloaded", "download_rate_limit", cfg.Download.RateLimit, "upload_rate_limit", cfg.Upload.RateLimit,
		"upload_peer_rate_limit", cfg.Upload.PeerRateLimit, "upload_max_concurrent", cfg.Upload.MaxConcurrent,
		"max_concurrent_origin", cfg.Download.MaxConcurrentOrigin, "task_ttl", cfg.Cache.TaskTTL,
		"high_watermark", cfg.Cache.HighWatermark, "high_watermark_percent", cfg.Cache.HighWatermarkPercent)
	return needRestart, nil
}

func (d *Daemon) reloadable() reloadable {
	d.limitsMu.Lock()
	defer d.limitsMu.Unlock()
	return d.limits
}

// gcLoop runs garbage collection every GC interval, and at once when a write
// crosses a high watermark or the disk is full.
func (d *Daemon) gcLoop(ctx context.Context) {
	d.runGC()
	for {
		interval := d.reloadable().gcInterval
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-d.store.GCKicks():
			t.Stop()
		}
		d.runGC()
	}
}

// runGC runs one GC pass; tasks being downloaded are busy and stay.
func (d *Daemon) runGC() {
	res, err := d.store.GC(d.reloadable().policy, d.downloading)
	if err != nil {
		d.log.Warn("cache gc", "err", err)
	}
	for _, e := range res.Evicted {
		d.inventory().remove(e.TaskID)
		d.metrics.cache.evictions.WithLabelValues(e.Reason).Inc()
		d.metrics.cache.evictedBytes.Add(float64(e.Bytes))
	}
	d.metrics.cache.size.Set(float64(res.Bytes))
	var st unix.Statfs_t
	if unix.Statfs(d.cfg.DataDir, &st) == nil && st.Blocks > 0 {
		d.metrics.cache.fsUsed.Set(float64(st.Blocks-st.Bfree) / float64(st.Blocks))
	}
	d.metrics.cache.tasks.Set(float64(res.Tasks))
	d.metrics.cache.gcRuns.Inc()
}

// downloading reports whether task id's conductor is still fetching it.
func (d *Daemon) downloading(id string) bool {
	d.mu.Lock()
	c, ok := d.conductors[id]
	d.mu.Unlock()
	if !ok {
		return false
	}
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

type cacheMetrics struct {
	size         prometheus.Gauge
	tasks        prometheus.Gauge
	evictions    *prometheus.CounterVec
	evictedBytes prometheus.Counter
	gcRuns       prometheus.Counter
	limit        *prometheus.GaugeVec
	// cache use against its watermarks, for dashboards and alerts
	watermarkBytes *prometheus.GaugeVec
	watermarkRatio *prometheus.GaugeVec
	fsUsed         prometheus.Gauge
}

func newCacheMetrics(r prometheus.Registerer) *cacheMetrics {
	m := &cacheMetrics{
		size: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "damselfly_daemon_cache_size_bytes", Help: "Bytes the cached tasks take on disk, as of the last GC pass."}),
		tasks: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "damselfly_daemon_cache_tasks", Help: "Tasks in the cache, as of the last GC pass."}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "damselfly_daemon_cache_evictions_total", Help: "Tasks evicted from the cache, by reason (ttl, watermark)."}, []string{"reason"}),
		evictedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "damselfly_daemon_cache_evicted_bytes_total", Help: "Bytes freed by evictions."}),
		gcRuns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "damselfly_daemon_cache_gc_runs_total", Help: "Cache garbage collection passes."}),
		limit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "damselfly_daemon_limit",
			Help: "Configured limits in force (0: none): download_rate, upload_rate, upload_peer_rate (bytes/s), upload_max_concurrent, max_concurrent_origin."},
			[]string{"limit"}),
		watermarkBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "damselfly_daemon_cache_watermark_bytes",
			Help: "Cache size watermarks in force, by level (high starts eviction, low is where it stops; 0: none)."}, []string{"level"}),
		watermarkRatio: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "damselfly_daemon_cache_watermark_ratio",
			Help: "File-system use watermarks in force, as a fraction of the cache's file system, by level (high, low; 0: none)."}, []string{"level"}),
		fsUsed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "damselfly_daemon_cache_fs_used_ratio",
			Help: "Used fraction of the cache's file system, as of the last GC pass."}),
	}
	if r != nil {
		r.MustRegister(m.size, m.tasks, m.evictions, m.evictedBytes, m.gcRuns, m.limit, m.watermarkBytes, m.watermarkRatio, m.fsUsed)
	}
	return m
}

func (m *cacheMetrics) setLimits(r reloadable) {
	m.limit.WithLabelValues("download_rate").Set(float64(r.downloadRate))
	m.limit.WithLabelValues("upload_rate").Set(float64(r.uploadRate))
	m.limit.WithLabelValues("upload_peer_rate").Set(float64(r.uploadPeerRate))
	m.limit.WithLabelValues("upload_max_concurrent").Set(float64(r.uploadMaxConcurrent))
	m.limit.WithLabelValues("max_concurrent_origin").Set(float64(r.maxConcurrentOrigin))
	m.watermarkBytes.WithLabelValues("high").Set(float64(r.policy.HighBytes))
	m.watermarkBytes.WithLabelValues("low").Set(float64(r.policy.LowBytes))
	m.watermarkRatio.WithLabelValues("high").Set(r.policy.HighPercent / 100)
	m.watermarkRatio.WithLabelValues("low").Set(r.policy.LowPercent / 100)
}
