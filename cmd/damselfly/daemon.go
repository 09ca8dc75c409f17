package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/damselfly-io/damselfly/daemon"
	"github.com/damselfly-io/damselfly/internal/obs"
)

// daemonFlags binds the daemon's flags to cfg (whose values are the defaults).
func daemonFlags(fs *flag.FlagSet, cfg *daemon.Config) {
	fs.StringVar(&cfg.Scheduler, "scheduler", cfg.Scheduler, "scheduler address host:port (empty: no P2P, every download from the origin)")
	fs.StringVar(&cfg.Manager, "manager", cfg.Manager, "manager gRPC address host:port: ask it for the schedulers (--scheduler is then the fallback)")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "cache directory")
	fs.StringVar(&cfg.AdvertiseIP, "advertise-ip", cfg.AdvertiseIP, "IP other peers dial (default: first non-loopback IPv4)")
	fs.StringVar(&cfg.ListenIP, "listen-ip", cfg.ListenIP, "IP the peer, upload and metrics ports listen on")
	fs.IntVar(&cfg.PeerPort, "peer-port", cfg.PeerPort, "peer gRPC port (piece availability); 0 picks a free port")
	fs.IntVar(&cfg.UploadPort, "upload-port", cfg.UploadPort, "piece upload HTTP port; 0 picks a free port")
	fs.IntVar(&cfg.ProxyPort, "proxy-port", cfg.ProxyPort, "registry mirror / HTTP(S) proxy port; 0 picks a free port, -1 disables")
	fs.StringVar(&cfg.Proxy.ListenIP, "proxy-ip", cfg.Proxy.ListenIP, "IP the registry mirror / proxy listens on (clients outside proxy.allowed_clients get 403)")
	fs.StringVar(&cfg.Proxy.RegistryMirror, "registry-mirror", cfg.Proxy.RegistryMirror, "default upstream registry of the mirror, e.g. https://registry.example:5000 (its scheme is also used when ns names its host)")
	fs.IntVar(&cfg.MetricsPort, "metrics-port", cfg.MetricsPort, "port for /metrics and /healthy; -1 disables")
	fs.StringVar(&cfg.MetricsIP, "metrics-ip", cfg.MetricsIP, "IP the metrics port listens on (default: --listen-ip)")
	fs.BoolVar(&cfg.Metrics.DragonflyCompat, "metrics-dragonfly-compat", cfg.Metrics.DragonflyCompat, "also expose Dragonfly's metric names (dragonfly_*) for dashboards built for Dragonfly")
	fs.StringVar(&cfg.Sock, "sock", cfg.Sock, "unix socket of the local API used by dfget")
	fs.StringVar(&cfg.SockGroup, "sock-group", cfg.SockGroup, "group (name or gid) allowed to use the local API socket (mode 0660); empty: root only (0600)")
	fs.BoolVar(&cfg.Seed, "seed", cfg.Seed, "run as a seed peer: fetch from the origin when the scheduler asks")
	fs.StringVar(&cfg.IDC, "idc", cfg.IDC, "data centre label for locality-aware scheduling")
	fs.StringVar(&cfg.Location, "location", cfg.Location, "location label, e.g. region|zone|rack")
	fs.StringVar(&cfg.Hostname, "hostname", cfg.Hostname, "host name reported to the scheduler (default: the machine's)")
	fs.Var(&cfg.Download.RateLimit, "download-rate-limit", "host-wide download limit in bytes/s, e.g. 100M (0: none)")
	fs.Var(&cfg.Upload.RateLimit, "upload-rate-limit", "host-wide upload limit in bytes/s, e.g. 100M (0: none)")
	fs.Var(&cfg.UploadBps, "upload-bps", "this host's upload capacity in bytes/s for the scheduler, e.g. 12M (0: not declared; --upload-rate-limit stands in)")
	fs.Var(&cfg.DownloadBps, "download-bps", "this host's download capacity in bytes/s for the scheduler, e.g. 12M (0: not declared; --download-rate-limit stands in)")
	fs.BoolVar(&cfg.LinkTest.Enabled, "link-test", cfg.LinkTest.Enabled, "measure this host's links by sending about a second of junk bytes to a partner the scheduler names, at start and every --link-test-interval (not when --upload-bps or --upload-rate-limit is set)")
	fs.Var(&cfg.LinkTest.Interval, "link-test-interval", "how often the link test is repeated")
	fs.BoolVar(&cfg.OriginSharesUplink, "origin-shares-uplink", cfg.OriginSharesUplink, "the origins this host fetches from send through its uplink (e.g. a seed peer on the registry's rack link): the scheduler then holds a seed peer here to about one copy of each content, and uses the uplink of a seed that fetched from elsewhere in full (default: detected per fetch, an origin on one of this host's addresses)")
	fs.IntVar(&cfg.Upload.Slots, "upload-slots", cfg.Upload.Slots, "children the scheduler may give this host at once")
	fs.IntVar(&cfg.Download.ConcurrentPieces, "concurrent-pieces", cfg.Download.ConcurrentPieces, "pieces one task fetches at once")
	fs.Var(&cfg.Download.SwarmTimeout, "swarm-timeout", "fetch the rest from the origin after this long without a piece from the swarm")
	fs.IntVar(&cfg.Download.PerParentRequests, "per-parent-requests", cfg.Download.PerParentRequests, "piece requests outstanding at one parent")
	fs.Var(&cfg.Download.MinStallTimeout, "min-stall-timeout", "shortest time a piece transfer may make no progress")
	fs.Var(&cfg.Download.MaxStallTimeout, "max-stall-timeout", "longest time a piece transfer may make no progress")
	fs.BoolVar(&cfg.Download.HardlinkOutput, "hardlink-output", cfg.Download.HardlinkOutput, "ignored (kept for old command lines): outputs are always written through the caller's own file")
	fs.IntVar(&cfg.Download.ParentFailures, "parent-failures", cfg.Download.ParentFailures, "failures in a row that drop a parent")
	fs.Var(&cfg.Download.ReportInterval, "report-interval", "how long piece reports to the scheduler may be batched")
	fs.IntVar(&cfg.Upload.MaxConcurrent, "upload-max-concurrent", cfg.Upload.MaxConcurrent, "piece transfers served at once")
	fs.BoolVar(&cfg.Upload.Relay, "relay", cfg.Upload.Relay, "let children fetch a piece while it still arrives here (cut-through; the last byte waits for verification)")
	fs.Var(&cfg.Upload.PeerRateLimit, "upload-peer-rate-limit", "upload limit towards any one peer in bytes/s, e.g. 20M (0: none)")
	fs.IntVar(&cfg.Download.MaxConcurrentOrigin, "max-concurrent-origin", cfg.Download.MaxConcurrentOrigin, "origin fetches running at once on this host (over all tasks)")
	fs.Var(&cfg.Cache.TaskTTL, "cache-task-ttl", "evict cached tasks not used for this long (0: never)")
	fs.Var(&cfg.Cache.GCInterval, "cache-gc-interval", "how often cache garbage collection runs (also when a write crosses a high watermark)")
	fs.Var(&cfg.Cache.HighWatermark, "cache-high-watermark", "cache size that starts eviction of least recently used tasks, e.g. 100G (0: none)")
	fs.Var(&cfg.Cache.LowWatermark, "cache-low-watermark", "cache size eviction brings the cache down to")
	fs.Float64Var(&cfg.Cache.HighWatermarkPercent, "cache-high-watermark-percent", cfg.Cache.HighWatermarkPercent, "use of the cache's file system, in percent, that starts eviction (0: none)")
	fs.Float64Var(&cfg.Cache.LowWatermarkPercent, "cache-low-watermark-percent", cfg.Cache.LowWatermarkPercent, "file system use, in percent, eviction brings it down to")
	fs.Var(&cfg.OriginTimeout, "origin-timeout", "timeout to connect to the origin and to wait for its headers or next bytes")
	fs.IntVar(&cfg.OriginRetries, "origin-retries", cfg.OriginRetries, "retries of a failed or reset origin request")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	cfg.TLS.Flags(fs, true)
	obsFlags(fs, &cfg.Obs)
}

