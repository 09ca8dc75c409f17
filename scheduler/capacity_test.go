package scheduler

import (
	"fmt"
	"math"
	mrand "math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
)

const mbps = 1e6 / 8 // bytes/s in one Mbit/s

// capHost is a host declaring its upload capacity in Mbit/s.
func capHost(id string, upMbps float64, seed bool) regOpt {
	return withHost(&schedulerv1.Host{Id: "host-" + id, Hostname: id, Ip: "127.0.0.1", PeerPort: 65000, UploadPort: 65002,
		UploadBps: int64(upMbps * mbps), Seed: seed})
}

// capHost2 declares both directions.
func capHost2(id string, upMbps, downMbps float64) regOpt {
	return withHost(&schedulerv1.Host{Id: "host-" + id, Hostname: id, Ip: "127.0.0.1", PeerPort: 65000, UploadPort: 65002,
		UploadBps: int64(upMbps * mbps), DownloadBps: int64(downMbps * mbps)})
}

// source makes id the task's fetcher, done with all 4 pieces. Its origin
// answered on its host (TaskMeta.origin_on_host): a seed host's peer then
// shares the origin's uplink (sharedSeed).
func (v *vsched) source(task, id string, opts ...regOpt) *vpeer {
	return v.sourceAs(task, id, true, opts...)
}

// sourceOwn is source with the origin on another host: a seed host's peer
// has an uplink of its own.
func (v *vsched) sourceOwn(task, id string, opts ...regOpt) *vpeer {
	return v.sourceAs(task, id, false, opts...)
}

func (v *vsched) sourceAs(task, id string, originOnHost bool, opts ...regOpt) *vpeer {
	v.t.Helper()
	p := v.join(task, id, opts...)
	if d := p.decision(); d.GetBackToSource() == nil {
		v.t.Fatalf("%s: want back to source, got %v", id, d)
	}
	if originOnHost {
		p.meta(4<<18, 1<<18)
	} else {
		p.metaOwnUplink(4<<18, 1<<18)
	}
	p.pieces(originPiece(0), originPiece(1), originPiece(2), originPiece(3))
	p.handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: 4 << 18}}})
	return p
}

// children returns the IDs of id's children in task.
func (v *vsched) children(task, id string) []string {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	var ids []string
	for _, c := range v.s.tasks[tid(task)].peers[id].children {
		ids = append(ids, c.id)
	}
	slices.Sort(ids)
	return ids
}

func (v *vsched) invariants() {
	v.t.Helper()
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	if err := checkInvariants(v.s); err != nil {
		v.t.Fatal(err)
	}
}

// A host whose uplink is four times the task's rate serves four children;
// with capacity ignored it serves MaxChildren (one).
func TestCapacityFastHostServesSeveral(t *testing.T) {
	for _, aware := range []bool{true, false} {
		v := pipelineVirtual(t, func(c *Config) { c.CapacityAware = aware })
		v.source("t", "src", capHost("src", 400, false))
		for _, id := range []string{"a", "b", "c", "d", "e"} {
			v.join("t", id, capHost(id, 100, false)).parents()
		}
		want := 4
		if !aware {
			want = 1
		}
		if got := v.children("t", "src"); len(got) != want {
			t.Errorf("capacity_aware %v: src serves %v, want %d children", aware, got, want)
		}
		v.invariants()
	}
}

// A slow uplink (or a slow downlink: a relay passes pieces on no faster
// than it gets them) is not placed above a fast one: a fast newcomer takes
// the slow leaf's place and the slow host hangs below it.
func TestCapacitySlowHostAtLeaf(t *testing.T) {
	for _, c := range []struct {
		aware bool
		slow  regOpt
	}{{true, capHost("s", 10, false)}, {true, capHost2("s", 100, 10)}, {false, capHost("s", 10, false)}} {
		aware := c.aware
		v := pipelineVirtual(t, func(c *Config) { c.CapacityAware = aware })
		v.source("t", "src", capHost("src", 100, false))
		s := v.join("t", "s", c.slow)
		if got := s.parents(); !slices.Equal(got, []string{"src"}) {
			t.Fatalf("s parents %v", got)
		}
		f := v.join("t", "f", capHost("f", 100, false))
		got := f.parents()
		if !aware {
			if !slices.Equal(got, []string{"s"}) {
				t.Fatalf("without capacity: f parents %v, want [s] (the chain's tail)", got)
			}
			continue
		}
		if !slices.Equal(got, []string{"src"}) {
			t.Fatalf("f parents %v, want [src]: the slow leaf's place", got)
		}
		if got := s.parents(); !slices.Equal(got, []string{"f"}) {
			t.Fatalf("s parents %v, want [f]: below the fast newcomer", got)
		}
		// The next fast host takes the slow leaf's place again.
		g := v.join("t", "g", capHost("g", 100, false))
		if got := g.parents(); !slices.Equal(got, []string{"f"}) {
			t.Fatalf("g parents %v, want [f]", got)
		}
		if got := s.parents(); !slices.Equal(got, []string{"g"}) {
			t.Fatalf("s parents %v, want [g]", got)
		}
		v.invariants()
	}
}

// When every parent is full, a newcomer splits an uplink that feeds only
// leaves rather than one that feeds a whole pipeline (without paced
// shares; with them see TestPacedSharesForLastReceivers).
func TestCapacitySplitOnlyAboveLeaves(t *testing.T) {
	for _, aware := range []bool{true, false} {
		v := pipelineVirtual(t, func(c *Config) { c.CapacityAware, c.PacedShares = aware, false })
		v.source("t", "src", capHost("src", 100, false))
		prev := "src"
		for _, id := range []string{"a", "b", "c"} {
			if got := v.join("t", id, capHost(id, 100, false)).parents(); !slices.Equal(got, []string{prev}) {
				t.Fatalf("%s parents %v, want [%s]", id, got, prev)
			}
			prev = id
		}
		// Two slow hosts: the first hangs below the tail, the second finds
		// no free slot anywhere.
		s1 := v.join("t", "s1", capHost("s1", 10, false))
		s1.parents()
		s2 := v.join("t", "s2", capHost("s2", 10, false))
		got := s2.parents()
		if !aware {
			continue // any full host, the pipeline's head included
		}
		if !slices.Equal(got, []string{"c"}) {
			t.Fatalf("s2 parents %v, want [c]: only leaves below, and a share of a fast uplink", got)
		}
		v.invariants()
		// A fast newcomer takes both slow leaves' place: c feeds it alone,
		// and both hang below it.
		if got := v.join("t", "f", capHost("f", 100, false)).parents(); !slices.Equal(got, []string{"c"}) {
			t.Fatalf("f parents %v, want [c]", got)
		}
		for _, s := range []*vpeer{s1, s2} {
			if got := s.parents(); !slices.Equal(got, []string{"f"}) {
				t.Fatalf("%s parents %v, want [f]", s.id, got)
			}
		}
		if got := v.children("t", "c"); !slices.Equal(got, []string{"f"}) {
			t.Fatalf("c children %v, want [f]", got)
		}
		v.invariants()
	}
}

// A seed host, whose uplink may be the origin's, serves one child when its
// capacity is unknown, even where children are otherwise unbounded, and is
// not the host that newcomers split when everyone is full.
func TestCapacitySeedNotOverused(t *testing.T) {
	seedJoin := func(v *vsched) {
		seed := v.join("t", "seed", withHost(&schedulerv1.Host{Id: "host-seed", Seed: true}), seedRequest())
		if d := seed.decision(); d.GetBackToSource() == nil {
			t.Fatalf("seed: %v", d)
		}
		seed.meta(4<<18, 1<<18)
		seed.pieces(originPiece(0), originPiece(1))
	}
	for _, aware := range []bool{true, false} {
		// Children unbounded by config.
		v := newVirtual(t, func(c *Config) {
			c.MaxParents, c.MaxChildren, c.PipelineParents, c.CapacityAware = 1, 0, true, aware
		})
		seedJoin(v)
		for _, id := range []string{"a", "b", "c"} {
			v.join("t", id, noBackSource()).decision()
		}
		n := len(v.children("t", "seed"))
		if aware && n != 1 {
			t.Errorf("seed serves %d children, want 1", n)
		}
		if !aware && n < 2 {
			t.Errorf("without capacity rules the seed serves %d children; the test shows nothing", n)
		}
		v.invariants()

		// The pipeline defaults; everyone full (the tail was found slow
		// lately): the newcomer splits a pipeline host's uplink, not the
		// seed's.
		v = pipelineVirtual(t, func(c *Config) { c.CapacityAware = aware })
		seedJoin(v)
		prev := "seed"
		for _, id := range []string{"a", "b", "c"} {
			if got := v.join("t", id).parents(); !slices.Equal(got, []string{prev}) {
				t.Fatalf("%s parents %v, want [%s]", id, got, prev)
			}
			prev = id
		}
		v.s.mu.Lock()
		v.s.hosts["host-c"].slowUntil = v.now.Add(badParentTTL)
		v.s.mu.Unlock()
		got := v.join("t", "d").parents()
		if aware && slices.Contains(got, "seed") {
			t.Errorf("d parents %v: the seed's uplink split", got)
		}
		if !aware && !slices.Contains(got, "seed") {
			t.Errorf("without capacity rules d parents %v; the test shows nothing", got)
		}
		v.invariants()
	}
}

