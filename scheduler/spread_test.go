package scheduler

import (
	"fmt"
	"slices"
	"testing"
	"time"

	schedulerv1 "github.com/damselfly-io/damselfly/api/schedulerv1"
)

// Peers that wait together (for the task's first source) are placed with
// the fastest relays first: a relay of 0.75 to 1 R takes a child, and
// everyone below it gets its rate, so it belongs below the faster ones.
// In join order, the simulator's spread chained a 14 Mbit/s relay above
// eleven faster hosts, and all of them got 14 (T*/T_median 0.78 -> 0.94).
// A host that relays nobody keeps its place.
func TestWaitingPeersPlacedFastestFirst(t *testing.T) {
	v := pipelineVirtual(t, nil)
	ups := map[string]float64{"a": 80, "c": 90, "slow": 10, "b": 100, "d": 100, "e": 100, "f": 100, "g": 100}
	order := []string{"a", "c", "slow", "b", "d", "e", "f", "g"}
	ps := map[string]*vpeer{}
	for _, id := range order {
		ps[id] = v.join("t", id, capHost(id, ups[id], false), noBackSource())
		if d := ps[id].decision(); d.GetWait() == nil {
			t.Fatalf("%s: want wait (no source yet), got %v", id, d)
		}
	}
	v.source("t", "s", capHost("s", 100, false))
	parent := map[string]string{}
	for _, id := range order {
		ps[id].decision() // (the pipeline order is read from the graph)
	}
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t")]
	for _, id := range order {
		for _, l := range tk.peers[id].parents {
			if l.share == 0 {
				parent[id] = l.peer.id
			}
		}
	}
	v.s.mu.Unlock()
	// Walk the pipeline down from the source: the uplinks must not rise.
	at, prev, n := "s", 100.0, 0
	for {
		next := ""
		for id, p := range parent {
			if p == at && id != "slow" {
				next = id
			}
		}
		if next == "" {
			break
		}
		if ups[next] > prev {
			t.Errorf("pipeline %s (%v Mbit/s) below a slower relay (%v Mbit/s): parents %v", next, ups[next], prev, parent)
		}
		at, prev, n = next, ups[next], n+1
	}
	if n != len(order)-1 {
		t.Errorf("pipeline holds %d of the %d relays: parents %v", n, len(order)-1, parent)
	}
	v.invariants()
}

// A newcomer that relays at the rate goes above a young relay slower than
// it and than the rate, when peers come one after another: the pipeline
// keeps its slower relays at its end, fastest first. That holds for the
// tail too, a host that could relay but has no child yet: below it, the
// newcomer and every host after it would get its rate. (On the harness's
// spread, a 14 Mbit/s host that registered first took the seed's slot,
// eight faster hosts were chained below it, and all of them finished at
// 0.72 of the bound.)
func TestNewcomerAboveSlowerYoungRelay(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "s", capHost("s", 100, false))
	for _, id := range []string{"h1", "h2", "h3", "h4", "h5", "h6", "h7"} {
		v.join("t", id, capHost(id, 100, false)).parents()
	}
	// h7 is the tail; a relay at 80 Mbit/s joins below it (a 0.8 R relay
	// takes a child).
	if got := v.join("t", "mid", capHost("mid", 80, false)).parents(); !slices.Equal(got, []string{"h7"}) {
		t.Fatalf("mid's parents %v, want [h7]", got)
	}
	// A relay at 90 goes above mid, the tail: h7 → low → mid.
	if got := v.join("t", "low", capHost("low", 90, false)).parents(); !slices.Equal(got, []string{"h7"}) {
		t.Fatalf("low's parents %v, want [h7] (above the slower tail)", got)
	}
	if got := v.children("t", "low"); !slices.Equal(got, []string{"mid"}) {
		t.Fatalf("low's children %v, want [mid]", got)
	}
	// A fast newcomer takes low's place: h7 → fast → low → mid.
	fast := v.join("t", "fast", capHost("fast", 100, false))
	if got := fast.parents(); !slices.Equal(got, []string{"h7"}) {
		t.Fatalf("fast newcomer's parents %v, want [h7] (above the slower relay)", got)
	}
	if got := v.children("t", "fast"); !slices.Equal(got, []string{"low"}) {
		t.Errorf("fast newcomer's children %v, want [low]", got)
	}
	// Relays that hold more than a few pieces stay where they are.
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t")]
	for _, id := range []string{"low", "mid"} {
		for n := range uint32(youngHead + 1) {
			tk.peers[id].pieces.set(n)
		}
	}
	v.s.mu.Unlock()
	late := v.join("t", "late", capHost("late", 100, false))
	late.parents()
	if got := v.children("t", "late"); len(got) > 0 {
		t.Errorf("newcomer displaced %v, which hold %d pieces", got, youngHead+1)
	}
	v.invariants()
}

