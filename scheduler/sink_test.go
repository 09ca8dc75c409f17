package scheduler

import (
	"fmt"
	"testing"
)

// chainOf follows the full-rate edges down from id and returns the hosts
// met, id first.
func (v *vsched) chainOf(task, id string) []string {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	p := v.s.tasks[tid(task)].peers[id]
	out := []string{p.id}
	for len(out) <= len(p.task.list) {
		var next *peer
		for _, c := range p.children {
			if !pacedChild(p, c) {
				next = c
			}
		}
		if next == nil {
			break
		}
		p = next
		out = append(out, p.id)
	}
	return out
}

// sinkChain builds src (100 Mbit/s, done) → r (ups["r"]) → c → d and runs
// one tick's sinking.
func sinkChain(t *testing.T, ups map[string]float64) *vsched {
	t.Helper()
	v := pipelineVirtual(t, nil)
	v.fetcher("t", "src", false, capHost("src", 100, false))
	for _, id := range []string{"r", "c", "d"} {
		v.join("t", id, capHost(id, ups[id], false)).parents()
	}
	v.rewire("t", [2]string{"src", "r"}, [2]string{"r", "c"}, [2]string{"c", "d"})
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t")]
	v.s.sinkSlowRelaysLocked(tk, v.now)
	if err := checkInvariants(v.s); err != nil {
		t.Error(err)
	}
	v.s.flushLocked(v.now)
	v.s.mu.Unlock()
	return v
}

// A relay slower than the task's rate sinks below its faster full-rate
// children to the pipeline's tail: on the harness (spread, N = 32) an
// 11 Mbit/s relay chained above ten hosts while the rate was low held
// them all at 11 with the rate at 12.9.
func TestSlowRelaySinks(t *testing.T) {
	v := sinkChain(t, map[string]float64{"r": 70, "c": 100, "d": 100})
	if got := fmt.Sprint(v.chainOf("t", "src")); got != "[src c d r]" {
		t.Fatalf("pipeline %s, want [src c d r]: the 70 Mbit/s relay sinks to the tail", got)
	}
	// The new parents reached the three peers.
	for _, id := range []string{"c", "d", "r"} {
		if d := v.s.tasks[tid("t")].peers[id]; len(d.parents) != 1 {
			t.Errorf("%s: %d parents, want 1", id, len(d.parents))
		}
	}
}

// Nothing moves when the relay keeps up with the rate, when its child is no
// faster, or when it is far ahead of its child (it would wait for it).
func TestSlowRelayStays(t *testing.T) {
	for name, ups := range map[string]map[string]float64{
		"equal":        {"r": 100, "c": 100, "d": 100},
		"child slower": {"r": 70, "c": 60, "d": 60},
	} {
		t.Run(name, func(t *testing.T) {
			v := sinkChain(t, ups)
			if got := fmt.Sprint(v.chainOf("t", "src")); got != "[src r c d]" {
				t.Fatalf("pipeline %s, want [src r c d] unchanged", got)
			}
		})
	}
	t.Run("far ahead", func(t *testing.T) {
		v := pipelineVirtual(t, nil)
		// At 10 Mbit/s the task's 32 pieces take about 7 s.
		v.fetcher("t", "src", false, capHost("src", 10, false))
		for id, up := range map[string]float64{"r": 7, "c": 10} {
			v.join("t", id, capHost(id, up, false)).parents()
		}
		v.rewire("t", [2]string{"src", "r"}, [2]string{"r", "c"})
		v.s.mu.Lock()
		tk := v.s.tasks[tid("t")]
		for i := range uint32(topUpPieces) {
			tk.peers["r"].pieces.set(i) // r holds everything, c nothing: seconds ahead
		}
		v.s.sinkSlowRelaysLocked(tk, v.now)
		v.s.mu.Unlock()
		if got := fmt.Sprint(v.chainOf("t", "src")); got != "[src r c]" {
			t.Fatalf("pipeline %s, want [src r c]: r is too far ahead of c to wait for it", got)
		}
	})
}

// peerID is p's ID, "none" for nil.
func peerID(p *peer) string {
	if p == nil {
		return "none"
	}
	return p.id
}