// With no capacity declared anywhere, a host the slow-parent rule measured
// slow is judged against the task's measured rate: it hangs at a leaf, and
// a newcomer takes its place rather than sitting below it.
func TestCapacityMeasuredSlowHostAtLeaf(t *testing.T) {
	v := pipelineVirtual(t, func(c *Config) { c.SlowParentRatio, c.SlowParentSamples = 0.3, 2 })
	ids := []string{"src", "a", "b", "c", "d"}
	ps := v.chain("t1", ids...)
	const piece = 256 << 10
	fast, slow := int64(20e6), int64(400e6)
	for n := range uint32(3) {
		for i, id := range ids[1:] {
			cost := fast
			if id == "c" { // from b: b's uplink is slow
				cost = slow
			}
			ps[id].pieces(&schedulerv1.PieceResult{Number: n, ParentId: ids[i], Length: piece, CostNs: cost})
		}
	}
	v.advance(inputGrace)
	// b was spliced out and hangs at the tail, below d.
	if got := ps["b"].parents(); !slices.Equal(got, []string{"d"}) {
		t.Fatalf("slow b parents %v, want [d]", got)
	}
	e := v.join("t1", "e")
	if got := e.parents(); !slices.Equal(got, []string{"d"}) {
		t.Fatalf("e parents %v, want [d]: the slow leaf's place", got)
	}
	if got := ps["b"].parents(); !slices.Equal(got, []string{"e"}) {
		t.Fatalf("slow b parents %v, want [e]: below the newcomer", got)
	}
	v.invariants()
}

// A peer that had to share an uplink moves, in the same event, to a slot
// that frees up: capacity idle elsewhere is used at once (without paced
// shares, which would not have left it sharing).
func TestCapacityCrowdedPeerRehomedWhenSlotFrees(t *testing.T) {
	v := pipelineVirtual(t, func(c *Config) { c.PacedShares = false })
	v.source("t", "src", capHost("src", 100, false))
	prev := "src"
	ps := map[string]*vpeer{}
	for _, id := range []string{"a", "b", "x"} {
		p := v.join("t", id, capHost(id, 100, false))
		if got := p.parents(); !slices.Equal(got, []string{prev}) {
			t.Fatalf("%s parents %v, want [%s]", id, got, prev)
		}
		ps[id], prev = p, id
	}
	// Two slow hosts: both end up below x, the tail, sharing its uplink.
	for _, id := range []string{"s1", "s2"} {
		ps[id] = v.join("t", id, capHost(id, 10, false))
		if got := ps[id].parents(); !slices.Equal(got, []string{"x"}) {
			t.Fatalf("%s parents %v, want [x]", id, got)
		}
	}
	// x finishes: b's slot is free, and one of them takes it at once.
	x := ps["x"]
	x.pieces(&schedulerv1.PieceResult{Number: 0, ParentId: "b", Length: 1 << 18, CostNs: 1e6})
	x.handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: 4 << 18}}})
	if got := v.children("t", "x"); len(got) != 1 {
		t.Errorf("x still feeds %v with b's slot free", got)
	}
	got := v.children("t", "b")
	if len(got) != 1 || (got[0] != "s1" && got[0] != "s2") {
		t.Fatalf("b children %v, want one slow host", got)
	}
	if p := ps[got[0]].parents(); !slices.Equal(p, []string{"b"}) {
		t.Fatalf("%s was not told its new parent: %v", got[0], p)
	}
	v.invariants()
}

// Whatever the order hosts join in, and with peers leaving among the joins
// (a tick every 20 joins), no slow uplink ends above a fast host, every
// fast host relays to at most one fast host (the pipeline runs at the fast
// rate), and slow hosts do not pile up below one uplink but hang in slow
// branches below the pipeline. Paced children (a booked share of a spare
// uplink, pacedLocked) take no one's rate: they are not counted, but their
// shares must fit the spare (checkPaced).
func TestCapacityRandomJoinOrder(t *testing.T) {
	for _, churn := range []bool{false, true} {
		for seed := range uint64(3) {
			capacityRandomJoins(t, seed, churn)
		}
	}
}

func capacityRandomJoins(t *testing.T, seed uint64, churn bool) {
	v := pipelineVirtual(t, nil)
	v.source("t", "src", capHost("src", 100, false))
	rnd := mrand.New(mrand.NewPCG(seed, 7))
	slow := map[string]bool{}
	var live []*vpeer
	for i := range 200 {
		id := fmt.Sprintf("p%d", i)
		up := 100.0
		if rnd.IntN(4) == 0 {
			up, slow[id] = 10, true
		}
		p := v.join("t", id, capHost(id, up, false))
		if d := p.decision(); d.GetParents() == nil {
			t.Fatalf("seed %d churn %v: %s got %v", seed, churn, id, d)
		}
		live = append(live, p)
		if churn && rnd.IntN(8) == 0 { // a peer leaves
			k := rnd.IntN(len(live))
			live[k].leave()
			live = slices.Delete(live, k, k+1)
		}
		if i%20 == 19 {
			v.advance(time.Second)
		}
	}
	v.s.mu.Lock()
	for _, p := range v.s.tasks[tid("t")].list {
		fast, paced := 0, 0
		for _, c := range p.children {
			if pacedChild(p, c) {
				paced++
			} else if !slow[c.id] {
				fast++
			}
		}
		if slow[p.id] && fast > 0 {
			t.Errorf("seed %d churn %v: slow %s feeds %d fast hosts", seed, churn, p.id, fast)
		}
		// A slow host gets a tenth of the rate from its own uplink: an
		// uplink shared by more than about ten slow hosts gives each less
		// than a slow host of their own would.
		if n := len(p.children) - paced - fast; n > 12 {
			t.Errorf("seed %d churn %v: %s feeds %d slow hosts", seed, churn, p.id, n)
		}
		if fast > 1 {
			t.Errorf("seed %d churn %v: %s splits its uplink over %d fast children", seed, churn, p.id, fast)
		}
		checkPaced(t, v.s, p)
	}
	v.s.mu.Unlock()
	v.invariants()
}

// A fast newcomer does not take a slow leaf's place below a parent that
// also feeds a relay: that parent would split its uplink between two
// relays.
func TestCapacityDisplaceOnlyWhereRoom(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "src", capHost("src", 100, false))
	for _, id := range []string{"a", "c1", "c2", "c3"} {
		v.join("t", id, capHost(id, 100, false)).decision()
	}
	for _, id := range []string{"b", "s1", "s2"} {
		v.join("t", id, capHost(id, 10, false)).decision()
	}
	// The shape last-resort splits can leave: src feeds the relay a and
	// the slow leaf s1; the pipeline a→c1→c2→c3 ends in the slow b, which
	// feeds the slow s2. No fast host feeds only leaves.
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t")]
	for _, p := range tk.list {
		v.s.dropParentsLocked(p)
	}
	for _, e := range [][2]string{{"src", "a"}, {"a", "c1"}, {"c1", "c2"}, {"c2", "c3"}, {"c3", "b"}, {"b", "s2"}, {"src", "s1"}} {
		if !v.s.linkLocked(tk.peers[e[0]], tk.peers[e[1]]) {
			t.Fatalf("link %v refused", e)
		}
	}
	v.s.mu.Unlock()
	v.join("t", "f", capHost("f", 100, false)).decision()
	v.s.mu.Lock()
	par := tk.peers["s1"].parents[0].peer.id
	v.s.mu.Unlock()
	if par != "src" {
		t.Fatalf("s1 moved below %s: src now feeds two relays", par)
	}
	v.invariants()
}

// A slow leaf that was topped up (a paced parent beside its full-rate
// one) is still a slow leaf: a fast newcomer takes its place below the
// tail, and it keeps its top-up. Taken for a relay, it kept the newcomer
// from the tail, and the newcomer split the source's uplink with the
// pipeline's head (the random joins below, once slow leaves were topped
// up).
func TestCapacityDisplaceToppedUpSlowLeaf(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "src", capHost("src", 100, false))
	for _, id := range []string{"a", "b"} {
		v.join("t", id, capHost(id, 100, false)).decision()
	}
	for _, id := range []string{"s1", "s2"} {
		v.join("t", id, capHost(id, 10, false)).decision()
	}
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t")]
	for _, p := range tk.list {
		v.s.dropParentsLocked(p)
	}
	for _, e := range [][2]string{{"src", "a"}, {"a", "b"}, {"b", "s1"}, {"b", "s2"}} {
		if !v.s.linkLocked(tk.peers[e[0]], tk.peers[e[1]]) {
			t.Fatalf("link %v refused", e)
		}
	}
	if !v.s.linkTopUpLocked(tk.peers["a"], tk.peers["s1"], 2*mbps) {
		t.Fatal("top-up a→s1 refused")
	}
	v.s.mu.Unlock()
	v.join("t", "f", capHost("f", 100, false)).decision()
	if got := v.parentsOf("t", "f"); !slices.Equal(got, []string{"b"}) {
		t.Errorf("f's parents %v, want [b] (in the slow leaves' place)", got)
	}
	v.s.mu.Lock()
	for _, id := range []string{"s1", "s2"} {
		// Below f now, or moved on to paced parents (f feeds them both at
		// first, splitting its uplink): no longer b's at the full rate.
		if y := tk.peers[id]; fullParent(y) == tk.peers["b"] {
			t.Errorf("%s is still b's full-rate child", id)
		}
	}
	if n := unpacedChildren(tk.peers["src"]); n != 1 {
		t.Errorf("src feeds %d at the full rate, want 1 (a)", n)
	}
	for _, p := range tk.list {
		checkPaced(t, v.s, p)
	}
	v.s.mu.Unlock()
	v.invariants()
}

