package scheduler

import "time"

// Probing a seed's uplink (docs/architecture.md, "Capacity"). A seed peer
// of unknown capacity feeds one child, since its uplink is often the
// origin's. In a task of thousands of hosts that one child heads a single
// pipeline thousands of hops deep, and every hop delays every piece: at
// 10,000 simulated hosts and 200 µs a hop the last host finished 4 s after
// the bound, twice the transfer time. The meter cannot tell the seed's
// uplink from one child, which takes only what it can. So in a large task
// the seed's uplink is probed from the pieces its children report: it gets
// a second child while the content has barely started to flow, and twice as
// many again for as long as each child gets about what one got alone. When
// they get clearly less, its uplink is full: it keeps as many children as
// it was seen to feed at that rate, and the others go to the tails of the
// pipelines. Each new slot is filled by cutting the deepest pipeline in
// two, its lower half hanging from the seed.
//
// Each step waits for a few pieces per child, tens of milliseconds at a
// gigabit; a pipeline cut that early costs nothing, since its lower half
// has received next to nothing yet. A seed that shares the origin's
// uplink sends a few pieces to its second child before the first step ends
// (about 2 % of a 500 MiB file at 2 MiB pieces). Below probeTaskPeers peers
// a pipeline's hops cost little (32 hops at 200 µs: 13 ms) and the probe
// is not worth even that.

const (
	// probeTaskPeers: a seed is probed only in a task of more peers.
	probeTaskPeers = 256
	// probePieces: a probe step waits for this many pieces per child in
	// closed groups (childProbe).
	probePieces = 3
	// probeKeep: the seed keeps up with k children when each gets at
	// least this share of the best per-child rate seen.
	probeKeep = 0.85
	// probeMaxChildren: the probe stops doubling at this many children.
	probeMaxChildren = 64
	// probeMinHalf: a pipeline is cut only when its lower half is at
	// least this many hops.
	probeMinHalf = 16
)

// childProbe is what one child of a probed seed reported from it. Pieces
// requested together complete together, and the child's core charges their
// delivery time to the first (the others cost next to nothing,
// PieceResult.cost_ns), so pieces are counted in groups: a piece that cost
// at least probeGroup of its group's first starts a new group. A step of
// the probe counts the groups delivered wholly within it: closed, and
// begun (the first piece's report time less its cost) after the step
// began. (Counted piece by piece, a step that ended inside a group counted
// its cheap pieces without its costly one, and one that began inside a
// group counted the cheap rest alone: children of a seed seemed to get
// five times their 1 Gbit/s downlinks.)
type childProbe struct {
	// The open group: pieces, bytes, delivery time (ns), and when its
	// first piece was begun.
	gn            int
	gbytes, gcost float64
	lead          float64 // the first piece's cost
	begun         time.Time
	// Closed groups counted in step.
	step        uint32
	n           int
	bytes, cost float64
}

// probeGroup: a piece that cost at least this share of its group's first
// piece starts a new group.
const probeGroup = 0.25

// add counts one piece of the given bytes and delivery time (ns), reported
// now, toward pr's current step.
func (c *childProbe) add(bytes, cost float64, pr *seedProbe, now time.Time) {
	if c.step != pr.step {
		c.step, c.n, c.bytes, c.cost = pr.step, 0, 0, 0
	}
	if c.gn > 0 && cost >= probeGroup*c.lead {
		if !c.begun.Before(pr.at) {
			c.n, c.bytes, c.cost = c.n+c.gn, c.bytes+c.gbytes, c.cost+c.gcost
		}
		c.gn, c.gbytes, c.gcost = 0, 0, 0
	}
	if c.gn == 0 {
		c.lead, c.begun = cost, now.Add(-time.Duration(cost))
	}
	c.gn++
	c.gbytes += bytes
	c.gcost += cost
}

