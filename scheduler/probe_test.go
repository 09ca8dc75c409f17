package scheduler

import (
	"fmt"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
)

// probeSwarm is a task of n receivers of unknown capacity below a seed of
// unknown capacity that fetched the whole content (probePieceCount pieces
// of probePieceSize) from the origin.
type probeSwarm struct {
	v    *vsched
	next map[string]uint32 // next piece each child reports
}

const (
	probePieceSize  = 64 << 10
	probePieceCount = 4096
)

func newProbeSwarm(t *testing.T, n int) *probeSwarm { return newProbeSwarmIDC(t, n, "") }

// newProbeSwarmIDC is newProbeSwarm with the receivers in IDC idc (the
// seed in none).
func newProbeSwarmIDC(t *testing.T, n int, idc string) *probeSwarm {
	return newProbeSwarmLink(t, n, idc, 0)
}

// newProbeSwarmLink is newProbeSwarmIDC with every host, the seed's
// included, reporting link (bytes/s) as its link-tested uplink (0: none).
func newProbeSwarmLink(t *testing.T, n int, idc string, link int64) *probeSwarm {
	t.Helper()
	v := pipelineVirtual(t, nil)
	seed := v.join("t", "seed", withHost(&schedulerv1.Host{Id: "host-seed", Hostname: "seed", Ip: "127.0.0.1", PeerPort: 65000, UploadPort: 65002, Seed: true, LinkUploadBps: link}))
	if d := seed.decision(); d.GetBackToSource() == nil {
		t.Fatalf("seed: %v", d)
	}
	seed.metaOwnUplink(probePieceCount*probePieceSize, probePieceSize)
	all := make([]*schedulerv1.PieceResult, probePieceCount)
	for i := range all {
		all[i] = originPiece(uint32(i))
	}
	seed.pieces(all...)
	for i := range n {
		id := fmt.Sprint("r", i)
		v.join("t", id, withHost(&schedulerv1.Host{Id: "host-" + id, Hostname: id, Ip: "127.0.0.1", PeerPort: 65000, UploadPort: 65002, Idc: idc, LinkUploadBps: link})).decision()
	}
	return &probeSwarm{v: v, next: map[string]uint32{}}
}

// feed has every full-rate child of the seed report rounds pieces from it,
// one at a time in turn, each delivered in cost; the clock moves by cost
// per round.
func (w *probeSwarm) feed(rounds int, cost time.Duration) {
	for range rounds {
		w.v.now = w.v.now.Add(cost)
		for _, id := range w.v.children("t", "seed") {
			n := w.next[id]
			w.next[id] = n + 1
			w.report(id, &schedulerv1.PieceResult{Number: n, ParentId: "seed", Length: probePieceSize, CostNs: cost.Nanoseconds()})
		}
	}
}

// report sends one piece report as peer id.
func (w *probeSwarm) report(id string, r *schedulerv1.PieceResult) {
	w.v.t.Helper()
	w.v.s.mu.Lock()
	p := w.v.s.tasks[tid("t")].peers[id]
	w.v.s.onPiecesLocked(p, &schedulerv1.PiecesDone{Pieces: []*schedulerv1.PieceResult{r}}, w.v.now)
	w.v.s.flushLocked(w.v.now)
	w.v.s.mu.Unlock()
}

// deepest is the task's deepest full-rate chain below a source, in hops.
func (w *probeSwarm) deepest() int {
	w.v.s.mu.Lock()
	defer w.v.s.mu.Unlock()
	best := 0
	for _, p := range w.v.s.tasks[tid("t")].list {
		d := 0
		for q := pipelineParent(p); q != nil; q = pipelineParent(q) {
			d++
		}
		best = max(best, d)
	}
	return best
}