// The capacity preferences among full hosts order them, they exclude none:
// when only hosts known to be slow can take a peer (every other would close
// a cycle), it gets one of them rather than waiting.
func TestCapacityPreferencesDoNotExclude(t *testing.T) {
	v := pipelineVirtual(t, func(c *Config) { c.MaxBackToSource = 2 })
	v.join("t", "a").decision()
	ids := []string{"a"}
	for i := 1; i <= 8; i++ {
		id := fmt.Sprintf("p%02d", i)
		if got := v.join("t", id).parents(); !slices.Equal(got, ids[len(ids)-1:]) {
			t.Fatalf("%s parents %v, want [%s]", id, got, ids[len(ids)-1])
		}
		ids = append(ids, id)
	}
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	tk := v.s.tasks[tid("t")]
	// a and p01 were found slow; every other host is fast.
	for i, id := range ids {
		h := tk.peers[id].host
		h.successes, h.throughput = 100, 1e9
		if i < 2 {
			h.throughput, h.slowUntil = 1e6, v.now.Add(badParentTTL)
		}
	}
	// The tail, replaced as slow a while ago, is no free candidate either.
	tk.peers["p08"].host.slowUntil = v.now.Add(badParentTTL)
	v.s.updateRateLocked(tk, v.now)
	p02, p03 := tk.peers["p02"], tk.peers["p03"]
	if !v.s.slowHost(tk.peers["a"], v.now) {
		t.Fatal("a not known slow: the test shows nothing")
	}
	v.s.removeEdge(p02, p03)
	v.s.markBadLocked(p03, p02.id, badFailed, v.now)
	if !v.s.fillParentsLocked(p03, false) {
		t.Fatal("p03 got no parent: only a and p01 could take it, both slow")
	}
	if got := p03.parents[0].peer.id; got != "a" && got != "p01" {
		t.Fatalf("p03 parent %s, want a or p01", got)
	}
	if err := checkInvariants(v.s); err != nil {
		t.Fatal(err)
	}
}

// checkPaced checks p's paced children against its uplink: their shares
// are what p books (pacedKids, booked), and they never exceed (by more than
// trimPacedLocked's 2 %) what its uplink has beside its unpaced children at
// the task's fluid rate (as it was at the booking: pacedFluid).
func checkPaced(t *testing.T, s *Scheduler, p *peer) {
	t.Helper()
	n, sum, top := 0, 0.0, 0.0
	for _, c := range p.children {
		for _, l := range c.parents {
			if l.peer == p && l.share > 0 {
				n++
				sum += l.share
				if l.top {
					top += l.share
				}
			}
		}
	}
	if n != p.pacedKids || math.Abs(sum-top-p.booked) > 1 || math.Abs(top-p.topBooked) > 1 {
		t.Errorf("%s: %d paced children with %.0f B/s booked (%.0f top-ups), but it counts %d and %.0f (%.0f)", p.id, n, sum, top, p.pacedKids, p.booked, p.topBooked)
	}
	if n == 0 {
		return
	}
	u := s.upCapacity(p.host, s.now())
	// trimPacedLocked lets the shares exceed the spare by 2 % before it
	// trims them (the fluid rate moves a little with every join).
	if spare := u - pacedFluid(p)*float64(unpacedChildren(p)); sum > spare*1.02+1 {
		t.Errorf("%s: paced shares %.0f B/s above its spare %.0f (uplink %.0f, %d unpaced children at %.0f)",
			p.id, sum, spare, u, unpacedChildren(p), pacedFluid(p))
	}
}

// The fluid bound with mixed links (docs/architecture.md, "Paced shares"):
// a source and six receivers at 100 Mbit/s and two at 10. A tree gives
// seven full-rate slots for eight receivers; the last receiver gets no
// share of one full uplink (which would halve the rate of the pipeline
// below it) but paced shares of several parents' spare capacity, slow
// hosts' idle uplinks included, that sum to about the fluid rate and never
// exceed what each parent has beside its unpaced child. Its leaving gives
// the shares back.
func TestPacedSharesForLastReceivers(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "src", capHost("src", 100, false))
	prev := "src"
	for _, id := range []string{"a", "b", "c", "d", "e", "f"} {
		if got := v.join("t", id, capHost(id, 100, false)).parents(); !slices.Equal(got, []string{prev}) {
			t.Fatalf("%s parents %v, want [%s]", id, got, prev)
		}
		prev = id
	}
	// The first slow host takes the pipeline's free tail slot.
	if got := v.join("t", "s1", capHost("s1", 10, false)).parents(); !slices.Equal(got, []string{"f"}) {
		t.Fatalf("s1 parents %v, want [f]", got)
	}
	s2 := v.join("t", "s2", capHost("s2", 10, false))
	d := s2.decision()
	ps := d.GetParents().GetParents()
	fluid := 720.0 / 8 * mbps // (100 + 6·100 + 2·10) / 8 receivers
	v.s.mu.Lock()
	if got := v.s.tasks[tid("t")].fluid; math.Abs(got-fluid) > 1 {
		t.Errorf("fluid rate %.0f B/s, want %.0f", got, fluid)
	}
	v.s.mu.Unlock()
	if len(ps) < 2 {
		t.Fatalf("s2 got %d parents (%v): want several paced ones", len(ps), parentIDs(d))
	}
	sum := 0.0
	slowParent := false
	for _, p := range ps {
		if p.GetShareBps() <= 0 {
			t.Fatalf("s2's parent %s unpaced: it would halve its other child's rate", p.GetPeerId())
		}
		if p.GetHost().GetUploadBps() == int64(10*mbps) {
			slowParent = true
		}
		sum += float64(p.GetShareBps())
	}
	if sum < 0.8*fluid || sum > fluid*1.001 {
		t.Errorf("s2's shares sum to %.0f B/s (%v), want about the fluid rate %.0f", sum, ps, fluid)
	}
	if !slowParent {
		t.Errorf("no slow host's idle uplink among s2's parents %v", parentIDs(d))
	}
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t")]
	for _, p := range tk.list {
		checkPaced(t, v.s, p) // no share above its parent's spare
		if unpacedChildren(p) > 1 {
			t.Errorf("%s feeds %d children unpaced", p.id, unpacedChildren(p))
		}
	}
	v.s.mu.Unlock()
	v.invariants()

	// s2 leaves: every share is given back.
	s2.leave()
	v.s.mu.Lock()
	for _, p := range tk.list {
		if p.pacedKids != 0 || p.booked != 0 {
			t.Errorf("%s still books %.0f B/s for %d paced children after s2 left", p.id, p.booked, p.pacedKids)
		}
	}
	if tk.paced != 0 {
		t.Errorf("task counts %d paced edges after s2 left", tk.paced)
	}
	v.s.mu.Unlock()
}

// A paced receiver that loses a parent (it left) keeps the others and is
// topped up from the spare there is: the shares stay booked right.
func TestPacedParentLeavesTopUp(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "src", capHost("src", 100, false))
	vs := map[string]*vpeer{}
	for _, id := range []string{"a", "b", "c", "d", "e", "f", "s1"} {
		vs[id] = v.join("t", id, capHost(id, map[bool]float64{true: 10, false: 100}[id == "s1"], false))
		vs[id].decision()
	}
	s2 := v.join("t", "s2", capHost("s2", 10, false))
	before := parentIDs(s2.decision())
	gone := ""
	for _, id := range before {
		if id != "src" && id != "s1" && id != "f" {
			gone = id
			break
		}
	}
	if gone == "" {
		t.Fatalf("s2 parents %v: want some fast relay among them", before)
	}
	vs[gone].leave()
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t")]
	var p2 *peer
	for _, p := range tk.list {
		checkPaced(t, v.s, p)
		if p.id == "s2" {
			p2 = p
		}
	}
	if p2 == nil || len(p2.parents) == 0 {
		t.Fatalf("s2 left without parents after %s left", gone)
	}
	for _, l := range p2.parents {
		if l.peer.id == gone {
			t.Errorf("s2 still has %s, which left", gone)
		}
		if l.share <= 0 {
			t.Errorf("s2's parent %s unpaced", l.peer.id)
		}
	}
	v.s.mu.Unlock()
	v.invariants()
}

