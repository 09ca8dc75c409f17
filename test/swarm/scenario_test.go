package swarm

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"
)

func peersOf(hs []*Host) []*Host { return hostsOf(hs, RolePeer) }

// Spread draws every peer's uplink in [min, max], the same for the same
// seed and not the same for another, and not all alike.
func TestSpreadUplinks(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Scenario = ScenarioSpread
	cfg.Hosts = 16
	cfg.OutDir = t.TempDir()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	draw := func(seed uint64) []Rate {
		c := cfg
		c.SpreadSeed = seed
		var rs []Rate
		for _, h := range peersOf(c.hosts()) {
			if h.Up < c.SpreadMin || h.Up > c.SpreadMax {
				t.Fatalf("%s uplink %v outside [%v, %v]", h.Name, h.Up, c.SpreadMin, c.SpreadMax)
			}
			if h.Down != c.DownRate {
				t.Fatalf("%s downlink %v, want %v", h.Name, h.Down, c.DownRate)
			}
			rs = append(rs, h.Up)
		}
		return rs
	}
	a, b, other := draw(7), draw(7), draw(8)
	distinct := map[Rate]bool{}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("seed 7 drew %v then %v", a, b)
		}
		distinct[a[i]] = true
	}
	if len(distinct) < 8 {
		t.Fatalf("16 draws gave only %d rates: %v", len(distinct), a)
	}
	same := true
	for i := range a {
		same = same && a[i] == other[i]
	}
	if same {
		t.Fatalf("seeds 7 and 8 drew the same rates %v", a)
	}
	bad := cfg
	bad.SpreadMin, bad.SpreadMax = 100e6, 20e6
	if err := bad.Validate(); err == nil {
		t.Fatal("spread with min > max validated")
	}
}

// The bound comes from the actual per-host rates: a spread's sum of
// uplinks, a mixed downlink's d_min, and a seed on the origin's host adds
// no uplink of its own.
func TestLowerBoundPerHostRates(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Scenario = ScenarioSpread
	cfg.Hosts = 8
	cfg.MixedDown = true
	cfg.SeedOnOrigin = true
	cfg.OutDir = t.TempDir()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	hs := cfg.hosts()
	peers := peersOf(hs)
	seed, origin := hostsOf(hs, RoleSeed)[0], hostsOf(hs, RoleOrigin)[0]
	if seed.On != "origin" || seed.IP != origin.IP || seed.Up != origin.Up {
		t.Fatalf("seed %+v does not share the origin's host %+v", seed, origin)
	}
	var sum float64
	slowDown := 0
	for _, p := range peers {
		sum += float64(p.Up)
		if p.Down < cfg.DownRate {
			slowDown++
			if want := Rate(float64(cfg.DownRate) / cfg.SlowFactor); p.Down != want {
				t.Errorf("%s downlink %v, want %v", p.Name, p.Down, want)
			}
		}
	}
	if slowDown != 2 {
		t.Fatalf("%d peers with slow downlinks, want 2 (25%% of 8)", slowDown)
	}
	bits := float64(cfg.Size) * 8
	b := lowerBound(cfg, peers)
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9*max(1, b) }
	if w := 8 * bits / (float64(cfg.OriginRate) + sum); !near(b.SwarmTerm, w) {
		t.Errorf("swarm term %v, want %v", b.SwarmTerm, w)
	}
	if w := bits / (float64(cfg.Rate) / cfg.SlowFactor); !near(b.DownTerm, w) {
		t.Errorf("download term %v, want F/d_min = %v", b.DownTerm, w)
	}
	if b.SwarmSeedTerm != b.SwarmTerm || b.TStarWithSeed != b.TStar {
		t.Errorf("a seed on the origin's host counted an uplink of its own: %+v", b)
	}
	// The same seed on a host of its own adds its uplink.
	cfg.SeedOnOrigin = false
	b2 := lowerBound(cfg, peersOf(cfg.hosts()))
	if !(b2.SwarmSeedTerm < b2.SwarmTerm) {
		t.Errorf("a seed host of its own did not add its uplink: %+v", b2)
	}
}

// TestSmokeSpread runs Damselfly alone on 3 hosts with spread uplinks,
// mixed downlinks and the seed peer on the origin's host: correctness only
// (every copy, the origin's bytes, the report naming every rate).
func TestSmokeSpread(t *testing.T) {
	requireNetns(t)
	bin, ok := buildDamselfly(t)
	if !ok {
		t.Skip("damselfly binaries not buildable yet")
	}
	cfg := DefaultConfig()
	cfg.Hosts = 3
	cfg.Size = 4 << 20
	cfg.Scenario = ScenarioSpread
	cfg.SpreadMin, cfg.SpreadMax, cfg.SpreadSeed = 20e6, 100e6, 3
	cfg.SeedOnOrigin = true
	cfg.MixedDown = true
	cfg.SlowFrac = 0.34
	cfg.Systems = []string{SystemDamselfly}
	cfg.Deadline = 90 * time.Second
	cfg.BinDir = bin
	cfg.OutDir = t.TempDir()
	cfg.WorkDir = t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	md := res.Markdown()
	t.Logf("\n%s", md)
	for _, h := range res.Params.Hosts {
		want := h.Name + " " + h.Up.String() + "/" + h.Down.String()
		if h.On != "" {
			want = h.Name + " on " + h.On + "'s link"
		}
		if !strings.Contains(md, want) {
			t.Errorf("report does not name %q", want)
		}
	}
	if !strings.Contains(md, "spread") || !strings.Contains(md, "shares its uplink") {
		t.Errorf("report does not name the scenario and the seed's placement")
	}
	checkRun(t, cfg, res)
}
