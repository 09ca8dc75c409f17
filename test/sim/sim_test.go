package sim

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/test/swarm/scenario"
)

func runSim(t *testing.T, cfg Config, models string) *Result {
	t.Helper()
	ns, nc, err := Models(models)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, ns, nc)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Run()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// One peer, one piece, every link 1 MB/s, hop latency L: the register
// reaches the scheduler at L, the seed trigger reaches the seed peer at 2L,
// its register the scheduler at 3L; the seed's BackToSource and the
// peer's Parents arrive at 4L. The seed's origin request takes a round
// trip (first byte at 6L); the peer's sync reaches the seed at 5L and
// answers an empty set at 6L, and the seed's "arriving" announcement lands
// at 7L; the peer's request reaches the seed at 8L and streams behind the
// seed's own copy (relay), draining at 8L + F/rate, and its last byte lands
// one hop later: T = F/rate + 9L.
func TestLatencyHandComputed(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Hosts, cfg.Size, cfg.PieceSize = 1, 1<<20, 1<<20
	cfg.Rate, cfg.OriginRate = 8e6, 8e6
	for _, L := range []time.Duration{0, 10 * time.Millisecond} {
		cfg.HopLatency = L
		r := runSim(t, cfg, "double")
		want := float64(1<<20)/1e6 + 9*L.Seconds()
		if math.Abs(r.TLast-want) > 1e-9 {
			t.Errorf("hop latency %v: T_last = %.9f, want %.9f", L, r.TLast, want)
		}
	}
}

// Two racks joined by a link ten times slower than the hosts': the
// pipeline crosses it once, so the swarm takes F/u_interrack and the
// router carries F.
func TestRacksInterRackLink(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Scenario = scenario.Racks
	cfg.Hosts, cfg.Size = 2, 8<<20
	cfg.InterRackRate = 10e6
	r := runSim(t, cfg, "double")
	if r.InterRackTerm == 0 || r.TStar != r.InterRackTerm {
		t.Fatalf("T* = %v, inter-rack term %v: want the inter-rack term to bind", r.TStar, r.InterRackTerm)
	}
	if r.Completed != 2 || r.TLast < r.TStar || r.TLast > 1.02*r.TStar {
		t.Errorf("completed %d, T_last %.3f, T* %.3f: want both done within 2 %% of T*", r.Completed, r.TLast, r.TStar)
	}
	if r.InterRackOvF != 1 {
		t.Errorf("inter-rack bytes / F = %v, want 1", r.InterRackOvF)
	}
}

func TestSmallSwarmDouble(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Hosts, cfg.Size = 8, 16<<20
	r := runSim(t, cfg, "double")
	if r.Completed != 8 || r.Failed != 0 {
		t.Fatalf("completed %d failed %d", r.Completed, r.Failed)
	}
	if r.OriginOverF != 1 {
		t.Errorf("origin bytes / F = %v, want 1", r.OriginOverF)
	}
	if r.EffLast < 0.9 || r.EffLast > 1 {
		t.Errorf("T*/T_last = %.3f: a relayed pipeline on equal links should be within 10 %% of T*", r.EffLast)
	}
}

func TestChurnDouble(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Scenario = scenario.Churn
	cfg.Hosts, cfg.Size = 8, 16<<20
	r := runSim(t, cfg, "double")
	if r.Killed != 2 || r.Completed != 6 || r.Failed != 0 {
		t.Fatalf("killed %d completed %d failed %d, want 2, 6, 0", r.Killed, r.Completed, r.Failed)
	}
}

func TestJoinsAndLeaves(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Hosts, cfg.Size = 8, 16<<20
	cfg.JoinRate, cfg.LeaveRate = 4, 0.5
	r := runSim(t, cfg, "double")
	if r.Joined == 0 || r.Killed == 0 {
		t.Fatalf("joined %d killed %d: want both", r.Joined, r.Killed)
	}
	if r.Failed != 0 || r.Completed != 8+r.Joined-r.Killed {
		t.Errorf("completed %d failed %d with %d joined and %d killed", r.Completed, r.Failed, r.Joined, r.Killed)
	}
}

// stable drops what depends on the machine (wall and CPU times, heap).
func stable(r *Result) string {
	c := *r
	c.SchedulerCPU, c.SchedulerTickCPU, c.CPU, c.Wall, c.HeapMiB = 0, 0, 0, 0, 0
	b, _ := json.Marshal(c)
	return string(b)
}