// With declared mixed capacities (paced shares at work), a decision in a
// large task still looks at a bounded number of candidates: its own walk
// (the free list, then a sample of the pool) and at most pacedRehomeBatch
// walks for crowded peers, each of at most 2·candidate_limit, whatever N.
func TestPacedDecisionCostBoundedInLargeTask(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "src", capHost("src", 100, false))
	const n = 3000
	up := func(i int) float64 {
		if i%4 == 3 {
			return 10
		}
		return 100
	}
	for i := range n {
		p := v.join("t", fmt.Sprintf("p%d", i), capHost(fmt.Sprintf("p%d", i), up(i), false))
		if i%500 == 0 {
			v.advance(time.Second)
		}
		p.msgs = nil
	}
	v.advance(time.Second)
	limit := uint64(v.s.cfg.CandidateLimit)
	paced := 0
	for i := range 20 {
		v.s.mu.Lock()
		before := v.s.visited
		v.s.mu.Unlock()
		p := v.join("t", fmt.Sprintf("new%d", i), capHost(fmt.Sprintf("new%d", i), up(i), false))
		d := p.decision()
		if d.GetParents() == nil {
			t.Fatalf("newcomer %d: %v", i, d)
		}
		if len(d.GetParents().GetParents()) > 1 {
			paced++
		}
		v.s.mu.Lock()
		visits := v.s.visited - before
		v.s.mu.Unlock()
		if bound := 2 * limit * (2 + pacedRehomeBatch); visits > bound {
			t.Fatalf("newcomer %d: its decision looked at %d candidates in a task of %d peers (bound %d)", i, visits, n, bound)
		}
	}
	// In a large task shares are trimmed to a parent's spare once a Tick
	// (a parent may have taken another child whole since).
	v.advance(time.Second)
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t")]
	for _, p := range tk.list {
		checkPaced(t, v.s, p)
	}
	if tk.paced == 0 {
		t.Errorf("no paced edge in a task of %d mixed hosts", n)
	}
	v.s.mu.Unlock()
	t.Logf("%d of 20 newcomers got paced parents; %d paced edges", paced, tk.paced)
	v.invariants()
}

// A piece a child got over a paced edge does not count in its parent
// host's measured throughput: it shared the uplink with the main child,
// and counted, its low rate would get a fast relay replaced as slow.
func TestPacedPieceNotInThroughput(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "src", capHost("src", 100, false))
	for _, id := range []string{"a", "b", "s1"} {
		up := 100.0
		if id == "s1" {
			up = 10
		}
		v.join("t", id, capHost(id, up, false)).decision()
	}
	s2 := v.join("t", "s2", capHost("s2", 10, false))
	d := s2.decision()
	var paced string
	for _, p := range d.GetParents().GetParents() {
		if p.GetShareBps() > 0 && p.GetPeerId() != "s1" {
			paced = p.GetPeerId()
		}
	}
	if paced == "" {
		t.Fatalf("s2 parents %v: want a paced fast one", parentIDs(d))
	}
	// One piece in 1 s: far below the parent's uplink.
	pieceLeavesThroughput(t, v, s2, paced, 1e9)
}

// pieceLeavesThroughput has c report one piece of task "t" from the parent
// par that took costNs, and checks that par's host counts it as served
// while its measured throughput does not move.
func pieceLeavesThroughput(t *testing.T, v *vsched, c *vpeer, par string, costNs int64) {
	t.Helper()
	v.s.mu.Lock()
	h := v.s.tasks[tid("t")].peers[par].host
	before, n := h.throughput, h.successes
	v.s.mu.Unlock()
	c.pieces(&schedulerv1.PieceResult{Number: 0, ParentId: par, Length: 1 << 18, CostNs: costNs})
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	if h.successes != n+1 {
		t.Errorf("successes %d, want %d: the piece still counts as served", h.successes, n+1)
	}
	if h.throughput != before {
		t.Errorf("a piece from %s in %v moved its throughput from %.0f to %.0f", par, time.Duration(costNs), before, h.throughput)
	}
}

// A host's children are counted against its uplink, not its downlink: a
// relay gets each piece once and sends it to every child. A source with a
// 400 Mbit/s uplink and a 100 Mbit/s downlink (a seed peer on a fast NIC
// fed by a slower origin) serves four 100 Mbit/s children, not one.
// (A receiver whose downlink is far below the rate feeds nobody:
// TestCapacitySlowHostAtLeaf.)
func TestCapacityChildrenCountedOnUplink(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "src", capHost2("src", 400, 100))
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		v.join("t", id, capHost(id, 100, false)).parents()
	}
	if got := v.children("t", "src"); len(got) != 4 {
		t.Errorf("src (up 400, down 100 Mbit/s) serves %v, want 4 children", got)
	}
	v.invariants()
}

// depthOf counts the hops from id up to a peer without parents, along
// first parents.
func (v *vsched) depthOf(task, id string) int {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	p, d := v.s.tasks[tid(task)].peers[id], 0
	for len(p.parents) > 0 {
		p, d = p.parents[0].peer, d+1
	}
	return d
}

// Among parents with a free full-rate slot, the shallowest wins: every
// relaying hop delays every piece, so a fetcher with room for four
// children starts four pipelines before any pipeline grows a second hop.
// Nothing has data yet (every candidate scores the same otherwise), as
// when a crowd registers at once behind a seed peer.
func TestCapacityShallowestFreeParentFirst(t *testing.T) {
	for seed := range uint64(8) {
		v := pipelineVirtual(t, nil)
		v.s.rnd = mrand.New(mrand.NewPCG(seed, seed))
		src := v.join("t", "src", capHost("src", 400, false))
		if d := src.decision(); d.GetBackToSource() == nil {
			t.Fatalf("src: want back to source, got %v", d)
		}
		src.meta(8<<18, 1<<18)
		ids := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
		for _, id := range ids {
			v.join("t", id, capHost(id, 100, false)).parents()
		}
		if got := v.children("t", "src"); len(got) != 4 {
			t.Errorf("rand seed %d: src serves %v, want 4 children", seed, got)
		}
		for _, id := range ids {
			if d := v.depthOf("t", id); d > 2 {
				t.Errorf("rand seed %d: %s is %d hops deep, want at most 2 (four pipelines of two)", seed, id, d)
			}
		}
		v.invariants()
	}
}

// In a large task a peer whose sampled candidates are all its own
// descendants (or unusable) still finds a parent that holds the content
// elsewhere in the pool before it is sent to the origin: a second copy of
// the content from the origin is the cost of a sample that missed. Here a0
// heads a pipeline of 290 hosts and drops the source; the only other
// parents are b0 and the slow b1 under it, 2 of ~300 peers.
func TestWideSearchBeforeOrigin(t *testing.T) {
	for seed := range uint64(8) {
		v := pipelineVirtual(t, nil)
		v.s.rnd = mrand.New(mrand.NewPCG(seed, 7))
		v.source("t", "src", capHost("src", 200, false))
		a0 := v.join("t", "a0", capHost("a0", 100, false))
		a0.parents()
		b0 := v.join("t", "b0", capHost("b0", 100, false))
		b0.parents()
		if got := v.children("t", "src"); len(got) != 2 {
			t.Fatalf("src children %v", got)
		}
		v.join("t", "b1", capHost("b1", 10, false)).parents() // slow: under b0 or at a tail
		for i := 1; i < 290; i++ {
			id := fmt.Sprintf("a%d", i)
			v.join("t", id, capHost(id, 100, false)).parents()
		}
		// Everyone holds a piece, so every peer is a candidate.
		v.s.mu.Lock()
		for _, p := range v.s.tasks[tid("t")].peers {
			p.pieces.set(0)
			v.s.updatePoolLocked(p)
		}
		v.s.mu.Unlock()
		a0.reschedule("src")
		d := a0.decision()
		if d.GetBackToSource() != nil {
			t.Fatalf("rand seed %d: a0 sent to the origin (%v) while b0 and b1 hold the content", seed, d)
		}
		if d.GetParents() == nil {
			t.Fatalf("rand seed %d: a0 got %v, want parents", seed, d)
		}
		v.invariants()
	}
}

// A receiver fed by paced shares moves to a full-rate slot as soon as one
// is free (here the slow leaf under f finished and left): the shares go
// back to their parents' spare, and the receiver no longer depends on the
// fragments of several uplinks.
func TestPacedReceiverTakesFreedSlot(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "src", capHost("src", 100, false))
	for _, id := range []string{"a", "b", "c", "d", "e", "f"} {
		v.join("t", id, capHost(id, 100, false)).parents()
	}
	s1 := v.join("t", "s1", capHost("s1", 10, false))
	if got := s1.parents(); !slices.Equal(got, []string{"f"}) {
		t.Fatalf("s1 parents %v, want [f]", got)
	}
	s2 := v.join("t", "s2", capHost("s2", 10, false))
	d := s2.decision()
	if ps := d.GetParents().GetParents(); len(ps) < 2 || ps[0].GetShareBps() <= 0 {
		t.Fatalf("s2 got %v: want paced parents", d)
	}
	s1.leave()
	v.advance(time.Second)
	d = s2.decision()
	ps := d.GetParents().GetParents()
	if len(ps) != 1 || ps[0].GetPeerId() != "f" || ps[0].GetShareBps() != 0 {
		t.Fatalf("after f's slot freed, s2 got %v: want f alone, unpaced", d)
	}
	v.s.mu.Lock()
	for _, p := range v.s.tasks[tid("t")].list {
		checkPaced(t, v.s, p)
		if p.pacedKids != 0 || p.booked != 0 {
			t.Errorf("%s still books %d paced children, %.0f B/s", p.id, p.pacedKids, p.booked)
		}
	}
	v.s.mu.Unlock()
	v.invariants()
}

