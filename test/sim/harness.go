package sim

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/damselfly-io/damselfly/test/swarm"
	"github.com/damselfly-io/damselfly/test/swarm/scenario"
)

// HarnessRun is what the netns harness measured for Damselfly in one run
// (its results.json), for the validation table.
type HarnessRun struct {
	Dir         string  `json:"dir"`
	Completed   int     `json:"completed"`
	Failed      int     `json:"failed"`
	TStar       float64 `json:"t_star_s"`
	TMedian     float64 `json:"t_median_s"`
	TLast       float64 `json:"t_last_s"`
	OriginOverF float64 `json:"origin_bytes_over_f"`
	CPUBusy     float64 `json:"cpu_busy"`
}

// FromHarness reads a harness results.json and returns the simulator
// config with the same scenario, sizes and rates (the harness's host
// layout follows from them), the payload share of its tbf links, and what
// the harness measured for the damselfly system.
func FromHarness(path string, base Config) (Config, HarnessRun, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return base, HarnessRun{}, fmt.Errorf("read harness results: %w", err)
	}
	var r swarm.Results
	if err := json.Unmarshal(data, &r); err != nil {
		return base, HarnessRun{}, fmt.Errorf("parse harness results %s: %w", path, err)
	}
	p := r.Params
	c := base
	c.SeedOnOrigin = p.SeedOnOrigin
	c.Scenario, c.Hosts, c.Size = p.Scenario, p.N, p.SizeBytes
	c.Rate, c.DownRate = scenario.Rate(p.RateBps), scenario.Rate(p.DownRateBps)
	c.OriginRate, c.SeedRate = scenario.Rate(p.OriginRateBps), scenario.Rate(p.SeedRateBps)
	c.MixedDown = p.MixedDown
	if p.SlowFactor > 0 {
		c.SlowFrac, c.SlowFactor = p.SlowFrac, p.SlowFactor
	}
	if p.InterRackBps > 0 {
		c.InterRackRate, c.Racks = scenario.Rate(p.InterRackBps), 2
	}
	if p.Scenario == scenario.Churn {
		c.ChurnFrac = p.ChurnFrac
		c.ChurnAt = time.Duration(p.ChurnAtS * float64(time.Second))
	}
	if p.Scenario == scenario.Spread {
		c.SpreadMin, c.SpreadMax, c.SpreadSeed = scenario.Rate(p.SpreadMinBps), scenario.Rate(p.SpreadMaxBps), p.SpreadSeed
	}
	c.PayloadFrac = HarnessPayloadFrac
	h := HarnessRun{TStar: r.LowerBound.TStar}
	found := false
	for _, s := range r.Systems {
		if s.Name == swarm.SystemDamselfly {
			found = true
			h.Completed, h.Failed, h.TMedian, h.TLast = s.Completed, s.Failed, s.TMedian, s.TLast
			h.OriginOverF, h.CPUBusy = s.OriginOverF, s.CPUBusy
		}
	}
	if !found {
		return base, HarnessRun{}, fmt.Errorf("harness results %s: no damselfly system", path)
	}
	return c, h, nil
}