// seedProbe is the state of a seed host's uplink probe. It is the host's:
// what it found holds for the host's next large tasks. A seed feeding two
// large tasks at once has its steps begun anew by each (a step is its peer's
// count of children), so its probe waits until one of them ends.
type seedProbe struct {
	lim int // full-rate children allowed; below 2 (not started): one
	// The step, when it began, and the seed peer's full-rate children
	// then (each child counts its pieces in peer.probe).
	step uint32
	at   time.Time
	k    int
	ref  float64 // the best per-child rate seen, bytes/s
	done bool    // its uplink was found full: lim is what it feeds
}

// probing reports whether sp, a seed host's peer, has its children set by
// the uplink probe: capacity-aware, nothing declared or measured by the
// meter, in a task of more than probeTaskPeers peers. An uplink its link
// tests measured does not stop the probe: it may be only what the
// partners' downlinks took.
func (s *Scheduler) probing(sp *peer) bool {
	h := sp.host
	return s.cfg.CapacityAware && h.info.GetSeed() && !sharedSeed(sp) && (h.info.GetUploadBps() <= 0 || h.linkOnly) &&
		h.meter.budget <= 0 && h.meter.cap <= 0 && len(sp.task.list) > probeTaskPeers
}

// probeLocked takes the probe's next step when every child of sp has
// reported enough from it in this step (c just did: peer.probe): more
// children while each gets about what one got alone, else the count it can
// feed.
func (s *Scheduler) probeLocked(sp, c *peer, now time.Time) {
	h := sp.host
	pr := &h.probe
	k := unpacedChildren(sp)
	if pr.done || k == 0 {
		return
	}
	if k != pr.k {
		pr.step++
		pr.k, pr.at = k, now
		return
	}
	var sum, ns float64
	for _, ch := range sp.children {
		if pacedChild(sp, ch) {
			continue
		}
		q := &ch.probe
		if q.step != pr.step || q.n < probePieces {
			return
		}
		sum += q.bytes
		ns += q.cost
	}
	pr.k = 0 // the next report starts a new step
	if ns <= 0 {
		return
	}
	per := sum / ns * 1e9
	if pr.ref == 0 || per >= probeKeep*pr.ref {
		pr.ref = max(pr.ref, per)
		pr.lim = min(2*k, probeMaxChildren)
		pr.done = pr.lim <= k
		if s.debug() {
			s.log.Debug("seed probe: keeps up", "task_id", sp.task.id, "host_id", h.id, "children", k, "per_child_bps", int64(per), "limit", pr.lim)
		}
		s.cutForSeedLocked(sp, now)
		return
	}
	// Its uplink is full: it feeds what it sent at the best rate seen.
	pr.lim = max(1, int(float64(k)*per/pr.ref+0.25))
	pr.done = true
	s.log.Info("seed probe: uplink full", "task_id", sp.task.id, "host_id", h.id, "children", k,
		"per_child_bps", int64(per), "best_per_child_bps", int64(pr.ref), "limit", pr.lim)
	s.trimSeedLocked(sp, now)
}

// cutForSeedLocked fills sp's free full-rate slots by cutting the task's
// deepest pipeline in two: the peer halfway down it leaves its parent for
// sp, with everything below it.
func (s *Scheduler) cutForSeedLocked(sp *peer, now time.Time) {
	for unpacedChildren(sp) < s.childLimit(sp, now) {
		x := s.halfwayDownDeepestLocked(sp.task, localityGroup(sp.host.info))
		if x == nil {
			return
		}
		par := x.parents[0].peer
		s.removeEdge(par, x)
		if !s.linkLocked(sp, x) {
			s.restoreEdgeLocked(par, x, 0)
			return
		}
		s.setSubtreeDepth(x)
		s.sendParentsLocked(x, now)
		if s.debug() {
			s.log.Debug("seed probe: pipeline cut", "task_id", sp.task.id, "peer_id", x.id, "old_parent", par.id, "seed", sp.id)
		}
	}
}

