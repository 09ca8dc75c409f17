package swarm

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/damselfly-io/damselfly/test/swarm/scenario"
)

// Results is one harness run: results.json.
type Results struct {
	Params     Params         `json:"params"`
	LowerBound Bound          `json:"lower_bound"`
	SHA256     string         `json:"sha256"`
	Systems    []SystemResult `json:"systems"`
}

// Params records what was run.
type Params struct {
	RunID         string    `json:"run_id"`
	Started       time.Time `json:"started"`
	Scenario      string    `json:"scenario"`
	N             int       `json:"n"`
	SizeBytes     int64     `json:"size_bytes"`
	RateBps       int64     `json:"rate_bps"`
	DownRateBps   int64     `json:"down_rate_bps"`
	OriginRateBps int64     `json:"origin_rate_bps"`
	SeedRateBps   int64     `json:"seed_rate_bps"`
	InterRackBps  int64     `json:"inter_rack_bps,omitempty"`
	BurstBytes    int64     `json:"tbf_burst_bytes"` // of a peer link
	LatencyMS     int64     `json:"tbf_latency_ms"`
	Netem         bool      `json:"netem_available"`
	DelayMS       float64   `json:"delay_ms,omitempty"`
	Loss          float64   `json:"loss,omitempty"`
	SlowFrac      float64   `json:"slow_frac,omitempty"`
	SlowFactor    float64   `json:"slow_factor,omitempty"`
	ChurnFrac     float64   `json:"churn_frac,omitempty"`
	ChurnAtS      float64   `json:"churn_at_s,omitempty"`
	SpreadMinBps  int64     `json:"spread_min_bps,omitempty"`
	SpreadMaxBps  int64     `json:"spread_max_bps,omitempty"`
	SpreadSeed    uint64    `json:"spread_seed,omitempty"`
	SeedOnOrigin  bool      `json:"seed_on_origin,omitempty"`
	MixedDown     bool      `json:"mixed_down,omitempty"`
	Declared      bool      `json:"declared,omitempty"`     // daemons declared their link rates
	NoLinkTest    bool      `json:"no_link_test,omitempty"` // daemons skipped their link tests
	DeadlineS     float64   `json:"deadline_s"`
	Hosts         []*Host   `json:"hosts"`
}

// Bound is the lower bound T* and its terms, in seconds.
type Bound = scenario.Bound

// SystemResult is one system's run.
type SystemResult struct {
	Name  string       `json:"name"`
	Hosts []HostResult `json:"hosts"`
	// TLast is the time from the common start until the last surviving host
	// finished (0 if any failed); TMedian the median host's.
	TLast   float64 `json:"t_last_s"`
	TMedian float64 `json:"t_median_s"`
	// EffLast = T*/TLast, EffMedian = T*/TMedian (0 when undefined).
	EffLast   float64 `json:"efficiency_last"`
	EffMedian float64 `json:"efficiency_median"`
	// OriginTxBytes is the origin host's interface transmit delta (headers
	// included, and for BitTorrent the tracker's answers too).
	OriginTxBytes        int64   `json:"origin_tx_bytes"`
	OriginOverF          float64 `json:"origin_bytes_over_f"`
	OriginServerBytes    int64   `json:"origin_server_body_bytes"`
	OriginServerRequests int64   `json:"origin_server_requests"`
	// UploadedBytes is what each host served to peers, by the system's own
	// metrics (Damselfly only): who carried the load.
	UploadedBytes map[string]int64 `json:"uploaded_bytes,omitempty"`
	// Links is the link trace's summary per host (links-<system>.tsv
	// holds the trace).
	Links          map[string]LinkStats `json:"links,omitempty"`
	InterRackBytes int64                `json:"inter_rack_bytes,omitempty"`
	InterRackOverF float64              `json:"inter_rack_bytes_over_f,omitempty"`
	// CPUBusy is the machine's busy share (all cores) from start to end.
	// Other load on the machine counts too: compare ProcsCPUShare, the CPU
	// time of the processes this system ran (setup included) over the
	// measured time and all cores.
	CPUBusy       float64 `json:"cpu_busy"`
	ProcsCPUS     float64 `json:"procs_cpu_s"`
	ProcsCPUShare float64 `json:"procs_cpu_share"`
	Completed     int     `json:"completed"`
	Failed        int     `json:"failed"`
	Killed        int     `json:"killed,omitempty"`
	MeasuredS     float64 `json:"measured_s"`
	WallS         float64 `json:"wall_s"`
	Error         string  `json:"error,omitempty"`
}

// HostResult is one peer in one system's run.
type HostResult struct {
	Name      string  `json:"name"`
	IP        string  `json:"ip"`
	Rack      int     `json:"rack"`
	UplinkBps int64   `json:"uplink_bps"`
	DoneS     float64 `json:"done_s"` // -1 if it did not finish
	OK        bool    `json:"ok"`     // finished and sha256 matched
	Killed    bool    `json:"killed,omitempty"`
	Error     string  `json:"error,omitempty"`
}

