package scheduler

import (
	"math"
	"slices"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
)

// meterPiece is the piece size of the meter tests (chainPieceSize).
const meterPiece = 256 << 10

// feed reports, for each peer of rates in turn, that many pieces from the
// peer before it in ids, each taking cost; next holds the next piece number
// of each peer.
func feed(ps map[string]*vpeer, ids []string, rates map[string]int, cost int64, next map[string]uint32) {
	for i, id := range ids[1:] {
		var rs []*schedulerv1.PieceResult
		for range rates[id] {
			rs = append(rs, &schedulerv1.PieceResult{Number: next[id], ParentId: ids[i], Length: meterPiece, CostNs: cost})
			next[id]++
		}
		if len(rs) > 0 {
			ps[id].pieces(rs...)
		}
	}
}

// With nothing declared, the link meter finds the relay whose uplink holds
// the pipeline back (its child gets an eighth of what it receives itself)
// and moves it to a leaf: its child takes its place. The per-piece
// slow-parent rule is off, so only the meter can see it. The relay below
// it, which passes on all it gets, is not called slow though it sent as
// little.
func TestMeteredSlowRelayMovesToLeaf(t *testing.T) {
	v := pipelineVirtual(t, func(c *Config) { c.SlowParentRatio = 0 })
	ids := []string{"src", "a", "b", "c", "d"}
	ps := v.chain("t1", ids...)
	// Pieces a second: b gets 8 from a, c gets 1 from b (b's uplink is
	// slow), d gets 1 from c (c is fed slowly).
	rates := map[string]int{"a": 8, "b": 8, "c": 1, "d": 1}
	next := map[string]uint32{}
	moved := false
	for range 6 {
		feed(ps, ids, rates, int64(100*time.Millisecond), next)
		v.advance(time.Second)
		if slices.Equal(v.children("t1", "a"), []string{"c"}) {
			moved = true
			break
		}
	}
	if !moved {
		t.Fatalf("after 6 s a's children are %v, want [c]: b still sits in the pipeline", v.children("t1", "a"))
	}
	if got := ps["c"].parents(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("c parents %v, want [a]", got)
	}
	if got := v.children("t1", "b"); len(got) != 0 {
		t.Fatalf("slow b still feeds %v", got)
	}
	b, c := v.s.hosts["host-b"], v.s.hosts["host-c"]
	if got := b.meter.cap; got < 0.5*meterPiece || got > 2*meterPiece {
		t.Errorf("b's measured uplink %.0f B/s, want about %d (a piece a second)", got, meterPiece)
	}
	if c.meter.cap != 0 {
		t.Errorf("c, which passed on all it got, was measured at capacity %.0f B/s", c.meter.cap)
	}
	if c.meter.lb < 0.5*meterPiece {
		t.Errorf("c's lower bound %.0f B/s, want about %d", c.meter.lb, meterPiece)
	}
	// The task's rate is the source's, not the median of what the relays
	// fed slowly below b gave: hosts never seen at their limit are
	// presumed to keep up.
	if r := v.s.tasks[tid("t1")].rate; r < 4*meterPiece {
		t.Errorf("task rate %.0f B/s, want about %d (what src and a pass on)", r, 8*meterPiece)
	}
	v.invariants()
}

// A relay whose children see slow pieces (each piece waits for the relay's
// own input, requested ahead of it) but which passes on everything it
// receives keeps its child: the meter, which sees the whole host, speaks
// for it over the per-piece slow-parent rule, which called such relays
// slow in pipelines being rebuilt.
func TestMeterOverridesPerPieceSlowRule(t *testing.T) {
	v := pipelineVirtual(t, func(c *Config) { c.SlowParentRatio, c.SlowParentSamples = 0.3, 2 })
	ids := []string{"src", "a", "b", "c"}
	ps := v.chain("t1", ids...)
	rates := map[string]int{"a": 8, "b": 8, "c": 8}
	next := map[string]uint32{}
	for range 6 {
		for i, id := range ids[1:] {
			cost := int64(20 * time.Millisecond)
			if id == "c" {
				cost = int64(time.Second) // from b, one piece a second each, 8 at once
			}
			var rs []*schedulerv1.PieceResult
			for range rates[id] {
				rs = append(rs, &schedulerv1.PieceResult{Number: next[id], ParentId: ids[i], Length: meterPiece, CostNs: cost})
				next[id]++
			}
			ps[id].pieces(rs...)
		}
		v.advance(time.Second)
	}
	if got := v.children("t1", "b"); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("b children %v, want [c]: b passed on all it got", got)
	}
	if h := v.s.hosts["host-b"]; h.meter.cap != 0 || !h.meter.judged {
		t.Errorf("b's meter: capacity %.0f, judged %v; want unknown capacity, judged", h.meter.cap, h.meter.judged)
	}
	v.invariants()
}

