package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon"
	"github.com/damselfly-io/damselfly/internal/identity"
	"github.com/damselfly-io/damselfly/internal/obs"
	"github.com/damselfly-io/damselfly/internal/pki"
	"github.com/damselfly-io/damselfly/scheduler"
)

// allInOneConfig runs the scheduler, a seed peer and a daemon in one process.
type allInOneConfig struct {
	Scheduler scheduler.Config `yaml:"scheduler"`
	Daemon    daemon.Config    `yaml:"daemon"`
	Seed      daemon.Config    `yaml:"seed"`
	LogLevel  string           `yaml:"log_level"`
	// Insecure runs the components' gRPC in plaintext. By default the
	// all-in-one keeps a CA under its data dir (ca/) and gives the
	// scheduler, seed peer and daemon certificates from it at each start.
	Insecure bool `yaml:"insecure"`
}

func defaultAllInOne() allInOneConfig {
	dir := "/var/lib/damselfly"
	c := allInOneConfig{Scheduler: scheduler.DefaultConfig(), Daemon: daemon.DefaultConfig(), Seed: daemon.DefaultConfig(), LogLevel: "info"}
	c.Scheduler.Listen = "127.0.0.1:8002"
	c.Daemon.Scheduler = "127.0.0.1:8002"
	c.Daemon.DataDir = filepath.Join(dir, "daemon")
	c.Daemon.AdvertiseIP = "127.0.0.1"
	c.Daemon.ListenIP = "127.0.0.1"
	// One host: there is no other to test its links with.
	c.Daemon.LinkTest.Enabled, c.Seed.LinkTest.Enabled = false, false
	c.Seed.Scheduler = "127.0.0.1:8002"
	c.Seed.Seed = true
	c.Seed.DataDir = filepath.Join(dir, "seed")
	c.Seed.AdvertiseIP = "127.0.0.1"
	c.Seed.ListenIP = "127.0.0.1"
	c.Seed.PeerPort = 65010
	c.Seed.UploadPort = 65012
	c.Seed.ProxyPort = -1 // the node's clients use the daemon's mirror
	c.Seed.MetricsPort = -1
	c.Seed.Sock = "/var/run/damselfly/seed.sock"
	c.Seed.SockGroup = "" // nobody but root needs the seed's local API
	return c
}