// A seed of unknown capacity in a task of hundreds of receivers is given
// more children while each gets what one got alone, each new one the peer
// halfway down the deepest pipeline; without the probe it keeps one child
// and the pipeline is as deep as the task.
func TestSeedUplinkProbedInLargeTask(t *testing.T) {
	const n = 400
	w := newProbeSwarm(t, n)
	if got := w.v.children("t", "seed"); len(got) != 1 {
		t.Fatalf("before the probe the seed has children %v, want one", got)
	}
	if d := w.deepest(); d != n {
		t.Fatalf("before the probe the deepest pipeline is %d hops, want %d", d, n)
	}
	// An uplink much faster than its children: every child gets pieces at
	// the same rate whatever their number.
	for range 6 {
		w.feed(probePieces+2, 10*time.Millisecond)
	}
	kids := w.v.children("t", "seed")
	if len(kids) < 8 {
		t.Fatalf("after six probe steps the seed has %d children, want at least 8", len(kids))
	}
	if d := w.deepest(); d > n/len(kids)*2 {
		t.Errorf("the deepest pipeline is %d hops with %d children at the seed, want at most %d", d, len(kids), n/len(kids)*2)
	}
	w.v.invariants()
}

// A seed whose link tests measured no more than its partners' downlinks
// (a 10 Gbit/s seed among hosts that all measured the same rate) is still
// probed in a large task: taken as its uplink, the tested rate kept it at
// one child and one pipeline as deep as the task.
func TestLinkTestedSeedStillProbed(t *testing.T) {
	const n = 400
	// One piece per 10 ms: what every host's link test measured.
	w := newProbeSwarmLink(t, n, "", probePieceSize*100)
	for range 6 {
		w.feed(probePieces+2, 10*time.Millisecond)
	}
	kids := w.v.children("t", "seed")
	if len(kids) < 8 {
		t.Fatalf("after six probe steps the link-tested seed has %d children, want at least 8", len(kids))
	}
	w.v.invariants()
}

// A seed whose uplink is full with one child (on the origin's host): its
// second child gets half of what the first got alone, and it goes back to
// one child; the child it lost gets a parent at once.
func TestSeedProbeFullUplinkBackToOne(t *testing.T) {
	w := newProbeSwarm(t, 400)
	w.feed(probePieces+2, 10*time.Millisecond)
	kids := w.v.children("t", "seed")
	if len(kids) != 2 {
		t.Fatalf("after one step the seed has children %v, want two", kids)
	}
	w.feed(probePieces+2, 20*time.Millisecond) // each at half the rate
	if got := w.v.children("t", "seed"); len(got) != 1 {
		t.Fatalf("with a full uplink the seed kept children %v, want one", got)
	}
	w.v.s.mu.Lock()
	tk := w.v.s.tasks[tid("t")]
	for _, id := range kids {
		if p := tk.peers[id]; len(p.parents) == 0 {
			t.Errorf("%s was left without a parent", id)
		}
	}
	if h := w.v.s.hosts["host-seed"]; !h.probe.done || h.probe.lim != 1 {
		t.Errorf("probe done %v limit %d, want done at 1", h.probe.done, h.probe.lim)
	}
	w.v.s.mu.Unlock()
	// No new step: the seed stays at one child.
	w.feed(2*probePieces, 10*time.Millisecond)
	if got := w.v.children("t", "seed"); len(got) != 1 {
		t.Errorf("after the probe ended the seed has children %v, want one", got)
	}
	w.v.invariants()
}

// In a small task the seed of unknown capacity keeps its one child: the
// pipeline's hops cost little there, and a seed on the origin's host would
// send the extra pieces from the origin's uplink.
func TestSeedNotProbedInSmallTask(t *testing.T) {
	w := newProbeSwarm(t, probeTaskPeers-10)
	for range 4 {
		w.feed(probePieces+2, 10*time.Millisecond)
	}
	if got := w.v.children("t", "seed"); len(got) != 1 {
		t.Errorf("in a task of %d peers the seed has children %v, want one", probeTaskPeers-10, got)
	}
}

// The probe's cuts take only hosts of the seed's own IDC: a host of
// another moved below the seed makes the content cross between the IDCs
// once more.
func TestSeedProbeCutsOnlyItsIDC(t *testing.T) {
	w := newProbeSwarmIDC(t, 400, "far")
	for range 4 {
		w.feed(probePieces+2, 10*time.Millisecond)
	}
	if got := w.v.children("t", "seed"); len(got) != 1 {
		t.Errorf("the seed has children %v in the other IDC, want its one", got)
	}
	w.v.invariants()
}