// Two children only for an uplink that feeds both at nearly the rate. With
// 1.75 R rounded up to two, a seed of 25 Mbit/s with R at 14 fed two
// pipelines at 12.5 each, and every peer got 12.5 (the simulator's spread).
func TestChildrenAtRate(t *testing.T) {
	for _, tc := range []struct {
		u    float64
		want int
	}{{0.7, 0}, {0.75, 1}, {1, 1}, {1.8, 1}, {1.94, 1}, {1.96, 2}, {2.5, 2}, {9.96, 10}} {
		if got := childrenAt(tc.u*mbps, mbps); got != tc.want {
			t.Errorf("uplink %v R: %d children, want %d", tc.u, got, tc.want)
		}
	}
	v := pipelineVirtual(t, nil)
	v.source("t", "seed", capHost("seed", 180, true))
	for _, id := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		v.join("t", id, capHost(id, 100, false)).parents()
	}
	if got := v.children("t", "seed"); len(got) != 1 {
		t.Errorf("seed at 1.8 R: children %v, want one pipeline at the full rate", got)
	}
	v.invariants()
}

// A declared relay that passes on all it gets is not replaced as slow for
// what its child measured per piece: four requests ahead of a relay fed at
// 20 Mbit/s took 5 Mbit/s each, and the simulator, peers registering 50 ms
// apart, replaced every fast relay of a declared pipeline; the swarm fell
// to 0.10 of the bound and fetched 11 × F from the origin. A declared relay
// the meter finds sending less than its child could take is still replaced;
// one the meter has not judged yet is not.
func TestDeclaredRelayNotJudgedPerPiece(t *testing.T) {
	for _, tc := range []struct{ judged, bound bool }{{true, false}, {true, true}, {false, false}} {
		judged, bound := tc.judged, tc.bound
		t.Run(fmt.Sprintf("judged %v bound %v", judged, bound), func(t *testing.T) {
			v := pipelineVirtual(t, func(c *Config) { c.SlowParentRatio, c.SlowParentSamples = 0.3, 2 })
			src := v.join("t", "a", capHost("a", 100, false))
			src.decision()
			src.meta(chainLength, chainPieceSize)
			ps := chainUnder(v.t, src, []string{"a", "b", "c", "d"}, func(id string) *vpeer { return v.join("t", id, capHost(id, 100, false)) }, (*vpeer).parents)
			slowMiddleRelay(v, ps) // the meter's windows: c keeps up with b
			v.s.mu.Lock()
			m := &v.s.tasks[tid("t")].peers["b"].host.meter
			if !m.judged {
				v.s.mu.Unlock()
				t.Fatal("b's meter has judged no window")
			}
			v.s.mu.Unlock()
			ps["c"].decision()
			v.now = v.now.Add(time.Second)
			v.s.mu.Lock()
			m.bound = bound // what the meter found in its last window
			// Not judged: the first ticks of a task, before any window
			// with stable children closed. At 10,000 simulated hosts
			// eleven fast relays were replaced per piece in the first
			// second, and the peers moved with them sat below slow
			// hosts for four.
			m.judged = judged
			v.s.replaceSlowParentsLocked(v.s.tasks[tid("t")], v.now)
			v.s.flushLocked(v.now)
			moved := !slices.ContainsFunc(v.s.tasks[tid("t")].peers["c"].parents, func(l link) bool { return l.peer.id == "b" })
			v.s.mu.Unlock()
			if moved != bound {
				t.Errorf("meter bound %v: c moved off b %v, want %v", bound, moved, bound)
			}
		})
	}
}