func runAllInOne(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg := defaultAllInOne()
	if err := loadConfig(args, &cfg); err != nil {
		fmt.Fprintln(stderr, "damselfly all-in-one:", err)
		return 2
	}
	fs := newFlagSet("all-in-one", "Run scheduler, seed peer and daemon in one process on embedded defaults (loopback only).", stderr)
	dataDir := fs.String("data-dir", "", "put the daemon's and the seed peer's caches under this directory (default /var/lib/damselfly)")
	fs.StringVar(&cfg.Daemon.Sock, "sock", cfg.Daemon.Sock, "unix socket of the daemon's local API (dfget --sock)")
	fs.StringVar(&cfg.Daemon.SockGroup, "sock-group", cfg.Daemon.SockGroup, "group (name or gid) allowed to use the daemon's socket (mode 0660); empty: root only (0600)")
	fs.StringVar(&cfg.Scheduler.Listen, "scheduler-listen", cfg.Scheduler.Listen, "scheduler gRPC address")
	fs.IntVar(&cfg.Daemon.PeerPort, "peer-port", cfg.Daemon.PeerPort, "daemon peer gRPC port")
	fs.IntVar(&cfg.Daemon.UploadPort, "upload-port", cfg.Daemon.UploadPort, "daemon upload port")
	fs.IntVar(&cfg.Daemon.ProxyPort, "proxy-port", cfg.Daemon.ProxyPort, "daemon registry mirror / HTTP(S) proxy port; -1 disables")
	fs.StringVar(&cfg.Daemon.Proxy.RegistryMirror, "registry-mirror", cfg.Daemon.Proxy.RegistryMirror, "default upstream registry of the daemon's mirror")
	fs.IntVar(&cfg.Daemon.MetricsPort, "metrics-port", cfg.Daemon.MetricsPort, "port for /metrics and /healthy (scheduler and daemon); -1 disables")
	fs.IntVar(&cfg.Seed.PeerPort, "seed-peer-port", cfg.Seed.PeerPort, "seed peer gRPC port")
	fs.IntVar(&cfg.Seed.UploadPort, "seed-upload-port", cfg.Seed.UploadPort, "seed upload port")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	fs.BoolVar(&cfg.Insecure, "insecure", cfg.Insecure, "plaintext gRPC between the components instead of mutual TLS from the all-in-one's own CA")
	obsFlags(fs, &cfg.Daemon.Obs)
	compat := fs.Bool("metrics-dragonfly-compat", false, "also expose Dragonfly's metric names (dragonfly_*) for dashboards built for Dragonfly")
	pc := fs.Bool("print-config", false, "print the effective configuration as YAML and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "damselfly all-in-one: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *dataDir != "" {
		cfg.Daemon.DataDir = filepath.Join(*dataDir, "daemon")
		cfg.Seed.DataDir = filepath.Join(*dataDir, "seed")
		cfg.Seed.Sock = filepath.Join(*dataDir, "seed.sock")
	}
	cfg.Daemon.Scheduler = cfg.Scheduler.Listen
	cfg.Seed.Scheduler = cfg.Scheduler.Listen
	cfg.Daemon.LogLevel, cfg.Seed.LogLevel = cfg.LogLevel, cfg.LogLevel
	// One process, one profiler: the daemon's (the seed's would collide).
	cfg.Seed.Obs = cfg.Daemon.Obs
	cfg.Seed.Obs.Pprof = false
	if *compat {
		cfg.Scheduler.Metrics.DragonflyCompat, cfg.Daemon.Metrics.DragonflyCompat, cfg.Seed.Metrics.DragonflyCompat = true, true, true
	}
	if *pc {
		return printConfig(stdout, cfg)
	}
	for name, v := range map[string]interface{ Validate() error }{"scheduler": cfg.Scheduler, "daemon": cfg.Daemon, "seed": cfg.Seed} {
		if err := v.Validate(); err != nil {
			fmt.Fprintf(stderr, "damselfly all-in-one: invalid %s config: %v\n", name, err)
			return 2
		}
	}
	log, err := obs.NewLogger(os.Stderr, cfg.LogLevel)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly all-in-one:", err)
		return 2
	}
	root := *dataDir
	if root == "" {
		root = filepath.Dir(cfg.Daemon.DataDir)
	}
	schedCreds, err := allInOneTLS(&cfg, root)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly all-in-one:", err)
		return 1
	}
	reg := obs.NewRegistry()
	s, err := scheduler.New(cfg.Scheduler, log.With("component", "scheduler"), reg)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly all-in-one:", err)
		return 1
	}
	lis, err := net.Listen("tcp", cfg.Scheduler.Listen)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly all-in-one: scheduler listen:", err)
		return 1
	}
	cfg.Daemon.Scheduler = lis.Addr().String()
	cfg.Seed.Scheduler = lis.Addr().String()
	// The seed peer's and the daemon's metrics share names; one registry
	// serves both, told apart by a role label (seed, daemon).
	seed, err := daemon.NewWithMetrics(cfg.Seed, log.With("component", "seed"),
		prometheus.WrapRegistererWith(prometheus.Labels{"role": "seed"}, reg), nil)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly all-in-one: seed:", err)
		return 1
	}
	d, err := daemon.NewWithMetrics(cfg.Daemon, log.With("component", "daemon"),
		prometheus.WrapRegistererWith(prometheus.Labels{"role": "daemon"}, reg), reg)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly all-in-one: daemon:", err)
		return 1
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.Serve(gctx, lis, pki.ServerOptions(schedCreds)...) })
	g.Go(func() error { return seed.Run(gctx) })
	g.Go(func() error { return d.Run(gctx) })
	log.Info("all-in-one running", "scheduler", lis.Addr().String(), "sock", cfg.Daemon.Sock,
		"metrics", "http://127.0.0.1:"+strconv.Itoa(cfg.Daemon.MetricsPort)+"/metrics")
	if err := g.Wait(); err != nil {
		fmt.Fprintln(stderr, "damselfly all-in-one:", err)
		return 1
	}
	return 0
}

// allInOneTLS gives the all-in-one's components their credentials: nil
// and insecure daemons with --insecure; else certificates (valid a year,
// made again at each start) from a CA kept in root/ca, written under
// root/tls. A daemon or seed whose config names its own files keeps them.
func allInOneTLS(cfg *allInOneConfig, root string) (*pki.Creds, error) {
	if cfg.Insecure {
		cfg.Daemon.TLS, cfg.Seed.TLS = pki.Config{Insecure: true}, pki.Config{Insecure: true}
		return nil, nil
	}
	ca, _, err := pki.LoadOrCreateCA(filepath.Join(root, "ca"), "damselfly all-in-one CA")
	if err != nil {
		return nil, fmt.Errorf("all-in-one CA: %w", err)
	}
	const ttl = 365 * 24 * time.Hour
	host := core.Hostname()
	issue := func(name string, role identity.Role) (pki.Config, error) {
		dir := filepath.Join(root, "tls", name)
		if err := ca.IssueFiles(dir, identity.Identity{Role: role, HostID: host + "-" + name}, ttl); err != nil {
			return pki.Config{}, err
		}
		return pki.Config{Cert: filepath.Join(dir, pki.CertFile), Key: filepath.Join(dir, pki.KeyFile), CA: filepath.Join(dir, pki.TrustFile)}, nil
	}
	for _, c := range []struct {
		name string
		role identity.Role
		tls  *pki.Config
	}{{"daemon", identity.RolePeer, &cfg.Daemon.TLS}, {"seed", identity.RoleSeed, &cfg.Seed.TLS}} {
		if c.tls.HasFiles() || c.tls.Insecure {
			continue
		}
		if *c.tls, err = issue(c.name, c.role); err != nil {
			return nil, err
		}
	}
	sc, err := issue("scheduler", identity.RoleScheduler)
	if err != nil {
		return nil, err
	}
	return sc.LoadFiles()
}
