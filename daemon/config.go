package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/damselfly-io/damselfly/internal/config"
	"github.com/damselfly-io/damselfly/internal/obs"
	"github.com/damselfly-io/damselfly/internal/pki"
	"github.com/damselfly-io/damselfly/source"
)

// Config is the daemon's configuration. Zero values are not defaults: start
// from DefaultConfig.
type Config struct {
	// Scheduler is host:port of the scheduler; empty runs without P2P
	// (every download goes to the origin).
	Scheduler string `yaml:"scheduler"`
	// Manager is host:port of the manager's gRPC API. When set, the daemon
	// asks it for its schedulers (kept fresh, and saved under data_dir for
	// starts while the manager is down) and uses Scheduler only when that
	// list is empty; a seed peer also registers with it.
	Manager string `yaml:"manager"`
	// Inventory announces the complete public tasks of the cache on one
	// Inventory stream per scheduler (docs/architecture.md, "Inventory");
	// false keeps one Announce stream per cached task, for schedulers
	// older than the Inventory RPC (upgrade schedulers first, then turn it
	// back on).
	Inventory bool `yaml:"inventory"`
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
	// ProxyPort serves the registry mirror and HTTP(S) proxy; 0 picks a
	// free port, -1 disables it.
	ProxyPort int `yaml:"proxy_port"`
	// MetricsPort serves /metrics and /healthy; -1 disables.
	MetricsPort int `yaml:"metrics_port"`
	// MetricsIP is where the metrics port listens; empty: listen_ip (so
	// that Prometheus and probes reach it). It serves only counters and
	// /healthy; the profiler has its own loopback port (obs.pprof).
	MetricsIP string `yaml:"metrics_ip"`
	// Sock is the unix socket of the local API (dfget, dfcache).
	Sock string `yaml:"sock"`
	// SockGroup is the group (a name or a numeric gid) whose members may
	// use the local API: the socket is made mode 0660 and owned by it. Empty
	// makes the socket 0600 (root only). When the default group
	// "damselfly" does not exist the daemon logs so and falls back to 0600;
	// a group set explicitly that does not exist is an error.
	SockGroup string `yaml:"sock_group"`
	// Seed makes this daemon a seed peer: it fetches from the origin when
	// the scheduler asks.
	Seed bool `yaml:"seed"`
	// IDC and Location are locality labels ("region|zone|rack").
	IDC      string `yaml:"idc"`
	Location string `yaml:"location"`
	// Hostname overrides the host name reported to the scheduler.
	Hostname string `yaml:"hostname"`
	// UploadBps and DownloadBps declare this host's link capacity in
	// bytes/s (0: not declared; the host-wide rate limit stands in when
	// set). The scheduler uses them to shape the swarm before it has
	// measured the host, and peers to split requests among parents before
	// they have measured them.
	UploadBps   config.ByteSize `yaml:"upload_bps"`
	DownloadBps config.ByteSize `yaml:"download_bps"`
	// LinkTest measures the host's links where nothing is declared
	// (docs/architecture.md, "Link tests").
	LinkTest LinkTestConfig `yaml:"link_test"`
	// OriginSharesUplink says that the origins this daemon fetches from
	// send through this host's uplink (a seed peer on the registry's own
	// rack link, or in a pod beside it): every byte this host uploads then
	// competes with the origin's own answers, and the scheduler holds a
	// seed peer here to about one copy of the content
	// (TaskMeta.origin_on_host).
	// False detects it per origin fetch: an origin that answers from one of
	// this host's own addresses (loopback included) shares the uplink, any
	// other does not. Set it where detection cannot see the sharing: the
	// origin on another address behind the same link.
	OriginSharesUplink bool `yaml:"origin_shares_uplink"`

	Download DownloadConfig `yaml:"download"`
	Upload   UploadConfig   `yaml:"upload"`
	Proxy    ProxyConfig    `yaml:"proxy"`
	// Source configures origins other than plain http(s): S3 buckets.
	Source SourceConfig `yaml:"source"`
	Cache  CacheConfig  `yaml:"cache"`
	// Obs sets the HTTP servers' timeouts (upload, proxy, metrics) and the
	// profiler.
	Obs obs.Config `yaml:"obs"`

	// Metrics: dragonfly_compat also exposes Dragonfly's metric names.
	Metrics obs.MetricsConfig `yaml:"metrics"`

	// OriginTimeout bounds connecting to the origin and waiting for headers.
	OriginTimeout config.Duration `yaml:"origin_timeout"`
	// OriginRetries is how often a failed or reset origin request is retried.
	OriginRetries int `yaml:"origin_retries"`

	// TLS is how the daemon proves who it is on gRPC (peer port, and as a
	// client of schedulers, the manager and other peers): certificate
	// files, a bootstrap token for the manager's CA, or explicit insecure.
	TLS pki.Config `yaml:"tls"`

	LogLevel string `yaml:"log_level"`
}

