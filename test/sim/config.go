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
	"time"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/scheduler"
	"github.com/damselfly-io/damselfly/test/swarm/scenario"
)

// Config is one simulation.
type Config struct {
	// Spec is the run's peers present at the start, sizes, links and
	// scenario, as the harness takes them. The simulator's spread default
	// follows -rate: SpreadMin 0 means Rate/5, SpreadMax 0 means Rate.
	scenario.Spec

	PieceSize  uint32 // 0: core.PieceSize(F), what the daemon picks
	HopLatency time.Duration
	// PayloadFrac is the share of a link's rate that carries payload (1:
	// none lost to headers; the harness's tbf also counts TCP/IP/Ethernet
	// headers, 1448 of 1514 bytes per segment: HarnessPayloadFrac).
	PayloadFrac float64

	// Racks: how many racks (racks scenario; the harness has 2), each
	// reached from the router at InterRackRate.
	Racks int
	// On top of the harness's churn (ChurnFrac of the peers leave at
	// ChurnAt), leaves and joins at random times: LeaveRate and JoinRate
	// per second of virtual time (Poisson), from the start until the last
	// host is done (joins: until JoinUntil, 0 meaning T*).
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
	// ShuffleJoins starts the peers in a random order (from Seed) instead
	// of h1, h2, …: on the harness they register in whatever order their
	// daemons come up.
	ShuffleJoins bool
	// JoinSpacing starts the peers this far apart (in join order) instead
	// of all at once: on the harness, the seed peer is often triggered by
	// the first registrations and most peers register after it.
	JoinSpacing time.Duration
	// TickEvery is the period of the scheduler's and the cores' timers.
	TickEvery time.Duration
	// Scheduler replaces the real scheduler's default config when set.
	Scheduler *scheduler.Config
}

// DefaultConfig is the harness's default run.
func DefaultConfig() Config {
	return Config{
		Spec:       scenario.DefaultSpec(),
		HopLatency: 200 * time.Microsecond, PayloadFrac: 1,
		Racks: 2, Seed: 1, Deadline: time.Hour,
		Relay: true, TickEvery: time.Second,
	}
}

// Validate checks the config and fills derived defaults.
func (c *Config) Validate() error {
	if c.SpreadMax == 0 {
		c.SpreadMax = c.Rate
	}
	if c.SpreadMin == 0 {
		c.SpreadMin = c.Rate / 5
	}
	if err := c.Spec.Validate(1_000_000); err != nil {
		return err
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
	if c.LeaveRate < 0 || c.JoinRate < 0 {
		return errors.New("leave and join rates must be ≥ 0")
	}
	if c.Scenario == scenario.Racks && c.Racks < 2 {
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
	if c.Scenario == scenario.Racks {
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
// (scenario.Spec.Peers).
func (c *Config) layout() []HostSpec {
	ps := c.Peers(c.racks())
	hs := make([]HostSpec, 0, len(ps))
	for _, p := range ps {
		hs = append(hs, HostSpec{Name: p.Name, Rack: p.Rack, Up: float64(p.Up), Down: float64(p.Down)})
	}
	return hs
}

// Bound is T* and its terms, in seconds, as the harness computes them
// (scenario.Bound, less the swarm term with the seed).
type Bound struct {
	TStar         float64 `json:"t_star_s"`
	TStarWithSeed float64 `json:"t_star_with_seed_s"`
	OriginTerm    float64 `json:"origin_term_s"`
	DownTerm      float64 `json:"download_term_s"`
	SwarmTerm     float64 `json:"swarm_term_s"`
	InterRackTerm float64 `json:"inter_rack_term_s,omitempty"`
}

// LowerBound is the harness's T* (scenario.Spec.LowerBound) over the
// hosts that must finish.
func LowerBound(c Config, must []HostSpec) Bound {
	ps := make([]scenario.Peer, 0, len(must))
	for _, h := range must {
		ps = append(ps, scenario.Peer{Name: h.Name, Rack: h.Rack, Up: scenario.Rate(h.Up), Down: scenario.Rate(h.Down)})
	}
	b := c.Spec.LowerBound(ps)
	return Bound{TStar: b.TStar, TStarWithSeed: b.TStarWithSeed, OriginTerm: b.OriginTerm, DownTerm: b.DownTerm,
		SwarmTerm: b.SwarmTerm, InterRackTerm: b.InterRackTerm}
}
