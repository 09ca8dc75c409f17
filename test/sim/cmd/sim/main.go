// Command sim runs the swarm simulator: Damselfly's scheduler and download
// core in virtual time over a flow-level network model, with the swarm
// harness's flags. The last line of its output is one JSON object. See
// docs/simulator.md.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/damselfly-io/damselfly/internal/config"
	"github.com/damselfly-io/damselfly/scheduler"
	"github.com/damselfly-io/damselfly/test/sim"
	"github.com/damselfly-io/damselfly/test/swarm/scenario"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg := sim.DefaultConfig()
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: sim [flags]\n\nSimulates a swarm download with Damselfly's scheduler and download core in virtual time.\nThe last line of output is one JSON object (docs/simulator.md).\n\n")
		fs.PrintDefaults()
	}
	var pieceSize int64
	cfg.AddFlags(fs)
	// The simulator's spread follows -rate; the harness's is fixed.
	fs.Lookup("spread-min").Usage = "spread: lowest peer uplink (default: -rate / 5; 20mbit at the harness's 100mbit)"
	fs.Lookup("spread-max").Usage = "spread: highest peer uplink (default: -rate)"
	scenario.SizeVar(fs, &pieceSize, "piece-size", "piece size (default: the daemon's rule for F)")
	fs.DurationVar(&cfg.HopLatency, "hop-latency", cfg.HopLatency, "one-way latency of one hop (host to host in a rack; two hops across racks)")
	fs.IntVar(&cfg.Racks, "racks", cfg.Racks, "racks: number of racks")
	fs.Float64Var(&cfg.LeaveRate, "leave-rate", 0, "any scenario: peers leaving per second of virtual time (Poisson)")
	fs.Float64Var(&cfg.JoinRate, "join-rate", 0, "any scenario: peers joining per second of virtual time (Poisson), until -join-until")
	fs.DurationVar(&cfg.JoinUntil, "join-until", 0, "last time a peer may join (default: T*)")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed of every random choice (same seed, same result)")
	fs.DurationVar(&cfg.Deadline, "deadline", cfg.Deadline, "virtual-time limit; hosts not done by then count as failed")
	fs.BoolVar(&cfg.Relay, "relay", cfg.Relay, "relays (cut-through): children may fetch a piece still arriving")
	fs.BoolVar(&cfg.ShuffleJoins, "shuffle-joins", false, "start the peers in a random order (from -seed), as they register on the harness, instead of h1, h2, …")
	fs.DurationVar(&cfg.JoinSpacing, "join-spacing", 0, "start the peers this far apart in join order (0: all at once); with it most peers register after the seed peer, as on the harness")
	fs.DurationVar(&cfg.TickEvery, "tick", cfg.TickEvery, "period of the scheduler's and the cores' timers")
	schedConfig := fs.String("scheduler-config", "", "the scheduler's YAML config (as damselfly scheduler --config), for tuning runs")
	maxParents := fs.Int("max-parents", 0, "the scheduler's max_parents (0: its default or -scheduler-config's)")
	maxChildren := fs.Int("max-children", 0, "the scheduler's max_children (0: its default or -scheduler-config's)")
	harness := fs.String("harness", "", "a netns harness results.json: simulate its scenario, sizes and rates (with its links' payload share) and add what it measured")
	table := fs.Bool("table", false, "print the validation table of the sim JSON files named as arguments (outputs of -harness runs) and exit")
	fs.Float64Var(&cfg.PayloadFrac, "payload-frac", cfg.PayloadFrac, "share of every link's rate that carries payload (the harness's tbf counts headers: 0.956)")
	memProfile := fs.String("memprofile", "", "write a heap profile at the end of the run (everything still live: the scheduler's and the cores' state) to this file")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the run to this file")
	models := fs.String("models", "real", "real: the real scheduler and download core; double: the simulator's stand-ins (tests)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *table {
		return printTable(fs.Args(), stdout, stderr)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sim: unexpected arguments %v\n", fs.Args())
		return 2
	}
	cfg.PieceSize = uint32(pieceSize)
	if *schedConfig != "" || *maxParents > 0 || *maxChildren > 0 {
		sc := scheduler.DefaultConfig()
		if *schedConfig != "" {
			if err := config.LoadFile(*schedConfig, &sc); err != nil {
				fmt.Fprintln(stderr, "sim:", err)
				return 2
			}
		}
		if *maxParents > 0 {
			sc.MaxParents = *maxParents
		}
		if *maxChildren > 0 {
			sc.MaxChildren = *maxChildren
		}
		if err := sc.Validate(); err != nil {
			fmt.Fprintln(stderr, "sim:", err)
			return 2
		}
		cfg.Scheduler = &sc
	}
	var hrun *sim.HarnessRun
	if *harness != "" {
		c, h, err := sim.FromHarness(*harness, cfg)
		if err != nil {
			fmt.Fprintln(stderr, "sim:", err)
			return 2
		}
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "payload-frac" {
				c.PayloadFrac = cfg.PayloadFrac
			}
		})
		h.Dir = filepath.Dir(*harness)
		cfg, hrun = c, &h
	}
	newSched, newCore, err := sim.Models(*models)
	if err != nil {
		fmt.Fprintln(stderr, "sim:", err)
		return 2
	}
	s, err := sim.New(cfg, newSched, newCore)
	if err != nil {
		fmt.Fprintln(stderr, "sim:", err)
		return 2
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "sim:", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "sim:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	res, err := s.Run()
	if err != nil {
		fmt.Fprintln(stderr, "sim:", err)
		return 1
	}
	res.Models = *models
	if *memProfile != "" {
		if err := writeHeapProfile(*memProfile, s); err != nil {
			fmt.Fprintln(stderr, "sim:", err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "sim: %s, n=%d: %d/%d done, T*=%.2fs T_median=%.2fs T_last=%.2fs (T*/T_last %.2f), origin %.2f×F, scheduler %.1fs CPU, %.1fs wall\n",
		res.Scenario, res.N, res.Completed, res.Completed+res.Failed, res.TStar, res.TMedian, res.TLast, res.EffLast,
		res.OriginOverF, res.SchedulerCPU, time.Since(start).Seconds())
	b, err := json.Marshal(output{Result: res, Harness: hrun})
	if err != nil {
		fmt.Fprintln(stderr, "sim:", err)
		return 1
	}
	fmt.Fprintln(stdout, string(b))
	if res.Failed > 0 {
		return 3
	}
	return 0
}

// writeHeapProfile writes the heap as it is at the end of the run, with
// the simulation (scheduler, cores, network) still reachable.
func writeHeapProfile(path string, s *sim.Sim) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	defer f.Close()
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	runtime.KeepAlive(s)
	return f.Close()
}

// output is the last line: the result, and with -harness what the
// harness measured.
type output struct {
	*sim.Result
	Harness *sim.HarnessRun `json:"harness,omitempty"`
}

// printTable prints the validation table of -harness outputs: per run,
// the harness's and the simulator's T_median and T_last and how far apart
// they are.
func printTable(files []string, stdout, stderr io.Writer) int {
	if len(files) == 0 {
		fmt.Fprintln(stderr, "sim: -table needs the JSON files of -harness runs")
		return 2
	}
	fmt.Fprintln(stdout, "| scenario | N | T* (s) | harness T_median | sim T_median | Δ | harness T_last | sim T_last | Δ | origin / F (harness, sim) | harness CPU busy |")
	fmt.Fprintln(stdout, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	code := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintln(stderr, "sim:", err)
			code = 1
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		var o struct {
			sim.Result
			Harness *sim.HarnessRun `json:"harness"`
		}
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &o); err != nil {
			fmt.Fprintf(stderr, "sim: %s: %v\n", f, err)
			code = 1
			continue
		}
		h := o.Harness
		if h == nil {
			h = &sim.HarnessRun{}
		}
		fmt.Fprintf(stdout, "| %s | %d | %.2f | %s | %.2f | %s | %s | %s | %s | %s, %.2f | %s |\n", o.Scenario, o.N, o.TStar,
			secs(h.TMedian), o.TMedian, delta(o.TMedian, h.TMedian), secs(h.TLast), secs(o.TLast), delta(o.TLast, h.TLast),
			ratio(h.OriginOverF), o.OriginOverF, pct(h.CPUBusy))
	}
	return code
}

func secs(v float64) string {
	if v == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", v)
}

func ratio(v float64) string {
	if v == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", v)
}

func pct(v float64) string {
	if v == 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f %%", v*100)
}

// delta is how far the simulator is from the harness, in percent of the
// harness's figure.
func delta(sim, real float64) string {
	if sim == 0 || real == 0 {
		return "—"
	}
	return fmt.Sprintf("%+.0f %%", (sim-real)/real*100)
}