// A host that relays nobody, whose only free slot is below a relay slower
// than the task's fluid rate (a relay of 0.75 to 1 R takes a child), moves
// to paced parents that give it more, and stays there: the ticks that move
// paced receivers to free full-rate slots skip such a slot. In the
// simulator's spread a 9 Mbit/s host at the tail below a 14 Mbit/s relay
// finished 3.5 s after everyone else.
func TestLeafBelowSlowRelayPaced(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "s", capHost("s", 100, false))
	for _, id := range []string{"h1", "h2", "h3", "h4", "h5", "h6"} {
		v.join("t", id, capHost(id, 150, false)).parents()
	}
	if got := v.join("t", "x", capHost("x", 80, false)).parents(); !slices.Equal(got, []string{"h6"}) {
		t.Fatalf("x's parents %v, want [h6] (the tail)", got)
	}
	leaf := v.join("t", "leaf", capHost("leaf", 30, false))
	check := func(when string) {
		t.Helper()
		v.s.mu.Lock()
		defer v.s.mu.Unlock()
		p := v.s.tasks[tid("t")].peers["leaf"]
		sum, onX := 0.0, false
		for _, l := range p.parents {
			sum += l.share
			onX = onX || l.peer.id == "x"
		}
		if onX || sum <= 80*mbps {
			var ids []string
			for _, l := range p.parents {
				ids = append(ids, fmt.Sprintf("%s:%.0f", l.peer.id, l.share/mbps))
			}
			t.Errorf("%s: leaf's parents %v (Mbit/s booked), want paced parents giving more than x's 80", when, ids)
		}
	}
	leaf.decision()
	check("after joining")
	for range 3 {
		v.advance(time.Second)
	}
	check("three ticks later")
	v.invariants()
}

// slowMiddleRelay lets the meter close its windows on the chain a→b→c→d
// (past inputGrace) and has c report b's pieces as slow, those of a and c
// fast: the per-piece rule's view of b as a slow parent.
func slowMiddleRelay(v *vsched, ps map[string]*vpeer) {
	v.t.Helper()
	v.advance(inputGrace)
	v.advance(time.Second)
	v.advance(time.Second)
	const piece = 256 << 10
	fast, slow := int64(20*time.Millisecond), int64(400*time.Millisecond)
	for n := range uint32(3) {
		ps["b"].pieces(&schedulerv1.PieceResult{Number: n, ParentId: "a", Length: piece, CostNs: fast})
		ps["c"].pieces(&schedulerv1.PieceResult{Number: n, ParentId: "b", Length: piece, CostNs: slow})
		ps["d"].pieces(&schedulerv1.PieceResult{Number: n, ParentId: "c", Length: piece, CostNs: fast})
	}
}

// A relay is not moved off a parent found slow when every host that could
// take it is slow, a seed (its uplink kept for the content's first copy;
// here the relay went there) or its own descendant: below a slow uplink it
// would hold back all its pipeline, which a slow parent does less. In the
// simulator (mixed, the seed on the origin's host) a pipeline's head moved
// below a slow host, and the last host's T*/T_last fell from 0.83 to 0.47.
// With a fast host free to take it (one that finished), the relay moves.
func TestRelayNotMovedBelowSlowHost(t *testing.T) {
	for _, fastFree := range []bool{false, true} {
		t.Run(fmt.Sprint("fast alternative ", fastFree), func(t *testing.T) {
			v := pipelineVirtual(t, func(c *Config) { c.SlowParentRatio, c.SlowParentSamples = 0.3, 2 })
			src := v.join("t", "a", capHost("a", 100, true)) // a seed host
			src.decision()
			src.meta(chainLength, chainPieceSize)
			ps := chainUnder(v.t, src, []string{"a", "b", "c", "d"}, func(id string) *vpeer { return v.join("t", id, capHost(id, 100, false)) }, (*vpeer).parents)
			v.join("t", "x", capHost("x", 5, false)).decision() // slow: a leaf
			if fastFree {
				// A fast host that finished: it holds everything and is
				// nobody's descendant.
				e := v.join("t", "e", capHost("e", 300, false))
				e.decision()
				e.handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: chainLength}}})
			}
			slowMiddleRelay(v, ps)
			v.now = v.now.Add(time.Second)
			v.s.mu.Lock()
			tk := v.s.tasks[tid("t")]
			m := &tk.peers["b"].host.meter
			m.judged, m.bound = true, true // the meter found b sending less than c could take
			v.s.replaceSlowParentsLocked(tk, v.now)
			v.s.flushLocked(v.now)
			var got []string
			for _, l := range tk.peers["c"].parents {
				got = append(got, l.peer.id)
			}
			v.s.mu.Unlock()
			moved := !slices.Contains(got, "b")
			if moved != fastFree {
				t.Errorf("c's parents %v: moved off b %v, want %v", got, moved, fastFree)
			}
			if slices.Contains(got, "x") {
				t.Errorf("c's parents %v: below the slow host", got)
			}
		})
	}
}

