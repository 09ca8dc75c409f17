// Package scenario describes a swarm run the way the netns harness
// (test/swarm) and the simulator (test/sim) both take it: N peers, the file
// size F, every host's link rates, the scenario that varies them (mixed,
// spread, racks, churn, a seed peer on the origin's host), the flags that set
// all of that, which peers churn kills, and the lower bound T*. It owns these
// so that the two tools lay out the same hosts and compute the same bound for
// the same flags. It has no side effects: no namespaces, no processes.
package scenario

import (
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"time"
)

// Scenarios.
const (
	Uniform = "uniform" // every link alike
	Mixed   = "mixed"   // a fraction of peers with SlowFactor× slower uplinks
	Racks   = "racks"   // racks joined by a slower router link
	Churn   = "churn"   // a fraction of peers killed mid-run
	Spread  = "spread"  // peer uplinks drawn uniformly in [SpreadMin, SpreadMax]
)

// Spec is what the harness and the simulator share of a run's config.
type Spec struct {
	Hosts      int   // N, the downloading peers
	Size       int64 // F, bytes
	Rate       Rate  // every peer's uplink
	DownRate   Rate  // every peer's downlink; 0 means Rate
	OriginRate Rate  // the origin host's uplink
	SeedRate   Rate  // the seed peer host's uplink; 0 means Rate

	Scenario string
	// SlowFrac of the peers get uplinks SlowFactor times slower (mixed).
	SlowFrac   float64
	SlowFactor float64
	// MixedDown gives SlowFrac of the peers downlinks SlowFactor times
	// slower than DownRate (any scenario; in mixed, the slow-uplink ones).
	MixedDown bool
	// SpreadMin and SpreadMax bound the peers' uplinks (spread), drawn
	// uniformly with SpreadSeed so that a run can be repeated.
	SpreadMin  Rate
	SpreadMax  Rate
	SpreadSeed uint64
	// InterRackRate shapes the router's links into the racks (racks); 0
	// means Rate.
	InterRackRate Rate
	// ChurnFrac of the peers are killed at ChurnAt after the start (churn);
	// ChurnAt 0 means half of T*.
	ChurnFrac float64
	ChurnAt   time.Duration
	// SeedOnOrigin runs the seed peer on the origin's host: it uploads
	// through the origin's uplink and adds none of its own.
	SeedOnOrigin bool
	// Declare has every Damselfly daemon declare its link rates to the
	// scheduler (the daemon's upload_bps/download_bps) instead of leaving
	// them to be measured.
	Declare bool
	// NoLinkTest has every Damselfly daemon skip its link tests (the
	// scheduler then knows a host that declares nothing only from what it
	// sends in tasks).
	NoLinkTest bool
}

// DefaultSpec is the uniform 8-host, 128 MiB, 100 Mbit/s run of
// docs/benchmarks.md. SpreadMin and SpreadMax are left to the tool.
func DefaultSpec() Spec {
	return Spec{
		Hosts: 8, Size: 128 << 20, Rate: 100e6, OriginRate: 100e6,
		Scenario: Uniform, SlowFrac: 0.25, SlowFactor: 10, ChurnFrac: 0.25, SpreadSeed: 1,
	}
}

// Validate checks the spec, with at most maxHosts peers, and fills the
// rates that default to Rate.
func (s *Spec) Validate(maxHosts int) error {
	if s.Hosts < 1 || s.Hosts > maxHosts {
		return fmt.Errorf("n: %d, want 1..%d", s.Hosts, maxHosts)
	}
	if s.Size <= 0 {
		return errors.New("size must be positive")
	}
	if s.Rate <= 0 || s.OriginRate <= 0 {
		return errors.New("rate and origin rate must be positive")
	}
	if s.DownRate == 0 {
		s.DownRate = s.Rate
	}
	if s.SeedRate == 0 {
		s.SeedRate = s.Rate
	}
	if s.InterRackRate == 0 {
		s.InterRackRate = s.Rate
	}
	switch s.Scenario {
	case Uniform, Mixed, Racks, Churn, Spread:
	default:
		return fmt.Errorf("unknown scenario %q (want uniform, mixed, racks, churn, spread)", s.Scenario)
	}
	if s.Scenario == Spread && (s.SpreadMin <= 0 || s.SpreadMax < s.SpreadMin) {
		return fmt.Errorf("spread: uplinks in [%v, %v]: want 0 < min ≤ max", s.SpreadMin, s.SpreadMax)
	}
	if s.SlowFrac < 0 || s.SlowFrac > 1 || s.ChurnFrac < 0 || s.ChurnFrac >= 1 {
		return errors.New("slow fraction must be in [0,1], churn fraction in [0,1)")
	}
	if s.SlowFactor < 1 {
		return errors.New("slow factor must be ≥ 1")
	}
	return nil
}

