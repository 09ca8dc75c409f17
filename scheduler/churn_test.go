package scheduler

import (
	"slices"
	"testing"
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