// A paced share is no pipeline edge, so it needs no place in the order
// that keeps the pipeline acyclic: a peer that registered early takes a
// share from a host thousands of relays deep in another pipeline. (Ordered,
// the link had to reorder everything below the early peer, past
// maxReorder, and was refused: at a few thousand peers nearly every share
// was.) A full-rate edge there is still refused.
func TestPacedShareFromDeepInPipeline(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "src", capHost("src", 200, false))
	v.join("t", "early", capHost("early", 100, false)).parents()
	n := 2*maxReorder + 200
	for i := range n {
		id := fmt.Sprintf("p%d", i)
		v.join("t", id, capHost(id, 100, false)).parents()
	}
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	tk := v.s.tasks[tid("t")]
	e := tk.peers["early"]
	below := func(p *peer) (bool, int) { // descends from early; depth
		d := 0
		for ; len(p.parents) > 0; d++ {
			if p = p.parents[0].peer; p == e {
				return true, d
			}
		}
		return false, d
	}
	var deep *peer
	best, under := 0, 0
	for i := range n {
		p := tk.peers[fmt.Sprintf("p%d", i)]
		if b, d := below(p); b {
			under++
		} else if d > best {
			deep, best = p, d
		}
	}
	if deep == nil || best <= maxReorder/2 || under <= maxReorder {
		t.Fatalf("setup: deepest peer outside early's pipeline at depth %d, %d peers below early", best, under)
	}
	if !v.s.linkShareLocked(deep, e, 1e6) {
		t.Fatalf("a paced share from a peer %d relays deep was refused", best)
	}
	if v.s.linkLocked(deep.parents[0].peer, e) {
		t.Fatalf("a full-rate edge that needs %d peers reordered was accepted", under)
	}
	if err := checkInvariants(v.s); err != nil {
		t.Fatal(err)
	}
}

// A receiver that is the only child of a host slower than the fluid rate
// (a slow newcomer hung below a slow host's idle uplink) moves to paced
// shares once spare capacity is known, however many crowded peers there
// are: the scan of crowded peers goes on where it stopped.
func TestPacedRehomeSoleChildOfSlowHost(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "src", capHost("src", 100, false))
	for i := range 120 {
		id := fmt.Sprintf("f%d", i)
		v.join("t", id, capHost(id, 100, false)).parents()
	}
	for i := range 40 {
		id := fmt.Sprintf("s%d", i)
		v.join("t", id, capHost(id, 10, false)).decision()
	}
	underSlow := func() []string {
		v.s.mu.Lock()
		defer v.s.mu.Unlock()
		var ids []string
		for _, p := range v.s.tasks[tid("t")].list {
			if len(p.parents) == 1 && p.parents[0].share == 0 && p.parents[0].peer.host.info.GetUploadBps() == int64(10*mbps) {
				ids = append(ids, p.id)
			}
		}
		return ids
	}
	before := underSlow()
	if len(before) < 5 {
		t.Fatalf("setup: %d receivers below a slow host's uplink alone, want several", len(before))
	}
	for range 40 {
		v.advance(time.Second)
	}
	if got := underSlow(); len(got) > 0 {
		t.Errorf("after 40 ticks %d of %d receivers still get only a slow host's uplink: %v", len(got), len(before), got)
	}
	v.invariants()
}

// The shallowest-first rule prefers a seed host only when it can feed
// several pipelines: a seed that feeds one child (its capacity unknown, or
// no more than the rate) often shares the origin's uplink, which should
// carry the content about once.
func TestShallowestSkipsSingleChildSeed(t *testing.T) {
	for _, c := range []struct {
		seedUp   float64 // Mbit/s declared; 0: unknown
		own      bool    // its uplink is its own (the origin on another host)
		wantSeed bool
	}{{0, false, false}, {100, false, false}, {400, false, false}, {400, true, true}} {
		v := pipelineVirtual(t, nil)
		var opt regOpt
		if c.seedUp > 0 {
			opt = capHost("seed", c.seedUp, true)
		} else {
			opt = withHost(&schedulerv1.Host{Id: "host-seed", Hostname: "seed", Ip: "127.0.0.1", PeerPort: 65000, UploadPort: 65002, Seed: true})
		}
		v.sourceAs("t", "seed", !c.own, opt)
		v.join("t", "a", capHost("a", 100, false)).parents()
		v.join("t", "b", capHost("b", 100, false)).parents()
		v.s.mu.Lock()
		tk := v.s.tasks[tid("t")]
		sd, b := tk.peers["seed"], tk.peers["b"]
		got := v.s.shallowest([]*peer{b, sd}, v.now)
		v.s.mu.Unlock()
		if isSeed := len(got) == 1 && got[0] == sd; isSeed != c.wantSeed {
			t.Errorf("seed uplink %v Mbit/s (own %v): shallowest of [b seed] = %d peers (seed first: %v), want seed first: %v", c.seedUp, c.own, len(got), isSeed, c.wantSeed)
		}
	}
}

// A host whose downlink is ten times its uplink keeps a fifth of the
// uplink for its download's ACKs (core.UsableUplink, the daemon paces its
// uploads to the rest): the shares booked on it and the task's fluid rate
// count 8 of its 10 Mbit/s.
func TestAsymmetricUplinkLeavesRoomForAcks(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "src", capHost("src", 100, false))
	for _, id := range []string{"a", "b", "c", "d", "e", "f"} {
		v.join("t", id, capHost2(id, 100, 100))
	}
	v.join("t", "s1", capHost2("s1", 10, 100))
	s2 := v.join("t", "s2", capHost2("s2", 10, 100))
	s2.decision()
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	tk := v.s.tasks[tid("t")]
	fluid := (100 + 6*100 + 2*8) / 8.0 * mbps
	if got := tk.fluid; math.Abs(got-fluid) > 1 {
		t.Errorf("fluid rate %.0f B/s, want %.0f (the slow uplinks at 8 Mbit/s)", got, fluid)
	}
	slowBooked := false
	for _, p := range tk.list {
		checkPaced(t, v.s, p)
		if p.host.info.GetUploadBps() == int64(10*mbps) {
			if p.booked > 8*mbps*1.02+1 {
				t.Errorf("%s: %.0f B/s booked on a 10 Mbit/s uplink whose ACKs need 2 Mbit/s", p.id, p.booked)
			}
			slowBooked = slowBooked || p.booked > 0
		}
	}
	if !slowBooked {
		t.Error("no share booked on a slow host: the test shows nothing")
	}
}

// A seed of unknown capacity sends the content once: when its child has
// got all of it, the seed takes no new child while anyone else can serve
// (its uplink is often the origin's). Newcomers go to the finished child.
func TestSeedSendsTheContentOnce(t *testing.T) {
	v := pipelineVirtual(t, nil)
	seedHost := withHost(&schedulerv1.Host{Id: "host-seed", Hostname: "seed", Ip: "127.0.0.1", PeerPort: 65000, UploadPort: 65002, Seed: true})
	v.source("t", "seed", seedHost)
	a := v.join("t", "a")
	if got := a.parents(); !slices.Equal(got, []string{"seed"}) {
		t.Fatalf("a's parents %v, want [seed]", got)
	}
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t")]
	sd := tk.peers["seed"]
	if v.s.childLimit(sd, v.now) != 1 {
		t.Fatalf("seed of unknown capacity: child limit %d before it sent anything, want 1", v.s.childLimit(sd, v.now))
	}
	v.s.mu.Unlock()
	a.pieces(piecesFrom("seed", 4)...)
	a.handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: 4 << 18}}})
	for _, id := range []string{"b", "c"} {
		if got := v.join("t", id).parents(); slices.Contains(got, "seed") {
			t.Fatalf("%s's parents %v: the seed, which sent the content once, took a new child", id, got)
		}
	}
	v.s.mu.Lock()
	if lim := v.s.childLimit(sd, v.now); lim != 0 {
		t.Errorf("child limit %d of a seed with no child that sent the content once, want 0", lim)
	}
	v.s.mu.Unlock()
	v.invariants()
}

