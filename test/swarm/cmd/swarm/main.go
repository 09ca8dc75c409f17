// Command swarm runs the emulated-network swarm benchmark: Damselfly, every
// host pulling from the origin, and BitTorrent, side by side on N namespaced
// hosts with tc-shaped links. See docs/swarm.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/damselfly-io/damselfly/test/swarm"
)

func main() {
	swarm.HelperMain() // the origin server role, when re-executed by the harness
	os.Exit(run(os.Args[1:]))
}

type rateFlag struct{ r *swarm.Rate }

func (f rateFlag) String() string {
	if f.r == nil || *f.r == 0 {
		return ""
	}
	return f.r.String()
}

func (f rateFlag) Set(s string) error {
	r, err := swarm.ParseRate(s)
	if err == nil {
		*f.r = r
	}
	return err
}

type sizeFlag struct{ n *int64 }

func (f sizeFlag) String() string {
	if f.n == nil {
		return ""
	}
	return swarm.FormatSize(*f.n)
}

func (f sizeFlag) Set(s string) error {
	n, err := swarm.ParseSize(s)
	if err == nil {
		*f.n = n
	}
	return err
}

func run(args []string) int {
	cfg := swarm.DefaultConfig()
	fs := flag.NewFlagSet("swarm", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: swarm [flags]\n\nRuns Damselfly, direct origin pulls and BitTorrent on one emulated network (needs root).\n\n")
		fs.PrintDefaults()
	}
	fs.IntVar(&cfg.Hosts, "n", cfg.Hosts, "number of downloading peer hosts (N)")
	fs.Var(sizeFlag{&cfg.Size}, "size", "test file size F (e.g. 128MiB)")
	fs.Var(rateFlag{&cfg.Rate}, "rate", "every peer's uplink (tc syntax, e.g. 100mbit)")
	fs.Var(rateFlag{&cfg.DownRate}, "down-rate", "every peer's downlink (default: -rate)")
	fs.Var(rateFlag{&cfg.OriginRate}, "origin-rate", "the origin host's uplink")
	fs.Var(rateFlag{&cfg.SeedRate}, "seed-rate", "the seed peer host's uplink (default: -rate)")
	fs.Var(sizeFlag{&cfg.Burst}, "burst", "tbf burst (default: max(128KiB, 4 ms at the link's rate))")
	fs.DurationVar(&cfg.Latency, "latency", cfg.Latency, "tbf latency: the longest a packet may queue in a shaper")
	fs.DurationVar(&cfg.Delay, "delay", 0, "one-way delay added to every host's uplink (needs netem)")
	fs.Float64Var(&cfg.Loss, "loss", 0, "packet loss fraction on every host's uplink, e.g. 0.001 (needs netem)")
	systems := fs.String("systems", strings.Join(cfg.Systems, ","), "systems to run, in order: damselfly,direct,bittorrent,image-damselfly,image-direct")
	fs.IntVar(&cfg.ImageLayers, "layers", cfg.ImageLayers, "image systems: layers of the image (F bytes in total)")
	fs.StringVar(&cfg.Scenario, "scenario", cfg.Scenario, "uniform, mixed, racks, churn or spread")
	fs.Var(rateFlag{&cfg.SpreadMin}, "spread-min", "spread: lowest peer uplink (default 20mbit)")
	fs.Var(rateFlag{&cfg.SpreadMax}, "spread-max", "spread: highest peer uplink (default 100mbit)")
	fs.Uint64Var(&cfg.SpreadSeed, "spread-seed", cfg.SpreadSeed, "spread: seed of the uplink draw (the same seed draws the same rates)")
	fs.BoolVar(&cfg.SeedOnOrigin, "seed-on-origin", false, "run the seed peer on the origin's host, sharing its link")
	fs.BoolVar(&cfg.MixedDown, "mixed-down", false, "give -slow-frac of the peers downlinks -slow-factor times slower than -down-rate")
	fs.Float64Var(&cfg.SlowFrac, "slow-frac", cfg.SlowFrac, "mixed: fraction of peers with slow uplinks")
	fs.Float64Var(&cfg.SlowFactor, "slow-factor", cfg.SlowFactor, "mixed: how many times slower their uplinks are")
	fs.Var(rateFlag{&cfg.InterRackRate}, "inter-rack-rate", "racks: rate of the router link between the racks (default: -rate)")
	fs.Float64Var(&cfg.ChurnFrac, "churn-frac", cfg.ChurnFrac, "churn: fraction of peers killed mid-run")
	fs.DurationVar(&cfg.ChurnAt, "churn-at", 0, "churn: when to kill them (default: T*/2)")
	fs.DurationVar(&cfg.Deadline, "deadline", cfg.Deadline, "time limit per system (setup included)")
	fs.StringVar(&cfg.BinDir, "bin-dir", cfg.BinDir, "directory holding the damselfly and dfget binaries")
	fs.StringVar(&cfg.WorkDir, "work-dir", "", "scratch directory for copies and caches (default: $TMPDIR)")
	fs.StringVar(&cfg.OutDir, "out", "", "results directory (default: test/swarm/results/<timestamp>)")
	fs.StringVar(&cfg.RunID, "run-id", "", "suffix of namespace names (default: random)")
	schedArgs := fs.String("scheduler-args", "", "extra flags for damselfly scheduler (space separated)")
	daemonArgs := fs.String("daemon-args", "", "extra flags for the peer daemons (space separated)")
	seedArgs := fs.String("seed-args", "", "extra flags for the seed peer daemon (space separated)")
	fs.BoolVar(&cfg.Declare, "declare", false, "Damselfly daemons declare their link rates to the scheduler (--upload-bps/--download-bps) instead of it measuring them")
	fs.BoolVar(&cfg.TLS, "tls", cfg.TLS, "Damselfly's gRPC with mutual TLS (-tls=false: --insecure plaintext, to compare)")
	cleanup := fs.Bool("cleanup", false, "remove leftover namespaces, processes and scratch directories of earlier runs (all, or -run-id's), then exit")
	verbose := fs.Bool("v", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	cfg.SchedulerArgs = strings.Fields(*schedArgs)
	cfg.DaemonArgs = strings.Fields(*daemonArgs)
	cfg.SeedArgs = strings.Fields(*seedArgs)
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg.Logger = log

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills at once; `swarm -cleanup` removes what is left
	}()

	if *cleanup {
		if err := swarm.Cleanup(ctx, log, cfg.RunID, cfg.WorkDir); err != nil {
			log.Error("cleanup", "err", err)
			return 1
		}
		return 0
	}
	cfg.Systems = nil
	for _, s := range strings.Split(*systems, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.Systems = append(cfg.Systems, s)
		}
	}
	if cfg.OutDir == "" {
		cfg.OutDir = filepath.Join("test", "swarm", "results", time.Now().Format("20060102-150405"))
	}
	res, err := swarm.Run(ctx, cfg)
	if res != nil {
		fmt.Println(res.Markdown())
		fmt.Printf("results in %s\n", cfg.OutDir)
	}
	if err != nil {
		log.Error("swarm", "err", err)
		return 1
	}
	return 0
}
