// Package swarm is the emulated-network benchmark harness: it builds N hosts
// on one machine (a network namespace each, tc-shaped veths into Linux
// bridges, addresses only in 10.77.0.0/16) and runs, on the same network and
// in one invocation, Damselfly, every host pulling from the origin, and a
// BitTorrent swarm (aria2c + opentracker), reporting how close each comes to
// the lower bound T*.
//
// It needs root and iproute2. It starts processes only inside namespaces it
// created, sends traffic only to addresses it assigned there (and loopback),
// and removes every namespace and process it made, also on error and on
// cancellation; Cleanup removes leftovers of runs that were killed.
package swarm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/damselfly-io/damselfly/test/oci"
)

// Systems the harness can run.
const (
	SystemDamselfly  = "damselfly"
	SystemDirect     = "direct"
	SystemBitTorrent = "bittorrent"
	// The image systems pull a multi-layer container image of F bytes from
	// docker-registry on the origin host with skopeo: through each host's
	// Damselfly daemon as a registry mirror, or straight from the registry.
	SystemImageDamselfly = "image-damselfly"
	SystemImageDirect    = "image-direct"
)

var allSystems = []string{SystemDamselfly, SystemDirect, SystemBitTorrent, SystemImageDamselfly, SystemImageDirect}

// isImage says whether a system pulls the image rather than the file.
func isImage(sys string) bool { return sys == SystemImageDamselfly || sys == SystemImageDirect }

// Scenarios.
const (
	ScenarioUniform = "uniform" // every link alike
	ScenarioMixed   = "mixed"   // a fraction of peers with 10× slower uplinks
	ScenarioRacks   = "racks"   // two racks joined by a slower router link
	ScenarioChurn   = "churn"   // a fraction of peers killed mid-run
	ScenarioSpread  = "spread"  // peer uplinks drawn uniformly in [SpreadMin, SpreadMax]
)

// Config is one harness run.
type Config struct {
	Hosts      int           // N, the downloading peers
	Size       int64         // F, bytes
	Rate       Rate          // every peer's uplink
	DownRate   Rate          // every peer's downlink; 0 means Rate
	OriginRate Rate          // the origin host's uplink
	SeedRate   Rate          // the seed peer host's uplink; 0 means Rate
	Burst      int64         // tbf burst in bytes; 0 means max(128 KiB, 4 ms of traffic)
	Latency    time.Duration // tbf queue bound
	Delay      time.Duration // one-way delay per host uplink (netem only)
	Loss       float64       // loss fraction per host uplink (netem only)

	Systems  []string
	Scenario string
	// ImageLayers is how many layers the image systems' image has (its
	// size is Size).
	ImageLayers int
	// SlowFrac of the peers get uplinks SlowFactor times slower (mixed).
	SlowFrac   float64
	SlowFactor float64
	// InterRackRate shapes the router link between racks (racks); 0 means Rate.
	InterRackRate Rate
	// ChurnFrac of the peers are killed at ChurnAt after the start (churn);
	// ChurnAt 0 means half of T*.
	ChurnFrac float64
	ChurnAt   time.Duration
	// SpreadMin and SpreadMax bound the peers' uplinks (spread), drawn
	// uniformly with SpreadSeed so that a run can be repeated.
	SpreadMin  Rate
	SpreadMax  Rate
	SpreadSeed uint64
	// SeedOnOrigin runs the seed peer on the origin's host: one namespace,
	// one link (the origin's uplink carries the seed's uploads too).
	SeedOnOrigin bool
	// MixedDown gives SlowFrac of the peers downlinks SlowFactor times
	// slower than DownRate (any scenario; in mixed, the slow-uplink ones).
	MixedDown bool

	// Extra command-line flags for Damselfly's scheduler, peer daemons and
	// seed peer, for tuning runs (e.g. "--max-parents 2").
	SchedulerArgs []string
	DaemonArgs    []string
	// Declare has every Damselfly daemon declare its link rates
	// (--upload-bps/--download-bps) instead of leaving them to be measured.
	Declare  bool
	SeedArgs []string
	// TLS runs Damselfly's gRPC with mutual TLS (a CA made for the run,
	// a certificate per component in its host's directory); false runs it
	// with --insecure, to measure what mTLS costs.
	TLS bool

	Deadline time.Duration // per system
	BinDir   string        // holds damselfly and dfget
	WorkDir  string        // scratch space for copies and caches; "" means os.TempDir()
	OutDir   string        // results.json, results.md, cdf.png, logs
	RunID    string        // "" picks a random one
	Logger   *slog.Logger
}

