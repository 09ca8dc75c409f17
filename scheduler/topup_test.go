package scheduler

import (
	"fmt"
	"slices"
	"testing"
	"time"

	schedulerv1 "github.com/damselfly-io/damselfly/api/schedulerv1"
)

// topUpPieces is the size, in pieces, of the tasks of these tests: enough
// for a downloading donor to be topUpAhead pieces ahead of a receiver.
const topUpPieces = 32

// fetcher makes id the task's fetcher, done with all topUpPieces pieces;
// own says whether its origin answered from another host (its uplink is
// its own: TaskMeta.origin_on_host false).
func (v *vsched) fetcher(task, id string, own bool, opts ...regOpt) *vpeer {
	v.t.Helper()
	p := v.join(task, id, opts...)
	if d := p.decision(); d.GetBackToSource() == nil {
		v.t.Fatalf("%s: want back to source, got %v", id, d)
	}
	if own {
		p.metaOwnUplink(topUpPieces<<18, 1<<18)
	} else {
		p.meta(topUpPieces<<18, 1<<18)
	}
	var rs []*schedulerv1.PieceResult
	for n := range uint32(topUpPieces) {
		rs = append(rs, originPiece(n))
	}
	p.pieces(rs...)
	p.finish()
	return p
}

// finish reports p done with the whole task.
func (p *vpeer) finish() {
	p.handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: topUpPieces << 18}}})
}

// topUps returns the top-up shares p has, by parent, in Mbit/s.
func (v *vsched) topUps(task, id string) map[string]float64 {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	got := map[string]float64{}
	for _, l := range v.s.tasks[tid(task)].peers[id].parents {
		if l.top {
			got[l.peer.id] = l.share / mbps
		}
	}
	return got
}

// rewire makes parent the only, full-rate parent of child, and runs the
// tick's top-ups of task.
func (v *vsched) rewire(task string, edges ...[2]string) {
	v.t.Helper()
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	tk := v.s.tasks[tid(task)]
	for _, e := range edges {
		par, c := tk.peers[e[0]], tk.peers[e[1]]
		v.s.dropParentsLocked(c)
		if !v.s.linkLocked(par, c) {
			v.t.Fatalf("cannot link %s→%s", e[0], e[1])
		}
	}
	v.s.updateRateLocked(tk, v.now)
}

func (v *vsched) runTopUps(task string) {
	v.s.mu.Lock()
	v.s.topUpShortLocked(v.s.tasks[tid(task)], v.now)
	v.s.flushLocked(v.now)
	v.s.mu.Unlock()
}

// slowRelayBelowSource builds src (100 Mbit/s, done) → r (80) → c (100),
// and f (100), finished with no child, and runs the top-ups.
func slowRelayBelowSource(t *testing.T) *vsched {
	t.Helper()
	v := pipelineVirtual(t, nil)
	v.fetcher("t", "src", false, capHost("src", 100, false))
	for _, id := range []string{"r", "c"} {
		v.join("t", id, capHost(id, map[string]float64{"r": 80, "c": 100}[id], false)).parents()
	}
	f := v.join("t", "f", capHost("f", 100, false))
	f.parents()
	f.pieces(piecesFrom("src", topUpPieces)...)
	f.finish()
	v.rewire("t", [2]string{"src", "r"}, [2]string{"r", "c"})
	v.runTopUps("t")
	return v
}

// A receiver below a relay slower than the task's rate gets the rest from
// a finished host's idle uplink, and keeps its relay. Without top-ups, the
// harness's spread chained eight hosts below a 14 Mbit/s relay with the
// task's rate at 18, and all eight got 14.
func TestTopUpBelowSlowRelay(t *testing.T) {
	v := slowRelayBelowSource(t)
	got := v.topUps("t", "c")
	if got["f"] < 10 {
		t.Fatalf("c below an 80 Mbit/s relay: top-ups %v, want about 20 Mbit/s or more from f", got)
	}
	if ps := v.parentsOf("t", "c"); !slices.Contains(ps, "r") {
		t.Errorf("c lost its relay: parents %v", ps)
	}
	// r itself is fed at the rate by src: nothing to top up (its downlink
	// is unknown, so it may take twice the rate from a finished host).
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t")]
	if err := checkInvariants(v.s); err != nil {
		t.Error(err)
	}
	for _, p := range tk.list {
		checkPaced(t, v.s, p)
	}
	v.s.mu.Unlock()
	if v.s.m.topUps == nil {
		t.Fatal("no top-up metric")
	}
}

