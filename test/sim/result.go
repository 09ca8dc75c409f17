package sim

import (
	"cmp"
	"fmt"
	"os"
	"runtime"
	"slices"
	"syscall"
	"time"

	"github.com/damselfly-io/damselfly/test/swarm/scenario"
	"golang.org/x/sys/unix"
)

// Result is one simulation's outcome: the JSON object the command prints
// as its last line.
type Result struct {
	Scenario      string  `json:"scenario"`
	N             int     `json:"n"`
	SizeBytes     int64   `json:"size_bytes"`
	PieceSize     uint32  `json:"piece_size"`
	RateBps       int64   `json:"rate_bps"`
	DownRateBps   int64   `json:"down_rate_bps"`
	OriginRateBps int64   `json:"origin_rate_bps"`
	SeedRateBps   int64   `json:"seed_rate_bps"`
	InterRackBps  int64   `json:"inter_rack_bps,omitempty"`
	Racks         int     `json:"racks,omitempty"`
	HopLatencyMS  float64 `json:"hop_latency_ms"`
	PayloadFrac   float64 `json:"payload_frac"`
	SlowFrac      float64 `json:"slow_frac,omitempty"`
	SlowFactor    float64 `json:"slow_factor,omitempty"`
	SpreadMinBps  int64   `json:"spread_min_bps,omitempty"`
	SpreadMaxBps  int64   `json:"spread_max_bps,omitempty"`
	ChurnFrac     float64 `json:"churn_frac,omitempty"`
	ChurnAtS      float64 `json:"churn_at_s,omitempty"`
	LeaveRate     float64 `json:"leave_rate,omitempty"`
	JoinRate      float64 `json:"join_rate,omitempty"`
	Seed          uint64  `json:"seed"`
	Declare       bool    `json:"declared_capacity,omitempty"`
	SeedOnOrigin  bool    `json:"seed_on_origin,omitempty"`
	Models        string  `json:"models"` // which scheduler and core ran

	Completed int `json:"completed"`
	Failed    int `json:"failed"`
	Killed    int `json:"killed"`
	Joined    int `json:"joined"`

	Bound
	TMedian float64 `json:"t_median_s"`
	TLast   float64 `json:"t_last_s"` // 0 if a surviving host did not finish
	// TP90 and TP99: the time by which 90 and 99 % of the surviving hosts
	// finished (the tail between the median and the last).
	TP90      float64 `json:"t_p90_s"`
	TP99      float64 `json:"t_p99_s"`
	EffLast   float64 `json:"efficiency_last"`
	EffMedian float64 `json:"efficiency_median"`

	OriginOverF float64 `json:"origin_bytes_over_f"`
	// OriginFetches counts the peers' trips to the origin (the seed
	// peer's not included) by the download core's reason.
	OriginFetches map[string]int `json:"origin_fetches,omitempty"`
	SeedUpOverF   float64        `json:"seed_upload_over_f"`
	InterRackOvF  float64        `json:"inter_rack_bytes_over_f,omitempty"`

	SchedulerCPU float64 `json:"scheduler_cpu_s"`
	// SchedulerCalls is how many calls into the scheduler were timed (the
	// timing's own cost, measured at the start, is taken out of
	// SchedulerCPU).
	SchedulerCalls int64 `json:"scheduler_calls"`
	// SchedulerTickCPU is the part spent in the scheduler's periodic Tick
	// (its walk over the task's peers), SchedulerTicks how many ran.
	SchedulerTickCPU float64 `json:"scheduler_tick_cpu_s"`
	SchedulerTicks   int64   `json:"scheduler_ticks"`
	CPU              float64 `json:"cpu_s"`
	Wall             float64 `json:"wall_s"`
	Events           int64   `json:"events"`
	Recomputes       int64   `json:"rate_recomputes"`
	RecompFlows      int64   `json:"rate_recompute_flows"`
	HeapMiB          float64 `json:"heap_mib"`
	VirtualS         float64 `json:"virtual_s"`
}

