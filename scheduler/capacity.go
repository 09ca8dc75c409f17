package scheduler

import (
	"slices"
	"time"
)

// Capacity-aware distribution (docs/architecture.md, "Capacity"): no peer
// can finish before T* = max(F/u_src, F/d_min, N·F/(u_src+Σu_i)), and T* is
// reached only when every uplink is busy until the end and every receiver
// gets the content at the task's target rate R = F/T*. A host with uplink u
// can then feed u/R receivers: that, not a fixed number, is its count of
// children. A host whose uplink is well below R feeds nobody at the full
// rate, so it sits at a leaf; a fast seed feeds several pipelines at once.

// capacitySmallTask: below this many peers a task's target rate is
// recomputed on every registration (cheap); above it, once per Tick.
const capacitySmallTask = 64

// upCapacity is the rate in bytes/s at which h can pass the content on,
// when known: its uplink declared by its operator (Host.upload_bps), capped
// by its declared downlink (a relay cannot pass pieces on faster than it
// gets them), or measured when the slow-parent rule found it slow (its
// measured rate is then what it gives); 0 when unknown.
func (s *Scheduler) upCapacity(h *host, now time.Time) float64 {
	if u := h.info.GetUploadBps(); u > 0 {
		if d := h.info.GetDownloadBps(); d > 0 && d < u {
			return float64(d)
		}
		return float64(u)
	}
	if now.Before(h.slowUntil) && h.throughput > 0 {
		return h.throughput
	}
	return 0
}

// updateRateLocked recomputes t's target rate R from its peers' known
// capacities: the lesser of the source's uplink and the median of the
// receivers' relay capacities. The median rather than the mean of the fluid
// bound's N·F/(u_src+Σu_i): the bound holds when slow uplinks are used in
// full, which the tree reaches only through several parents per child; the
// median keeps the fast majority at full rate and hangs the slow minority
// below it. The bound's F/d_min term is not the rate of the others: a host
// with a slow downlink only limits itself once it sits at a leaf, which its
// relay capacity (capped by that downlink) sees to. 0 when no capacity is
// known.
func (s *Scheduler) updateRateLocked(t *task, now time.Time) {
	t.rate = 0
	if !s.cfg.CapacityAware {
		return
	}
	ups, measured := s.rateScratch[:0], s.measuredScratch[:0]
	src := 0.0
	for _, p := range t.list {
		if p.state == stateLeft {
			continue
		}
		if p.host.info.GetUploadBps() <= 0 {
			// Undeclared: what children measured, whatever it is, stands
			// in for the rate when nobody declared anything.
			if h := p.host; h.throughput > 0 && h.successes >= uint64(s.cfg.SlowParentSamples) {
				measured = append(measured, h.throughput)
			}
			continue
		}
		u := s.upCapacity(p.host, now)
		if p.state == stateBackToSource || p.state == stateSucceeded {
			src = max(src, u)
			continue
		}
		ups = append(ups, u)
	}
	if len(ups) == 0 {
		// Nobody declared a capacity: the rate is the median of the
		// measured ones, so that a host the slow-parent rule measured
		// slow (its capacity then; upCapacity) is judged against it.
		ups, measured = measured, ups
	}
	s.measuredScratch = measured[:0]
	r := 0.0
	if len(ups) > 0 {
		slices.Sort(ups)
		r = ups[len(ups)/2]
	}
	if src > 0 && (r == 0 || src < r) {
		r = src
	}
	t.rate = r
	s.rateScratch = ups[:0]
}

// childLimit is how many children c may serve in its task (in one locality
// group); -1 when only its host's upload slots bound it. With a known
// capacity and target rate it is u/R rounded (a host at a tenth of R gets
// none, one at ten times R gets ten); otherwise MaxChildren. A seed host
// whose capacity is unknown serves one child: it often shares its uplink
// with the origin, which should carry the content about once.
func (s *Scheduler) childLimit(c *peer, now time.Time) int {
	if r := c.task.rate; r > 0 {
		if u := s.upCapacity(c.host, now); u > 0 {
			return int(u/r + 0.25)
		}
	}
	if c.host.info.GetSeed() && s.cfg.CapacityAware {
		return 1
	}
	if s.cfg.MaxChildren > 0 {
		return s.cfg.MaxChildren
	}
	return -1
}