// A receiver marked crowded below a relay slower than the rate, whose only
// full-rate child it is, splits no uplink with a pipeline: it is topped up
// like any receiver below a slow relay. (Peers joining together are placed
// below parents with no room for them; in the simulator's spread at N = 16
// and 100 Mbit/s such a relay and the two hosts below it took in about 57
// Mbit/s of the 70.5 the rate asked for 8 s, untopped.)
func TestTopUpForCrowdedSoleChild(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.fetcher("t", "src", false, capHost("src", 100, false))
	for _, id := range []string{"r", "c", "d"} {
		v.join("t", id, capHost(id, map[string]float64{"r": 80, "c": 100, "d": 100}[id], false)).parents()
	}
	f := v.join("t", "f", capHost("f", 100, false))
	f.parents()
	f.pieces(piecesFrom("src", topUpPieces)...)
	f.finish()
	v.rewire("t", [2]string{"src", "r"}, [2]string{"r", "c"}, [2]string{"c", "d"})
	v.s.mu.Lock()
	v.s.crowdLocked(v.s.tasks[tid("t")].peers["c"])
	v.s.mu.Unlock()
	v.runTopUps("t")
	if got := v.topUps("t", "c"); got["f"] < 10 {
		t.Fatalf("crowded c, r's only child, below an 80 Mbit/s relay: top-ups %v, want about 20 Mbit/s or more from f", got)
	}
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	if err := checkInvariants(v.s); err != nil {
		t.Error(err)
	}
}

// parentsOf returns the IDs of id's parents.
func (v *vsched) parentsOf(task, id string) []string {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	var ids []string
	for _, l := range v.s.tasks[tid(task)].peers[id].parents {
		ids = append(ids, l.peer.id)
	}
	slices.Sort(ids)
	return ids
}

// A downloading host tops up only a receiver it holds pieces for: one with
// the same pieces has nothing the receiver lacks; one level with it but in
// another pipeline holds other pieces.
func TestTopUpFromDownloadingDonorAhead(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first uint32 // d holds pieces first.., c holds 0 and 1
		n     uint32
		give  bool
	}{
		{"level", 0, 2, false},
		{"ahead", 0, 2 + topUpAhead, true},
		{"other pieces", 10, topUpAhead, true},
		{"few other pieces", 1, topUpAhead, false}, // 1..4: 3 new
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := pipelineVirtual(t, nil)
			v.fetcher("t", "src", false, capHost("src", 200, false))
			ids := []string{"r", "c", "d"}
			ups := map[string]float64{"r": 80, "c": 100, "d": 100}
			for _, id := range ids {
				v.join("t", id, capHost2(id, ups[id], 100)).parents()
			}
			// d: a leaf of src with spare; c below the 80 Mbit/s relay r.
			// src (200 Mbit/s) feeds r and d at the rate: no spare.
			v.rewire("t", [2]string{"src", "r"}, [2]string{"r", "c"}, [2]string{"src", "d"})
			v.s.mu.Lock()
			tk := v.s.tasks[tid("t")]
			for i := range tc.n {
				tk.peers["d"].pieces.set(tc.first + i)
			}
			tk.peers["c"].pieces.set(0)
			tk.peers["c"].pieces.set(1)
			v.s.mu.Unlock()
			v.runTopUps("t")
			got := v.topUps("t", "c")
			if tc.give && got["d"] <= 0 {
				t.Errorf("d, holding pieces %d..%d, gave c (0, 1) no top-up: %v", tc.first, tc.first+tc.n-1, got)
			}
			if !tc.give && got["d"] > 0 {
				t.Errorf("d, holding pieces %d..%d, topped up c (0, 1): %v", tc.first, tc.first+tc.n-1, got)
			}
			// A downloading donor tops up to the fluid rate, not beyond.
			v.s.mu.Lock()
			c := v.s.tasks[tid("t")].peers["c"]
			if in := v.s.inflow(c, v.now); in > c.task.fluid*1.001 {
				t.Errorf("c takes %.1f Mbit/s, above the fluid rate %.1f, from downloading donors", in/mbps, c.task.fluid/mbps)
			}
			v.s.mu.Unlock()
		})
	}
}

// A seed whose uplink may be the origin's tops nobody up; one whose origin
// is on another host does, as any finished host.
func TestTopUpNotFromSharedSeed(t *testing.T) {
	for _, own := range []bool{false, true} {
		t.Run(fmt.Sprint("own=", own), func(t *testing.T) {
			v := pipelineVirtual(t, nil)
			v.fetcher("t", "seed", own, capHost("seed", 150, true))
			for _, id := range []string{"r", "c"} {
				v.join("t", id, capHost(id, map[string]float64{"r": 80, "c": 100}[id], false)).parents()
			}
			// r: a child of the seed; c below r.
			v.rewire("t", [2]string{"seed", "r"}, [2]string{"r", "c"})
			v.runTopUps("t")
			got := v.topUps("t", "c")
			if !own && got["seed"] > 0 {
				t.Errorf("a seed that may share the origin's uplink topped c up: %v", got)
			}
			if own && got["seed"] <= 0 {
				t.Errorf("a seed with an uplink of its own gave no top-up (spare 50 Mbit/s): %v", got)
			}
		})
	}
}