// A child that relays at its own uplink's limit takes less from its parent
// than it could (on real links the acknowledgements of its downloads queue
// behind its uploads): its parent is not called slow through it. Here b's
// uplink gives c one piece a second while b takes 2 a second of the 8 a
// holds for it; b is measured, a is not.
func TestMeterSkipsParentOfChildAtItsLimit(t *testing.T) {
	v := pipelineVirtual(t, func(c *Config) { c.SlowParentRatio = 0 })
	ids := []string{"src", "a", "b", "c"}
	ps := v.chain("t1", ids...)
	rates := map[string]int{"a": 8, "b": 2, "c": 1}
	next := map[string]uint32{}
	a, b := v.s.hosts["host-a"], v.s.hosts["host-b"]
	// Until b is measured (and moved to a leaf: the fixed rates fed here
	// say nothing of the pipeline after that).
	for range 6 {
		feed(ps, ids, rates, int64(100*time.Millisecond), next)
		v.advance(time.Second)
		if a.meter.cap != 0 {
			t.Fatalf("a was measured at %.0f B/s through b, which was at its own limit", a.meter.cap)
		}
		if b.meter.cap != 0 {
			break
		}
	}
	if b.meter.cap == 0 {
		t.Fatalf("b, which gave c an eighth of what it could take, was not measured")
	}
	v.invariants()
}

// A host that declared nothing and whose uplink the meter found far
// slower than what it receives is told an upload budget: its uplink less
// what the acknowledgements of its downloads need (core.UsableUplink).
// Here b receives 16 pieces a second and passes one on.
func TestMeasuredSlowUplinkGetsUploadBudget(t *testing.T) {
	v := pipelineVirtual(t, func(c *Config) { c.SlowParentRatio = 0 })
	ids := []string{"src", "a", "b", "c"}
	ps := v.chain("t1", ids...)
	rates := map[string]int{"a": 16, "b": 16, "c": 1}
	next := map[string]uint32{}
	var got *schedulerv1.UploadBudget
	for range 6 {
		feed(ps, ids, rates, int64(50*time.Millisecond), next)
		v.advance(time.Second)
		for _, m := range ps["b"].msgs {
			if m.GetUploadBudget() != nil {
				got = m.GetUploadBudget()
			}
		}
		if got != nil {
			break
		}
	}
	b := v.s.hosts["host-b"]
	if got == nil {
		t.Fatalf("no upload budget sent to b (measured uplink %.0f B/s, seen receiving %.0f B/s)", b.meter.cap, b.meter.downMax)
	}
	want := core.UsableUplink(int64(b.meter.cap), int64(b.meter.downMax))
	if got.GetBps() <= 0 || float64(got.GetBps()) >= b.meter.cap || math.Abs(float64(got.GetBps()-want)) > 0.1*float64(want) {
		t.Fatalf("budget %d B/s for a measured uplink of %.0f B/s receiving %.0f B/s, want about %d", got.GetBps(), b.meter.cap, b.meter.downMax, want)
	}
	// Fast hosts get none.
	for _, id := range []string{"a", "c"} {
		for _, m := range ps[id].msgs {
			if m.GetUploadBudget() != nil {
				t.Errorf("%s was sent an upload budget %d", id, m.GetUploadBudget().GetBps())
			}
		}
	}
}