func (s *Sim) result(lb Bound, wall time.Duration) *Result {
	c := s.cfg
	r := &Result{
		Scenario: c.Scenario, N: c.Hosts, SizeBytes: c.Size, PieceSize: c.PieceSize,
		RateBps: int64(c.Rate), DownRateBps: int64(c.DownRate), OriginRateBps: int64(c.OriginRate), SeedRateBps: int64(c.SeedRate),
		HopLatencyMS: float64(c.HopLatency.Microseconds()) / 1000, PayloadFrac: c.PayloadFrac, Seed: c.Seed,
		LeaveRate: c.LeaveRate, JoinRate: c.JoinRate, Bound: lb, Declare: c.Declare, SeedOnOrigin: c.SeedOnOrigin,
		Killed: s.killed, Joined: s.joined, Events: s.nEvents,
		Recomputes: s.net.Recomputes, RecompFlows: s.net.RecomputedFlows, VirtualS: s.now(),
	}
	switch c.Scenario {
	case scenario.Mixed:
		r.SlowFrac, r.SlowFactor = c.SlowFrac, c.SlowFactor
	case scenario.Spread:
		r.SpreadMinBps, r.SpreadMaxBps = int64(c.SpreadMin), int64(c.SpreadMax)
	case scenario.Racks:
		r.InterRackBps, r.Racks = int64(c.InterRackRate), c.Racks
	case scenario.Churn:
		r.ChurnFrac = c.ChurnFrac
		r.ChurnAtS = c.ChurnAt.Seconds()
		if r.ChurnAtS == 0 {
			r.ChurnAtS = lb.TStar / 2
		}
	}
	var times []float64
	for _, n := range s.nodes {
		if n.victim {
			continue
		}
		if n.done {
			r.Completed++
			times = append(times, n.doneAt)
		} else {
			r.Failed++
		}
	}
	slices.Sort(times)
	if v := os.Getenv("SIM_DONE_LOG"); v != "" {
		s.logDone(v == "all")
	}
	if len(times) > 0 {
		r.TMedian = times[len(times)/2]
		if len(times)%2 == 0 {
			r.TMedian = (times[len(times)/2-1] + times[len(times)/2]) / 2
		}
		r.EffMedian = lb.TStar / r.TMedian
		r.TP90 = times[(len(times)*9+9)/10-1]
		r.TP99 = times[(len(times)*99+99)/100-1]
	}
	if r.Failed == 0 && len(times) > 0 {
		r.TLast = times[len(times)-1]
		r.EffLast = lb.TStar / r.TLast
	}
	F := float64(c.Size)
	r.OriginOverF = float64(s.originSent) / F
	if c.SeedOnOrigin {
		// The origin host's link also carries the seed peer's uploads.
		r.OriginOverF = float64(s.originSent+s.seedNode.uploaded) / F
	}
	if len(s.originWhy) > 0 {
		r.OriginFetches = s.originWhy
	}
	r.SeedUpOverF = float64(s.seedNode.uploaded) / F
	if s.rackIn != nil {
		r.InterRackOvF = float64(s.interRack) / F
	}
	r.SchedulerCPU = max(0, (s.schedCPU - time.Duration(s.schedCalls)*s.timingCost).Seconds())
	r.SchedulerCalls = s.schedCalls
	r.SchedulerTickCPU = max(0, (s.tickCPU - time.Duration(s.ticks)*s.timingCost).Seconds())
	r.SchedulerTicks = s.ticks
	r.Wall = wall.Seconds()
	r.CPU = processCPU().Seconds()
	// Live memory: collect first, with the simulation still reachable.
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	runtime.KeepAlive(s)
	r.HeapMiB = float64(ms.HeapInuse) / (1 << 20)
	return r
}

// threadCPU is the CPU time of the calling OS thread (Run locks it):
// clock_gettime(CLOCK_THREAD_CPUTIME_ID).
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// timingOverhead is what one timed call adds to the thread's CPU time by
// the timing itself (two clock reads), measured over k empty calls.
func timingOverhead() time.Duration {
	const k = 4096
	var sum time.Duration
	for range k {
		t0 := threadCPU()
		sum += threadCPU() - t0
	}
	return sum / k
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// logDone prints on stderr when hosts finished, with their link rates, for
// finding who the tail is (SIM_DONE_LOG, docs/simulator.md): every host
// with all, else one host per 5 % and the last 40.
func (s *Sim) logDone(all bool) {
	var ns []*node
	for _, n := range s.nodes {
		if n.done && !n.victim {
			ns = append(ns, n)
		}
	}
	slices.SortFunc(ns, func(a, b *node) int { return cmp.Compare(a.doneAt, b.doneAt) })
	for i, n := range ns {
		if all || i >= len(ns)-40 || i%(len(ns)/20+1) == 0 {
			fmt.Fprintf(os.Stderr, "done %d %s up=%.1fmbit down=%.0fmbit at=%.3fs uploaded=%.2fF\n", i, n.host.GetId(), n.upBps/1e6, n.downBp/1e6, n.doneAt, float64(n.uploaded)/float64(s.cfg.Size))
		}
	}
}