// childrenFull reports whether c serves as many children in group as its
// limit allows.
func (s *Scheduler) childrenFull(c *peer, group string, now time.Time) bool {
	lim := s.childLimit(c, now)
	return lim >= 0 && childrenIn(c, group) >= lim
}

// slowHost reports whether c's uplink is known to feed no child at the
// task's target rate.
func (s *Scheduler) slowHost(c *peer, now time.Time) bool {
	return c.task.rate > 0 && s.childLimit(c, now) == 0
}

// preferLeafSplits orders the candidates that have no free slot, from
// which p must take a share of someone's uplink, and returns how many of
// them, first in full, are preferred: not a seed host (its uplink is the
// origin's, which should carry the content about once), not a host known
// to be slow (a share of a fast uplink beats a whole slow one, and the slow
// host stays a leaf), and among the rest those whose children are all
// leaves, since splitting an uplink then slows only those leaves and not a
// whole pipeline below them. Each preference applies only when some
// candidate meets it; the others stay in full, after the preferred ones, to
// be tried when none of those can take p (all would close a cycle).
func (s *Scheduler) preferLeafSplits(p *peer, full []*peer, now time.Time) int {
	n := len(full)
	if !s.cfg.CapacityAware || n < 2 {
		return n
	}
	keep := func(f func(*peer) bool) {
		m := 0
		for i := range n {
			if f(full[i]) {
				full[m], full[i] = full[i], full[m]
				m++
			}
		}
		if m > 0 {
			n = m
		}
	}
	keep(func(c *peer) bool { return !c.host.info.GetSeed() })
	if !s.slowHost(p, now) {
		keep(func(c *peer) bool { return !s.slowHost(c, now) })
		keep(func(c *peer) bool { return s.feedsLeaves(c, now) })
		return n
	}
	// A slow newcomer relays to nobody: it takes the largest share of an
	// uplink that feeds no relay, a slow host's idle one included, so that
	// slow hosts do not pile up below the pipeline's tail, each getting
	// a sliver of it, but hang in slow branches below it.
	keep(func(c *peer) bool { return s.feedsLeaves(c, now) })
	best := 0.0
	for _, c := range full[:n] {
		best = max(best, s.share(c, now))
	}
	keep(func(c *peer) bool { return s.share(c, now) >= 0.9*best })
	return n
}

// share is what one more child of c would get of its uplink: its capacity
// (the task's rate when unknown) over its children and the newcomer.
func (s *Scheduler) share(c *peer, now time.Time) float64 {
	u := s.upCapacity(c.host, now)
	if u <= 0 {
		u = c.task.rate
	}
	return u / float64(len(c.children)+1)
}

// slowBranch reports whether y and all below it are slow hosts, each with
// one parent, downloading: a branch that relays to no fast host, which may
// hang anywhere without holding back a pipeline. It looks at no more than
// budget peers (false beyond).
func (s *Scheduler) slowBranch(y *peer, now time.Time, budget *int) bool {
	if *budget--; *budget < 0 || y.state != stateRunning || len(y.parents) != 1 || !s.slowHost(y, now) {
		return false
	}
	for _, c := range y.children {
		if !s.slowBranch(c, now, budget) {
			return false
		}
	}
	return true
}

// slowBranchBudget bounds the peers one slowBranch check visits.
const slowBranchBudget = 64

// feedsLeaves reports whether every child of c is a leaf or a slow
// branch: sharing c's uplink then slows no relay of a fast host.
func (s *Scheduler) feedsLeaves(c *peer, now time.Time) bool {
	for _, ch := range c.children {
		if len(ch.children) > 0 {
			budget := slowBranchBudget
			if !s.slowBranch(ch, now, &budget) {
				return false
			}
		}
	}
	return true
}

