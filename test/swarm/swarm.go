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
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/damselfly-io/damselfly/test/oci"
	"github.com/damselfly-io/damselfly/test/swarm/scenario"
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

// Scenarios (see package scenario).
const (
	ScenarioUniform = scenario.Uniform
	ScenarioMixed   = scenario.Mixed
	ScenarioRacks   = scenario.Racks
	ScenarioChurn   = scenario.Churn
	ScenarioSpread  = scenario.Spread
)

// Rate is a link rate in bits per second (tc syntax).
type Rate = scenario.Rate

// Config is one harness run.
type Config struct {
	// Spec is the run's peers, sizes, links and scenario, as the simulator
	// takes them too.
	scenario.Spec

	Burst   int64         // tbf burst in bytes; 0 means max(128 KiB, 4 ms of traffic)
	Latency time.Duration // tbf queue bound
	Delay   time.Duration // one-way delay per host uplink (netem only)
	Loss    float64       // loss fraction per host uplink (netem only)

	Systems []string
	// ImageLayers is how many layers the image systems' image has (its
	// size is Size).
	ImageLayers int

	// Extra command-line flags for Damselfly's scheduler, peer daemons and
	// seed peer, for tuning runs (e.g. "--max-parents 2").
	SchedulerArgs []string
	DaemonArgs    []string
	SeedArgs      []string
	// TLS runs Damselfly's gRPC with mutual TLS (a CA made for the run,
	// a certificate per component in its host's directory); false runs it
	// with --insecure, to measure what mTLS costs.
	TLS bool

	Deadline time.Duration // per system
	BinDir   string        // holds damselfly and dfget, and cdfplot for cdf.png if built
	WorkDir  string        // scratch space for copies and caches; "" means os.TempDir()
	OutDir   string        // results.json, results.md, cdf.png, logs
	RunID    string        // "" picks a random one
	Logger   *slog.Logger
}

// DefaultConfig is the uniform 8-host, 128 MiB, 100 Mbit/s run of
// docs/benchmarks.md, spread uplinks in [20, 100] Mbit/s.
func DefaultConfig() Config {
	spec := scenario.DefaultSpec()
	spec.SpreadMin, spec.SpreadMax = 20e6, 100e6
	return Config{
		Spec:        spec,
		Latency:     50 * time.Millisecond,
		Systems:     []string{SystemDamselfly, SystemDirect, SystemBitTorrent},
		ImageLayers: 8,
		Deadline:    10 * time.Minute,
		BinDir:      "bin",
		TLS:         true,
	}
}

// Validate checks the config and fills derived defaults.
func (c *Config) Validate() error {
	if c.SlowFactor < 1 {
		c.SlowFactor = 10
	}
	if err := c.Spec.Validate(200); err != nil {
		return err
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
	if slices.ContainsFunc(c.Systems, isImage) && (c.ImageLayers < 1 || c.Size < int64(c.ImageLayers)) {
		return fmt.Errorf("image layers: %d, want 1..size", c.ImageLayers)
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
	for i, p := range c.Peers(racks) {
		hs = append(hs, &Host{
			Name: p.Name,
			Role: RolePeer,
			Rack: p.Rack,
			IP:   netip.AddrFrom4([4]byte{10, 77, byte(p.Rack), byte(10 + i)}),
			Up:   p.Up,
			Down: p.Down,
		})
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
		log.Info("writing test file", "size", scenario.FormatSize(cfg.Size))
		if digest, err = writeTestFile(blob, cfg.Size); err != nil {
			return nil, err
		}
	}
	var im *oci.Image
	if slices.ContainsFunc(cfg.Systems, isImage) {
		log.Info("writing test image", "size", scenario.FormatSize(cfg.Size), "layers", cfg.ImageLayers)
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
		LowerBound: lowerBound(cfg, netw.Peers()),
		SHA256:     digest,
	}
	log.Info("network up", "hosts", len(netw.Hosts), "t_star_s", res.LowerBound.TStar, "netem", netw.Netem)
	cdfplot := findCDFPlot(cfg.BinDir)
	if cdfplot == "" {
		log.Info("no cdf.png: no cdfplot in the bin dir (make cdfplot builds it)", "bin_dir", cfg.BinDir)
	}
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
		drawCDF(log, cdfplot, cfg.OutDir)
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("run aborted: %w", ctx.Err())
	}
	return res, nil
}