// Top-ups yield: a newcomer takes the full-rate slot of a finished host
// whose spare a top-up holds, rather than split a pipeline's uplink, and
// the top-up is trimmed to what is left.
func TestTopUpYieldsToNewcomer(t *testing.T) {
	v := slowRelayBelowSource(t)
	if got := v.topUps("t", "c"); got["f"] <= 0 {
		t.Fatalf("no top-up from f: %v", got)
	}
	// r and c hold more than a few pieces: the newcomer does not go
	// above them (displaceSlowRelayLocked) but to a free slot.
	v.s.mu.Lock()
	for _, id := range []string{"r", "c"} {
		for i := range uint32(youngHead + 1) {
			v.s.tasks[tid("t")].peers[id].pieces.set(i)
		}
	}
	v.s.mu.Unlock()
	n := v.join("t", "n", capHost("n", 100, false))
	got := n.parents()
	if !slices.Equal(got, []string{"f"}) {
		t.Fatalf("newcomer's parents %v, want [f] (its top-up yields)", got)
	}
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	tk := v.s.tasks[tid("t")]
	fp := tk.peers["f"]
	if unpacedChildren(fp) != 1 {
		t.Errorf("f has %d full-rate children, want 1 (the newcomer)", unpacedChildren(fp))
	}
	for _, p := range tk.list {
		checkPaced(t, v.s, p)
	}
	if room := max(0, v.s.shareRoom(fp, v.now)-fp.booked); fp.topBooked > room*1.02+1 {
		t.Errorf("f's top-ups %.1f Mbit/s above its room %.1f once the newcomer came", fp.topBooked/mbps, room/mbps)
	}
	if c := tk.peers["c"]; !isParent(c, tk.peers["r"]) {
		t.Errorf("c lost its relay when its top-up was trimmed")
	}
}

// A seed whose origin answered from another host has an uplink of its own:
// once its first child is done it takes another, as any host. A seed whose
// origin is on its host sends the content about once.
func TestSeedOwnUplinkTakesNewChildren(t *testing.T) {
	for _, own := range []bool{false, true} {
		t.Run(fmt.Sprint("own=", own), func(t *testing.T) {
			v := pipelineVirtual(t, func(c *Config) { c.PacedShares = false })
			v.fetcher("t", "seed", own, capHost("seed", 100, true))
			a := v.join("t", "a", capHost("a", 100, false))
			if got := a.parents(); !slices.Equal(got, []string{"seed"}) {
				t.Fatalf("a's parents %v, want [seed]", got)
			}
			a.pieces(piecesFrom("seed", topUpPieces)...)
			a.finish()
			seedKids := 0
			for _, id := range []string{"b", "c"} {
				if got := v.join("t", id, capHost(id, 100, false)).parents(); slices.Contains(got, "seed") {
					seedKids++
				}
			}
			if own && seedKids != 1 {
				t.Errorf("a seed with its own uplink took %d new children after its first was done, want 1", seedKids)
			}
			if !own && seedKids != 0 {
				t.Errorf("a seed on the origin's host took %d new children after it sent the content once", seedKids)
			}
			v.invariants()
		})
	}
}

// A downlink the link tests measured is a lower bound: a paced receiver is
// given shares for the task's fluid rate, not for what its partner pushed
// into it. A declared downlink still caps.
func TestLinkTestedDownlinkCapsNothing(t *testing.T) {
	for _, declared := range []bool{false, true} {
		t.Run(fmt.Sprint("declared=", declared), func(t *testing.T) {
			v := pipelineVirtual(t, nil)
			v.fetcher("t", "src", false, capHost("src", 100, false))
			for _, id := range []string{"a", "b", "c"} {
				v.join("t", id, capHost(id, 100, false)).parents()
			}
			h := &schedulerv1.Host{Id: "host-m", Hostname: "m", Ip: "127.0.0.1", PeerPort: 65000, UploadPort: 65002,
				LinkUploadBps: int64(10 * mbps), LinkDownloadBps: int64(30 * mbps)}
			if declared {
				h.DownloadBps = int64(30 * mbps)
			}
			v.join("t", "m", withHost(h)).decision()
			v.s.mu.Lock()
			defer v.s.mu.Unlock()
			m := v.s.tasks[tid("t")].peers["m"]
			fluid := m.task.fluid
			if fluid <= 30*mbps {
				t.Fatalf("fluid rate %.1f Mbit/s: the test needs it above m's 30", fluid/mbps)
			}
			want := v.s.pacedWant(m)
			switch {
			case declared && want != 30*mbps:
				t.Errorf("declared 30 Mbit/s downlink: paced want %.1f Mbit/s, want 30", want/mbps)
			case !declared && want != fluid:
				t.Errorf("measured downlink of 30 Mbit/s (a lower bound): paced want %.1f Mbit/s, want the fluid rate %.1f", want/mbps, fluid/mbps)
			}
		})
	}
}

// A full-rate parent that feeds several children was given them for an
// uplink that feeds them all: its children are not short of their rate for
// its uplink over their number. (A 10 Gbit/s seed whose link tests say 1,
// probed to ten children at 10,000 simulated hosts, looked like ten short
// children, and top-ups drawn from the pipelines' tails slowed the last
// host from 0.81 to 0.78 of the bound.)
func TestTopUpNotForChildrenOfSharedUplink(t *testing.T) {
	v := pipelineVirtual(t, nil)
	seed := &schedulerv1.Host{Id: "host-seed", Hostname: "seed", Ip: "127.0.0.1", PeerPort: 65000, UploadPort: 65002,
		Seed: true, LinkUploadBps: int64(100 * mbps)}
	v.fetcher("t", "seed", true, withHost(seed))
	for _, id := range []string{"a", "b", "c"} {
		v.join("t", id, capHost(id, 100, false)).parents()
	}
	f := v.join("t", "f", capHost("f", 100, false))
	f.parents()
	f.pieces(piecesFrom("seed", topUpPieces)...)
	f.finish()
	v.rewire("t", [2]string{"seed", "a"}, [2]string{"seed", "b"}, [2]string{"seed", "c"})
	v.runTopUps("t")
	for _, id := range []string{"a", "b", "c"} {
		if got := v.topUps("t", id); len(got) > 0 {
			t.Errorf("%s, one of the seed's three full-rate children, topped up: %v", id, got)
		}
	}
}