func paramsOf(c Config, n *Network) Params {
	p := Params{
		RunID: c.RunID, Started: time.Now().UTC(), Scenario: c.Scenario, N: c.Hosts, SizeBytes: c.Size,
		RateBps: int64(c.Rate), DownRateBps: int64(c.DownRate), OriginRateBps: int64(c.OriginRate),
		SeedRateBps: int64(c.SeedRate), BurstBytes: n.shape.burstFor(c.Rate), LatencyMS: c.Latency.Milliseconds(),
		Netem: n.Netem, DeadlineS: c.Deadline.Seconds(), Hosts: n.Hosts, Declared: c.Declare,
		NoLinkTest:   c.NoLinkTest,
		SeedOnOrigin: c.SeedOnOrigin, MixedDown: c.MixedDown,
	}
	if c.MixedDown {
		p.SlowFrac, p.SlowFactor = c.SlowFrac, c.SlowFactor
	}
	if n.Netem {
		p.DelayMS, p.Loss = float64(c.Delay.Microseconds())/1000, c.Loss
	}
	switch c.Scenario {
	case ScenarioMixed:
		p.SlowFrac, p.SlowFactor = c.SlowFrac, c.SlowFactor
	case ScenarioRacks:
		p.InterRackBps = int64(c.InterRackRate)
	case ScenarioSpread:
		p.SpreadMinBps, p.SpreadMaxBps, p.SpreadSeed = int64(c.SpreadMin), int64(c.SpreadMax), c.SpreadSeed
	case ScenarioChurn:
		p.ChurnFrac = c.ChurnFrac
		p.ChurnAtS = c.churnAt(lowerBound(c, n.Peers())).Seconds()
	}
	return p
}

// lowerBound computes T* for the peers that must finish (churn: the
// survivors), from every peer's actual rates.
func lowerBound(c Config, peers []*Host) Bound {
	victims := c.churnVictims(peers)
	var must []scenario.Peer
	for _, p := range peers {
		if !victims[p.Name] {
			must = append(must, scenario.Peer{Name: p.Name, Rack: p.Rack, Up: p.Up, Down: p.Down})
		}
	}
	return c.LowerBound(must)
}

func (r *Results) write(dir string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(r.Markdown()), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// The completion-time CDF, cdf.png, is drawn by cdfplot (tools/cdfplot: its
// own Go module, so the plotting library stays out of this one's
// dependencies) from results.json. The chart is optional: without the
// binary, or when it fails, the run goes on without one.
const cdfPlotTimeout = time.Minute

// findCDFPlot returns the absolute path of the cdfplot executable in
// binDir, or "" if there is none.
func findCDFPlot(binDir string) string {
	path, err := filepath.Abs(filepath.Join(binDir, "cdfplot"))
	if err != nil {
		return ""
	}
	fi, err := os.Stat(path)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return ""
	}
	return path
}

// drawCDF runs cdfplot (from findCDFPlot; "" does nothing) on dir's
// results.json to write dir/cdf.png. A failure is logged in one line and
// removes cdf.png, so that no chart older than results.json is left.
func drawCDF(log *slog.Logger, cdfplot, dir string) {
	if cdfplot == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cdfPlotTimeout)
	defer cancel()
	out := filepath.Join(dir, "cdf.png")
	msg, err := exec.CommandContext(ctx, cdfplot, "-o", out, filepath.Join(dir, "results.json")).CombinedOutput()
	if err != nil {
		os.Remove(out)
		log.Warn("no cdf.png: cdfplot failed", "err", err, "output", strings.TrimSpace(string(msg)))
	}
}

var systemTitles = map[string]string{
	SystemDamselfly:      "Damselfly",
	SystemDirect:         "every host pulls from the origin",
	SystemBitTorrent:     "BitTorrent (aria2c + opentracker, 256 KiB pieces)",
	SystemImageDamselfly: "image: skopeo through Damselfly's registry mirror",
	SystemImageDirect:    "image: every host's skopeo pulls from the registry",
}

func num(v float64, format string) string {
	if v == 0 {
		return "—"
	}
	return fmt.Sprintf(format, v)
}

