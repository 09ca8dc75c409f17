package scheduler

import (
	"slices"
	"testing"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
)

// A child that reports its parent stalled (Reschedule naming it bad) in a
// pipeline takes the stalled parent's place under the grandparent at once,
// and the stalled parent goes to the tail: nobody ends with two children
// (which would split an uplink the pipeline needs whole) and no child waits.
func TestStalledParentSplicedOut(t *testing.T) {
	d := DefaultConfig()
	ts := startServer(t, func(c *Config) {
		c.MaxParents, c.MaxChildren, c.PipelineParents = d.MaxParents, d.MaxChildren, d.PipelineParents
	})
	ts.register("t1", "a").expectBackToSource()
	peers := map[string]*testPeer{}
	prev := "a"
	for _, id := range []string{"b", "c", "d", "e"} {
		p := ts.register("t1", id)
		if got := p.expectParents(); !slices.Equal(got, []string{prev}) {
			t.Fatalf("%s parents %v, want [%s]", id, got, prev)
		}
		peers[id], prev = p, id
	}
	// a→b→c→d→e; c stalls and d says so.
	peers["d"].reschedule("c")
	if got := peers["d"].expectParents(); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("d re-parented to %v, want [b]: the stalled parent's place", got)
	}
	// The stalled parent is re-attached at the tail, below e.
	if got := peers["c"].expectParents(); !slices.Equal(got, []string{"e"}) {
		t.Fatalf("stalled c re-parented to %v, want [e]: the tail", got)
	}
	ts.inspect(func(s *Scheduler) {
		for _, p := range s.tasks[tid("t1")].peers {
			if len(p.children) > 1 {
				t.Errorf("%s serves %d children: an uplink split", p.id, len(p.children))
			}
		}
		if err := checkInvariants(s); err != nil {
			t.Error(err)
		}
	})
}

// A downloading parent that a child reports stalled, and that has been
// silent for stallSilence, is taken for dead (a host gone without closing
// its stream, whose keepalive takes tens of seconds to run out): its child
// takes its place at once, and no newcomer is sent to it until it speaks
// again.
func TestStalledSilentParentGetsNoNewChildren(t *testing.T) {
	v := pipelineVirtual(t, nil)
	src := v.join("t", "src")
	src.decision()
	src.meta(16<<20, 1<<20)
	ps := map[string]*vpeer{"src": src}
	prev := "src"
	for _, id := range []string{"a", "b", "c", "d"} {
		p := v.join("t", id)
		if got := p.parents(); !slices.Equal(got, []string{prev}) {
			t.Fatalf("%s parents %v, want [%s]", id, got, prev)
		}
		ps[id], prev = p, id
	}
	// Everyone but b goes on reporting pieces; b went silent.
	v.advance(stallSilence)
	src.pieces(originPiece(0))
	for _, id := range []string{"a", "c", "d"} {
		ps[id].pieces(&schedulerv1.PieceResult{Number: 0, ParentId: "x", Length: 1 << 20, CostNs: 1e7})
	}
	ps["c"].reschedule("b")
	if got := ps["c"].parents(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("c parents %v, want [a]: the stalled parent's place, at once", got)
	}
	e := v.join("t", "e")
	if got := e.parents(); slices.Contains(got, "b") {
		t.Fatalf("newcomer e sent to the silent, stalled b: %v", got)
	}
	v.invariants()
	// b speaks again: it is a candidate like any other.
	ps["b"].pieces(&schedulerv1.PieceResult{Number: 1, ParentId: "a", Length: 1 << 20, CostNs: 1e7})
	v.s.mu.Lock()
	bp := v.s.tasks[tid("t")].peers["b"]
	back := bp.stalledAt.IsZero() && (bp.openIdx >= 0 || len(bp.children) > 0)
	v.s.mu.Unlock()
	if !back {
		t.Fatal("b spoke again but stays shunned")
	}
}
