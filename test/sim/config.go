// Package sim is the swarm simulator: it runs Damselfly's scheduler and
// download core in one process, in virtual time, over a flow-level network
// model (per-host uplinks and downlinks, optional per-rack links, max-min
// fair sharing, a latency per hop), at up to tens of thousands of hosts.
// Its flags, scenarios and bound T* are the netns harness's (test/swarm), so
// that the two can be compared run for run. See docs/simulator.md.
package sim

import (
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"time"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/scheduler"
	"github.com/damselfly-io/damselfly/test/swarm"
)

// Scenarios: the harness's.
const (
	ScenarioUniform = swarm.ScenarioUniform
	ScenarioMixed   = swarm.ScenarioMixed
	ScenarioRacks   = swarm.ScenarioRacks
	ScenarioChurn   = swarm.ScenarioChurn
	ScenarioSpread  = swarm.ScenarioSpread
)

// Config is one simulation.
type Config struct {
	Hosts      int        // N, the downloading peers present at the start
	Size       int64      // F, bytes
	PieceSize  uint32     // 0: core.PieceSize(F), what the daemon picks
	Rate       swarm.Rate // every peer's uplink
	DownRate   swarm.Rate // every peer's downlink; 0 means Rate
	OriginRate swarm.Rate // the origin host's uplink
	SeedRate   swarm.Rate // the seed peer host's uplink; 0 means Rate
	HopLatency time.Duration
	// PayloadFrac is the share of a link's rate that carries payload (1:
	// none lost to headers; the harness's tbf also counts TCP/IP/Ethernet
	// headers, 1448 of 1514 bytes per segment: HarnessPayloadFrac).
	PayloadFrac float64

	Scenario   string
	SlowFrac   float64 // mixed: this fraction of the peers ...
	SlowFactor float64 // ... get uplinks this many times slower
	MixedDown  bool    // SlowFrac of the peers get downlinks SlowFactor× slower
	SpreadMin  swarm.Rate
	SpreadMax  swarm.Rate
	SpreadSeed uint64
	// Racks: how many racks (racks scenario; the harness has 2) and the
	// rate of each rack's link from the router into it.
	Racks         int
	InterRackRate swarm.Rate
	// Churn as the harness does it: ChurnFrac of the peers leave at ChurnAt
	// (0: T*/2). On top of that, leaves and joins at random times:
	// LeaveRate and JoinRate per second of virtual time (Poisson), from
	// the start until the last host is done (joins: until JoinUntil, 0
	// meaning T*).
	ChurnFrac float64
	ChurnAt   time.Duration
	LeaveRate float64
	JoinRate  float64
	JoinUntil time.Duration

	// Seed drives every random choice the simulator makes (churn times,
	// the scheduler's and the cores' randomness).
	Seed uint64
	// Deadline in virtual time; hosts not done by then count as failed.
	Deadline time.Duration
	// Relay: a piece still arriving can be requested by children
	// (cut-through), as the daemon's upload.relay default does.
	Relay bool
	// TickEvery is the period of the scheduler's and the cores' timers.
	TickEvery time.Duration
	// SeedOnOrigin runs the seed peer on the origin's host: it uploads
	// through the origin's uplink, and its own fetch from the origin stays
	// inside the host.
	SeedOnOrigin bool
	// Declare: every daemon declares its link capacity to the scheduler
	// (Host.upload_bps/download_bps, the daemon's upload_bps and
	// download_bps settings); without it the scheduler relies on what it
	// measures.
	Declare bool
	// Scheduler replaces the real scheduler's default config when set.
	Scheduler *scheduler.Config
}

// DefaultConfig is the harness's default run.
func DefaultConfig() Config {
	return Config{
		Hosts: 8, Size: 128 << 20, Rate: 100e6, OriginRate: 100e6,
		HopLatency: 200 * time.Microsecond, PayloadFrac: 1,
		Scenario: ScenarioUniform, SlowFrac: 0.25, SlowFactor: 10,
		SpreadSeed: 1,
		Racks:      2, ChurnFrac: 0.25, Seed: 1, Deadline: time.Hour,
		Relay: true, TickEvery: time.Second,
	}
}