// A declared relay far below the task's rate, which took its child while
// the rate was still low (from the first few hosts to register), is spliced
// out at the next tick: its child takes its place under its parent, and it
// is decided again with no full-rate child. In the simulator's spread
// (N = 16, peers 50 ms apart) an 11 Mbit/s host relayed to a 12 Mbit/s one
// with R at 17, which finished last, 4.6 s after everyone else.
func TestRelayBelowRateSplicedOut(t *testing.T) {
	for _, slowMbps := range []float64{20, 80} {
		t.Run(fmt.Sprint("relay ", slowMbps, " Mbit/s, R 100"), func(t *testing.T) {
			v := pipelineVirtual(t, nil)
			v.source("t", "a", capHost("a", 100, false))
			ids := []string{"b", "c", "d", "e1", "e2", "e3", "e4", "e5"}
			for _, id := range ids {
				up := 100.0
				if id == "c" {
					up = slowMbps
				}
				v.join("t", id, capHost(id, up, false)).decision()
			}
			// The chain a → b → c → d → e1 → … → e5, as built while R was low.
			v.s.mu.Lock()
			tk := v.s.tasks[tid("t")]
			chain := [][2]string{{"a", ids[0]}}
			for i := 1; i < len(ids); i++ {
				chain = append(chain, [2]string{ids[i-1], ids[i]})
			}
			rewireThenTickLocked(t, v, tk, ids, chain, true)
			defer v.s.mu.Unlock()
			c, d := tk.peers["c"], tk.peers["d"]
			var dParents []string
			for _, l := range d.parents {
				dParents = append(dParents, l.peer.id)
			}
			// Far below the rate, c is spliced out; a little below it, it
			// sinks to the tail (sink.go). Either way d is below b.
			spliced := slowMbps < relayUnfit*100
			if !slices.Equal(dParents, []string{"b"}) {
				t.Errorf("d's parents %v, want [b] (R %.0f Mbit/s)", dParents, tk.rate/mbps)
			}
			if !spliced && (fullParent(c) == nil || fullParent(c).id != "e5" || unpacedChildren(c) > 0) {
				t.Errorf("c, at %v Mbit/s, did not sink to the tail below e5: full-rate parent %v, %d full-rate children", slowMbps, peerID(fullParent(c)), unpacedChildren(c))
			}
			if spliced && unpacedChildren(c) > 0 {
				t.Errorf("c, at %v Mbit/s, still feeds %d full-rate children", slowMbps, unpacedChildren(c))
			}
			if spliced && (c.state != stateRunning || len(c.parents) == 0) {
				t.Errorf("c was not decided again: state %v, %d parents", c.state, len(c.parents))
			}
		})
	}
}

// While few receivers have registered, a seed host's children are counted
// at the fastest receiver's uplink as well as at the task's rate (their
// median), which the receivers still to come may raise: the seed's
// children hold its uplink for the whole download. With receivers at 5, 11
// and 17 Mbit/s a 25 Mbit/s seed takes one child, not two at 12.5; once
// minRateSample receivers are in, the rate alone counts.
func TestSeedChildrenCountedAtFastestEarlyReceiver(t *testing.T) {
	for _, tc := range []struct {
		name string
		ups  []float64
		want int
	}{
		{"5, 11, 17", []float64{5, 11, 17}, 1},
		{"5, 5, 10", []float64{5, 5, 10}, 2}, // 25 feeds two at 10
		{"eight at 5 to 17", []float64{5, 5, 5, 5, 11, 11, 17, 17}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := pipelineVirtual(t, nil)
			v.sourceOwn("t", "seed", capHost("seed", 25, true))
			for i, up := range tc.ups {
				v.join("t", fmt.Sprint("r", i), capHost(fmt.Sprint("r", i), up, false)).decision()
			}
			v.s.mu.Lock()
			defer v.s.mu.Unlock()
			tk := v.s.tasks[tid("t")]
			v.s.updateRateLocked(tk, v.now)
			if got := v.s.childLimit(tk.peers["seed"], v.now); got != tc.want {
				t.Errorf("seed's child limit %d, want %d (R %.1f Mbit/s, fastest early receiver %.1f)", got, tc.want, tk.rate/mbps, tk.rateHi/mbps)
			}
		})
	}
}