// LinkTestConfig: a daemon that declares no uplink (upload_bps, or the
// upload rate limit) tests its links when it starts and
// every Interval after: it sends junk bytes for about a second to a partner
// the scheduler names, twice, and reports the best rate to its schedulers
// (Host.link_upload_bps). It also answers other hosts' tests on its upload
// port, one at a time, and reports the best rate one of them reached into
// it (Host.link_download_bps).
type LinkTestConfig struct {
	Enabled  bool            `yaml:"enabled"`
	Interval config.Duration `yaml:"interval"`
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
	// daemon fetches the rest from the origin itself. While the content's
	// source (the seed fetching it from the origin) brings new pieces
	// slowly, the wait is three times the longest it took for one, at most
	// four times SwarmTimeout; before its first piece, while its parents say
	// it is still receiving from the origin, SwarmTimeout after the last
	// such news, at most ten times SwarmTimeout.
	SwarmTimeout config.Duration `yaml:"swarm_timeout"`
	// ParentFailures is how many failures in a row drop a parent.
	ParentFailures int `yaml:"parent_failures"`
	// HardlinkOutput is ignored and kept so that older configuration files
	// still load: outputs are written through the file the client opened
	// (with its own rights), never linked to the cache, whose files only
	// root may read.
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
	// Relay lets children fetch a piece while it is still arriving here
	// (cut-through): a pipeline of N hops then costs about N times the
	// first bytes of a piece instead of N whole pieces. The last byte goes
	// out only after this daemon verified the piece.
	Relay bool `yaml:"relay"`
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

// ProxyConfig configures the registry mirror and HTTP(S) proxy on proxy_port.
type ProxyConfig struct {
	// ListenIP is where the proxy listens. The default, loopback, keeps it
	// for the node's own clients.
	ListenIP string `yaml:"listen_ip"`
	// AllowedClients lists the networks (CIDR) whose clients may use the
	// proxy; everyone else gets 403, so the proxy is no open relay even when
	// it listens on every interface.
	AllowedClients []string `yaml:"allowed_clients"`
	// RegistryMirror is the upstream registry for mirror requests that do
	// not name one (Docker's registry-mirrors, CRI-O/Podman mirrors, skopeo).
	// Its scheme is also used for requests whose ns parameter (containerd's
	// hosts.toml) names the same host, so a plain-HTTP registry works.
	RegistryMirror string `yaml:"registry_mirror"`
	// Registries configures upstream hosts: scheme, TLS trust and the
	// credentials seed peers and preheat use. Clients' own credentials pass
	// through and always win.
	Registries []RegistryConfig `yaml:"registries"`
	// Rules decide, in order, which requests go P2P; the first whose regex
	// matches the upstream URL (query string included) wins, and a URL no
	// rule matches passes straight through. Only GETs go P2P. Empty:
	// registry blob GETs go P2P, everything else passes through.
	Rules []ProxyRule `yaml:"rules"`
	// HijackHosts are regexes of "host:port"; a CONNECT to a matching host is
	// terminated with a certificate from the proxy's CA so its requests can
	// follow the rules too. Other CONNECTs are tunnelled untouched.
	HijackHosts []string `yaml:"hijack_hosts"`
	// CACert and CAKey are PEM files of the CA that signs hijacked hosts'
	// certificates; when both are empty a CA is generated once under
	// data_dir/proxy-ca (ca.crt is the file clients must trust).
	CACert string `yaml:"ca_cert"`
	CAKey  string `yaml:"ca_key"`
	// VerifyAccess checks a client's right to a blob with a HEAD to the
	// upstream (with the client's credentials) before serving it from the
	// swarm or the cache; a 401/403/404 answer goes back to the client as
	// is. An unreachable upstream does not stop a P2P download.
	VerifyAccess bool `yaml:"verify_access"`
}

// RegistryConfig is one upstream registry (or any origin host).
type RegistryConfig struct {
	// Host is "name" or "name:port", as in image references and ns.
	Host string `yaml:"host"`
	// Scheme is http or https (default https).
	Scheme string `yaml:"scheme"`
	// Insecure skips TLS verification; CAFile adds a trusted CA bundle.
	Insecure bool   `yaml:"insecure"`
	CAFile   string `yaml:"ca_file"`
	// Username and Password are used by this daemon's own origin fetches
	// (seed peers, preheat) when the request carries no credentials. They
	// are never sent to other peers or stored in the cache.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
}

// ProxyRule routes the URLs its regex matches.
type ProxyRule struct {
	Regex string `yaml:"regex"`
	// Direct passes matching requests straight through instead of P2P.
	Direct bool `yaml:"direct"`
	// UseHTTPS fetches a matching plain-HTTP proxy request over https.
	UseHTTPS bool `yaml:"use_https"`
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Scheduler:     "127.0.0.1:8002",
		Inventory:     true,
		LinkTest:      LinkTestConfig{Enabled: true, Interval: config.Duration(time.Hour)},
		DataDir:       "/var/lib/damselfly/daemon",
		ListenIP:      "0.0.0.0",
		PeerPort:      65000,
		UploadPort:    65002,
		ProxyPort:     65001,
		MetricsPort:   8000,
		Sock:          "/var/run/damselfly/daemon.sock",
		SockGroup:     DefaultSockGroup,
		OriginTimeout: config.Duration(30 * time.Second),
		OriginRetries: 3,
		LogLevel:      "info",
		Obs:           obs.DefaultConfig(),
		Download: DownloadConfig{
			ConcurrentPieces:  16,
			PerParentRequests: 4,
			MinStallTimeout:   config.Duration(3 * time.Second),
			MaxStallTimeout:   config.Duration(30 * time.Second),
			SwarmTimeout:      config.Duration(20 * time.Second),
			ParentFailures:    3,
			ReportInterval:    config.Duration(50 * time.Millisecond),
			HardlinkOutput:    false,

			MaxConcurrentOrigin: 16,
		},
		Upload: UploadConfig{
			Slots:         16,
			MaxConcurrent: 64,
			Relay:         true,
		},
		Proxy: ProxyConfig{
			ListenIP:       "127.0.0.1",
			AllowedClients: []string{"127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"},
			RegistryMirror: "https://index.docker.io",
			VerifyAccess:   true,
		},
		Cache: CacheConfig{
			TaskTTL:              config.Duration(24 * time.Hour),
			GCInterval:           config.Duration(time.Minute),
			HighWatermarkPercent: 90,
			LowWatermarkPercent:  80,
		},
	}
}

