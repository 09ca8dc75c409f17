package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"

	"golang.org/x/sync/errgroup"

	"github.com/damselfly-io/damselfly/api/managerv1"
	"github.com/damselfly-io/damselfly/client"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/config"
	"github.com/damselfly-io/damselfly/internal/identity"
	"github.com/damselfly-io/damselfly/internal/obs"
	"github.com/damselfly-io/damselfly/internal/pki"
	"github.com/damselfly-io/damselfly/scheduler"
)

// schedulerCmdConfig is the scheduler's config file: the service settings
// plus the process's own.
type schedulerCmdConfig struct {
	scheduler.Config `yaml:",inline"`
	MetricsPort      int `yaml:"metrics_port"`
	// MetricsIP is where the metrics port listens (default: the listen IP).
	MetricsIP string     `yaml:"metrics_ip"`
	Obs       obs.Config `yaml:"obs"`
	LogLevel  string     `yaml:"log_level"`
	// Manager is the manager's gRPC address; when set the scheduler
	// registers there (in ClusterID, 0 for the default cluster) and keeps
	// alive, advertising AdvertiseIP (default: the listen IP, else the
	// first non-loopback IPv4) and its listen port.
	Manager     string `yaml:"manager"`
	ClusterID   int64  `yaml:"cluster_id"`
	AdvertiseIP string `yaml:"advertise_ip"`
	Hostname    string `yaml:"hostname"`
	// DataDir keeps the certificate a bootstrap token got (tls/).
	DataDir string `yaml:"data_dir"`
	// TLS is the gRPC transport: certificate files, a bootstrap token
	// (needs the manager, and a token allowed the scheduler role), or
	// explicit insecure.
	TLS pki.Config `yaml:"tls"`
}

func schedulerFlags(fs *flag.FlagSet, cfg *scheduler.Config) {
	dur := func(name string, d *scheduler.Duration, usage string) { fs.Var(d, name, usage) }
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "gRPC listen address")
	fs.IntVar(&cfg.MaxParents, "max-parents", cfg.MaxParents, "parents given to one peer")
	fs.IntVar(&cfg.MaxChildren, "max-children", cfg.MaxChildren, "children one peer serves in one task (0: bounded by host upload slots only)")
	fs.BoolVar(&cfg.PipelineParents, "pipeline-parents", cfg.PipelineParents, "downloading peers are candidate parents before their first piece")
	fs.BoolVar(&cfg.CapacityAware, "capacity-aware", cfg.CapacityAware, "size each host's children by its known upload capacity over the task's target rate, slow uplinks at leaves, a seed of unknown capacity to one child")
	fs.BoolVar(&cfg.PacedShares, "paced-shares", cfg.PacedShares, "with -capacity-aware and declared capacities: a receiver without a full-rate slot gets paced shares of several parents' spare uplinks")
	fs.IntVar(&cfg.MaxBackToSource, "max-back-to-source", cfg.MaxBackToSource, "peers of one task fetching from the origin at once")
	dur("seed-trigger-timeout", &cfg.SeedTriggerTimeout, "how long peers wait for a triggered seed peer before one goes to the origin")
	dur("wait-timeout", &cfg.WaitTimeout, "a peer left waiting this long is told to go to the origin itself")
	dur("refresh-interval", &cfg.RefreshInterval, "how often peers short of parents get more")
	dur("task-ttl", &cfg.TaskTTL, "forget a task this long after its last peer left")
	dur("gc-interval", &cfg.GCInterval, "how often forgotten tasks and hosts are collected")
	fs.IntVar(&cfg.DefaultUploadSlots, "default-upload-slots", cfg.DefaultUploadSlots, "upload slots of a host that reports none")
	fs.IntVar(&cfg.CandidateLimit, "candidate-limit", cfg.CandidateLimit, "candidate parents scored per decision (a random sample beyond this)")
	fs.IntVar(&cfg.SendBuffer, "send-buffer", cfg.SendBuffer, "messages queued per peer stream before the peer is dropped")
	fs.BoolVar(&cfg.Metrics.DragonflyCompat, "metrics-dragonfly-compat", cfg.Metrics.DragonflyCompat, "also expose Dragonfly's metric names (dragonfly_*) for dashboards built for Dragonfly")
	w := &cfg.Weights
	fs.Float64Var(&w.Progress, "weight-progress", w.Progress, "parent score weight: pieces held")
	fs.Float64Var(&w.FreeSlots, "weight-free-slots", w.FreeSlots, "parent score weight: free upload slots")
	fs.Float64Var(&w.Success, "weight-success", w.Success, "parent score weight: upload success rate")
	fs.Float64Var(&w.Throughput, "weight-throughput", w.Throughput, "parent score weight: measured upload throughput")
	fs.Float64Var(&w.Locality, "weight-locality", w.Locality, "parent score weight: shared IDC and location")
	fs.Float64Var(&w.SeedPenalty, "seed-penalty", w.SeedPenalty, "multiplier on a seed peer's score once other peers hold data (0..1)")
}