// A leaf whose full-rate parent became a slow slot after it was placed
// (the parent took another child, or the rate rose) gets at the next tick
// the look a newcomer placed there gets: it is remembered as crowded and
// moved to paced parents when they give it more. A leaf below a parent
// that gives it the fluid rate is left alone.
func TestLeafOnSlotGoneSlowCrowdedAtTick(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "a", capHost("a", 100, false))
	ups := map[string]float64{"b": 100, "x": 150, "leaf": 100, "e1": 100, "e2": 100, "e3": 100, "e4": 100, "tail": 100}
	order := []string{"b", "x", "leaf", "e1", "e2", "e3", "e4", "tail"}
	for _, id := range order {
		v.join("t", id, capHost(id, ups[id], false)).decision()
	}
	// a → b → x → {leaf, e1 → e2 → e3 → e4 → tail}: x's 150 Mbit/s split
	// two ways gives leaf 75, below 0.9 of the fluid rate (100).
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t")]
	for _, id := range order {
		tk.peers[id].crowded = false
	}
	tk.crowded = nil
	rewireThenTickLocked(t, v, tk, order, [][2]string{{"a", "b"}, {"b", "x"}, {"x", "leaf"}, {"x", "e1"}, {"e1", "e2"}, {"e2", "e3"}, {"e3", "e4"}, {"e4", "tail"}}, false)
	defer v.s.mu.Unlock()
	leaf, tail := tk.peers["leaf"], tk.peers["tail"]
	onX := len(leaf.parents) == 1 && leaf.parents[0].peer.id == "x" && leaf.parents[0].share == 0
	if onX && !leaf.crowded {
		t.Errorf("leaf still takes a full-rate slot of x at %.0f Mbit/s (fluid %.0f) and is not remembered as crowded",
			v.s.slotRate(tk.peers["x"], v.now)/mbps, tk.fluid/mbps)
	}
	if tail.crowded {
		t.Error("tail, which gets the fluid rate from e4, was marked crowded")
	}
}

// rewireThenTickLocked, called with v.s.mu held, makes the edges given tk's
// starting graph (rewireLocked; flushed first when flush is set), checks it,
// then runs one Tick a second later and checks the graph again; it returns
// with v.s.mu held. Any error fails t.
func rewireThenTickLocked(t *testing.T, v *vsched, tk *task, ids []string, edges [][2]string, flush bool) {
	t.Helper()
	err := rewireLocked(v.s, tk, ids, edges)
	if err == nil && flush {
		v.s.flushLocked(v.now)
	}
	if err == nil {
		err = checkInvariants(v.s)
	}
	v.s.mu.Unlock()
	if err != nil {
		t.Fatalf("setup: %v", err)
	}
	v.advance(time.Second)
	v.s.mu.Lock()
	if err := checkInvariants(v.s); err != nil {
		v.s.mu.Unlock()
		t.Fatal(err)
	}
}

// rewireLocked gives the peers ids of tk no parents, then the full-rate
// edges given (parent, child), as a test's starting graph; an error names
// an edge refused.
func rewireLocked(s *Scheduler, tk *task, ids []string, edges [][2]string) error {
	for _, id := range ids {
		s.dropParentsLocked(tk.peers[id])
	}
	for _, e := range edges {
		if !s.linkLocked(tk.peers[e[0]], tk.peers[e[1]]) {
			return fmt.Errorf("setup: %s→%s refused", e[0], e[1])
		}
	}
	return nil
}