// A host sending at the budget it was told is held back by that budget,
// not by its link: such windows neither lower its measured uplink (that
// would lower the budget at every window, down to a quarter of the uplink)
// nor confirm it (a fast host once measured slow would stay paced and slow
// for good). The measurement lapses after meterForget, the budget with it,
// and the host is measured anew, unpaced.
func TestPacedHostKeepsItsMeasuredUplink(t *testing.T) {
	v := pipelineVirtual(t, nil)
	h := &host{id: "h", info: &schedulerv1.Host{Id: "h"}}
	m := &h.meter
	const up, down = 262144.0, 4 << 20
	m.cap, m.capAt, m.lb, m.downMax = up, v.now, up, down
	m.budget = uploadBudget(h)
	if m.budget <= 0 || m.budget >= up {
		t.Fatalf("budget %.0f for an uplink of %.0f receiving %d", m.budget, up, down)
	}
	first := m.budget
	window := func(i int) {
		// A window in which h had stable children that could take a
		// megabyte a second and sent at its budget.
		now := v.now.Add(time.Duration(i+1) * time.Second)
		m.closing, m.prevDt, m.curDt, m.prevStable, m.curStable = true, 1, 1, true, true
		m.upRate, m.downRate, m.demand, m.keepsUp = m.budget, down, 1<<20, false
		v.s.meterJudgeLocked(h, now)
	}
	i := 0
	for ; time.Duration(i+1)*time.Second <= meterForget; i++ {
		window(i)
		if m.cap < 0.95*up || m.budget < 0.95*first {
			t.Fatalf("after %d s at its budget: measured uplink %.0f (was %.0f), budget %.0f (was %.0f)", i+1, m.cap, up, m.budget, first)
		}
	}
	for ; i < int(meterForget/time.Second)+3; i++ {
		window(i)
	}
	if m.cap != 0 || m.budget != 0 {
		t.Fatalf("%d s at its budget with nothing else seen: measured uplink %.0f, budget %.0f; want both lapsed", i, m.cap, m.budget)
	}
}

// A child that paces its uploads (here by its declared rates, 2.5 Mbit/s
// up and 25 down) keeps room for its acknowledgements, so unlike an
// unpaced one at its limit (TestMeterSkipsParentOfChildAtItsLimit) it
// does not shield its parent: a, which gives b 2 of the 16 pieces a second
// it holds for it, is measured.
func TestPacedChildDoesNotShieldItsParent(t *testing.T) {
	v := pipelineVirtual(t, func(c *Config) { c.SlowParentRatio = 0 })
	ids := []string{"src", "a", "b", "c"}
	ps := map[string]*vpeer{}
	src := v.join("t1", "src")
	src.decision()
	src.meta(chainLength, chainPieceSize)
	ps["src"] = src
	for i, id := range ids[1:] {
		var opts []regOpt
		if id == "b" {
			opts = append(opts, capHost2("b", 2.5, 25))
		}
		p := v.join("t1", id, opts...)
		if got := p.parents(); !slices.Equal(got, []string{ids[i]}) {
			t.Fatalf("%s parents %v, want [%s]", id, got, ids[i])
		}
		ps[id] = p
	}
	rates := map[string]int{"a": 16, "b": 2, "c": 1}
	next := map[string]uint32{}
	for range 6 {
		feed(ps, ids, rates, int64(100*time.Millisecond), next)
		v.advance(time.Second)
	}
	if a := v.s.hosts["host-a"]; a.meter.cap == 0 {
		t.Fatalf("a, which gave its paced child an eighth of what it could take, was not measured")
	}
	v.invariants()
}

// A relay that passes on half of what it receives is only suspect (one
// window can catch a transient), and is measured after a second such
// window. One that also receives far less than its parent holds for it is
// judged at once: its uplink holds back its own download too (on real
// links its acknowledgements queue behind its uploads), so its demand,
// counted from what it receives, understates how far below it is.
func TestStarvedSlowRelayJudgedAtOnce(t *testing.T) {
	ticks := func(aRate int) int {
		v := pipelineVirtual(t, func(c *Config) { c.SlowParentRatio = 0 })
		ids := []string{"src", "a", "b", "c"}
		ps := v.chain("t1", ids...)
		rates := map[string]int{"a": aRate, "b": 2, "c": 1}
		next := map[string]uint32{}
		b := v.s.hosts["host-b"]
		for i := range 8 {
			feed(ps, ids, rates, int64(100*time.Millisecond), next)
			v.advance(time.Second)
			if b.meter.cap != 0 {
				return i + 1
			}
		}
		t.Fatalf("a feeding %d pieces a second: b, passing on half of its 2, not measured in 8 s", aRate)
		return 0
	}
	starved, fed := ticks(16), ticks(2)
	if starved >= fed {
		t.Fatalf("b measured after %d s while a held 8 times what b got, %d s while a had only what b got: want sooner", starved, fed)
	}
}