// DeclaredCapacity returns this host's upload and download capacity in
// bytes/s as the operator declared it: upload_bps and download_bps, else
// the host-wide rate limits (the host will not go faster), else 0.
func (c Config) DeclaredCapacity() (up, down int64) {
	up, down = int64(c.UploadBps), int64(c.DownloadBps)
	if up == 0 {
		up = int64(c.Upload.RateLimit)
	}
	if down == 0 {
		down = int64(c.Download.RateLimit)
	}
	return up, down
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
	if n, err := strconv.Atoi(c.SockGroup); err == nil && n < 0 {
		errs = append(errs, fmt.Errorf("sock_group %q: a gid must be ≥ 0", c.SockGroup))
	}
	for name, p := range map[string]int{"peer_port": c.PeerPort, "upload_port": c.UploadPort} {
		if p < 0 || p > 65535 {
			errs = append(errs, fmt.Errorf("%s %d out of range", name, p))
		}
	}
	if c.ProxyPort < -1 || c.ProxyPort > 65535 {
		errs = append(errs, fmt.Errorf("proxy_port %d out of range (-1 disables)", c.ProxyPort))
	}
	if err := c.Source.S3.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.TLS.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Proxy.validate(); err != nil {
		errs = append(errs, err)
	}
	if c.MetricsPort < -1 || c.MetricsPort > 65535 {
		errs = append(errs, fmt.Errorf("metrics_port %d out of range (-1 disables)", c.MetricsPort))
	}
	if c.MetricsIP != "" && net.ParseIP(c.MetricsIP) == nil {
		errs = append(errs, fmt.Errorf("metrics_ip %q is not an IP address", c.MetricsIP))
	}
	if err := c.Obs.Validate(); err != nil {
		errs = append(errs, err)
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
	if c.Manager != "" {
		if _, _, err := net.SplitHostPort(c.Manager); err != nil {
			errs = append(errs, fmt.Errorf("manager %q: want host:port", c.Manager))
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
	if c.UploadBps < 0 || c.DownloadBps < 0 {
		errs = append(errs, errors.New("upload_bps and download_bps must be ≥ 0"))
	}
	if c.OriginRetries < 0 {
		errs = append(errs, errors.New("origin_retries must be ≥ 0"))
	}
	if c.LinkTest.Enabled && c.LinkTest.Interval.D() < time.Minute {
		errs = append(errs, errors.New("link_test.interval must be ≥ 1m (each test sends for about a second at the full uplink)"))
	}
	return errors.Join(errs...)
}

func (p ProxyConfig) validate() error {
	var errs []error
	if net.ParseIP(p.ListenIP) == nil {
		errs = append(errs, fmt.Errorf("proxy.listen_ip %q is not an IP address", p.ListenIP))
	}
	for _, n := range p.AllowedClients {
		if _, _, err := net.ParseCIDR(n); err != nil {
			errs = append(errs, fmt.Errorf("proxy.allowed_clients: %q is not a CIDR network", n))
		}
	}
	if p.RegistryMirror != "" {
		if u, err := url.Parse(p.RegistryMirror); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("proxy.registry_mirror %q: want an http(s) URL like https://registry.example", p.RegistryMirror))
		}
	}
	for i, r := range p.Registries {
		if r.Host == "" || strings.Contains(r.Host, "/") {
			errs = append(errs, fmt.Errorf("proxy.registries[%d].host %q: want name or name:port", i, r.Host))
		}
		if r.Scheme != "" && r.Scheme != "http" && r.Scheme != "https" {
			errs = append(errs, fmt.Errorf("proxy.registries[%d].scheme %q: want http or https", i, r.Scheme))
		}
	}
	for i, r := range p.Rules {
		if _, err := regexp.Compile(r.Regex); err != nil || r.Regex == "" {
			errs = append(errs, fmt.Errorf("proxy.rules[%d].regex %q: %v", i, r.Regex, err))
		}
	}
	for i, h := range p.HijackHosts {
		if _, err := regexp.Compile(h); err != nil {
			errs = append(errs, fmt.Errorf("proxy.hijack_hosts[%d] %q: %v", i, h, err))
		}
	}
	if (p.CACert == "") != (p.CAKey == "") {
		errs = append(errs, errors.New("proxy: set both ca_cert and ca_key, or neither"))
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

// SourceConfig configures the daemon's origin clients beyond http(s).
type SourceConfig struct {
	// S3 holds path-style addressing and per-bucket endpoints and
	// credentials for s3:// URLs (what a seed peer or a preheat uses when no
	// client credentials come with the task).
	S3 source.S3Config `yaml:"s3"`
}