// Pieces that complete together are charged to the first (the child's
// core gives the others next to no delivery time): a step counts whole
// groups begun after it, so that neither a group cut at the step's start
// nor one still open at its end gives a rate above the link's.
func TestChildProbeCountsWholeGroups(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	pr := &seedProbe{step: 1, at: t0}
	var c childProbe
	at := t0
	// A group in flight when the step began: its first piece was begun
	// before t0, so the group is left out.
	for i, cost := range []time.Duration{60 * time.Millisecond, time.Microsecond, time.Microsecond} {
		if i == 0 {
			at = at.Add(10 * time.Millisecond)
		}
		c.add(1000, float64(cost), pr, at)
	}
	// Two whole groups of four, 40 ms each: 4000 bytes per 40 ms.
	for range 2 {
		at = at.Add(40 * time.Millisecond)
		c.add(1000, float64(40*time.Millisecond), pr, at)
		for range 3 {
			c.add(1000, float64(time.Microsecond), pr, at)
		}
	}
	// The third group's first piece closes the second; its others are
	// still open and not counted.
	at = at.Add(40 * time.Millisecond)
	c.add(1000, float64(40*time.Millisecond), pr, at)
	if c.n != 8 {
		t.Fatalf("counted %d pieces, want the 8 of the two whole groups", c.n)
	}
	rate := c.bytes / c.cost * 1e9
	if want := 4000 / 0.04; rate < 0.99*want || rate > 1.01*want {
		t.Errorf("rate %.0f B/s, want %.0f", rate, want)
	}
}

// Without declared capacities, R is not the rate of the first few hosts
// the meter measured: receivers it has not seen send yet (the pieces have
// not reached them) count as keeping up. And a source whose uplink was
// probed counts at what one child got from it, not at all it sent.
func TestUndeclaredRateFromUnmeteredAndProbedSource(t *testing.T) {
	v := pipelineVirtual(t, nil)
	v.source("t", "src", withHost(&schedulerv1.Host{Id: "host-src", Hostname: "src", Ip: "127.0.0.1", PeerPort: 65000, UploadPort: 65002}))
	for i := range 20 {
		v.join("t", fmt.Sprint("r", i)).decision()
	}
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	tk := v.s.tasks[tid("t")]
	for i := range 4 {
		m := &tk.peers[fmt.Sprint("r", i)].host.meter
		m.cap, m.capAt, m.lb = 1*mbps, v.now, 1*mbps // measured slow
	}
	tk.peers["r4"].host.meter.lb = 100 * mbps // seen sending, not at its limit
	src := tk.peers["src"].host
	src.meter.lb = 100 * mbps
	v.s.updateRateLocked(tk, v.now)
	if tk.rate < 50*mbps {
		t.Errorf("R %.0f Mbit/s from four slow hosts measured among twenty receivers, want the source's 100", tk.rate/mbps)
	}
	// The source's probe saw one child get 100 Mbit/s; it sent up to
	// 1,000 while it had ten children, and has one now.
	src.probe.ref = 100 * mbps
	src.meter.lb = 1000 * mbps
	v.s.updateRateLocked(tk, v.now)
	if tk.rate > 150*mbps {
		t.Errorf("R %.0f Mbit/s from a probed source that gives a child 100", tk.rate/mbps)
	}
}

// A seed on the origin's host is not probed: each child the probe adds
// would take one more copy of the content over the origin's uplink.
func TestSharedSeedNotProbed(t *testing.T) {
	w := newProbeSwarm(t, 400)
	w.v.s.mu.Lock()
	sd := w.v.s.tasks[tid("t")].peers["seed"]
	sd.ownUplink = false // its origin answered on its host
	w.v.s.mu.Unlock()
	for range 6 {
		w.feed(probePieces+2, 10*time.Millisecond)
	}
	if got := w.v.children("t", "seed"); len(got) != 1 {
		t.Fatalf("after six probe steps the seed on the origin's host has children %v, want one", got)
	}
}