// A seed on the origin's host sends the content once, then takes no new
// child (its holder took a slow leaf once its pipeline child was done, and
// the origin's uplink carried 1.25 F in the simulator's declared mixed),
// however fast its declared uplink: each full-rate child is one more copy
// over the origin's uplink (declared at 4 R it would feed four). A seed
// with an uplink of its own declared at several times the rate feeds
// several pipelines and keeps taking children.
func TestDeclaredOneChildSeedSendsOnce(t *testing.T) {
	for _, tc := range []struct {
		seedMbps float64
		own      bool // the origin on another host
		sentOnce bool // no new child after the content went out once
	}{{100, false, true}, {150, false, true}, {400, false, true}, {400, true, false}} {
		t.Run(fmt.Sprint(tc.seedMbps, map[bool]string{true: "-own", false: "-shared"}[tc.own]), func(t *testing.T) {
			v := pipelineVirtual(t, nil)
			v.sourceAs("t", "seed", !tc.own, capHost("seed", tc.seedMbps, true))
			a := v.join("t", "a", capHost("a", 100, false))
			if got := a.parents(); !slices.Equal(got, []string{"seed"}) {
				t.Fatalf("a's parents %v, want [seed]", got)
			}
			for _, id := range []string{"x", "y", "z"} {
				v.join("t", id, capHost(id, 100, false)).parents()
			}
			a.pieces(piecesFrom("seed", 4)...)
			a.handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: 4 << 18}}})
			v.advance(2 * time.Second) // ticks: a, done, leaves the seed's slot
			if got := v.children("t", "seed"); tc.sentOnce && len(got) != 0 {
				t.Fatalf("seed's children %v after its child was done, want none", got)
			}
			// Its slot is not open: a paced slow leaf would move to it at the
			// next refresh (what the simulator showed).
			v.s.mu.Lock()
			tk := v.s.tasks[tid("t")]
			sd := tk.peers["seed"]
			lim := v.s.childLimit(sd, v.now)
			open := sd.openIdx >= 0
			v.s.mu.Unlock()
			if tc.sentOnce && (lim != 0 || open) {
				t.Errorf("seed declared at %v Mbit/s, peers at 100, content sent once, no child: limit %d, open %v; want 0, false", tc.seedMbps, lim, open)
			}
			if !tc.sentOnce && lim < 3 {
				t.Errorf("seed declared at %v Mbit/s, peers at 100: limit %d, want several children", tc.seedMbps, lim)
			}
			for _, id := range []string{"b", "c", "d"} {
				if ps := v.join("t", id, capHost(id, 100, false)).parents(); len(ps) != 1 {
					t.Errorf("%s's parents %v, want one", id, ps)
				}
			}
			v.invariants()
		})
	}
}

// A relay on a slow uplink's split is not moved to paced parents: they give
// pieces held whole, and may be its own descendants, which get everything
// from it. In the simulator (spread, seed 4) the only relay below a slow
// host was moved to two of its descendants: the swarm was cut off from the
// content, and every peer waited out its swarm timeout and went to the
// origin (16 × F). A leaf in the same place is moved.
func TestCrowdedRelayNotPaced(t *testing.T) {
	for _, relay := range []bool{true, false} {
		t.Run(fmt.Sprint("relay ", relay), func(t *testing.T) {
			v := pipelineVirtual(t, nil)
			v.source("t", "s", capHost("s", 100, false))
			for _, id := range []string{"x", "c", "d", "a", "b", "e", "a2", "f", "g"} {
				up := map[string]float64{"x": 10, "a": 250, "a2": 250}[id]
				if up == 0 {
					up = 100
				}
				v.join("t", id, capHost(id, up, false)).parents()
			}
			v.s.mu.Lock()
			defer v.s.mu.Unlock()
			tk := v.s.tasks[tid("t")]
			if tk.fluid <= 0 {
				t.Fatalf("fluid rate %v, want > 0 (capacities declared)", tk.fluid)
			}
			pr := func(id string) *peer { return tk.peers[id] }
			// The graph under test: s → x → c (→ d), s → a → b, e and
			// a → a2 → f, g: the spares of a and a2 are what paced parents
			// can give, more than a share of a split uplink.
			for _, p := range tk.list {
				for len(p.parents) > 0 {
					v.s.removeEdge(p.parents[0].peer, p)
				}
			}
			link := func(a, b string) {
				if !v.s.linkLocked(pr(a), pr(b)) {
					t.Fatalf("link %s→%s refused", a, b)
				}
			}
			link("s", "x")
			link("x", "c")
			link("s", "a")
			link("a", "b")
			link("a", "e")
			link("b", "a2")
			link("a2", "f")
			link("a2", "g")
			if relay {
				link("c", "d")
			} else {
				link("b", "d")
			}
			v.s.crowdLocked(pr("c"))
			pr("c").pacedTry = time.Time{}
			v.s.pacedRehomeLocked(tk, v.now)
			moved := len(pr("c").parents) != 1 || pr("c").parents[0].peer != pr("x")
			if moved == relay {
				var ps []string
				for _, l := range pr("c").parents {
					ps = append(ps, l.peer.id)
				}
				t.Errorf("c (relay %v) below the slow x: parents after the paced rehome %v, moved %v, want %v", relay, ps, moved, !relay)
			}
		})
	}
}

// A slow host that took the seed's one slot (first in the wait list when
// the seed peer came) gives it up to the next fast newcomer and hangs below
// it. Kept there, it fed the whole pipeline at its own uplink's rate, and a
// seed that then sent the content once took no new child: on the harness
// (declared mixed, the seed on the origin's host) every fast host finished
// after 146 s, for T* = 26 s. And bytes the seed sent to a slow leaf do not
// count as the content sent once: they go no further.
func TestSlowHostGivesUpTheSeedsSlot(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "seed", capHost("seed", 100, true))
	ids := []string{"slow", "slow2", "a", "b", "c", "d"}
	vps := map[string]*vpeer{}
	for _, id := range ids {
		up := 100.0
		if id[0] == 's' {
			up = 10
		}
		vps[id] = v.join("t", id, capHost(id, up, false))
		vps[id].decision()
	}
	// As when the seed peer came with all of them waiting, the slow ones
	// first: one takes the seed's slot, the next hangs below it, and the
	// others are decided in turn.
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t")]
	for _, id := range ids {
		p := tk.peers[id]
		for len(p.parents) > 0 {
			v.s.removeEdge(p.parents[0].peer, p)
		}
		v.s.setState(p, stateWaiting)
		v.s.updatePoolLocked(p)
	}
	if !v.s.linkLocked(tk.peers["seed"], tk.peers["slow"]) || !v.s.linkLocked(tk.peers["slow"], tk.peers["slow2"]) {
		t.Fatal("seed→slow→slow2 refused")
	}
	for _, id := range ids[:2] {
		v.s.setState(tk.peers[id], stateRunning)
		v.s.updatePoolLocked(tk.peers[id])
	}
	for _, id := range ids[2:] {
		v.s.decideLocked(tk.peers[id], v.now, true)
	}
	v.s.mu.Unlock()
	slow := vps["slow"]
	if got := v.children("t", "seed"); len(got) != 1 || got[0] == "slow" {
		t.Errorf("seed's children %v: want one fast host", got)
	}
	slow.decision()
	slow.pieces(piecesFrom("seed", 4)...) // as if it had got everything from the seed
	v.s.mu.Lock()
	sent := v.s.tasks[tid("t")].seedSent
	v.s.mu.Unlock()
	if sent != 0 {
		t.Errorf("seed bytes counted as sent once: %d after a slow leaf got the content, want 0", sent)
	}
	v.invariants()
}

// A slow host takes a seed's slot only when nothing else is left: it
// relays nothing, and the seed's uplink is what everyone else gets. On the
// harness (declared mixed) slow leaves moved one after another to the
// seed's free slot and got the whole content from it at their downlink's
// rate (the seed sent 2.55 × F) while the pipeline crawled at 0.37 of the
// bound.
func TestSlowHostAvoidsTheSeed(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.sourceOwn("t", "seed", capHost("seed", 200, true))
	for _, id := range []string{"a", "b", "c"} {
		v.join("t", id, capHost(id, 100, false)).parents()
	}
	seedKids := v.children("t", "seed")
	if len(seedKids) != 2 {
		t.Fatalf("seed's children %v, want two (it feeds two pipelines)", seedKids)
	}
	// The seed's second pipeline ends; its slot is free again.
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t")]
	v.s.removeEdge(tk.peers["seed"], tk.peers[seedKids[1]])
	v.s.touchOpenLocked(tk.peers["seed"])
	v.s.mu.Unlock()
	if got := v.join("t", "slow", capHost("slow", 10, false)).parents(); slices.Contains(got, "seed") || len(v.children("t", "seed")) != 1 {
		t.Errorf("slow host's parents %v, seed's children %v: it took the seed's free slot (or a share of it) while others were free", got, v.children("t", "seed"))
	}
	if got := v.join("t", "d", capHost("d", 100, false)).parents(); !slices.Equal(got, []string{"seed"}) {
		t.Errorf("fast newcomer's parents %v, want the seed's free slot", got)
	}
}

// While a task has few receivers, its rate comes from the hosts connected:
// the first to register say little about those to come. On the harness the
// seed peer came when three slow hosts and one fast one had registered; R
// fell to the slow hosts' rate, the seed's limit rose tenfold, it took three
// children at once and sent 3 × F.
func TestFewReceiversRateFromHosts(t *testing.T) {
	v := pipelineVirtual(t, nil)
	// The cluster: 12 hosts at 100 Mbit/s, 4 at 10, all connected.
	v.source("warm", "w-src", capHost("w-src", 100, false))
	for i := range 16 {
		up := 100.0
		if i%4 == 3 {
			up = 10
		}
		id := fmt.Sprintf("h%d", i)
		v.join("warm", "w-"+id, capHost(id, up, false)).decision()
	}
	v.advance(time.Second) // a Tick: the hosts' median
	v.source("t", "seed", capHost("seed", 100, true))
	for _, i := range []int{3, 7, 11, 0, 1, 2} { // three slow ones first
		up := 100.0
		if i%4 == 3 {
			up = 10
		}
		id := fmt.Sprintf("h%d", i)
		v.join("t", id, capHost(id, up, false)).decision()
	}
	if got := v.children("t", "seed"); len(got) > 1 {
		t.Errorf("seed's children %v: want one (its uplink is the rate of one)", got)
	}
	v.invariants()
}