// R is the fluid bound's mean when that is above the median of the
// receivers' relay capacities (never above the source nor the fastest
// receiver): at the median, a
// host between the two relays at less than the rate the bound gives every
// receiver, and everyone below it gets its uplink. Where slow uplinks pull
// the mean below the median, the median stays, and paced shares are booked
// at the mean.
func TestRateAtMeanAboveMedian(t *testing.T) {
	cases := []struct {
		name        string
		src         float64
		ups         []float64
		rate, fluid float64 // Mbit/s
		midIsLeaf   bool
	}{
		// Sorted 20 ×4, 50, 100 ×4: the median 50, the mean
		// (100+400+50+80)/9 = 70. The 50 Mbit/s host sits at a leaf.
		{"mean above median", 100, []float64{100, 100, 100, 100, 50, 20, 20, 20, 20}, 70, 70, true},
		// The same receivers below a 60 Mbit/s source: R is the source's
		// (the mean (60+530)/9 = 65.6 above it), and the 50 Mbit/s host,
		// at 0.83 of it, relays.
		{"source below mean", 60, []float64{100, 100, 100, 100, 50, 20, 20, 20, 20}, 60, 60, false},
		// A source ten times faster than the receivers lifts the mean
		// to (1000+850)/9 = 205, above every receiver: R stays at the
		// fastest receiver's 100, or none would relay.
		{"fast source", 1000, []float64{100, 100, 100, 100, 100, 100, 100, 100, 50}, 100, 100, true},
		// Mixed: 100 ×6, 50, 10 ×2: the median 100, the mean
		// (100+600+50+20)/9 = 85.6 below it.
		{"mean below median", 100, []float64{100, 100, 100, 100, 100, 100, 50, 10, 10}, 100, 770.0 / 9, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := pipelineVirtual(t, nil)
			v.source("t", "s", capHost("s", c.src, false))
			for i, u := range c.ups {
				id := fmt.Sprint("r", i)
				if u == 50 {
					id = "mid"
				}
				v.join("t", id, capHost(id, u, false)).decision()
			}
			v.s.mu.Lock()
			defer v.s.mu.Unlock()
			tk := v.s.tasks[tid("t")]
			v.s.updateRateLocked(tk, v.now)
			if d := tk.rate/mbps - c.rate; d < -0.5 || d > 0.5 {
				t.Errorf("R %.1f Mbit/s, want %.1f", tk.rate/mbps, c.rate)
			}
			if d := tk.fluid/mbps - c.fluid; d < -0.5 || d > 0.5 {
				t.Errorf("fluid rate %.1f Mbit/s, want %.1f", tk.fluid/mbps, c.fluid)
			}
			if got := v.s.slowHost(tk.peers["mid"], v.now); got != c.midIsLeaf {
				t.Errorf("50 Mbit/s host slow (a leaf) = %v at R %.1f, want %v", got, tk.rate/mbps, c.midIsLeaf)
			}
			if c.midIsLeaf && unpacedChildren(tk.peers["mid"]) > 0 {
				t.Errorf("50 Mbit/s host feeds %d full-rate children at R %.1f", unpacedChildren(tk.peers["mid"]), tk.rate/mbps)
			}
		})
	}
}

// Near the end the fast receivers are done and the slow ones are left:
// the finished receivers' uplinks bound R with the others', so those left
// are fed at the mean from them rather than relaying to each other at
// their own uplinks.
func TestRateCountsFinishedReceivers(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "s", capHost("s", 100, false))
	ups := map[string]float64{"f0": 100, "f1": 100, "f2": 100, "f3": 100, "mid": 40, "s0": 20, "s1": 20}
	for _, id := range []string{"f0", "f1", "f2", "f3", "mid", "s0", "s1"} {
		v.join("t", id, capHost(id, ups[id], false)).decision()
	}
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	tk := v.s.tasks[tid("t")]
	for _, id := range []string{"f0", "f1", "f2", "f3"} {
		p := tk.peers[id]
		if p.depth == 0 {
			t.Fatalf("setup: %s has no full-rate parent", id)
		}
		v.s.setState(p, stateSucceeded)
	}
	v.s.updateRateLocked(tk, v.now)
	// Left: 40, 20, 20; the mean (100+80)/3 = 60, above the fastest
	// receiver left but not above the finished ones.
	if d := tk.rate/mbps - 60; d < -0.5 || d > 0.5 {
		t.Errorf("R %.1f Mbit/s, want the mean 60", tk.rate/mbps)
	}
	if !v.s.slowHost(tk.peers["mid"], v.now) {
		t.Errorf("40 Mbit/s host relays at R %.1f: want it at a leaf", tk.rate/mbps)
	}
}