func runScheduler(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg := schedulerCmdConfig{Config: scheduler.DefaultConfig(), MetricsPort: 8000, Obs: obs.DefaultConfig(), LogLevel: "info", DataDir: "/var/lib/damselfly/scheduler"}
	if err := loadConfig(args, &cfg); err != nil {
		fmt.Fprintln(stderr, "damselfly scheduler:", err)
		return 2
	}
	fs := newFlagSet("scheduler", "Run the scheduler: tracks tasks and peers, picks parents, decides who fetches from the origin.", stderr)
	schedulerFlags(fs, &cfg.Config)
	fs.IntVar(&cfg.MetricsPort, "metrics-port", cfg.MetricsPort, "port for /metrics and /healthy; -1 disables")
	fs.StringVar(&cfg.MetricsIP, "metrics-ip", cfg.MetricsIP, "IP the metrics port listens on (default: the --listen IP)")
	obsFlags(fs, &cfg.Obs)
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	fs.StringVar(&cfg.Manager, "manager", cfg.Manager, "manager gRPC address host:port to register with (empty: none)")
	fs.Int64Var(&cfg.ClusterID, "cluster-id", cfg.ClusterID, "scheduler cluster to join at the manager (0: the default cluster)")
	fs.StringVar(&cfg.AdvertiseIP, "advertise-ip", cfg.AdvertiseIP, "IP daemons dial, as registered with the manager (default: the listen IP, else the first non-loopback IPv4)")
	fs.StringVar(&cfg.Hostname, "hostname", cfg.Hostname, "host name registered with the manager (default: the machine's)")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory for the certificate got with a bootstrap token")
	cfg.TLS.Flags(fs, true)
	pc := fs.Bool("print-config", false, "print the effective configuration as YAML and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "damselfly scheduler: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *pc {
		return printConfig(stdout, cfg)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, "damselfly scheduler: invalid config:", err)
		return 2
	}
	if err := validateSchedulerCmd(cfg); err != nil {
		fmt.Fprintln(stderr, "damselfly scheduler: invalid config:", err)
		return 2
	}
	if err := cfg.TLS.Require(); err != nil {
		fmt.Fprintln(stderr, "damselfly scheduler:", err)
		return 2
	}
	log, err := obs.NewLogger(os.Stderr, cfg.LogLevel)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly scheduler:", err)
		return 2
	}
	reg := obs.NewRegistry()
	s, err := scheduler.New(cfg.Config, log, reg)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly scheduler:", err)
		return 1
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly scheduler: listen:", err)
		return 1
	}
	g, gctx := errgroup.WithContext(ctx)
	req, err := schedulerRegistration(cfg, lis.Addr().(*net.TCPAddr).Port)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly scheduler:", err)
		return 2
	}
	creds, err := schedulerCreds(gctx, cfg, req, log)
	if err != nil {
		lis.Close()
		fmt.Fprintln(stderr, "damselfly scheduler:", err)
		return 1
	}
	if creds != nil {
		req.HostId = creds.Identity().HostID
	}
	if cfg.MetricsPort >= 0 {
		host, _, _ := net.SplitHostPort(cfg.Listen)
		if cfg.MetricsIP != "" {
			host = cfg.MetricsIP
		}
		ml, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(cfg.MetricsPort)))
		if err != nil {
			fmt.Fprintln(stderr, "damselfly scheduler: listen metrics:", err)
			return 1
		}
		g.Go(func() error { return cfg.Obs.Serve(gctx, ml, obs.Handler(reg, nil)) })
	}
	pl, err := cfg.Obs.ListenPprof(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly scheduler:", err)
		return 1
	}
	if pl != nil {
		g.Go(func() error { return cfg.Obs.ServePprof(gctx, pl) })
	}
	if cfg.Manager != "" {
		mc, conn, err := client.DialManager(cfg.Manager, pki.DialOption(creds, identity.RoleManager))
		if err != nil {
			fmt.Fprintln(stderr, "damselfly scheduler:", err)
			return 1
		}
		defer conn.Close()
		g.Go(func() error { client.KeepRegistered(gctx, mc, req, log); return nil })
	}
	log.Info("scheduler listening", "addr", lis.Addr().String())
	g.Go(func() error { return s.Serve(gctx, lis, pki.ServerOptions(creds)...) })
	if err := g.Wait(); err != nil {
		fmt.Fprintln(stderr, "damselfly scheduler:", err)
		return 1
	}
	return 0
}

