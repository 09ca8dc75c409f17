package daemon

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/damselfly-io/damselfly/internal/config"
)

// Config is the daemon's configuration. Zero values are not defaults: start
// from DefaultConfig.
type Config struct {
	// Scheduler is host:port of the scheduler; empty runs without P2P
	// (every download goes to the origin).
	Scheduler string `yaml:"scheduler"`
	// DataDir holds the cache.
	DataDir string `yaml:"data_dir"`
	// AdvertiseIP is the address other peers dial; empty picks the first
	// non-loopback IPv4 address (or 127.0.0.1).
	AdvertiseIP string `yaml:"advertise_ip"`
	// ListenIP is where the peer and upload ports listen.
	ListenIP string `yaml:"listen_ip"`
	// PeerPort serves piece availability (gRPC); 0 picks a free port.
	PeerPort int `yaml:"peer_port"`
	// UploadPort serves piece bytes (HTTP); 0 picks a free port.
	UploadPort int `yaml:"upload_port"`
	// ProxyPort is reserved for the registry mirror / HTTP proxy.
	ProxyPort int `yaml:"proxy_port"`
	// MetricsPort serves /metrics and /healthy; -1 disables.
	MetricsPort int `yaml:"metrics_port"`
	// Sock is the unix socket of the local API (dfget, dfcache).
	Sock string `yaml:"sock"`
	// Seed makes this daemon a seed peer: it fetches from the origin when
	// the scheduler asks.
	Seed bool `yaml:"seed"`
	// IDC and Location are locality labels ("region|zone|rack").
	IDC      string `yaml:"idc"`
	Location string `yaml:"location"`
	// Hostname overrides the host name reported to the scheduler.
	Hostname string `yaml:"hostname"`

	Download DownloadConfig `yaml:"download"`
	Upload   UploadConfig   `yaml:"upload"`
	Cache    CacheConfig    `yaml:"cache"`

	// OriginTimeout bounds connecting to the origin and waiting for headers.
	OriginTimeout config.Duration `yaml:"origin_timeout"`
	// OriginRetries is how often a failed or reset origin request is retried.
	OriginRetries int `yaml:"origin_retries"`

	LogLevel string `yaml:"log_level"`
}

// DownloadConfig tunes how pieces are fetched.
type DownloadConfig struct {
	// RateLimit is the host-wide download limit in bytes/s (0: none).
	RateLimit config.ByteSize `yaml:"rate_limit"`
	// ConcurrentPieces is how many pieces one task fetches at once.
	ConcurrentPieces int `yaml:"concurrent_pieces"`
	// PerParentRequests bounds requests outstanding at one parent, so a slow
	// parent does not hold many pieces hostage.
	PerParentRequests int `yaml:"per_parent_requests"`
	// MinStallTimeout and MaxStallTimeout bound the time a piece transfer may
	// make no progress; in between it follows the parent's measured rate.
	MinStallTimeout config.Duration `yaml:"min_stall_timeout"`
	MaxStallTimeout config.Duration `yaml:"max_stall_timeout"`
	// SwarmTimeout: with no verified piece from the swarm for this long, the
	// daemon fetches the rest from the origin itself.
	SwarmTimeout config.Duration `yaml:"swarm_timeout"`
	// ParentFailures is how many failures in a row drop a parent.
	ParentFailures int `yaml:"parent_failures"`
	// HardlinkOutput makes a dfget output on the cache's filesystem a hard
	// link to the cached data rather than a copy. The cache notices when such
	// a file is modified in place and re-verifies it before serving it.
	HardlinkOutput bool `yaml:"hardlink_output"`
	// ReportInterval batches piece reports to the scheduler.
	ReportInterval config.Duration `yaml:"report_interval"`
	// MaxConcurrentOrigin bounds the origin fetches running at once on this
	// host (over all tasks); more wait their turn.
	MaxConcurrentOrigin int `yaml:"max_concurrent_origin"`
}

// UploadConfig tunes serving pieces to others.
type UploadConfig struct {
	// RateLimit is the host-wide upload limit in bytes/s (0: none).
	RateLimit config.ByteSize `yaml:"rate_limit"`
	// Slots is how many children the scheduler may give this host at once.
	Slots int `yaml:"slots"`
	// MaxConcurrent bounds piece transfers served at once.
	MaxConcurrent int `yaml:"max_concurrent"`
	// PeerRateLimit is the upload limit towards any one peer in bytes/s
	// (0: none), within RateLimit for the host.
	PeerRateLimit config.ByteSize `yaml:"peer_rate_limit"`
}