// Markdown renders the results as the table in docs/benchmarks.md, plus parameters.
func (r *Results) Markdown() string {
	var b strings.Builder
	p := r.Params
	fmt.Fprintf(&b, "# Swarm run %s\n\n", p.RunID)
	fmt.Fprintf(&b, "Scenario **%s**: N = %d peers, F = %s, peer links %s up / %s down, origin uplink %s, seed-peer uplink %s",
		p.Scenario, p.N, scenario.FormatSize(p.SizeBytes), Rate(p.RateBps), Rate(p.DownRateBps), Rate(p.OriginRateBps), Rate(p.SeedRateBps))
	switch p.Scenario {
	case ScenarioMixed:
		fmt.Fprintf(&b, "; %.0f%% of peers with uplinks %.0f× slower", p.SlowFrac*100, p.SlowFactor)
	case ScenarioRacks:
		fmt.Fprintf(&b, "; two racks, inter-rack link %s", Rate(p.InterRackBps))
	case ScenarioChurn:
		fmt.Fprintf(&b, "; %.0f%% of peers killed mid-run (T* and times over the survivors)", p.ChurnFrac*100)
	case ScenarioSpread:
		fmt.Fprintf(&b, "; peer uplinks drawn uniformly in [%s, %s] (seed %d)", Rate(p.SpreadMinBps), Rate(p.SpreadMaxBps), p.SpreadSeed)
	}
	if p.MixedDown {
		fmt.Fprintf(&b, "; %.0f%% of peers with downlinks %.0f× slower", p.SlowFrac*100, p.SlowFactor)
	}
	if p.SeedOnOrigin {
		b.WriteString("; the seed peer runs on the origin's host and shares its uplink")
	}
	if p.Declared {
		b.WriteString("; Damselfly daemons declare their link rates to the scheduler")
	} else if p.NoLinkTest {
		b.WriteString("; Damselfly daemons skip their link tests")
	} else {
		b.WriteString("; Damselfly daemons measure their links before the run (link tests)")
	}
	fmt.Fprintf(&b, ". Rates (up/down): %s", hostRates(p.Hosts))
	fmt.Fprintf(&b, ". tbf latency %d ms.", p.LatencyMS)
	if !p.Netem {
		b.WriteString(" netem unavailable: delay/loss not emulated.")
	}
	lb := r.LowerBound
	fmt.Fprintf(&b, "\n\nT* = %.2f s (F/u_origin %.2f, F/d_min %.2f, N·F/(u_origin+Σu_peers) %.2f", lb.TStar, lb.OriginTerm, lb.DownTerm, lb.SwarmTerm)
	if lb.InterRackTerm > 0 {
		fmt.Fprintf(&b, ", F/u_interrack %.2f", lb.InterRackTerm)
	}
	fmt.Fprintf(&b, "); counting the seed peer's uplink too, T* = %.2f s. tbf counts headers: ≈ 0.95 is the ceiling.\n\n", lb.TStarWithSeed)
	racks := p.Scenario == ScenarioRacks
	b.WriteString("| system | done | T_last (s) | T_median (s) | T*/T_last | T*/T_median | origin bytes / F | CPU busy (machine / own) |")
	if racks {
		b.WriteString(" inter-rack bytes / F |")
	}
	b.WriteString("\n| --- | --- | --- | --- | --- | --- | --- | --- |")
	if racks {
		b.WriteString(" --- |")
	}
	b.WriteString("\n")
	for _, s := range r.Systems {
		done := fmt.Sprintf("%d/%d", s.Completed, s.Completed+s.Failed)
		if s.Killed > 0 {
			done += fmt.Sprintf(" (+%d killed)", s.Killed)
		}
		if s.Error != "" {
			done = "error"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %.2f | %.0f %% / %.0f %% |", systemTitles[s.Name], done,
			num(s.TLast, "%.1f"), num(s.TMedian, "%.1f"), num(s.EffLast, "%.2f"), num(s.EffMedian, "%.2f"),
			s.OriginOverF, s.CPUBusy*100, s.ProcsCPUShare*100)
		if racks {
			fmt.Fprintf(&b, " %.2f |", s.InterRackOverF)
		}
		b.WriteString("\n")
	}
	for _, s := range r.Systems {
		if len(s.UploadedBytes) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n%s uploads / F (its own metrics):", systemTitles[s.Name])
		for _, h := range append([]*Host{{Name: "seed"}}, hostsOf(p.Hosts, RolePeer)...) {
			if n, ok := s.UploadedBytes[h.Name]; ok {
				fmt.Fprintf(&b, " %s %.2f", h.Name, float64(n)/float64(p.SizeBytes))
			}
		}
		b.WriteString("\n")
	}
	for _, s := range r.Systems {
		if len(s.Links) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n%s, uplink use to T_median (tbf drops up/down):", systemTitles[s.Name])
		for _, h := range p.Hosts {
			if l, ok := s.Links[h.Name]; ok && h.Role != RoleScheduler {
				fmt.Fprintf(&b, " %s %s (%d/%d)", h.Name, num(max(l.UpUse, 0), "%.2f"), l.UpDrops, l.DownDrops)
			}
		}
		b.WriteString("\n")
	}
	for _, s := range r.Systems {
		if s.Error != "" {
			fmt.Fprintf(&b, "\n%s: %s\n", s.Name, s.Error)
		}
		for _, h := range s.Hosts {
			if h.Error != "" && !h.Killed {
				fmt.Fprintf(&b, "\n%s on %s: %s\n", s.Name, h.Name, h.Error)
			}
		}
	}
	return b.String()
}

func hostsOf(hs []*Host, r Role) []*Host {
	var out []*Host
	for _, h := range hs {
		if h.Role == r {
			out = append(out, h)
		}
	}
	return out
}

// hostRates names every host's uplink and downlink, in the order of the
// run's hosts: origin, scheduler, seed peer, then the peers.
func hostRates(hs []*Host) string {
	parts := make([]string, 0, len(hs))
	for _, h := range hs {
		s := fmt.Sprintf("%s %s/%s", h.Name, h.Up, h.Down)
		if h.On != "" {
			s = fmt.Sprintf("%s on %s's link", h.Name, h.On)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}