// TestSharesYieldToRisingFluid: shares booked on relays while few hosts
// had registered, the fluid rate low, are trimmed when more register and
// it rises, so that the relays' unpaced children, and every host below
// them, get the new rate. Kept at the old rate, the shares a slow receiver
// took of the seed's child and of its child held the harness's whole
// pipeline at 16.6 Mbit/s, against 20.2 once all hosts had registered.
// A rise as receivers finish takes no share back: the receivers still
// behind keep theirs.
func TestSharesYieldToRisingFluid(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "src", capHost("src", 25, false))
	v.join("t", "a", capHost("a", 25, false)).parents()
	s1 := v.join("t", "s1", capHost("s1", 2.5, false))
	s1.parents()
	v.join("t", "b", capHost("b", 25, false)).parents()
	s2 := v.join("t", "s2", capHost("s2", 2.5, false))
	s2.parents()
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t")]
	early := tk.fluid
	relays := 0 // relays with shares booked on them
	for _, p := range tk.list {
		if p.pacedKids > 0 && unpacedChildren(p) > 0 {
			relays++
		}
	}
	v.s.mu.Unlock()
	if relays == 0 {
		t.Fatal("no share booked on a relay while few hosts had registered: nothing to test")
	}
	for i := range 11 {
		id := fmt.Sprintf("f%d", i)
		v.join("t", id, capHost(id, 25, false)).parents()
	}
	v.advance(time.Second)
	v.s.mu.Lock()
	if tk.fluid <= early*1.05 {
		v.s.mu.Unlock()
		t.Fatalf("fluid rate %.0f B/s after the joins, %.0f before: no rise to test", tk.fluid, early)
	}
	for _, p := range tk.list {
		if p.pacedKids == 0 || unpacedChildren(p) == 0 {
			continue
		}
		// The relay's unpaced children get today's fluid rate beside its
		// shares, not the rate the shares were booked at.
		u := v.s.upCapacity(p.host, v.now)
		if room := u - tk.fluid*float64(unpacedChildren(p)); p.booked > room*1.02+1 {
			t.Errorf("%s: shares %.0f B/s booked, room for %.0f beside %d unpaced children at the fluid rate %.0f (booked at %.0f)",
				p.id, p.booked, room, unpacedChildren(p), tk.fluid, p.bookFluid)
		}
	}
	v.s.mu.Unlock()
	v.invariants()

	// Slow hosts join and take most of the relays' spare; then two slow
	// receivers finish, and the fluid rate rises again, above what the
	// relays' shares leave room for: the shares stay.
	finish := func(p *vpeer, parent string) {
		p.pieces(pieceFrom(parent, 0), pieceFrom(parent, 1), pieceFrom(parent, 2), pieceFrom(parent, 3))
		p.handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: 4 << 18}}})
	}
	for i := 3; i <= 6; i++ {
		id := fmt.Sprintf("s%d", i)
		v.join("t", id, capHost(id, 2.5, false)).parents()
	}
	v.advance(time.Second)
	v.s.mu.Lock()
	type edge struct{ parent, child *peer }
	before, kept := tk.fluid, map[edge]float64{}
	for _, p := range tk.list {
		for _, l := range p.parents {
			if l.share > 0 && unpacedChildren(l.peer) > 0 {
				kept[edge{l.peer, p}] = l.share
			}
		}
	}
	parents := map[*vpeer]string{s1: tk.peers["s1"].parents[0].peer.id, s2: tk.peers["s2"].parents[0].peer.id}
	v.s.mu.Unlock()
	if len(kept) == 0 {
		t.Fatal("no share on a relay: nothing to test")
	}
	for p, par := range parents {
		finish(p, par)
	}
	v.advance(time.Second)
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	if tk.joining || tk.fluid <= before*1.03 {
		t.Fatalf("fluid rate %.0f B/s after the slow receiver finished, %.0f before (hosts registering: %v): no rise to test", tk.fluid, before, tk.joining)
	}
	checked := 0
	relays = 0
	for _, p := range tk.list {
		if p.pacedKids == 0 || unpacedChildren(p) == 0 {
			continue
		}
		relays++
		// Its unpaced children are assured of the rate they had, not the
		// new one: room for the shares of those behind.
		if f := pacedFluid(p); f > before*1.01 {
			t.Errorf("%s: unpaced children assumed at %.0f B/s after receivers finished, above the %.0f they had", p.id, f, before)
		}
	}
	if relays == 0 {
		t.Fatal("no relay with shares left: nothing to test")
	}
	for e, sh := range kept {
		if e.child.state != stateRunning || slices.ContainsFunc(e.child.parents, func(l link) bool { return l.share <= 0 }) {
			continue // finished, or moved to a free full-rate slot
		}
		checked++
		if j := parentIndex(e.child, e.parent); j < 0 || e.child.parents[j].share < sh*0.99 {
			t.Errorf("%s's share of %s taken back as receivers finish (%.0f B/s before)", e.child.id, e.parent.id, sh)
		}
	}
	if checked == 0 {
		t.Fatal("every paced receiver moved or finished: nothing to test")
	}
}

// pieceFrom is piece n of 256 KiB, received from parent in 1 ms.
func pieceFrom(parent string, n uint32) *schedulerv1.PieceResult {
	return &schedulerv1.PieceResult{Number: n, ParentId: parent, Length: 1 << 18, CostNs: 1e6}
}

// A slow leaf that splits an uplink with a relay gives way to the pipeline
// even when paced parents give it less than its split: everyone below the
// relay gets the uplink back. In the simulator's spread (1-10 Mbit/s, the
// seed on the origin's host, 24 peers 25 ms apart) a 1.1 Mbit/s host took
// the first host's slot beside the head of a pipeline of twenty; every
// one of them got half that uplink for the whole download (0.71 of the
// bound for the median host; 0.87 with the rule).
func TestSlowLeafGivesWayToPipeline(t *testing.T) {
	// s → x → c, r → d: c, a slow leaf, splits x's uplink with the relay r.
	v, tk := slowLeafBesideRelay(t, []string{"x", "c", "r", "d"}, map[string]float64{"x": 100, "c": 5, "r": 85, "d": 15},
		[][2]string{{"s", "x"}, {"x", "c"}, {"x", "r"}, {"r", "d"}})
	defer v.s.mu.Unlock()
	pr := func(id string) *peer { return tk.peers[id] }
	v.s.updateRateLocked(tk, v.now)
	if tk.fluid <= 0 || !v.s.slowHost(pr("c"), v.now) {
		t.Fatalf("fluid rate %.1f Mbit/s, c slow %v: want a known rate that c cannot relay at", tk.fluid/mbps, v.s.slowHost(pr("c"), v.now))
	}
	// What paced parents can give c without x's spare is less than its
	// split of x: the spares of s and r beside their children, and d's
	// idle uplink.
	split := v.s.slotRate(pr("x"), v.now)
	if sp := v.s.spare(pr("s"), v.now) + v.s.spare(pr("r"), v.now) + v.s.spare(pr("d"), v.now); sp >= split {
		t.Fatalf("paced parents elsewhere give %.1f Mbit/s, c's split %.1f: the test wants less", sp/mbps, split/mbps)
	}
	v.s.crowdLocked(pr("c"))
	v.s.pacedRehomeLocked(tk, v.now)
	if unpacedChildren(pr("x")) != 1 || isParent(pr("c"), pr("x")) && !pacedChild(pr("x"), pr("c")) {
		t.Errorf("x feeds %d children at the full rate, want r alone (c's parents %v)", unpacedChildren(pr("x")), v.parentsLockedIDs(pr("c")))
	}
	in := 0.0
	for _, l := range pr("c").parents {
		if l.share <= 0 {
			t.Errorf("c has %s as a full-rate parent, want paced parents only", l.peer.id)
		}
		in += l.share
	}
	if in < minPacedShare*tk.fluid {
		t.Errorf("c was given %.1f Mbit/s of paced shares, want some", in/mbps)
	}
	if err := checkInvariants(v.s); err != nil {
		t.Error(err)
	}
	for _, c := range tk.list {
		checkPaced(t, v.s, c)
	}
}