// A receiver left short whose only spare is its own uplink takes over part
// of another receiver's paced share and gives that receiver the same from
// its own uplink: on the harness's mixed at N = 16, the last slow host to
// register was booked 0.85 of the fluid rate while its own uplink idled
// for the whole download. No swap when the short receiver holds nothing
// the other lacks.
func TestShortReceiverSwapsForItsOwnUplink(t *testing.T) {
	for _, tc := range []struct {
		name  string
		pHeld uint32 // p holds pieces 0..pHeld-1; q holds 0 and 1
		swap  bool
	}{
		{"p ahead of q", 10, true},
		{"p level with q", 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// q, with spare, holds nothing p lacks.
			v, tk, d, q, p := bookedDonor(t, 100, 10, false)
			for n := range uint32(20) {
				d.pieces.set(n)
			}
			q.pieces.set(0)
			q.pieces.set(1)
			for n := range tc.pHeld {
				p.pieces.set(n)
			}
			fluid := tk.fluid / mbps
			pIn := v.s.inflow(p, v.now) / mbps
			v.s.mu.Unlock()
			if fluid < 55 || fluid > 65 {
				t.Fatalf("fluid rate %.1f Mbit/s, want about 60 (the test's premise)", fluid)
			}
			if pIn > 41 {
				t.Fatalf("p takes %.1f Mbit/s before the top-ups, want 40", pIn)
			}
			v.runTopUps("t")
			v.s.mu.Lock()
			defer v.s.mu.Unlock()
			gotP, gotQ := v.s.inflow(p, v.now)/mbps, v.s.inflow(q, v.now)/mbps
			if tc.swap {
				if gotP < 48 {
					t.Errorf("p takes %.1f Mbit/s after the top-ups, want about 50 (40 + its own uplink's worth from d)", gotP)
				}
				if gotQ < 59.9 || gotQ > 60.1 {
					t.Errorf("q takes %.1f Mbit/s after the swap, want the 60 it had", gotQ)
				}
				if !isParent(q, p) || p.topBooked < 8*mbps {
					t.Errorf("q's parents %v, p's top-ups %.1f Mbit/s: want p to give q about 10", v.parentsLockedIDs(q), p.topBooked/mbps)
				}
			} else if gotP > 40.1 || isParent(q, p) {
				t.Errorf("p, holding only what q holds, was swapped in: p takes %.1f Mbit/s, q's parents %v", gotP, v.parentsLockedIDs(q))
			}
			checkMovedShares(t, v, tk, d)
		})
	}
}

// parentsLockedIDs is parentsOf for a caller that holds the lock.
func (v *vsched) parentsLockedIDs(p *peer) []string {
	var ids []string
	for _, l := range p.parents {
		ids = append(ids, l.peer.id)
	}
	return ids
}

// Receivers that every spare share leaves short even out: one short by
// 20 Mbit/s takes half the difference from a paced receiver far enough
// ahead of it, from their common donor. On the harness's mixed at N = 16
// the last slow host to register was booked 0.75–0.85 of the fluid rate
// while the paced receivers before it had all of it, and it finished
// 2–4 s after the others. Nothing moves towards a receiver about level.
func TestShortReceiversLevelled(t *testing.T) {
	for _, tc := range []struct {
		name  string
		qHeld uint32 // q holds pieces 0..qHeld-1; p holds 0 and 1
		level bool
	}{
		{"q ahead", 2 + topUpAhead, true},
		{"q about level", 2 + topUpAhead - 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// q's uplink (1 Mbit/s) has no spare worth a share, so
			// only the levelling can move anything towards p.
			v, tk, d, q, p := bookedDonor(t, 1, 10, false)
			holdPieces(d, q, p, tc.qHeld)
			v.s.mu.Unlock()
			v.runTopUps("t")
			v.s.mu.Lock()
			defer v.s.mu.Unlock()
			gotP, gotQ := v.s.inflow(p, v.now)/mbps, v.s.inflow(q, v.now)/mbps
			// (src's few Mbit/s of spare top p up first.)
			if tc.level {
				if gotQ > 59 || gotP-gotQ > 0.1 || gotQ-gotP > 0.1 {
					t.Errorf("after levelling p takes %.1f and q %.1f Mbit/s, want them equal (p had 40 and q 60)", gotP, gotQ)
				}
			} else if gotQ < 59.9 {
				t.Errorf("q, about level with p, gave it part of its share: p %.1f, q %.1f Mbit/s", gotP, gotQ)
			}
			if isParent(q, p) {
				t.Errorf("p, holding nothing q lacks, became q's parent: %v", v.parentsLockedIDs(q))
			}
			checkMovedShares(t, v, tk, d)
		})
	}
}