// trimSeedLocked moves sp's full-rate children beyond its limit (the last
// attached first) to be decided again: they go to free parents, the tails
// of other pipelines.
func (s *Scheduler) trimSeedLocked(sp *peer, now time.Time) {
	var moved []*peer
	for i := len(sp.children) - 1; i >= 0 && unpacedChildren(sp) > s.childLimit(sp, now); i-- {
		c := sp.children[i]
		if pacedChild(sp, c) {
			continue
		}
		s.removeEdge(sp, c)
		moved = append(moved, c)
	}
	for _, c := range moved {
		s.decideLocked(c, now, true)
		if pipelineParent(c) != nil {
			// The depth hints below it follow, so that the next one
			// moved does not take its tail for a shallow parent.
			s.setSubtreeDepth(c)
		}
	}
}

// halfwayDownDeepestLocked returns the peer halfway down the longest run
// of peers of locality group g holding no piece yet at the end of one of
// t's pipelines (by full-rate edges from a source), when the run's lower
// half is at least probeMinHalf hops and the peer can be moved (running,
// one full-rate parent and no other); nil otherwise. O(peers of t). Only
// the seed's own group: a host of another IDC moved below the seed makes
// the content cross between them once more (in the simulator's two racks
// the probe's cuts sent 2.9 × F across and the last host fell from 0.51
// to 0.32 of the bound).
//
// A pipeline's hosts start receiving one after another as the first
// pieces go down it, and a host that started keeps its delay: it receives
// no faster than the rate once moved. So the cut is not at the middle of
// the pipeline but of the part that the pieces have not reached: moved
// now, its lower half starts about when the upper half's tail does. (Cut
// at the middle, at 10,000 simulated hosts, the probe's last cuts moved
// hosts that had been receiving for a quarter of a second and kept that
// delay with everyone below them.)
func (s *Scheduler) halfwayDownDeepestLocked(t *task, g string) *peer {
	run := s.depthScratch[:0]
	for range t.list {
		run = append(run, -1)
	}
	defer func() { s.depthScratch = run[:0] }()
	var deepest *peer
	best := int32(0)
	path := s.stack[:0]
	for _, p := range t.list {
		// Up to a peer whose run is known, a source or a peer holding
		// pieces, then down again.
		path = path[:0]
		n := p
		for run[n.listIdx] < 0 {
			up := pipelineParent(n)
			if up == nil || n.state == stateSucceeded || n.state == stateBackToSource || n.pieces.count > 0 ||
				localityGroup(n.host.info) != g {
				run[n.listIdx] = 0
				break
			}
			path = append(path, n)
			if len(path) > len(t.list) {
				s.stack = path[:0]
				return nil // not acyclic: never so, but no loop forever
			}
			n = up
		}
		r := run[n.listIdx]
		for i := len(path) - 1; i >= 0; i-- {
			r++
			run[path[i].listIdx] = r
		}
		if rp := run[p.listIdx]; rp > best && p.state == stateRunning {
			deepest, best = p, rp
		}
	}
	s.stack = path[:0]
	if deepest == nil || best/2 < probeMinHalf {
		return nil
	}
	x := deepest
	for range best / 2 {
		x = pipelineParent(x)
	}
	if x == nil || x.state != stateRunning || len(x.parents) != 1 {
		return nil
	}
	return x
}

// pipelineParent is p's first full-rate parent, nil when none.
func pipelineParent(p *peer) *peer {
	for _, l := range p.parents {
		if l.share == 0 {
			return l.peer
		}
	}
	return nil
}

// setSubtreeDepth sets the depth hint of every peer below x along
// full-rate edges from x's own.
func (s *Scheduler) setSubtreeDepth(x *peer) {
	stack := append(s.stack[:0], x)
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, c := range n.children {
			if !pacedChild(n, c) && pipelineParent(c) == n {
				c.depth = n.depth + 1
				stack = append(stack, c)
			}
		}
	}
	s.stack = stack[:0]
}