// sameTwice runs cfg twice with models and checks that the results are the
// same; it returns the first.
func sameTwice(t *testing.T, cfg Config, models string) string {
	t.Helper()
	a, b := stable(runSim(t, cfg, models)), stable(runSim(t, cfg, models))
	if a != b {
		t.Errorf("same seed, different results:\n%s\n%s", a, b)
	}
	return a
}

func TestDeterministic(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Scenario = scenario.Spread
	cfg.Hosts, cfg.Size = 16, 8<<20
	cfg.JoinRate, cfg.LeaveRate = 2, 1
	a := sameTwice(t, cfg, "double")
	cfg.Seed = 2
	if c := stable(runSim(t, cfg, "double")); c == a {
		t.Errorf("another seed gave the very same result; the seed is not used")
	}
}

func TestValidate(t *testing.T) {
	for _, mod := range []func(*Config){
		func(c *Config) { c.Hosts = 0 },
		func(c *Config) { c.Scenario = "nope" },
		func(c *Config) { c.Rate = 0 },
		func(c *Config) { c.ChurnFrac = 1 },
		func(c *Config) { c.Scenario, c.SpreadMin, c.SpreadMax = scenario.Spread, 10, 5 },
		func(c *Config) { c.Scenario, c.Racks = scenario.Racks, 1 },
	} {
		c := DefaultConfig()
		mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("config %+v validated", c)
		}
	}
}

// The harness's layout: mixed makes round(N·frac) peers slow, spread over
// the index range; T* follows from the actual rates.
func TestLayoutAndBound(t *testing.T) {
	c := DefaultConfig()
	c.Scenario, c.Hosts = scenario.Mixed, 8
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	hs := c.layout()
	var slow []string
	for _, h := range hs {
		if h.Up != float64(c.Rate) {
			slow = append(slow, h.Name)
		}
	}
	if len(slow) != 2 || slow[0] != "h4" || slow[1] != "h8" {
		t.Errorf("slow peers %v, want [h4 h8]", slow)
	}
	lb := LowerBound(c, hs)
	// F/u_origin = 128 MiB·8 / 100 Mbit/s; N·F/(u_o + Σu) = 8·F·8/(100+6·100+2·10) Mbit/s.
	bits := float64(128<<20) * 8
	near(t, "T*", lb.TStar, math.Max(bits/100e6, 8*bits/720e6))
}

// The real scheduler and the real download core: a small swarm completes
// with the origin sending the file once.
func TestSmallSwarmReal(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Hosts, cfg.Size = 8, 16<<20
	r := runSim(t, cfg, "real")
	if r.Completed != 8 || r.Failed != 0 {
		t.Fatalf("completed %d failed %d", r.Completed, r.Failed)
	}
	if r.OriginOverF < 1 || r.OriginOverF > 1.05 {
		t.Errorf("origin bytes / F = %v, want ≈ 1", r.OriginOverF)
	}
	if r.TLast < r.TStar {
		t.Errorf("T_last %.3f below the bound %.3f: the model leaks capacity", r.TLast, r.TStar)
	}
}

func TestChurnReal(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Scenario = scenario.Churn
	cfg.Hosts, cfg.Size = 8, 16<<20
	r := runSim(t, cfg, "real")
	if r.Killed != 2 || r.Completed != 6 || r.Failed != 0 {
		t.Fatalf("killed %d completed %d failed %d, want 2, 6, 0", r.Killed, r.Completed, r.Failed)
	}
	if r.OriginOverF > 1.05 {
		t.Errorf("origin bytes / F = %v after churn, want ≈ 1", r.OriginOverF)
	}
}

func TestDeterministicReal(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Scenario = scenario.Churn
	cfg.Hosts, cfg.Size = 12, 8<<20
	cfg.JoinRate, cfg.LeaveRate = 2, 1
	sameTwice(t, cfg, "real")
}

// answerCheck wraps a core and checks the executor's contract: every
// request is answered exactly once (done or failed, also when cancelled),
// and no answer comes for a request never made.
type answerCheck struct {
	Core
	t       *testing.T
	name    string
	open    map[uint64]bool
	answers int
}

func (a *answerCheck) Handle(now time.Time, ev Event) []Action {
	if ev.Kind == EvPieceDone && ev.Parent != "" || ev.Kind == EvPieceFailed {
		if !a.open[ev.Req] {
			a.t.Errorf("%s: answer %d for request %d (piece %d from %s) that is not open", a.name, ev.Kind, ev.Req, ev.Piece, ev.Parent)
		}
		delete(a.open, ev.Req)
		a.answers++
	}
	acts := a.Core.Handle(now, ev)
	for _, x := range acts {
		if x.Kind == ActRequest {
			if x.Req == 0 || a.open[x.Req] {
				a.t.Errorf("%s: request number %d reused or zero", a.name, x.Req)
			}
			a.open[x.Req] = true
		}
	}
	return acts
}