// DefaultConfig is the uniform 8-host, 128 MiB, 100 Mbit/s run of docs/benchmarks.md.
func DefaultConfig() Config {
	return Config{
		Hosts:       8,
		Size:        128 << 20,
		Rate:        100e6,
		OriginRate:  100e6,
		Latency:     50 * time.Millisecond,
		Systems:     []string{SystemDamselfly, SystemDirect, SystemBitTorrent},
		Scenario:    ScenarioUniform,
		ImageLayers: 8,
		SlowFrac:    0.25,
		SlowFactor:  10,
		ChurnFrac:   0.25,
		SpreadMin:   20e6,
		SpreadMax:   100e6,
		SpreadSeed:  1,
		Deadline:    10 * time.Minute,
		BinDir:      "bin",
		TLS:         true,
	}
}

// Validate checks the config and fills derived defaults.
func (c *Config) Validate() error {
	if c.Hosts < 1 || c.Hosts > 200 {
		return fmt.Errorf("hosts: %d, want 1..200", c.Hosts)
	}
	if c.Size <= 0 {
		return errors.New("size must be positive")
	}
	if c.Rate <= 0 || c.OriginRate <= 0 {
		return errors.New("rate and origin rate must be positive")
	}
	if c.DownRate == 0 {
		c.DownRate = c.Rate
	}
	if c.SeedRate == 0 {
		c.SeedRate = c.Rate
	}
	if c.InterRackRate == 0 {
		c.InterRackRate = c.Rate
	}
	if c.Latency <= 0 {
		c.Latency = 50 * time.Millisecond
	}
	if c.Deadline <= 0 {
		return errors.New("deadline must be positive")
	}
	if len(c.Systems) == 0 {
		return errors.New("no systems to run")
	}
	for _, s := range c.Systems {
		if !slices.Contains(allSystems, s) {
			return fmt.Errorf("unknown system %q (want one of %v)", s, allSystems)
		}
	}
	switch c.Scenario {
	case ScenarioUniform, ScenarioMixed, ScenarioRacks, ScenarioChurn, ScenarioSpread:
	default:
		return fmt.Errorf("unknown scenario %q (want uniform, mixed, racks, churn, spread)", c.Scenario)
	}
	if c.Scenario == ScenarioSpread && (c.SpreadMin <= 0 || c.SpreadMax < c.SpreadMin) {
		return fmt.Errorf("spread: uplinks in [%v, %v]: want 0 < min ≤ max", c.SpreadMin, c.SpreadMax)
	}
	if c.SlowFrac < 0 || c.SlowFrac > 1 || c.ChurnFrac < 0 || c.ChurnFrac >= 1 {
		return errors.New("slow and churn fractions must be in [0,1)")
	}
	if slices.ContainsFunc(c.Systems, isImage) && (c.ImageLayers < 1 || c.Size < int64(c.ImageLayers)) {
		return fmt.Errorf("image layers: %d, want 1..size", c.ImageLayers)
	}
	if c.SlowFactor < 1 {
		c.SlowFactor = 10
	}
	if c.Loss < 0 || c.Loss >= 1 {
		return errors.New("loss must be in [0,1)")
	}
	if c.RunID == "" {
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		c.RunID = hex.EncodeToString(b)
	}
	if len(Prefix+c.RunID+"-origin") > 64 {
		return fmt.Errorf("run id %q too long", c.RunID)
	}
	if c.OutDir == "" {
		return errors.New("out dir must be set")
	}
	if c.WorkDir == "" {
		c.WorkDir = os.TempDir()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// racks is the number of bridges: two in the racks scenario, else one.
func (c *Config) racks() int {
	if c.Scenario == ScenarioRacks {
		return 2
	}
	return 1
}

// hosts lays out the run's hosts: origin, scheduler and seed peer first, in
// rack 1; the N peers split evenly over the racks.
func (c *Config) hosts() []*Host {
	racks := c.racks()
	hs := []*Host{
		{Name: "origin", Role: RoleOrigin, Rack: 1, IP: rackAddr(1, 2), Up: c.OriginRate, Down: c.DownRate},
		{Name: "sched", Role: RoleScheduler, Rack: 1, IP: rackAddr(1, 3), Up: c.Rate, Down: c.DownRate},
		{Name: "seed", Role: RoleSeed, Rack: 1, IP: rackAddr(1, 4), Up: c.SeedRate, Down: c.DownRate},
	}
	if c.SeedOnOrigin {
		// The seed peer is a process on the origin's host: its address and
		// its link (buildNetwork makes no namespace for it).
		hs[2] = &Host{Name: "seed", Role: RoleSeed, Rack: 1, IP: hs[0].IP, Up: hs[0].Up, Down: hs[0].Down, On: "origin"}
	}
	slow := 0
	if c.Scenario == ScenarioMixed || c.MixedDown {
		slow = int(float64(c.Hosts)*c.SlowFrac + 0.5)
	}
	// One generator per run, seeded: the same flags draw the same rates.
	rnd := mrand.New(mrand.NewPCG(c.SpreadSeed, c.SpreadSeed^0x5eed))
	for i := range c.Hosts {
		rack := 1 + i*racks/c.Hosts
		h := &Host{
			Name: fmt.Sprintf("h%d", i+1),
			Role: RolePeer,
			Rack: rack,
			IP:   netip.AddrFrom4([4]byte{10, 77, byte(rack), byte(10 + i)}),
			Up:   c.Rate,
			Down: c.DownRate,
		}
		// Slow peers are spread over the index range, not bunched at the end.
		isSlow := slow > 0 && (i*slow)/c.Hosts != ((i+1)*slow)/c.Hosts
		if isSlow && c.Scenario == ScenarioMixed {
			h.Up = Rate(float64(c.Rate) / c.SlowFactor)
		}
		if isSlow && c.MixedDown {
			h.Down = Rate(float64(c.DownRate) / c.SlowFactor)
		}
		if c.Scenario == ScenarioSpread {
			// Whole kbit/s, so that tc takes the rate as written.
			r := float64(c.SpreadMin) + rnd.Float64()*float64(c.SpreadMax-c.SpreadMin)
			h.Up = Rate(math.Round(r/1000) * 1000)
		}
		hs = append(hs, h)
	}
	return hs
}

// Run builds the network, runs every system in turn on it, writes the
// results under OutDir and tears everything down.
func Run(ctx context.Context, cfg Config) (*Results, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	log := cfg.Logger.With("run_id", cfg.RunID)
	if os.Geteuid() != 0 {
		return nil, errors.New("the swarm harness needs root (network namespaces, tc)")
	}
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("create out dir: %w", err)
	}
	work, err := os.MkdirTemp(cfg.WorkDir, Prefix+cfg.RunID+"-")
	if err != nil {
		return nil, fmt.Errorf("create work dir: %w", err)
	}
	defer os.RemoveAll(work)
	if err := os.WriteFile(filepath.Join(work, harnessPIDFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, fmt.Errorf("write pid file: %w", err)
	}

	blob := filepath.Join(work, "blob")
	var digest string
	if slices.ContainsFunc(cfg.Systems, func(s string) bool { return !isImage(s) }) {
		log.Info("writing test file", "size", FormatSize(cfg.Size))
		if digest, err = writeTestFile(blob, cfg.Size); err != nil {
			return nil, err
		}
	}
	var im *oci.Image
	if slices.ContainsFunc(cfg.Systems, isImage) {
		log.Info("writing test image", "size", FormatSize(cfg.Size), "layers", cfg.ImageLayers)
		if im, err = oci.WriteImage(filepath.Join(work, "image"), "latest", cfg.ImageLayers, cfg.Size); err != nil {
			return nil, err
		}
		if digest == "" {
			digest = im.Manifest.Digest
		}
	}

	netw, err := buildNetwork(ctx, log, cfg.RunID, cfg.racks(), cfg.InterRackRate, cfg.hosts(),
		shaping{burst: cfg.Burst, latency: cfg.Latency, delay: cfg.Delay, loss: cfg.Loss})
	if err != nil {
		return nil, fmt.Errorf("build network: %w", err)
	}
	defer netw.Teardown(context.WithoutCancel(ctx))
	if !netw.Netem {
		fmt.Fprintln(os.Stderr, "netem unavailable: delay/loss not emulated")
	}

	res := &Results{
		Params:     paramsOf(cfg, netw),
		LowerBound: lowerBound(cfg, netw.Peers(), netw.Seed(), netw.Origin()),
		SHA256:     digest,
	}
	log.Info("network up", "hosts", len(netw.Hosts), "t_star_s", res.LowerBound.TStar, "netem", netw.Netem)
	for _, sys := range cfg.Systems {
		if ctx.Err() != nil {
			break
		}
		r := runSystem(ctx, log.With("system", sys), cfg, netw, sys, work, blob, digest, im, res.LowerBound)
		res.Systems = append(res.Systems, r)
		log.Info("system done", "t_last_s", r.TLast, "efficiency", r.EffLast, "origin_bytes_over_f", r.OriginOverF,
			"completed", r.Completed, "failed", r.Failed, "err", r.Error)
		// Write after each system so an aborted run keeps what it measured.
		if err := res.write(cfg.OutDir); err != nil {
			return res, err
		}
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("run aborted: %w", ctx.Err())
	}
	return res, nil
}