// Receivers are levelled when no uplink has spare left at all, not only
// after the top-ups spent it: in the simulator's mixed with the seed on the
// origin's host, a slow host booked 0.81 of the fluid rate from the first
// second kept it for the whole download (nobody had spare, so the tick's
// top-ups stopped before the levelling) and finished 4 s after the
// others.
func TestShortReceiversLevelledWithoutSpare(t *testing.T) {
	v, tk, d, q, p := bookedDonor(t, 1, 1, true)
	holdPieces(d, q, p, 2+topUpAhead)
	for _, c := range tk.list {
		if v.s.spare(c, v.now)-c.topBooked >= minPacedShare*tk.fluid && !sharedSeed(c) {
			t.Fatalf("%s has %.1f Mbit/s of spare: the test wants none", c.id, (v.s.spare(c, v.now)-c.topBooked)/mbps)
		}
	}
	runTopUpsTo50(t, v, p, q, 0.1, "p had 40 and q 60")
	defer v.s.mu.Unlock()
	checkMovedShares(t, v, tk, d)
}

// bookedDonor builds src (60 Mbit/s, done, no spare) feeding d (100 up) at
// the rate, d's uplink booked whole to q (60, its downlink) and p (a slow
// host: pUp up, 100 down, short), q's uplink qUp; it returns with the
// scheduler's lock held. With seed, src is a seed peer on the origin's
// host, which gives no top-ups (sharedSeed).
func bookedDonor(t *testing.T, qUp, pUp float64, seed bool) (v *vsched, tk *task, d, q, p *peer) {
	t.Helper()
	v = pipelineVirtual(t, nil)
	v.fetcher("t", "src", false, capHost("src", 60, seed))
	ups := map[string][2]float64{"d": {100, 100}, "q": {qUp, 60}, "p": {pUp, 100}}
	for _, id := range []string{"d", "q", "p"} {
		v.join("t", id, capHost2(id, ups[id][0], ups[id][1])).parents()
	}
	v.rewire("t", [2]string{"src", "d"})
	v.s.mu.Lock()
	tk = v.s.tasks[tid("t")]
	d, q, p = tk.peers["d"], tk.peers["q"], tk.peers["p"]
	for _, c := range []*peer{q, p} {
		v.s.dropParentsLocked(c)
		c.crowded = false // rewired by hand
	}
	if !v.s.linkShareLocked(d, q, 60*mbps) || !v.s.linkShareLocked(d, p, 40*mbps) {
		v.s.mu.Unlock()
		t.Fatal("cannot book d's shares")
	}
	return v, tk, d, q, p
}

// runTopUpsTo50 runs the tick's top-ups of bookedDonor's task (the caller
// holds the lock, and holds it again after) and checks that p and q then
// take 50 Mbit/s each, within tol; had says what they took before.
func runTopUpsTo50(t *testing.T, v *vsched, p, q *peer, tol float64, had string) {
	t.Helper()
	v.s.mu.Unlock()
	v.runTopUps("t")
	v.s.mu.Lock()
	gotP, gotQ := v.s.inflow(p, v.now)/mbps, v.s.inflow(q, v.now)/mbps
	if gotP < 50-tol || gotQ > 50+tol {
		t.Errorf("p takes %.2f and q %.2f Mbit/s, want 50 each (%s)", gotP, gotQ, had)
	}
}

// holdPieces gives bookedDonor's peers their pieces: d holds 20, q the
// first qHeld and p the first two.
func holdPieces(d, q, p *peer, qHeld uint32) {
	for n := range uint32(20) {
		d.pieces.set(n)
	}
	for n := range qHeld {
		q.pieces.set(n)
	}
	p.pieces.set(0)
	p.pieces.set(1)
}

// checkMovedShares checks the books after shares moved between receivers:
// d still books the 100 Mbit/s it did, and the graph and every host's
// paced bookings are consistent. The caller holds the lock.
func checkMovedShares(t *testing.T, v *vsched, tk *task, d *peer) {
	t.Helper()
	if b := d.booked / mbps; b < 99.9 || b > 100.1 {
		t.Errorf("d books %.1f Mbit/s after the top-ups, want the 100 it booked", b)
	}
	if err := checkInvariants(v.s); err != nil {
		t.Error(err)
	}
	for _, c := range tk.list {
		checkPaced(t, v.s, c)
	}
}

// tailOf25 builds, for the tests of slow leaves below a pipeline's tail,
// src (25 Mbit/s, its own uplink, done) and the hosts ids in order, each
// with its uplink in Mbit/s from ups, and returns them by ID.
func tailOf25(t *testing.T, ids []string, ups []float64) (*vsched, map[string]*vpeer) {
	t.Helper()
	v := pipelineVirtual(t, nil)
	v.fetcher("t", "src", true, capHost("src", 25, false))
	ps := map[string]*vpeer{}
	for i, id := range ids {
		ps[id] = v.join("t", id, capHost(id, ups[i], false))
		ps[id].parents()
	}
	return v, ps
}