// Validate checks the config and fills derived defaults.
func (c *Config) Validate() error {
	if c.Hosts < 1 || c.Hosts > 1_000_000 {
		return fmt.Errorf("n: %d, want 1..1000000", c.Hosts)
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
	if c.PieceSize == 0 {
		c.PieceSize = core.PieceSize(c.Size)
	}
	if c.PayloadFrac <= 0 || c.PayloadFrac > 1 {
		return fmt.Errorf("payload fraction %v, want (0, 1]", c.PayloadFrac)
	}
	if c.HopLatency < 0 {
		return errors.New("hop latency must be ≥ 0")
	}
	switch c.Scenario {
	case ScenarioUniform, ScenarioMixed, ScenarioRacks, ScenarioChurn, ScenarioSpread:
	default:
		return fmt.Errorf("unknown scenario %q (want uniform, mixed, spread, churn, racks)", c.Scenario)
	}
	if c.SpreadMax == 0 {
		c.SpreadMax = c.Rate
	}
	if c.SpreadMin == 0 {
		c.SpreadMin = c.Rate / 5
	}
	if c.Scenario == ScenarioSpread && (c.SpreadMin <= 0 || c.SpreadMax < c.SpreadMin) {
		return fmt.Errorf("spread: uplinks in [%v, %v]: want 0 < min ≤ max", c.SpreadMin, c.SpreadMax)
	}
	if c.SlowFrac < 0 || c.SlowFrac > 1 || c.ChurnFrac < 0 || c.ChurnFrac >= 1 {
		return errors.New("slow fraction must be in [0,1], churn fraction in [0,1)")
	}
	if c.SlowFactor < 1 {
		return errors.New("slow factor must be ≥ 1")
	}
	if c.LeaveRate < 0 || c.JoinRate < 0 {
		return errors.New("leave and join rates must be ≥ 0")
	}
	if c.Scenario == ScenarioRacks && c.Racks < 2 {
		return fmt.Errorf("racks: %d, want ≥ 2", c.Racks)
	}
	if c.Deadline <= 0 {
		return errors.New("deadline must be positive")
	}
	if c.TickEvery <= 0 {
		c.TickEvery = time.Second
	}
	return nil
}

func (c *Config) racks() int {
	if c.Scenario == ScenarioRacks {
		return c.Racks
	}
	return 1
}

// HarnessPayloadFrac is the payload share of a tbf-shaped link in the
// netns harness: 1448 payload bytes per 1514-byte segment (TCP with
// timestamps, IP, Ethernet).
const HarnessPayloadFrac = 1448.0 / 1514.0

// HostSpec is one simulated host's links.
type HostSpec struct {
	Name string  `json:"name"`
	Rack int     `json:"rack"`
	Up   float64 `json:"up_bps"` // bits per second, as the harness reports
	Down float64 `json:"down_bps"`
}

// layout returns the peers' links exactly as the harness builds them
// (test/swarm Config.hosts): slow peers spread over the index range,
// spread uplinks drawn from the same generator, racks split evenly.
func (c *Config) layout() []HostSpec {
	racks := c.racks()
	slow := 0
	if c.Scenario == ScenarioMixed || c.MixedDown {
		slow = int(float64(c.Hosts)*c.SlowFrac + 0.5)
	}
	rnd := mrand.New(mrand.NewPCG(c.SpreadSeed, c.SpreadSeed^0x5eed))
	hs := make([]HostSpec, 0, c.Hosts)
	for i := range c.Hosts {
		h := HostSpec{Name: fmt.Sprintf("h%d", i+1), Rack: 1 + i*racks/c.Hosts, Up: float64(c.Rate), Down: float64(c.DownRate)}
		isSlow := slow > 0 && (i*slow)/c.Hosts != ((i+1)*slow)/c.Hosts
		if isSlow && c.Scenario == ScenarioMixed {
			h.Up = float64(swarm.Rate(float64(c.Rate) / c.SlowFactor))
		}
		if isSlow && c.MixedDown {
			h.Down = float64(swarm.Rate(float64(c.DownRate) / c.SlowFactor))
		}
		if c.Scenario == ScenarioSpread {
			r := float64(c.SpreadMin) + rnd.Float64()*float64(c.SpreadMax-c.SpreadMin)
			h.Up = math.Round(r/1000) * 1000
		}
		hs = append(hs, h)
	}
	return hs
}

// churnVictims are the peers the harness's churn kills: spread over the
// index range.
func (c *Config) churnVictims(n int) map[int]bool {
	v := map[int]bool{}
	if c.Scenario != ScenarioChurn {
		return v
	}
	k := int(float64(n)*c.ChurnFrac + 0.5)
	for i := range k {
		v[(2*i+1)*n/(2*k)] = true
	}
	return v
}

// Bound is T* and its terms, in seconds, as the harness computes them.
type Bound struct {
	TStar         float64 `json:"t_star_s"`
	TStarWithSeed float64 `json:"t_star_with_seed_s"`
	OriginTerm    float64 `json:"origin_term_s"`
	DownTerm      float64 `json:"download_term_s"`
	SwarmTerm     float64 `json:"swarm_term_s"`
	InterRackTerm float64 `json:"inter_rack_term_s,omitempty"`
}

// LowerBound is the harness's T* = max(F/u_origin, F/d_min,
// N·F/(u_origin + Σ u_peers)) over the hosts that must finish, plus
// F/u_interrack when some of them are outside the origin's rack.
func LowerBound(c Config, must []HostSpec) Bound {
	bits := float64(c.Size) * 8
	var n, sumUp float64
	dmin := math.Inf(1)
	otherRack := false
	for _, p := range must {
		n++
		sumUp += p.Up
		dmin = min(dmin, p.Down)
		otherRack = otherRack || p.Rack > 1
	}
	b := Bound{
		OriginTerm: bits / float64(c.OriginRate),
		DownTerm:   bits / dmin,
		SwarmTerm:  n * bits / (float64(c.OriginRate) + sumUp),
	}
	swarmSeed := n * bits / (float64(c.OriginRate) + float64(c.SeedRate) + sumUp)
	if c.SeedOnOrigin {
		swarmSeed = b.SwarmTerm // the seed peer adds no uplink of its own
	}
	if c.Scenario == ScenarioRacks && otherRack {
		b.InterRackTerm = bits / float64(c.InterRackRate)
	}
	b.TStar = max(b.OriginTerm, b.DownTerm, b.SwarmTerm, b.InterRackTerm)
	b.TStarWithSeed = max(b.OriginTerm, b.DownTerm, swarmSeed, b.InterRackTerm)
	return b
}