// CacheConfig bounds the on-disk cache. A task that is being read, uploaded
// or downloaded is never evicted.
type CacheConfig struct {
	// TaskTTL evicts tasks not used for this long (0: never).
	TaskTTL config.Duration `yaml:"task_ttl"`
	// GCInterval is how often garbage collection runs; it also runs as soon
	// as a write crosses a high watermark or the disk is full.
	GCInterval config.Duration `yaml:"gc_interval"`
	// HighWatermark and LowWatermark bound the bytes the cache takes: above
	// the high one, least recently used tasks go until the low one is
	// reached (0: no byte limit).
	HighWatermark config.ByteSize `yaml:"high_watermark"`
	LowWatermark  config.ByteSize `yaml:"low_watermark"`
	// HighWatermarkPercent and LowWatermarkPercent do the same for the use
	// of the cache's whole file system, in percent (0: no limit).
	HighWatermarkPercent float64 `yaml:"high_watermark_percent"`
	LowWatermarkPercent  float64 `yaml:"low_watermark_percent"`
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Scheduler:     "127.0.0.1:8002",
		DataDir:       "/var/lib/damselfly/daemon",
		ListenIP:      "0.0.0.0",
		PeerPort:      65000,
		UploadPort:    65002,
		ProxyPort:     65001,
		MetricsPort:   8000,
		Sock:          "/var/run/damselfly/daemon.sock",
		OriginTimeout: config.Duration(30 * time.Second),
		OriginRetries: 3,
		LogLevel:      "info",
		Download: DownloadConfig{
			ConcurrentPieces:  16,
			PerParentRequests: 4,
			MinStallTimeout:   config.Duration(3 * time.Second),
			MaxStallTimeout:   config.Duration(30 * time.Second),
			SwarmTimeout:      config.Duration(20 * time.Second),
			ParentFailures:    3,
			ReportInterval:    config.Duration(50 * time.Millisecond),
			HardlinkOutput:    true,

			MaxConcurrentOrigin: 16,
		},
		Upload: UploadConfig{
			Slots:         16,
			MaxConcurrent: 64,
		},
		Cache: CacheConfig{
			TaskTTL:              config.Duration(24 * time.Hour),
			GCInterval:           config.Duration(time.Minute),
			HighWatermarkPercent: 90,
			LowWatermarkPercent:  80,
		},
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir is required"))
	}
	if c.Sock == "" {
		errs = append(errs, errors.New("sock is required"))
	}
	for name, p := range map[string]int{"peer_port": c.PeerPort, "upload_port": c.UploadPort, "proxy_port": c.ProxyPort} {
		if p < 0 || p > 65535 {
			errs = append(errs, fmt.Errorf("%s %d out of range", name, p))
		}
	}
	if c.MetricsPort < -1 || c.MetricsPort > 65535 {
		errs = append(errs, fmt.Errorf("metrics_port %d out of range (-1 disables)", c.MetricsPort))
	}
	if c.AdvertiseIP != "" && net.ParseIP(c.AdvertiseIP) == nil {
		errs = append(errs, fmt.Errorf("advertise_ip %q is not an IP address", c.AdvertiseIP))
	}
	if net.ParseIP(c.ListenIP) == nil {
		errs = append(errs, fmt.Errorf("listen_ip %q is not an IP address", c.ListenIP))
	}
	if c.Scheduler != "" {
		if _, _, err := net.SplitHostPort(c.Scheduler); err != nil {
			errs = append(errs, fmt.Errorf("scheduler %q: want host:port", c.Scheduler))
		}
	}
	d := c.Download
	if d.ConcurrentPieces < 1 || d.PerParentRequests < 1 || d.ParentFailures < 1 {
		errs = append(errs, errors.New("download.concurrent_pieces, per_parent_requests and parent_failures must be ≥ 1"))
	}
	if d.MinStallTimeout <= 0 || d.MaxStallTimeout < d.MinStallTimeout {
		errs = append(errs, errors.New("download: need 0 < min_stall_timeout ≤ max_stall_timeout"))
	}
	if d.SwarmTimeout <= 0 || d.ReportInterval <= 0 {
		errs = append(errs, errors.New("download.swarm_timeout and report_interval must be > 0"))
	}
	if c.Upload.Slots < 1 || c.Upload.MaxConcurrent < 1 {
		errs = append(errs, errors.New("upload.slots and upload.max_concurrent must be ≥ 1"))
	}
	if d.MaxConcurrentOrigin < 1 {
		errs = append(errs, errors.New("download.max_concurrent_origin must be ≥ 1"))
	}
	if c.Download.RateLimit < 0 || c.Upload.RateLimit < 0 || c.Upload.PeerRateLimit < 0 {
		errs = append(errs, errors.New("download.rate_limit, upload.rate_limit and upload.peer_rate_limit must be ≥ 0 (0: no limit)"))
	}
	errs = append(errs, c.Cache.validate()...)
	if c.OriginRetries < 0 {
		errs = append(errs, errors.New("origin_retries must be ≥ 0"))
	}
	return errors.Join(errs...)
}

func (c CacheConfig) validate() []error {
	var errs []error
	if c.TaskTTL < 0 {
		errs = append(errs, errors.New("cache.task_ttl must be ≥ 0 (0: no TTL)"))
	}
	if c.GCInterval <= 0 {
		errs = append(errs, errors.New("cache.gc_interval must be > 0"))
	}
	switch {
	case c.HighWatermark < 0 || c.LowWatermark < 0:
		errs = append(errs, errors.New("cache.high_watermark and low_watermark must be ≥ 0"))
	case c.HighWatermark > 0 && (c.LowWatermark <= 0 || c.LowWatermark >= c.HighWatermark):
		errs = append(errs, fmt.Errorf("cache: need 0 < low_watermark < high_watermark, have %s and %s", c.LowWatermark, c.HighWatermark))
	case c.HighWatermark == 0 && c.LowWatermark != 0:
		errs = append(errs, errors.New("cache.low_watermark is set without high_watermark"))
	}
	hp, lp := c.HighWatermarkPercent, c.LowWatermarkPercent
	switch {
	case hp < 0 || hp > 100 || lp < 0 || lp > 100:
		errs = append(errs, fmt.Errorf("cache: watermark percentages must be within 0..100, have %g and %g", hp, lp))
	case hp > 0 && (lp <= 0 || lp >= hp):
		errs = append(errs, fmt.Errorf("cache: need 0 < low_watermark_percent < high_watermark_percent, have %g and %g", lp, hp))
	case hp == 0 && lp != 0:
		errs = append(errs, errors.New("cache.low_watermark_percent is set without high_watermark_percent"))
	}
	return errs
}