// checkTopUpToFluid checks that id was topped up, and that its slot and its
// top-ups do not sum to more than the fluid rate.
func checkTopUpToFluid(t *testing.T, v *vsched, id string, slot, fluid float64) {
	t.Helper()
	got := v.topUps("t", id)
	if len(got) == 0 {
		t.Errorf("%s, at a slot of %.0f B/s against a fluid rate of %.0f, was not topped up", id, slot, fluid)
		return
	}
	sum := 0.0
	for _, mb := range got {
		sum += mb * mbps
	}
	if in := slot + sum; in > 1.01*fluid {
		t.Errorf("%s: its slot %.0f B/s and top-ups %v Mbit/s sum to %.0f, above the fluid rate %.0f", id, slot, got, in, fluid)
	}
}

// A crowded slow leaf below a host that feeds only leaves (the pipeline's
// tail, slower than the fluid rate) holds back no pipeline: when paced
// parents give it no more than its slot, it is topped up from the spare
// there is, like any receiver short of the fluid rate. Left out of the
// top-ups, crowded slow leaves of the simulator's spread kept slots below
// the fluid rate while spare went unused (T*/T_last 0.88, 0.92-0.93 with
// them).
func TestTopUpForCrowdedLeafOfTail(t *testing.T) {
	v, ps := tailOf25(t, []string{"a", "b", "c", "s1", "s2"}, []float64{25, 25, 12, 2.5, 2.5})
	ps["a"].pieces(piecesFrom("src", 12)...)
	ps["b"].pieces(piecesFrom("a", 12)...)
	v.rewire("t", [2]string{"src", "a"}, [2]string{"a", "b"}, [2]string{"b", "c"}, [2]string{"c", "s1"})
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t")]
	s1 := tk.peers["s1"]
	v.s.crowdLocked(s1) // as the tick finds it: its slot is below the fluid rate
	fluid, slot := tk.fluid, v.s.slotRate(tk.peers["c"], v.now)
	v.s.mu.Unlock()
	if slot >= 0.9*fluid {
		t.Fatalf("c's slot %.0f B/s is not below the fluid rate %.0f", slot, fluid)
	}
	v.runTopUps("t")
	checkTopUpToFluid(t, v, "s1", slot, fluid)
	v.s.mu.Lock()
	for _, p := range tk.list {
		checkPaced(t, v.s, p)
	}
	v.s.mu.Unlock()
	v.invariants()
}

// Slow leaves that split the uplink of a pipeline's tail each get their
// share of it, not the task's rate, so they are short of the fluid rate
// and topped up from the spare there is. Counted at the rate, two slow
// leaves of the simulator's mixed with the seed on the origin's host got
// 12.5 Mbit/s each for 20 s against a fluid rate of 20.8, while 12 Mbit/s
// of spare idled (T*/T_last 0.76; 0.90 with them topped up).
func TestTopUpForSlowLeavesSplittingTail(t *testing.T) {
	v, ps := tailOf25(t, []string{"a", "b", "s1", "s2"}, []float64{25, 25, 2.5, 2.5})
	ps["a"].pieces(piecesFrom("src", 12)...)
	v.rewire("t", [2]string{"src", "a"}, [2]string{"a", "b"}, [2]string{"b", "s1"}, [2]string{"b", "s2"})
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t")]
	v.s.crowdLocked(tk.peers["s1"]) // as the tick finds them: they split b's uplink
	v.s.crowdLocked(tk.peers["s2"])
	fluid, slot := tk.fluid, v.s.uplink(tk.peers["b"].host, v.now)/2
	v.s.mu.Unlock()
	if slot >= 0.9*fluid {
		t.Fatalf("half of b's uplink, %.0f B/s, is not below the fluid rate %.0f", slot, fluid)
	}
	v.runTopUps("t")
	for _, id := range []string{"s1", "s2"} {
		checkTopUpToFluid(t, v, id, slot, fluid)
	}
	v.s.mu.Lock()
	for _, p := range tk.list {
		checkPaced(t, v.s, p)
	}
	v.s.mu.Unlock()
	v.invariants()
}