func runDaemon(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg := daemon.DefaultConfig()
	if err := loadConfig(args, &cfg); err != nil {
		fmt.Fprintln(stderr, "damselfly daemon:", err)
		return 2
	}
	fs := newFlagSet("daemon", "Run the node daemon: downloads through the swarm, caches, serves pieces to other peers.\nSIGHUP re-reads --config (then the flags) and applies rate limits, upload and origin caps and cache bounds without a restart.", stderr)
	daemonFlags(fs, &cfg)
	pc := fs.Bool("print-config", false, "print the effective configuration as YAML and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "damselfly daemon: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *pc {
		return printConfig(stdout, cfg)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, "damselfly daemon: invalid config:", err)
		return 2
	}
	if err := cfg.TLS.Require(); err != nil {
		fmt.Fprintln(stderr, "damselfly daemon:", err)
		return 2
	}
	log, err := obs.NewLogger(os.Stderr, cfg.LogLevel)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly daemon:", err)
		return 2
	}
	reg := obs.NewRegistry()
	d, err := daemon.New(cfg, log, reg)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly daemon:", err)
		return 1
	}
	go reloadOnHUP(ctx, d, args, log)
	if err := d.Run(ctx); err != nil {
		fmt.Fprintln(stderr, "damselfly daemon:", err)
		return 1
	}
	return 0
}

// reloadOnHUP reloads the configuration on SIGHUP — defaults, the --config
// file read again, then the command line's flags — and applies what can
// change while running (limits, cache bounds; see daemon.Reload).
func reloadOnHUP(ctx context.Context, d *daemon.Daemon, args []string, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	select {
	case <-d.Ready():
	case <-ctx.Done():
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		cfg := daemon.DefaultConfig()
		if err := loadConfig(args, &cfg); err != nil {
			log.Error("reload: configuration not changed", "err", err)
			continue
		}
		fs := newFlagSet("daemon", "", io.Discard)
		daemonFlags(fs, &cfg)
		fs.Bool("print-config", false, "")
		if err := fs.Parse(args); err != nil {
			log.Error("reload: configuration not changed", "err", err)
			continue
		}
		restart, err := d.Reload(cfg)
		if err != nil {
			log.Error("reload: configuration not changed", "err", err)
			continue
		}
		if len(restart) > 0 {
			log.Warn("reload: some changed settings take effect only after a restart", "settings", restart)
		}
	}
}
