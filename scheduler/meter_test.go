package scheduler

import (
	"slices"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
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
	for range 6 {
		feed(ps, ids, rates, int64(100*time.Millisecond), next)
		v.advance(time.Second)
	}
	a, b := v.s.hosts["host-a"], v.s.hosts["host-b"]
	if b.meter.cap == 0 {
		t.Fatalf("b, which gave c an eighth of what it could take, was not measured")
	}
	if a.meter.cap != 0 {
		t.Errorf("a was measured at %.0f B/s through b, which was at its own limit", a.meter.cap)
	}
	v.invariants()
}
