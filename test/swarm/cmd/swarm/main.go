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
	"github.com/damselfly-io/damselfly/test/swarm/scenario"
)

func main() {
	swarm.HelperMain() // the origin server role, when re-executed by the harness
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cfg := swarm.DefaultConfig()
	fs := flag.NewFlagSet("swarm", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: swarm [flags]\n\nRuns Damselfly, direct origin pulls and BitTorrent on one emulated network (needs root).\n\n")
		fs.PrintDefaults()
	}
	cfg.AddFlags(fs)
	scenario.SizeVar(fs, &cfg.Burst, "burst", "tbf burst (default: max(128KiB, 4 ms at the link's rate))")
	fs.DurationVar(&cfg.Latency, "latency", cfg.Latency, "tbf latency: the longest a packet may queue in a shaper")
	fs.DurationVar(&cfg.Delay, "delay", 0, "one-way delay added to every host's uplink (needs netem)")
	fs.Float64Var(&cfg.Loss, "loss", 0, "packet loss fraction on every host's uplink, e.g. 0.001 (needs netem)")
	systems := fs.String("systems", strings.Join(cfg.Systems, ","), "systems to run, in order: damselfly,direct,bittorrent,image-damselfly,image-direct")
	fs.IntVar(&cfg.ImageLayers, "layers", cfg.ImageLayers, "image systems: layers of the image (F bytes in total)")
	fs.DurationVar(&cfg.Deadline, "deadline", cfg.Deadline, "time limit per system (setup included)")
	fs.StringVar(&cfg.BinDir, "bin-dir", cfg.BinDir, "directory holding the damselfly and dfget binaries, and cdfplot (optional) for cdf.png")
	fs.StringVar(&cfg.WorkDir, "work-dir", "", "scratch directory for copies and caches (default: $TMPDIR)")
	fs.StringVar(&cfg.OutDir, "out", "", "results directory (default: test/swarm/results/<timestamp>)")
	fs.StringVar(&cfg.RunID, "run-id", "", "suffix of namespace names (default: random)")
	schedArgs := fs.String("scheduler-args", "", "extra flags for damselfly scheduler (space separated)")
	daemonArgs := fs.String("daemon-args", "", "extra flags for the peer daemons (space separated)")
	seedArgs := fs.String("seed-args", "", "extra flags for the seed peer daemon (space separated)")
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