// A short receiver's paced shares grow by the spare their donors have left
// below the floor of a new share, with maxPacedParents parents too: in the
// simulator's mixed at N = 32 with the seed on the origin's host, fourteen
// relays each kept a fragment just under the floor while the three slow
// receivers they fed were short, one of them with all sixteen parents, and
// the last finished 5 s after the others.
func TestShortSharesGrowBySpareFragments(t *testing.T) {
	for _, fillers := range []int{0, maxPacedParents - 1} {
		t.Run(fmt.Sprintf("%d other parents", fillers), func(t *testing.T) {
			v, tk, d, q, p := bookedDonor(t, 1, 1, true)
			fill := make([]*vpeer, fillers)
			v.s.mu.Unlock()
			for i := range fill {
				id := fmt.Sprintf("f%d", i)
				fill[i] = v.join("t", id, capHost(id, 0.5, false))
				fill[i].parents()
				fill[i].finish()
			}
			v.s.mu.Lock()
			for i := range fill {
				f := tk.peers[fmt.Sprintf("f%d", i)]
				if !v.s.linkShareLocked(f, p, 0.5*mbps) {
					v.s.mu.Unlock()
					t.Fatalf("cannot book %s's share to p", f.id)
				}
			}
			// d keeps 1 Mbit/s: p's share from it is 39, not 40.
			j := parentIndex(p, d)
			p.parents[j].share -= mbps
			d.addBooking(false, -mbps)
			// q and p level: no levelling between them.
			for n := range uint32(20) {
				d.pieces.set(n)
			}
			p.pieces.set(0)
			q.pieces.set(0)
			v.s.updateRateLocked(tk, v.now)
			floor := minPacedShare * tk.fluid
			sp := v.s.spare(d, v.now) - d.topBooked
			if sp >= floor || sp < growStep*floor {
				v.s.mu.Unlock()
				t.Fatalf("d's spare is %.2f Mbit/s against a floor of %.2f: the test wants a fragment below it", sp/mbps, floor/mbps)
			}
			before, in := len(p.parents), v.s.inflow(p, v.now)
			if min(v.s.topUpDownlink(p), tk.fluid)-in < sp {
				v.s.mu.Unlock()
				t.Fatalf("p takes %.1f Mbit/s against a fluid rate of %.1f: the test wants it short", in/mbps, tk.fluid/mbps)
			}
			v.s.mu.Unlock()
			v.runTopUps("t")
			v.s.mu.Lock()
			defer v.s.mu.Unlock()
			if got := p.parents[parentIndex(p, d)].share / mbps; got < 39.99 || got > 40.01 {
				t.Errorf("p's share from d is %.2f Mbit/s, want 40: the 1 Mbit/s d had left", got)
			}
			if len(p.parents) != before {
				t.Errorf("p has %d parents, had %d: growing a share adds none", len(p.parents), before)
			}
			checkMovedShares(t, v, tk, d)
		})
	}
}

// Two receivers of one donor are levelled by less than the floor of a new
// share: p's share from it grows, adding no parent.
func TestShortReceiversLevelledBySmallSteps(t *testing.T) {
	v, tk, d, q, p := bookedDonor(t, 1, 1, true)
	floor := minPacedShare * tk.fluid
	x := 0.6 * floor // half the difference: under the floor, over growStep of it
	jq, jp := parentIndex(q, d), parentIndex(p, d)
	q.parents[jq].share = 50*mbps + x
	p.parents[jp].share = 50*mbps - x
	holdPieces(d, q, p, 2+topUpAhead)
	if min(v.s.topUpDownlink(p), tk.fluid)-v.s.inflow(p, v.now) < x {
		v.s.mu.Unlock()
		t.Fatalf("p takes %.1f Mbit/s against a fluid rate of %.1f: the test wants it short", v.s.inflow(p, v.now)/mbps, tk.fluid/mbps)
	}
	runTopUpsTo50(t, v, p, q, 0.01, fmt.Sprintf("p had %.2f and q %.2f", 50-x/mbps, 50+x/mbps))
	defer v.s.mu.Unlock()
	if len(p.parents) != 1 {
		t.Errorf("p has parents %v, want d alone", v.parentsLockedIDs(p))
	}
	checkMovedShares(t, v, tk, d)
}

// The swaps give from what the growth left: a receiver whose own uplink's
// spare went to another receiver's share that tick does not give it again
// in a swap. (Counted from the spare the tick began with, p's 20 Mbit/s
// uplink was booked 25.5.)
func TestSwapAfterGrowthKeepsUplinkBooks(t *testing.T) {
	v, tk, d, _, p := bookedDonor(t, 1, 20, true)
	v.s.mu.Unlock()
	v.join("t", "r", capHost2("r", 1, 100)).parents()
	v.s.mu.Lock()
	r := tk.peers["r"]
	v.s.dropParentsLocked(r)
	r.crowded = false
	if !v.s.linkShareLocked(p, r, 10*mbps) {
		v.s.mu.Unlock()
		t.Fatal("cannot book p's share to r")
	}
	for n := range uint32(20) {
		d.pieces.set(n)
	}
	for n := range uint32(10) {
		p.pieces.set(n)
	}
	v.s.updateRateLocked(tk, v.now)
	if sp := v.s.spare(p, v.now); sp < minPacedShare*tk.fluid {
		v.s.mu.Unlock()
		t.Fatalf("p's uplink has %.1f Mbit/s of spare: the test wants some", sp/mbps)
	}
	v.s.mu.Unlock()
	v.runTopUps("t")
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	if got := r.parents[parentIndex(r, p)].share / mbps; got < 19.9 {
		t.Errorf("r's share from p is %.1f Mbit/s, want p's whole 20 (grown)", got)
	}
	for _, c := range tk.list {
		checkPaced(t, v.s, c)
	}
	if err := checkInvariants(v.s); err != nil {
		t.Error(err)
	}
}