// displaceSlowLeafLocked gives p, a newcomer with an uplink fit to relay,
// the place of the slow leaves below a full parent x when no parent has a
// free slot: x→y₁…yₖ becomes x→p→y₁…yₖ. A slow uplink above a fast one
// would hold back everyone below it; at a leaf it holds back nobody. All of
// x's slow leaves move, so that x feeds p alone and p's uplink, at the end
// of the pipeline, is what the slow leaves share. It reports whether it
// did.
func (s *Scheduler) displaceSlowLeafLocked(p *peer, full []*peer, group string, now time.Time) bool {
	if len(p.parents) > 0 || len(p.children) > 0 || s.childLimit(p, now) == 0 || p.task.rate <= 0 {
		return false
	}
	isSlowLeaf := func(y *peer) bool {
		if _, bad := y.bad[p.id]; bad {
			return false // y reported p: never its parent
		}
		if localityGroup(y.host.info) != group || y.host == p.host {
			return false
		}
		budget := slowBranchBudget
		return s.slowBranch(y, now, &budget)
	}
	for _, x := range full {
		if x.host.info.GetSeed() && len(full) > 1 {
			continue
		}
		if _, bad := p.bad[x.id]; bad || !slices.ContainsFunc(x.children, isSlowLeaf) {
			continue
		}
		// x must have room for p once its slow leaves are gone: a parent
		// that also feeds a pipeline member would split its uplink.
		rest := 0
		for _, y := range x.children {
			if !isSlowLeaf(y) {
				rest++
			}
		}
		if lim := max(s.childLimit(x, now), 1); rest+1 > lim {
			continue
		}
		var moved []*peer
		for i := 0; i < len(x.children); i++ {
			if y := x.children[i]; isSlowLeaf(y) {
				s.removeEdge(x, y)
				moved = append(moved, y)
				i--
			}
		}
		if !s.linkLocked(x, p) {
			for _, y := range moved {
				s.linkLocked(x, y)
			}
			continue
		}
		for _, y := range moved {
			if !s.linkLocked(p, y) {
				s.linkLocked(x, y) // cannot happen: y is a leaf and p new
			}
			s.sendParentsLocked(y, now)
		}
		s.log.Debug("slow leaves displaced", "task_id", p.task.id, "peer_id", p.id, "parent", x.id, "leaves", len(moved))
		return true
	}
	return false
}

// crowdLocked records that p shares an uplink that has no room for it.
func (s *Scheduler) crowdLocked(p *peer) {
	if !p.crowded {
		p.crowded = true
		p.task.crowded = append(p.task.crowded, p)
	}
}

// oversubscribed reports whether x feeds more children than its uplink has
// room for, or is known slow while feeding any.
func (s *Scheduler) oversubscribed(x *peer, now time.Time) bool {
	if len(x.children) == 0 {
		return false
	}
	lim := s.childLimit(x, now)
	return (lim >= 0 && len(x.children) > lim) || x.host.used > x.host.slots || now.Before(x.host.slowUntil)
}

// rehomeBatch bounds the peers one event rehomes; the Tick goes on.
const rehomeBatch = 16

// rehomeLocked moves peers that share a full or slow uplink to parents with
// a free slot, as soon as there are any: capacity freed by a peer that
// finished or left is used at once, not at the next timer. A peer whose
// parent has room for it again is left alone.
func (s *Scheduler) rehomeLocked(t *task, now time.Time) {
	for n := 0; n < rehomeBatch && len(t.crowded) > 0 && len(t.open) > 0; n++ {
		c := t.crowded[len(t.crowded)-1]
		t.crowded[len(t.crowded)-1] = nil
		t.crowded = t.crowded[:len(t.crowded)-1]
		c.crowded = false
		if c.state != stateRunning || len(c.parents) != 1 || t.unverifiable() {
			continue
		}
		x := c.parents[0].peer
		if !s.oversubscribed(x, now) {
			continue
		}
		s.removeEdge(x, c)
		s.fillFreeOnly, s.fillExclude = true, x
		moved := s.fillParentsLocked(c, false)
		s.fillFreeOnly, s.fillExclude = false, nil
		if !moved {
			s.linkLocked(x, c)
			s.crowdLocked(c)
			return // no free slot takes it: none will take the others
		}
		s.sendParentsLocked(c, now)
		s.log.Debug("crowded peer rehomed", "task_id", t.id, "peer_id", c.id, "from", x.id, "to", c.parents[0].peer.id)
	}
}