// A slow leaf gives way only to paced parents ahead of it (or done), as a
// top-up takes them: in the simulator's mixed with slow downlinks, one
// moved to another slow receiver's idle uplink, level with it, got nothing
// new from it, and left the swarm for the origin (1.98 × F).
func TestSlowLeafGivesWayOnlyToPeersAhead(t *testing.T) {
	for _, ahead := range []bool{true, false} {
		t.Run(fmt.Sprint("ahead ", ahead), func(t *testing.T) {
			// s → x → c, r → d and s → e: the source's uplink is spent,
			// and the paced parents c may have are downloading peers.
			v, tk := slowLeafBesideRelay(t, []string{"x", "c", "r", "d", "e"}, map[string]float64{"x": 100, "c": 5, "r": 85, "d": 15, "e": 100},
				[][2]string{{"s", "x"}, {"x", "c"}, {"x", "r"}, {"r", "d"}, {"s", "e"}})
			defer v.s.mu.Unlock()
			pr := func(id string) *peer { return tk.peers[id] }
			if ahead {
				for _, id := range []string{"x", "r", "d", "e"} {
					for n := range uint32(2 * topUpAhead) {
						pr(id).pieces.set(n)
					}
				}
			}
			v.s.updateRateLocked(tk, v.now)
			if v.s.spare(pr("s"), v.now) >= minPacedShare*tk.fluid || v.s.spare(pr("e"), v.now) < minPacedShare*tk.fluid {
				t.Fatalf("spare of s %.1f and e %.1f Mbit/s: the test wants none on s and some on e", v.s.spare(pr("s"), v.now)/mbps, v.s.spare(pr("e"), v.now)/mbps)
			}
			v.s.crowdLocked(pr("c"))
			v.s.pacedRehomeLocked(tk, v.now)
			stayed := len(pr("c").parents) == 1 && pr("c").parents[0].peer == pr("x") && pr("c").parents[0].share == 0
			if stayed == ahead {
				t.Errorf("peers ahead %v: c's parents %v, stayed below x %v, want %v", ahead, v.parentsLockedIDs(pr("c")), stayed, !ahead)
			}
			if err := checkInvariants(v.s); err != nil {
				t.Error(err)
			}
		})
	}
}

// slowLeafBesideRelay builds the source s (100 Mbit/s, done) and the hosts
// ids, registered in that order with their uplinks from ups (Mbit/s), then
// linked at the full rate as edges says and nothing else; it returns with
// the scheduler's lock held.
func slowLeafBesideRelay(t *testing.T, ids []string, ups map[string]float64, edges [][2]string) (*vsched, *task) {
	t.Helper()
	v := pipelineVirtual(t, nil)
	v.source("t", "s", capHost("s", 100, false))
	for _, id := range ids {
		v.join("t", id, capHost(id, ups[id], false)).parents()
	}
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t")]
	for _, p := range tk.list {
		for len(p.parents) > 0 {
			v.s.removeEdge(p.parents[0].peer, p)
		}
	}
	for _, e := range edges {
		if !v.s.linkLocked(tk.peers[e[0]], tk.peers[e[1]]) {
			v.s.mu.Unlock()
			t.Fatalf("link %s→%s refused", e[0], e[1])
		}
	}
	return v, tk
}

// A seed of known uplink whose origin's place is not known yet (no
// TaskMeta: the peers waiting for it are placed the moment it registers)
// takes one child, as one on the origin's host does: two full-rate
// children would be two copies over the origin's uplink. In the
// simulator's spread with the seed on the origin's host (N = 24, the seed
// at 2 R) it took two pipelines, and the origin's host sent 2.00 × F; on
// the harness's mixed with half the hosts slow, 5 runs of 26 did. Once its
// origin fetch shows an uplink of its own, it feeds several.
func TestSeedTakesOneChildUntilItsOriginIsKnown(t *testing.T) {
	for _, own := range []bool{false, true} {
		v := pipelineVirtual(t, nil)
		sd := v.join("t", "seed", capHost("seed", 400, true))
		if d := sd.decision(); d.GetBackToSource() == nil {
			t.Fatalf("seed: %v", d)
		}
		for _, id := range []string{"a", "b", "c", "d"} {
			v.join("t", id, capHost(id, 100, false)).parents()
		}
		if got := v.children("t", "seed"); len(got) != 1 {
			t.Fatalf("origin's place unknown: the seed's children %v, want one", got)
		}
		if own {
			sd.metaOwnUplink(4<<18, 1<<18)
		} else {
			sd.meta(4<<18, 1<<18)
		}
		v.s.mu.Lock()
		lim := v.s.childLimit(v.s.tasks[tid("t")].peers["seed"], v.now)
		v.s.mu.Unlock()
		if own && lim < 3 {
			t.Errorf("an uplink of its own at 4 R: child limit %d, want several", lim)
		}
		if !own && lim != 1 {
			t.Errorf("on the origin's host at 4 R: child limit %d, want 1", lim)
		}
		v.invariants()
	}
}

// A piece a child got at its own slow downlink's pace does not count in
// its parent host's measured throughput: the parent may have given it all
// it could take, and counted, the child's rate got fast relays replaced as
// slow (the simulator's mixed with slow downlinks: a 25 Mbit/s relay
// replaced below a 2 Mbit/s child, and the pipeline below it halved).
func TestDownlinkBoundPieceNotInThroughput(t *testing.T) {
	for _, tested := range []bool{false, true} {
		t.Run(fmt.Sprint("link-tested ", tested), func(t *testing.T) {
			v := pipelineVirtual(t, nil)
			v.source("t", "src", capHost("src", 100, false))
			v.join("t", "a", capHost("a", 100, false)).decision()
			// 100 Mbit/s up, 5 down: declared, or measured by its link
			// tests (its uplink declared all the same).
			sd := &schedulerv1.Host{Id: "host-sd", Hostname: "sd", Ip: "127.0.0.1", PeerPort: 65000, UploadPort: 65002,
				UploadBps: int64(100 * mbps), DownloadBps: int64(5 * mbps)}
			if tested {
				sd.DownloadBps, sd.LinkDownloadBps = 0, int64(5*mbps)
			}
			c := v.join("t", "sd", withHost(sd))
			d := c.decision()
			var par string
			for _, p := range d.GetParents().GetParents() {
				if p.GetShareBps() == 0 {
					par = p.GetPeerId()
				}
			}
			if par == "" {
				t.Fatalf("sd parents %v: want a full-rate one", parentIDs(d))
			}
			// One piece in 0.5 s: at sd's downlink, a twentieth of R.
			pieceLeavesThroughput(t, v, c, par, 5e8)
		})
	}
}

// A receiver given paced parents again is never booked a share of its own
// pipeline's tail, which gets every piece through it: on the harness's
// spread at N = 16 and 100 Mbit/s a pipeline's head was booked 3 MB/s from
// its tail six hops below, which delivered an eighth of it, and the whole
// pipeline ran at 0.8 of the rate for five seconds. A peer of another
// pipeline with less spare is booked instead; a tail that has another
// source may still be.
func TestPacedParentsNotFedThroughReceiver(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.fetcher("t", "src", false, capHost("src", 100, false))
	ups := map[string]float64{"h": 100, "a": 100, "tail": 100, "x": 60, "y": 100}
	for _, id := range []string{"h", "a", "tail", "x", "y"} {
		v.join("t", id, capHost(id, ups[id], false)).parents()
	}
	v.rewire("t", [2]string{"src", "h"}, [2]string{"h", "a"}, [2]string{"a", "tail"}, [2]string{"src", "y"}, [2]string{"y", "x"})
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	tk := v.s.tasks[tid("t")]
	h, tail, x := tk.peers["h"], tk.peers["tail"], tk.peers["x"]
	if v.s.spare(tail, v.now) <= v.s.spare(x, v.now) {
		t.Fatalf("setup: the tail's spare %.1f Mbit/s is not above x's %.1f", v.s.spare(tail, v.now)/mbps, v.s.spare(x, v.now)/mbps)
	}
	if !fedThrough(tail, h) || fedThrough(x, h) || fedThrough(h, tail) {
		t.Fatalf("fedThrough: tail below h %v, x below h %v, h below tail %v; want true, false, false",
			fedThrough(tail, h), fedThrough(x, h), fedThrough(h, tail))
	}
	v.s.dropParentsLocked(h) // its parent left: h keeps its pipeline
	if !v.s.pacedLocked(h, []*peer{tail, x}, 0, nil, localityGroup(h.host.info), v.now) {
		t.Fatal("h got no paced parents")
	}
	got := v.parentsLockedIDs(h)
	if slices.Contains(got, "tail") || !slices.Contains(got, "x") {
		t.Fatalf("h's paced parents %v: want x and not its own tail", got)
	}
	if err := checkInvariants(v.s); err != nil {
		t.Fatal(err)
	}

	// Once the tail has a source of its own (a paced share from y), it may
	// hold pieces h lacks and counts as any peer.
	v.s.dropParentsLocked(h)
	if !v.s.linkShareLocked(tk.peers["y"], tail, 1e6) {
		t.Fatal("setup: cannot link y→tail")
	}
	if fedThrough(tail, h) {
		t.Fatal("a tail with a second source counts as fed through h")
	}
	if !v.s.pacedLocked(h, []*peer{tail, x}, 0, nil, localityGroup(h.host.info), v.now) {
		t.Fatal("h got no paced parents the second time")
	}
	if got := v.parentsLockedIDs(h); !slices.Contains(got, "tail") {
		t.Fatalf("h's paced parents %v: want the tail, the largest spare, now that it has another source", got)
	}
}