func validateSchedulerCmd(cfg schedulerCmdConfig) error {
	if cfg.Manager != "" {
		if _, _, err := net.SplitHostPort(cfg.Manager); err != nil {
			return fmt.Errorf("manager %q: want host:port", cfg.Manager)
		}
	}
	if cfg.AdvertiseIP != "" && net.ParseIP(cfg.AdvertiseIP) == nil {
		return fmt.Errorf("advertise_ip %q is not an IP address", cfg.AdvertiseIP)
	}
	if cfg.MetricsIP != "" && net.ParseIP(cfg.MetricsIP) == nil {
		return fmt.Errorf("metrics_ip %q is not an IP address", cfg.MetricsIP)
	}
	if err := cfg.Obs.Validate(); err != nil {
		return err
	}
	if cfg.ClusterID < 0 {
		return fmt.Errorf("cluster_id %d: want ≥ 0", cfg.ClusterID)
	}
	return nil
}

// schedulerRegistration is what the scheduler tells the manager about itself.
func schedulerRegistration(cfg schedulerCmdConfig, port int) (*managerv1.RegisterRequest, error) {
	ip := cfg.AdvertiseIP
	if ip == "" {
		host, _, _ := net.SplitHostPort(cfg.Listen)
		if a := net.ParseIP(host); a != nil && !a.IsUnspecified() {
			ip = host
		} else {
			ip = core.LocalIPv4()
		}
	}
	hostname := cfg.Hostname
	if hostname == "" {
		hostname = core.Hostname()
	}
	// The effective configuration, secrets redacted, for the console.
	shown, err := config.RenderRedacted(cfg)
	if err != nil {
		return nil, fmt.Errorf("render config: %w", err)
	}
	return &managerv1.RegisterRequest{
		Type: managerv1.ComponentType_COMPONENT_TYPE_SCHEDULER, Hostname: hostname, Ip: ip,
		Port: int32(port), ClusterId: cfg.ClusterID, Config: string(shown),
		HostId: core.HostID(hostname, net.JoinHostPort(ip, strconv.Itoa(port))),
	}, nil
}

// schedulerCreds returns the scheduler's TLS credentials (nil in insecure
// mode): from files (re-read when they change), or from the manager's CA
// with the bootstrap token (renewed while ctx lasts).
func schedulerCreds(ctx context.Context, cfg schedulerCmdConfig, req *managerv1.RegisterRequest, log *slog.Logger) (*pki.Creds, error) {
	var creds *pki.Creds
	switch t := cfg.TLS; {
	case t.Insecure:
		log.Warn("insecure mode: scheduler gRPC in plaintext; any caller is trusted as it claims (--insecure)")
		return nil, nil
	case t.HasFiles():
		c, err := t.LoadFiles()
		if err != nil {
			return nil, err
		}
		go pki.WatchFiles(ctx, c, log)
		creds = c
	default:
		j, err := t.TokenJoin(cfg.Manager, identity.RoleScheduler, req.GetHostId(), cfg.DataDir, log)
		if err != nil {
			return nil, err
		}
		c, err := j.Creds(ctx)
		if err != nil {
			return nil, err
		}
		go j.Maintain(ctx, c)
		creds = c
	}
	if id := creds.Identity(); id.Role != identity.RoleScheduler {
		return nil, fmt.Errorf("tls: certificate is for %s, the scheduler needs role scheduler", id.URI())
	}
	log.Info("mutual TLS on gRPC", "identity", creds.Identity().URI().String(), "not_after", creds.Leaf().NotAfter)
	return creds, nil
}