// Peer is one downloading peer's place and links.
type Peer struct {
	Name string // h1 … hN
	Rack int    // 1-based
	Up   Rate
	Down Rate
}

// Peers lays out the N peers over racks racks (split evenly, in index
// order): slow peers (mixed, MixedDown) spread over the index range, not
// bunched at the end; spread uplinks drawn from one generator seeded with
// SpreadSeed, so that the same flags draw the same rates.
func (s *Spec) Peers(racks int) []Peer {
	slow := 0
	if s.Scenario == Mixed || s.MixedDown {
		slow = int(float64(s.Hosts)*s.SlowFrac + 0.5)
	}
	rnd := mrand.New(mrand.NewPCG(s.SpreadSeed, s.SpreadSeed^0x5eed))
	ps := make([]Peer, 0, s.Hosts)
	for i := range s.Hosts {
		p := Peer{Name: fmt.Sprintf("h%d", i+1), Rack: 1 + i*racks/s.Hosts, Up: s.Rate, Down: s.DownRate}
		isSlow := slow > 0 && (i*slow)/s.Hosts != ((i+1)*slow)/s.Hosts
		if isSlow && s.Scenario == Mixed {
			p.Up = Rate(float64(s.Rate) / s.SlowFactor)
		}
		if isSlow && s.MixedDown {
			p.Down = Rate(float64(s.DownRate) / s.SlowFactor)
		}
		if s.Scenario == Spread {
			// Whole kbit/s, so that tc takes the rate as written.
			r := float64(s.SpreadMin) + rnd.Float64()*float64(s.SpreadMax-s.SpreadMin)
			p.Up = Rate(math.Round(r/1000) * 1000)
		}
		ps = append(ps, p)
	}
	return ps
}

// ChurnVictims are the indexes, among n peers, of those churn kills:
// round(n·ChurnFrac) of them spread over the index range; none outside
// the churn scenario.
func (s *Spec) ChurnVictims(n int) map[int]bool {
	v := map[int]bool{}
	if s.Scenario != Churn {
		return v
	}
	k := int(float64(n)*s.ChurnFrac + 0.5)
	for i := range k {
		v[(2*i+1)*n/(2*k)] = true
	}
	return v
}

// Bound is the lower bound T* and its terms, in seconds.
type Bound struct {
	// TStar = max(F/u_origin, F/d_min, N·F/(u_origin + Σ u_peers)) over the
	// N downloading hosts (churn: over the survivors), and for racks also
	// F/u_interrack (a rack other than the origin's needs the file once
	// across the router).
	TStar float64 `json:"t_star_s"`
	// TStarWithSeed also counts the seed peer host's uplink in the sum (the
	// same as TStar when the seed peer shares the origin's host and link).
	TStarWithSeed float64 `json:"t_star_with_seed_s"`
	OriginTerm    float64 `json:"origin_term_s"`
	DownTerm      float64 `json:"download_term_s"`
	SwarmTerm     float64 `json:"swarm_term_s"`
	SwarmSeedTerm float64 `json:"swarm_term_with_seed_s"`
	InterRackTerm float64 `json:"inter_rack_term_s,omitempty"`
}

// LowerBound computes T* for the peers that must finish, from their actual
// rates and the origin's and seed peer's. A seed peer on the origin's host
// adds no uplink: it shares the origin's.
func (s *Spec) LowerBound(must []Peer) Bound {
	bits := float64(s.Size) * 8
	var n, sumUp float64
	dmin := math.Inf(1)
	otherRack := false
	for _, p := range must {
		n++
		sumUp += float64(p.Up)
		dmin = min(dmin, float64(p.Down))
		otherRack = otherRack || p.Rack > 1
	}
	b := Bound{
		OriginTerm:    bits / float64(s.OriginRate),
		DownTerm:      bits / dmin,
		SwarmTerm:     n * bits / (float64(s.OriginRate) + sumUp),
		SwarmSeedTerm: n * bits / (float64(s.OriginRate) + float64(s.SeedRate) + sumUp),
	}
	if s.SeedOnOrigin {
		b.SwarmSeedTerm = b.SwarmTerm
	}
	if s.Scenario == Racks && otherRack {
		b.InterRackTerm = bits / float64(s.InterRackRate)
	}
	b.TStar = max(b.OriginTerm, b.DownTerm, b.SwarmTerm, b.InterRackTerm)
	b.TStarWithSeed = max(b.OriginTerm, b.DownTerm, b.SwarmSeedTerm, b.InterRackTerm)
	return b
}