func TestEveryRequestAnsweredOnce(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Scenario = scenario.Churn
	cfg.Hosts, cfg.Size = 16, 8<<20
	cfg.JoinRate, cfg.LeaveRate = 4, 2
	var checks []*answerCheck
	s, err := New(cfg, newRealScheduler, func(p CoreParams) (Core, error) {
		c, err := newRealCore(p)
		a := &answerCheck{Core: c, t: t, name: p.PeerID, open: map[uint64]bool{}}
		checks = append(checks, a)
		return a, err
	})
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Run()
	if err != nil {
		t.Fatal(err)
	}
	if r.Failed != 0 || r.Killed < 4 {
		t.Fatalf("failed %d, killed %d", r.Failed, r.Killed)
	}
	answers := 0
	for _, a := range checks {
		answers += a.answers
		if n := s.byPeer[a.name]; n != nil && !n.gone && len(a.open) > 0 {
			t.Errorf("%s: %d requests never answered", a.name, len(a.open))
		}
	}
	if answers == 0 {
		t.Error("no request was answered at all")
	}
}

// The seed peer on the origin's host: its uploads leave through the
// origin's uplink and count as origin bytes; it adds no uplink to T*.
func TestSeedOnOrigin(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Hosts, cfg.Size, cfg.SeedOnOrigin = 8, 16<<20, true
	r := runSim(t, cfg, "real")
	if r.Completed != 8 {
		t.Fatalf("completed %d", r.Completed)
	}
	if r.TStarWithSeed != r.TStar {
		t.Errorf("T* with seed %v, T* %v: a seed on the origin's host adds no uplink", r.TStarWithSeed, r.TStar)
	}
	if r.SeedUpOverF < 1 || r.OriginOverF != r.SeedUpOverF {
		t.Errorf("origin bytes / F %v, seed uploads / F %v: the origin's link carries exactly the seed's uploads", r.OriginOverF, r.SeedUpOverF)
	}
	cfg.SeedOnOrigin = false
	if r2 := runSim(t, cfg, "real"); r2.OriginOverF != 1 {
		t.Errorf("seed on its own host: origin bytes / F %v, want 1", r2.OriginOverF)
	}
}

// metaCheck records origin_on_host of every TaskMeta its core sends.
type metaCheck struct {
	Core
	seed  bool
	metas []bool
}

func (m *metaCheck) Handle(now time.Time, ev Event) []Action {
	acts := m.Core.Handle(now, ev)
	for _, a := range acts {
		if a.Kind == ActSend && a.Msg.GetMeta() != nil {
			m.metas = append(m.metas, a.Msg.GetMeta().GetOriginOnHost())
		}
	}
	return acts
}

// The seed peer on the origin's host tells the scheduler so with the
// content's shape, as a daemon there would; no other node, and no seed
// peer with an uplink of its own, does.
func TestOriginOnHostMeta(t *testing.T) {
	for _, models := range []string{"real", "double"} {
		for _, onOrigin := range []bool{true, false} {
			cfg := DefaultConfig()
			cfg.Hosts, cfg.Size, cfg.SeedOnOrigin = 4, 4<<20, onOrigin
			ns, nc, err := Models(models)
			if err != nil {
				t.Fatal(err)
			}
			var checks []*metaCheck
			s, err := New(cfg, ns, func(p CoreParams) (Core, error) {
				c, err := nc(p)
				m := &metaCheck{Core: c, seed: p.Host.GetSeed()}
				checks = append(checks, m)
				return m, err
			})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Run(); err != nil {
				t.Fatal(err)
			}
			seedMetas := 0
			for _, m := range checks {
				want := onOrigin && m.seed
				for _, got := range m.metas {
					if got != want {
						t.Errorf("%s, seed on origin %v: a TaskMeta of a node (seed %v) says origin_on_host %v", models, onOrigin, m.seed, got)
					}
				}
				if m.seed {
					seedMetas += len(m.metas)
				}
			}
			if seedMetas == 0 {
				t.Errorf("%s, seed on origin %v: the seed peer sent no TaskMeta", models, onOrigin)
			}
		}
	}
}