// levelParents builds src (20 Mbit/s, done) feeding a and b (10 Mbit/s
// up each, downloading) at the full rate, and p (10 up, 100 down) fed
// only by paced shares of half the fluid rate from a and from b. It
// returns with the scheduler's lock held.
func levelParents(t *testing.T) (v *vsched, tk *task, a, b, p *peer) {
	t.Helper()
	v = pipelineVirtual(t, nil)
	v.fetcher("t", "src", true, capHost("src", 20, false))
	for _, id := range []string{"a", "b", "p"} {
		v.join("t", id, capHost2(id, 10, 100)).parents()
	}
	v.rewire("t", [2]string{"src", "a"}, [2]string{"src", "b"})
	v.s.mu.Lock()
	tk = v.s.tasks[tid("t")]
	a, b, p = tk.peers["a"], tk.peers["b"], tk.peers["p"]
	v.s.dropParentsLocked(p)
	p.crowded = false // rewired by hand
	if tk.fluid <= 0 {
		v.s.mu.Unlock()
		t.Fatal("no fluid rate")
	}
	if !v.s.linkShareLocked(a, p, tk.fluid/2) || !v.s.linkShareLocked(b, p, tk.fluid/2) {
		v.s.mu.Unlock()
		t.Fatal("cannot book p's shares")
	}
	return v, tk, a, b, p
}

// deliver has p report fromA pieces got from a and fromB from b (pieces
// numbered apart), moves the clock on by secs, and runs the settling of
// p's shares there. The caller holds the lock.
func deliver(v *vsched, tk *task, p *peer, fromA, fromB uint32, secs float64) {
	var rs []*schedulerv1.PieceResult
	for n := range fromA + fromB {
		r := originPiece(n)
		r.Digest, r.ParentId = nil, "a"
		if n >= fromA {
			r.ParentId = "b"
		}
		rs = append(rs, r)
	}
	v.s.onPiecesLocked(p, &schedulerv1.PiecesDone{Pieces: rs}, v.now)
	v.now = v.now.Add(time.Duration(secs * float64(time.Second)))
	v.s.settleSharesLocked(tk, v.now)
}

// A downloading paced parent that delivers next to nothing of its share,
// while the receiver's other parent delivers, has its share halved: the
// receiver is short by its books then, and the top-ups that run next look
// for more for it. On the simulator's spread over 12.5-25 Mbit/s at
// N = 32, two slow receivers booked at the fluid rate got 59 % of it from
// such parents and finished 7 s after the others (T*/T_last 0.74; 0.89
// with the rule).
func TestSettleShareOfLevelParent(t *testing.T) {
	v, tk, a, b, p := levelParents(t)
	defer v.s.mu.Unlock()
	half := tk.fluid / 2
	// b delivers about its share, a nothing, over a window long enough
	// for both to bring several pieces.
	secs := 8 * float64(tk.pieceSize) / half
	deliver(v, tk, p, 0, 8, secs)
	if got := p.parents[parentIndex(p, a)].share; got > half*0.51 || got < half*0.49 {
		t.Errorf("a delivered nothing of its %.2f Mbit/s: share now %.2f, want it halved", half/mbps, got/mbps)
	}
	if got := p.parents[parentIndex(p, b)].share; got != half {
		t.Errorf("b delivered its share: share now %.2f Mbit/s, want %.2f", got/mbps, half/mbps)
	}
	if got := a.booked; got > half*0.51 {
		t.Errorf("a still books %.2f Mbit/s for p", got/mbps)
	}
	if in := v.s.inflow(p, v.now); in > 0.76*tk.fluid {
		t.Errorf("p's inflow %.2f Mbit/s of a fluid rate of %.2f: not short by its books", in/mbps, tk.fluid/mbps)
	}
	checkPaced(t, v.s, a)
	checkPaced(t, v.s, b)
}

// What does not cut a share: a receiver whose parents all deliver the
// same part of their shares (held back by its own downlink, not by one
// parent), a receiver that takes in what it can, a parent that holds
// pieces the receiver lacks (it is not level with it: what held it back
// passes), and a window too short to judge.
func TestSettleShareKeeps(t *testing.T) {
	for _, tc := range []struct {
		name         string
		fromA, fromB uint32
		window       float64 // in the time b's share takes to bring one piece
		aAhead       bool    // a holds pieces 16-31, which p lacks
	}{
		{"both parents alike", 2, 2, 8, false},
		{"receiver not short", 0, 32, 8, false},
		{"parent not level", 0, 8, 8, true},
		{"window too short", 0, 2, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, tk, a, b, p := levelParents(t)
			defer v.s.mu.Unlock()
			if tc.aAhead {
				for n := uint32(16); n < topUpPieces; n++ {
					a.pieces.set(n)
				}
			}
			half := tk.fluid / 2
			secs := tc.window * float64(tk.pieceSize) / half
			if tc.name == "receiver not short" {
				// 32 pieces at 0.9 of the fluid rate.
				secs = 32 * float64(tk.pieceSize) / (0.9 * tk.fluid)
				if secs < shareWindow.Seconds() {
					t.Fatalf("window %.1f s shorter than shareWindow: the case tests nothing", secs)
				}
			}
			deliver(v, tk, p, tc.fromA, tc.fromB, secs)
			for _, par := range []*peer{a, b} {
				if got := p.parents[parentIndex(p, par)].share; got != half {
					t.Errorf("share from %s is %.2f Mbit/s, want %.2f kept", par.id, got/mbps, half/mbps)
				}
			}
		})
	}
}
