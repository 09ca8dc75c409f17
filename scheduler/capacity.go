package scheduler

import (
	"slices"
	"time"

	"github.com/damselfly-io/damselfly/core"
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
		if d := declaredDownlink(h); d > 0 && d < u {
			return float64(d)
		}
		return declaredUplink(h)
	}
	if c := knownUp(h); c > 0 {
		return c // measured while it was the bottleneck (meter.go), or the budget it was told
	}
	if now.Before(h.slowUntil) && h.throughput > 0 {
		return h.throughput
	}
	return 0
}

// uplink is h's upload capacity in bytes/s for sharing out among children:
// as upCapacity but not capped by the downlink, since a relay receives a
// piece once and sends it to each child (a seed on a 10 Gbit/s uplink fed
// at 1 Gbit/s feeds ten 1 Gbit/s pipelines); 0 when unknown.
func (s *Scheduler) uplink(h *host, now time.Time) float64 {
	if h.info.GetUploadBps() > 0 {
		return declaredUplink(h)
	}
	return s.upCapacity(h, now)
}

// declaredUplink is the part of h's declared uplink that its uploads may
// take: on a link much slower up than down, the download's ACKs need
// their share, and the daemon paces its uploads to leave it
// (core.UsableUplink).
func declaredUplink(h *host) float64 {
	return float64(core.UsableUplink(h.info.GetUploadBps(), h.info.GetDownloadBps()))
}

// declaredDownlink is h's downlink in bytes/s as its operator declared it;
// 0 when undeclared. A downlink its link tests measured is a lower bound
// only (the best rate a partner's uplink pushed into it: on the harness a
// 25 Mbit/s downlink measured 6.7 Mbit/s, and several at 15-16 Mbit/s,
// below the task's rate of 18), so it caps nothing: taken as a cap, it
// kept paced receivers under the rate their downlinks could take.
func declaredDownlink(h *host) int64 {
	if h.linkDown {
		return 0
	}
	return h.info.GetDownloadBps()
}

// sharedSeed reports whether c is a seed host's peer whose uplink may be
// the origin's: its origin answered from its own host, or its operator
// said the origins share its uplink (TaskMeta.origin_on_host), or it has
// not said (it did not fetch the task from the origin, or has not got the
// content's shape yet). The origin's uplink should carry the content about
// once, so such a seed keeps one child and gives no paced shares. A seed
// whose fetch came from another host has an uplink of its own and is used
// as any host's: held to one child, on the harness's spread its 25 Mbit/s
// sat idle from the time its one child had the content (a third of the
// download) while the last hosts waited.
func sharedSeed(c *peer) bool { return c.host.info.GetSeed() && !c.ownUplink }

// updateRateLocked recomputes t's target rate R from its peers' known
// capacities: the lesser of the source's uplink and the median of the
// receivers' relay capacities, or the fluid bound's mean (u_src+Σu_i)/N
// where that is higher (below). Where a slow minority pulls the mean below
// the median, the median keeps the fast majority at full rate and hangs the
// slow minority below it at paced shares of the mean. The bound's F/d_min
// term is not the rate of the others: a host with a slow downlink only
// limits itself once it sits at a leaf, which its relay capacity (capped by
// that downlink) sees to. 0 when no capacity is known.
func (s *Scheduler) updateRateLocked(t *task, now time.Time) {
	t.rate, t.fluid = 0, 0
	if !s.cfg.CapacityAware {
		return
	}
	ups, measured := s.rateScratch[:0], s.measuredScratch[:0]
	src, known, unknown, unmetered, lbMax, doneMax := 0.0, 0, 0, 0, 0.0, 0.0
	recv, done := 0, 0
	for _, p := range t.list {
		if p.state == stateLeft {
			continue
		}
		source := p.state == stateBackToSource || p.state == stateSucceeded
		switch {
		case !source:
			recv++
		case p.state == stateSucceeded && !p.host.info.GetSeed():
			done++
		}
		switch h := p.host; {
		case knownUp(h) > 0:
			u := s.upCapacity(h, now)
			known++
			if source {
				src = max(src, s.sourceRate(p, u))
				if p.state == stateSucceeded && p.depth > 0 && !h.info.GetSeed() {
					// A receiver that finished (it had a full-rate
					// parent), not the origin's fetcher nor a seed.
					doneMax = max(doneMax, u)
				}
			} else {
				ups = append(ups, u)
			}
		case h.meter.lb > 0:
			// Undeclared and never seen at its limit: it gave at least
			// lb. Presumed to keep up with R (a relay fed slowly shows a
			// low lb however fast its uplink); the meter tells when it
			// does not.
			lbMax = max(lbMax, h.meter.lb)
			if source {
				src = max(src, s.sourceRate(p, h.meter.lb))
			} else {
				unknown++
			}
		default:
			// Nothing metered yet: what children measured per piece,
			// whatever it is, stands in for the rate when nobody
			// declared anything.
			if h.throughput > 0 && h.successes >= uint64(s.cfg.SlowParentSamples) {
				measured = append(measured, h.throughput)
			}
			if !source {
				unmetered++
			}
		}
	}
	if len(ups)+unknown > 0 {
		// Receivers the meter has not seen send yet (deep in a long
		// pipeline the pieces have not reached them) are presumed to
		// keep up like those it saw: left out, they left the median to
		// the few slow hosts measured first (at 1,000 simulated hosts,
		// R was a slow host's rate at t = 2 s).
		unknown += unmetered
	} else {
		// Nothing known or metered: the rate is the median of what
		// children measured per piece, so that a host the slow-parent
		// rule measured slow (its capacity then; upCapacity) is judged
		// against it.
		ups, measured = measured, ups
	}
	s.measuredScratch = measured[:0]
	r, sum := 0.0, 0.0
	t.rateHi = 0
	if n := len(ups) + unknown; n > 0 {
		for _, u := range ups {
			sum += u
		}
		slices.Sort(ups)
		if n < minRateSample && len(ups) > 0 {
			t.rateHi = ups[len(ups)-1]
		}
		// The unknown ones count above every known capacity.
		if i := n / 2; i < len(ups) {
			r = ups[i]
		}
		if n < minRateSample && s.declaredMedian > 0 && unknown == 0 {
			// Too few receivers to tell the task's rate: those that
			// registered first say little about those to come. The
			// median of the hosts connected stands in. (On the harness
			// the seed peer came when only three slow hosts and one fast
			// had registered: R fell to the slow hosts' 2.5 Mbit/s, the
			// seed took three children at once and sent 3 × F.)
			r = s.declaredMedian
		}
	}
	if src > 0 && (r == 0 || src < r) {
		r = src
	}
	if r == 0 {
		r = lbMax // only lower bounds, and no source: the fastest seen
	}
	t.rate = r
	switch {
	case done > t.doneN:
		t.joining = false
	case recv+done > t.recvN+t.doneN:
		t.joining = true
	}
	t.recvN, t.doneN = recv, done
	// The fluid bound's rate: all the uplink there is (the source's and
	// the receivers') over the receivers. Only when some capacity is known
	// (declared, or measured at the bottleneck): a lower bound tells what a
	// host gave, not what it could spare, and shares booked on it starve
	// their children (paced shares are off). Hosts of unknown capacity
	// count at the median.
	t.fluid = 0
	if known > 0 {
		n := float64(len(ups) + unknown)
		sum += float64(unknown) * r
		mean := (src + sum) / n
		switch {
		case mean <= r:
			// Slow uplinks pull the mean below the median (mixed): the
			// fast majority keeps the median, and paced shares are
			// booked at the mean.
			t.fluid = mean
		case src > 0 && src <= r:
			t.fluid = r // the source is what limits
		default:
			// The mean above the median: at the median, the hosts
			// between the two relay at less than the rate the bound
			// gives every receiver, the pipeline below them runs at
			// their uplinks, and no paced share exceeds the median. At
			// the mean they sit at leaves and get the mean from the
			// faster uplinks' spare (the simulator's spread at 16
			// hosts: a median of 14 Mbit/s against a mean of 16.7; the
			// pipeline's lower half ran at 12-14, the last host at
			// 0.68 of the bound, 0.79 at the mean). Never above the
			// source, nor above the fastest receiver: a source much
			// faster than the receivers lifts the mean above every one
			// of them (a 10 Gbit/s seed and ten 1 Gbit/s hosts: 2), and
			// none would relay. Receivers that finished count with the
			// others there: near the end the fast ones are done, and
			// the slow ones left are best fed at the mean from their
			// uplinks (the simulator's spread, 16 hosts, one draw: the
			// last host at 0.75 of the bound capped by the receivers
			// alone, 0.80 so).
			if src > 0 {
				mean = min(mean, src)
			}
			if len(ups) > 0 {
				t.rate = max(r, min(mean, max(ups[len(ups)-1], doneMax)))
			}
			t.fluid = t.rate
		}
	}
	if t.paced > 0 {
		s.trimPacedLocked(t, now)
	}
	s.rateScratch = ups[:0]
}

// sourceRate is what the source p, of uplink u, gives one full-rate child:
// u when declared; when measured, the best rate its uplink probe saw one
// child get (probe.go), else u over its full-rate children. A seed whose probe
// gave it ten children sends ten times the task's rate, and counted whole
// it made R ten times too high; u over its children is too high as well
// once children left (u is the most it sent, decaying slowly).
func (s *Scheduler) sourceRate(p *peer, u float64) float64 {
	if p.host.info.GetUploadBps() > 0 && !(p.host.linkOnly && s.probing(p)) {
		return u
	}
	if ref := p.host.probe.ref; ref > 0 {
		return ref
	}
	return u / float64(max(1, unpacedChildren(p)))
}

// childLimit is how many children c may serve in its task (in one locality
// group); -1 when only its host's upload slots bound it. With a known
// capacity and target rate it is u/R rounded (a host at a tenth of R gets
// none, one at ten times R gets ten); otherwise MaxChildren. A seed host
// that may share its uplink with the origin (sharedSeed), which should
// carry the content about once, serves one child, however fast its
// uplink, and no new one once the seed hosts have sent the content once.
func (s *Scheduler) childLimit(c *peer, now time.Time) int {
	lim := -1
	if s.cfg.MaxChildren > 0 {
		lim = s.cfg.MaxChildren
	}
	if r := c.task.rate; r > 0 {
		if u := s.uplink(c.host, now); u > 0 {
			if relay := s.upCapacity(c.host, now); childrenAt(relay, r) == 0 {
				return 0 // it gets the content too slowly to feed anyone at R
			}
			lim = childrenAt(u, r)
		}
	}
	if sharedSeed(c) && s.cfg.CapacityAware && (lim < 0 || lim > 1) {
		// Each full-rate child takes the whole content from it: two
		// children are two copies over the origin's uplink, whatever that
		// uplink could feed. Known at 24 Mbit/s with R at 12.4 (half the
		// hosts ten times slower), the seed took two children when its
		// measured uplink came out at 1.95 R or more, and the origin's
		// host sent 2.0 × F in 5 of 26 runs on the harness.
		lim = 1
	}
	if pl := c.host.probe.lim; pl > 1 && s.probing(c) {
		lim = pl // its uplink probed in a large task (probe.go)
	}
	if c.host.info.GetSeed() && s.cfg.CapacityAware && lim > 1 && c.task.rateHi > c.task.rate {
		// Few receivers yet: the rate may rise as the others come, and
		// the seed's children stay (they hold its uplink for the whole
		// download). Counted at the fastest receiver's rate as well, a
		// seed of 25 Mbit/s whose first receivers were at 5, 11 and 17
		// takes one child, not two pipelines at 12.5 each that stayed
		// there when R rose to 17 (the simulator's spread, peers
		// registering 50 ms apart; on the harness, the runs of spread
		// below 0.7 of the bound).
		if u := s.uplink(c.host, now); u > 0 {
			lim = max(1, min(lim, childrenAt(u, c.task.rateHi)))
		}
	}
	if sharedSeed(c) && s.cfg.CapacityAware && lim == 1 {
		if t := c.task; t.contentLength > 0 && t.seedSent >= t.contentLength {
			// The seed hosts have sent the content once: the children
			// they have stay, no new one comes. With the seed peer on
			// the origin's host (it fetches over loopback and is done in
			// a second), its holder otherwise took a new child each time
			// its one child finished (or a slow leaf, once its pipeline
			// child was done), and the origin's uplink carried the
			// content up to twice.
			return min(1, unpacedChildren(c))
		}
	}
	return lim
}

// childrenFull reports whether c serves as many children as its limit
// allows (counted in group alone when capacities are not used).
func (s *Scheduler) childrenFull(c *peer, group string, now time.Time) bool {
	lim := s.childLimit(c, now)
	var n int
	if !s.cfg.CapacityAware {
		n = childrenIn(c, group)
	} else {
		// The capacity-aware scheduler counts a host's children in all
		// IDCs: its uplink is one. Counted per IDC, the head of another
		// IDC's pipeline hung below the shallowest host of the first and
		// halved both pipelines (the simulator's two racks with as fast a
		// link between them as the hosts' ran at 0.50 of the bound; 0.01,
		// with 78 × F from the origin, at 200 hosts). It now takes a host
		// with no child, the tail of that pipeline, and a newcomer of the
		// first IDC takes the head's place above it
		// (displaceCrossHeadLocked).
		n = unpacedChildren(c)
	}
	return (lim >= 0 && n >= lim) || s.bookedFull(c, 0, now)
}

// bookedFull reports whether the shares booked on c, less release of them,
// leave no room for one more child at the fluid rate: the slot went to
// paced children, whose shares would otherwise be trimmed when it is taken.
func (s *Scheduler) bookedFull(c *peer, release float64, now time.Time) bool {
	if c.pacedKids == 0 || c.task.fluid <= 0 {
		return false
	}
	u := s.shareBase(c.host, now)
	return u-pacedFluid(c)*float64(unpacedChildren(c)+1)-(c.booked-release) < -0.02*u
}

// shareBase is the uplink that h's shares are booked against: its known
// capacity, else the most its meter saw it send (what it surely has;
// booking more starves its children); 0 when neither.
func (s *Scheduler) shareBase(h *host, now time.Time) float64 {
	if knownUp(h) > 0 {
		return s.uplink(h, now)
	}
	return h.meter.lb
}

// slowHost reports whether c's uplink is known to feed no child at the
// task's target rate.
func (s *Scheduler) slowHost(c *peer, now time.Time) bool {
	return c.task.rate > 0 && s.childLimit(c, now) == 0
}

// preferLeafSplits orders the candidates that have no free slot, from
// which p must take a share of someone's uplink, and returns how many of
// them, first in full, are preferred: not a seed host that may share the
// origin's uplink (sharedSeed: it should carry the content about once), not a host known
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
	keep(func(c *peer) bool { return !sharedSeed(c) })
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
	u := s.uplink(c.host, now)
	if u <= 0 {
		u = c.task.rate
	}
	sh := u / float64(unpacedChildren(c)+1)
	if relay := s.upCapacity(c.host, now); relay > 0 && relay < sh {
		sh = relay // no child gets it faster than c does
	}
	return sh
}

// slowBranch reports whether y and all below it are slow hosts, each with
// one full-rate parent, downloading: a branch that relays to no fast host,
// which may hang anywhere without holding back a pipeline. Paced parents
// beside the full-rate one (top-ups) do not change that: they go with y
// wherever its full-rate edge is moved. It looks at no more than budget
// peers (false beyond).
func (s *Scheduler) slowBranch(y *peer, now time.Time, budget *int) bool {
	if *budget--; *budget < 0 || y.state != stateRunning || fullParent(y) == nil || !s.slowHost(y, now) {
		return false
	}
	for _, c := range y.children {
		if pacedChild(y, c) {
			continue // a paced share of y's idle uplink: not below y in the tree
		}
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
		if len(ch.children) > 0 && !pacedChild(c, ch) {
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
	// A slow leaf of x: fed by x at the full rate (a paced child of x
	// keeps its share where it is).
	isSlowLeaf := func(x, y *peer) bool {
		if pacedChild(x, y) {
			return false
		}
		if _, bad := y.bad[p.id]; bad {
			return false // y reported p: never its parent
		}
		if localityGroup(y.host.info) != group || y.host == p.host {
			return false
		}
		budget := slowBranchBudget
		return s.slowBranch(y, now, &budget)
	}
	// Other hosts' slow leaves first, the seed's last: a slow leaf there
	// holds the seed's one slot, and with it everything the pipeline gets
	// (on the harness, a slow host first in the seed's wait list fed all
	// the fast hosts at its 2.5 Mbit/s for two minutes).
	if i := slices.IndexFunc(full, func(x *peer) bool { return x.host.info.GetSeed() }); i >= 0 && i < len(full)-1 {
		full = append(append(full[:i:i], full[i+1:]...), full[i])
	}
	for _, x := range full {
		if s.slowHost(x, now) {
			continue // a slow uplink above p would hold back all below it
		}
		leafOfX := func(y *peer) bool { return isSlowLeaf(x, y) }
		if _, bad := p.bad[x.id]; bad || !slices.ContainsFunc(x.children, leafOfX) {
			continue
		}
		// x must have room for p once its slow leaves are gone: a parent
		// that also feeds a pipeline member would split its uplink.
		rest := 0
		for _, y := range x.children {
			if !leafOfX(y) && !pacedChild(x, y) {
				rest++
			}
		}
		if lim := max(s.childLimit(x, now), 1); rest+1 > lim {
			continue
		}
		moved := s.interposeLocked(x, p, leafOfX)
		if moved == nil {
			continue
		}
		for _, y := range moved {
			if lim := s.childLimit(p, now); lim >= 0 && len(moved) > lim {
				s.crowdLocked(y) // they split p's uplink: paced parents may do better
			}
			s.sendParentsLocked(y, now)
		}
		s.log.Debug("slow leaves displaced", "task_id", p.task.id, "peer_id", p.id, "parent", x.id, "leaves", len(moved))
		return true
	}
	return false
}

// interposeLocked puts p, a newcomer, between x and the children of x that
// take selects (x→y becomes x→p→y) and returns those children; nil, with
// nothing changed, when x refuses p. The caller tells them.
func (s *Scheduler) interposeLocked(x, p *peer, take func(*peer) bool) []*peer {
	var moved []*peer
	var shares []float64
	for i := 0; i < len(x.children); i++ {
		if y := x.children[i]; take(y) {
			j := parentIndex(y, x)
			shares = append(shares, y.parents[j].share)
			s.removeEdge(x, y)
			moved = append(moved, y)
			i-- // the last child took its place
		}
	}
	if !s.linkLocked(x, p) {
		for i, y := range moved {
			s.restoreEdgeLocked(x, y, shares[i])
		}
		return nil
	}
	for _, y := range moved {
		if !s.linkLocked(p, y) {
			s.linkLocked(x, y) // cannot happen: p is new, so no cycle
		}
	}
	return moved
}

// restoreEdgeLocked puts back parent→child, removed for a move that did not
// happen, with its share. The edge can be refused: a reorder made while the
// move was searched may have put child before parent, and the search that
// would set that right is bounded (maxReorder). A child left without parents
// that way is decided again at the flush; until then it is kept out of the
// pool as a peer with neither pieces nor a parent. It reports whether the
// edge is back.
func (s *Scheduler) restoreEdgeLocked(parent, child *peer, share float64) bool {
	if s.linkShareLocked(parent, child, share) {
		return true
	}
	if len(child.parents) == 0 {
		s.updatePoolLocked(child)
		s.unpaced = append(s.unpaced, child)
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
	if unpacedChildren(x) == 0 {
		return false
	}
	lim := s.childLimit(x, now)
	return (lim >= 0 && unpacedChildren(x) > lim) || x.host.used > x.host.slots || now.Before(x.host.slowUntil)
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
		if c.state != stateRunning || len(c.parents) != 1 || c.parents[0].share > 0 || t.unverifiable() {
			// (A paced child has its booked share, not a slot on a full
			// uplink: it is no longer crowded.)
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
			if !s.restoreEdgeLocked(x, c, 0) {
				continue
			}
			s.crowdLocked(c)
			return // no free slot takes it: none will take the others
		}
		s.sendParentsLocked(c, now)
		s.log.Debug("crowded peer rehomed", "task_id", t.id, "peer_id", c.id, "from", x.id, "to", c.parents[0].peer.id)
	}
}

// unpacedChildren counts c's children that take its uplink unpaced: those
// its child limit counts.
func unpacedChildren(c *peer) int { return len(c.children) - c.pacedKids }

// pacedChild reports whether ch takes a paced share of c's uplink.
func pacedChild(c, ch *peer) bool {
	if c.pacedKids == 0 {
		return false // no paced child at all: no need to look
	}
	for _, l := range ch.parents {
		if l.peer == c {
			return l.share > 0
		}
	}
	return false
}

// spare is what c's uplink has left once its unpaced children get the
// task's fluid rate each and its paced children their booked shares, in
// bytes/s; 0 when its capacity is unknown.
func (s *Scheduler) spare(c *peer, now time.Time) float64 {
	u := s.shareBase(c.host, now)
	if u <= 0 || c.task.fluid <= 0 {
		return 0
	}
	return max(0, u-c.task.fluid*float64(unpacedChildren(c))-c.booked)
}

// feedsRelay reports whether one of x's unpaced children relays to a
// child of its own at the full rate: a peer that splits x's uplink with it
// holds back that pipeline.
func feedsRelay(x *peer) bool {
	for _, ch := range x.children {
		if !pacedChild(x, ch) && unpacedChildren(ch) > 0 {
			return true
		}
	}
	return false
}

// pacedRehomeBatch bounds the peers one pacedRehomeLocked call tries to
// move (each try is one candidate walk).
const pacedRehomeBatch = 2

// maxPacedParents bounds the paced parents one receiver gets; minPacedShare
// is the smallest share worth a parent, as a fraction of the fluid rate.
const (
	maxPacedParents = 16
	minPacedShare   = 1.0 / 32
)

// pacedLocked gives p, a receiver with no parent that found no candidate
// with a full-rate slot (full holds the sampled candidates without one,
// the first pref preferred; spareC those with room for a share), several
// paced parents instead of a share of one full uplink: the candidates'
// spare capacities, largest first, until they sum
// to the task's fluid rate (or p's downlink). Each share is booked on its
// parent so no spare is handed out twice, and the child paces its requests
// to it (PeerInfo.share_bps): taking a parent's spare then leaves its other
// children their rate, where an unpaced extra child would halve it while
// both transfer. Seeds that may share the origin's uplink give nothing
// (sharedSeed); slow hosts' idle uplinks are used. It links only when the spares sum to
// more than p would get by splitting the best of the preferred full
// uplinks (the split it would take otherwise), and reports
// whether it linked any.
func (s *Scheduler) pacedLocked(p *peer, full []*peer, pref int, spareC []*peer, group string, now time.Time) bool {
	t := p.task
	if !s.cfg.PacedShares || !s.cfg.CapacityAware || t.fluid <= 0 || (len(p.parents) > 0 && !s.pacedTopUp) || len(full) == 0 {
		return false
	}
	want := s.pacedWant(p)
	have := 0.0
	for _, l := range p.parents {
		have += l.share
	}
	want -= have
	cands := s.pacedScratch[:0]
	defer func() {
		clear(cands)
		s.pacedScratch = cands[:0]
	}()
	split := 0.0 // the best split of a full uplink: the rule without shares
	add := func(c *peer) {
		if sharedSeed(c) || c.host == p.host || localityGroup(c.host.info) != group {
			return
		}
		if s.pacedRelief && !servesNew(c, p) {
			// A slow leaf giving way takes only parents ahead of it, as
			// a top-up does: another slow receiver's idle uplink, level
			// with it, gave it nothing new, and it left the swarm for
			// the origin (the simulator's mixed with slow downlinks,
			// 1.98 × F from the origin).
			return
		}
		sp := s.spare(c, now)
		if sp < minPacedShare*t.fluid {
			return
		}
		// Last, as the one check that walks (up p's pipeline, at most
		// fedThroughScan hops): most sampled hosts without a free slot
		// have no spare either.
		if fedThrough(c, p) {
			// Its every piece comes through p: booked as a share, it
			// gives p nothing, and p stays short by what it was booked.
			if s.debug() {
				s.log.Debug("paced parent fed through the receiver skipped", "task_id", t.id, "peer_id", p.id, "parent_id", c.id)
			}
			return
		}
		cands = append(cands, pacedCand{c, sp})
	}
	for i, c := range full {
		if i < pref {
			// (Those after pref are split only when none of these can
			// take p: what p would get is one of these shares.)
			split = max(split, s.share(c, now))
		}
		add(c)
	}
	// Hosts with room that the sample of full ones let go (in a small
	// task it holds them all, and this adds none).
	for _, c := range spareC {
		if !slices.ContainsFunc(cands, func(pc pacedCand) bool { return pc.peer == c }) {
			add(c)
		}
	}
	slices.SortFunc(cands, func(a, b pacedCand) int {
		switch {
		case a.spare > b.spare:
			return -1
		case a.spare < b.spare:
			return 1
		}
		return 0
	})
	total := 0.0
	n := len(p.parents)
	if s.pacedTopUp || s.pacedRelief {
		split = 0 // any more is better than what p has, or p gives way
	}
	for _, c := range cands {
		if n == maxPacedParents || total >= want {
			break
		}
		total += min(c.spare, want-total)
		n++
	}
	if total <= max(split, s.pacedMin) || total < minPacedShare*t.fluid {
		return false
	}
	got, added, base := 0.0, 0, len(p.parents)
	for _, c := range cands {
		if base+added >= maxPacedParents || got >= want*0.99 {
			break
		}
		sh := min(c.spare, want-got)
		if s.linkShareLocked(c.peer, p, sh) {
			got += sh
			added++
		}
	}
	if added > 0 && s.debug() {
		s.log.Debug("paced parents", "task_id", t.id, "peer_id", p.id, "parents", added, "share_bps", int64(got), "want_bps", int64(want))
	}
	return added > 0
}

// fedThroughScan bounds the hops fedThrough walks up a pipeline.
const fedThroughScan = 64

// fedThrough reports whether c, downloading, gets every piece it holds
// through p: c and each relay between them up to p have one parent, a
// full-rate one (a pipeline below p with no other source), so c never holds
// a piece p lacks. Paced edges are not in the topological order, so a
// receiver given paced parents again (its first ones moved or trimmed)
// could be given its own pipeline: on the harness's spread at N = 16 and
// 100 Mbit/s, the head of the second pipeline was booked 3 MB/s from its
// own tail, six hops below it, which delivered an eighth of that, and the
// six hosts of that pipeline took in 55-60 Mbit/s of the 70.6 the rate
// asked for five seconds. A peer whose chain is longer than
// fedThroughScan hops, or holds another source, counts as not fed
// through p.
func fedThrough(c, p *peer) bool {
	for range fedThroughScan {
		if c.state != stateRunning || c.ord <= p.ord || len(c.parents) != 1 || c.parents[0].share > 0 {
			return false
		}
		if c = c.parents[0].peer; c == p {
			return true
		}
	}
	return false
}

type pacedCand struct {
	*peer
	spare float64
}

// pacedRehomeLocked moves peers that share a split uplink (t.crowded) to
// paced parents (pacedLocked) when the spare capacity it finds gives them
// more than their share of the split uplink, which the parent's other
// children then get back. A peer is tried at most once per
// RefreshInterval; one that finds too little stays where it is. One call
// looks at no more than 4·rehomeBatch of them, the latest first, and tries
// pacedRehomeBatch: every event runs it, so its cost must not grow with N.
func (s *Scheduler) pacedRehomeLocked(t *task, now time.Time) {
	tried := 0
	// The scan goes on where the last one stopped, wrapping around: each
	// crowded peer gets its turn however many there are, while one event
	// looks at no more than 4·rehomeBatch of them.
	for scanned := 0; scanned < min(len(t.crowded), 4*rehomeBatch) && tried < pacedRehomeBatch; scanned++ {
		if t.crowdScan <= 0 || t.crowdScan > len(t.crowded) {
			t.crowdScan = len(t.crowded)
		}
		t.crowdScan--
		i := t.crowdScan
		c := t.crowded[i]
		if c.state != stateRunning || len(c.parents) != 1 || c.parents[0].share > 0 || t.unverifiable() ||
			now.Sub(c.pacedTry) < s.cfg.RefreshInterval.D() || unpacedChildren(c) > 0 {
			// (A relay stays: paced parents give pieces held whole, and may
			// be its own descendants, which get everything from it. Moved
			// there, the only relay below a slow host cut the swarm off
			// from the content, and every peer waited out its swarm
			// timeout and went to the origin.)
			continue
		}
		x := c.parents[0].peer
		got := s.slotRate(x, now)
		if got <= 0 || got >= slowSlotShare*t.fluid {
			continue // it has about its rate: nothing to gain
		}
		tried++
		c.pacedTry = now
		s.removeEdge(x, c)
		relief := s.slowHost(c, now) && feedsRelay(x)
		if relief {
			// A slow leaf halving the uplink that feeds a pipeline: what
			// it gets is weighed against what everyone below x gets
			// back, not against its own split. Any paced parents do,
			// x's spare among them (it is no longer x's unpaced child).
			s.pacedOnly, s.pacedRelief = true, true
		} else {
			s.pacedOnly, s.pacedMin, s.fillExclude = true, got, x
		}
		moved := s.fillParentsLocked(c, false)
		s.pacedOnly, s.pacedRelief, s.pacedMin, s.fillExclude = false, false, 0, nil
		if !moved {
			s.restoreEdgeLocked(x, c, 0)
			continue
		}
		t.crowded[i] = t.crowded[len(t.crowded)-1]
		t.crowded[len(t.crowded)-1] = nil
		t.crowded = t.crowded[:len(t.crowded)-1]
		c.crowded = false
		s.sendParentsLocked(c, now)
		if s.debug() {
			s.log.Debug("crowded peer paced", "task_id", t.id, "peer_id", c.id, "from", x.id, "parents", len(c.parents))
		}
	}
}

// trimPacedLocked keeps the shares booked on every parent within its spare
// capacity when that shrank (the parent took another unpaced child, or the
// fluid rate fell below the one its shares were booked at): the parent's
// shares are scaled down
// to fit and their children told; a share that falls below minPacedShare
// is dropped, and a child left without parents is decided again at the
// flush. It runs with the rate (on registrations while the task is small,
// else once a Tick) and costs one pass over the task's peers.
func (s *Scheduler) trimPacedLocked(t *task, now time.Time) {
	for _, p := range t.list {
		if p.pacedKids == 0 || p.state == stateLeft {
			continue
		}
		if t.joining && p.bookFluid < t.fluid {
			// Hosts are registering: its unpaced children are assured
			// of the new rate (pacedFluid), and its shares yield to it.
			p.bookFluid = t.fluid
		}
		if room := s.shareRoom(p, now); p.booked > room*1.02+1 {
			s.scaleSharesLocked(p, false, room/p.booked, now)
		}
		if p.topBooked > 0 {
			s.trimTopUpsLocked(p, now)
		}
	}
}

// shareRoom is what p's uplink has for paced shares once its unpaced
// children get the fluid rate each (pacedFluid); 0 without a fluid rate.
func (s *Scheduler) shareRoom(p *peer, now time.Time) float64 {
	if p.task.fluid <= 0 {
		return 0
	}
	return max(0, s.shareBase(p.host, now)-pacedFluid(p)*float64(unpacedChildren(p)))
}

// trimTopUpsLocked scales p's top-ups down to the room its other shares
// leave (topup.go): they yield to every other booking.
func (s *Scheduler) trimTopUpsLocked(p *peer, now time.Time) {
	p.topTrimQ = false
	if p.topBooked <= 0 || p.state == stateLeft {
		return
	}
	if room := max(0, s.shareRoom(p, now)-p.booked); p.topBooked > room*1.02+1 {
		s.scaleSharesLocked(p, true, room/p.topBooked, now)
	}
}

// scaleSharesLocked multiplies the shares booked on p by f, its top-ups
// when top and the others when not, and tells their children; a share that
// falls below minPacedShare is dropped, and its child is decided again (no
// parent left) or topped up at the flush.
func (s *Scheduler) scaleSharesLocked(p *peer, top bool, f float64, now time.Time) {
	floor := minPacedShare * p.task.fluid
	for i := 0; i < len(p.children); i++ {
		c := p.children[i]
		j := parentIndex(c, p)
		if j < 0 || c.parents[j].share <= 0 || c.parents[j].top != top {
			continue
		}
		sh := c.parents[j].share * f
		if sh < floor {
			s.removeEdge(p, c)
			i-- // the last child took its place
			s.unpaced = append(s.unpaced, c)
			if len(c.parents) == 0 {
				continue
			}
		} else {
			p.addBooking(top, sh-c.parents[j].share)
			c.parents[j].share = sh
		}
		s.sendParentsLocked(c, now)
	}
}

// pacedFluid is the rate p's unpaced children are assumed to get while it
// has paced ones: the task's fluid rate, but no more than it was when a
// share was last booked on p or, while hosts register (task.joining), at
// the last rate update (trimPacedLocked raises bookFluid then). A rise of
// the fluid rate as receivers finish (the slow ones are left) does not
// take back shares booked in good faith from those still behind. A rise as
// hosts register does: every host below a relay gets what its unpaced
// child gets. Booked at the rate of the first five hosts to
// register (16.6 Mbit/s, against 20.2 once all sixteen had), the shares a
// slow receiver took of the seed's child and of its child held the
// harness's whole pipeline, twelve hosts, at 16.6 for the whole download.
func pacedFluid(p *peer) float64 {
	if p.bookFluid > 0 && p.bookFluid < p.task.fluid {
		return p.bookFluid
	}
	return p.task.fluid
}

// pacedWant is the rate a paced receiver is given parents for: the task's
// fluid rate, or its own downlink when that is less.
func (s *Scheduler) pacedWant(p *peer) float64 {
	want := p.task.fluid
	if d := declaredDownlink(p.host); d > 0 && float64(d) < want {
		want = float64(d)
	}
	return want
}

// pacedShort reports whether p's paced shares sum to well under what it
// was given them for (a parent left, or its share was trimmed).
func (s *Scheduler) pacedShort(p *peer) bool {
	have := 0.0
	for _, l := range p.parents {
		have += l.share
	}
	return have < 0.9*s.pacedWant(p) && len(p.parents) < maxPacedParents
}

// topUpPacedLocked moves p, a paced receiver, to a free full-rate slot
// when there is one, else gives it more paced parents from the spare
// capacity there is now when it is short of its rate, and tells it.
func (s *Scheduler) topUpPacedLocked(p *peer, now time.Time) {
	if !s.cfg.PacedShares || p.task.fluid <= 0 || p.task.unverifiable() {
		return
	}
	if (len(p.task.open) > 0 || s.ownShareBlocksSlot(p)) && s.fullSlotForPacedLocked(p) {
		s.sendParentsLocked(p, now)
		return
	}
	if !s.pacedShort(p) {
		return
	}
	s.pacedOnly, s.pacedTopUp = true, true
	added := s.fillParentsLocked(p, false)
	s.pacedOnly, s.pacedTopUp = false, false
	if added {
		s.sendParentsLocked(p, now)
	}
}

// ownShareBlocksSlot reports whether one of p's paced parents would have a
// free full-rate slot but for p's own share on it: released, as
// fullSlotForPacedLocked does, the slot is p's. (A parent whose uplink is
// the fluid rate has no room for a child beside any share, so it is not in
// the task's open list while p holds one.)
func (s *Scheduler) ownShareBlocksSlot(p *peer) bool {
	return slices.ContainsFunc(p.parents, func(l link) bool { return l.share > 0 && s.slotFree(l.peer, l.share) })
}

// fullSlotForPacedLocked moves p, fed by paced shares only, to a parent
// with a free full-rate slot when there is one (a host whose children
// finished): its shares go back to their parents' spare, where the next
// receiver short of its rate finds them. Without it the last receivers of
// a large swarm stay on the fragments of spare they were given while the
// uplinks of the finished hosts idle. It reports whether p moved; p keeps
// its shares when no free slot takes it.
func (s *Scheduler) fullSlotForPacedLocked(p *peer) bool {
	if slices.ContainsFunc(p.parents, func(l link) bool { return l.share <= 0 }) {
		return false // it has an unpaced parent already
	}
	was := slices.Clone(p.parents)
	for _, l := range was {
		s.removeEdge(l.peer, p) // frees the share (and re-opens the parent)
	}
	s.fillFreeOnly = true
	moved := s.fillParentsLocked(p, false)
	s.fillFreeOnly = false
	if moved && s.slowSlot(p.parents[0].peer, s.now()) {
		// A slot slower than the fluid rate: its shares gave it more
		// (it was moved off that slot to them), and taking the slot
		// back would undo that at every tick.
		for _, l := range slices.Clone(p.parents) {
			s.removeEdge(l.peer, p)
		}
		moved = false
	}
	if !moved {
		for _, l := range was {
			s.linkShareLocked(l.peer, p, l.share)
		}
	}
	return moved
}

// minRateSample: with fewer receivers of known capacity, a task's rate is
// taken from the hosts connected (updateRateLocked).
const minRateSample = 8

// youngHead: a head of an IDC's pipeline holding at most this many pieces
// may be moved below a newcomer of its parent's IDC; it then waits at most
// that many piece times for the newcomer to catch up.
const youngHead = 4

// displaceCrossHeadLocked keeps one crossing between IDCs when their peers
// arrive interleaved. The head of an IDC's pipeline hangs below a host of
// another IDC with no other child (its pipeline's tail); a newcomer of
// that IDC that finds no free host in it takes the head's place, and the
// head moves below it: the newcomer is the new tail, and the head waits a
// few piece times at most, as long as it holds no more than youngHead
// pieces. Otherwise the newcomer would cross to the other IDC (a second
// crossing) or split an uplink. It reports whether p was placed.
func (s *Scheduler) displaceCrossHeadLocked(p *peer, full []*peer, group string, now time.Time) bool {
	if group == "" || len(p.parents) > 0 || len(p.children) > 0 || s.childLimit(p, now) == 0 {
		return false
	}
	for _, x := range full {
		if localityGroup(x.host.info) != group || x.host == p.host || x.state == stateLeft || s.childLimit(x, now) == 0 ||
			x.host.used > x.host.slots || now.Before(x.host.slowUntil) || stalled(x, now) {
			continue
		}
		if _, bad := p.bad[x.id]; bad {
			continue
		}
		heads := 0
		for _, y := range x.children {
			if pacedChild(x, y) {
				continue
			}
			_, bad := y.bad[p.id]
			if localityGroup(y.host.info) == group || y.pieces.count > youngHead || bad || len(y.parents) != 1 {
				heads = -1
				break
			}
			heads++
		}
		if heads <= 0 {
			continue
		}
		moved := s.interposeLocked(x, p, func(y *peer) bool { return !pacedChild(x, y) })
		if moved == nil {
			continue
		}
		for _, y := range moved {
			s.sendParentsLocked(y, now)
		}
		if s.debug() {
			s.log.Debug("head of another IDC moved below a newcomer", "task_id", p.task.id, "peer_id", p.id, "parent", x.id, "heads", len(moved))
		}
		return true
	}
	return false
}

// childrenAt is how many children an uplink of u feeds at the rate r: one
// from 0.75 r (a relay a little slower than the rate is better used than
// left out, and a measured uplink comes out a little low), more only for
// as many as get nearly r each. Rounded up from 1.75 r like the first, a
// seed peer of 25 Mbit/s with R at 14 fed two pipelines at 12.5, and
// everyone got 12.5 instead of 14 (the simulator's spread).
func childrenAt(u, r float64) int {
	if n := int(u/r + 0.05); n >= 1 {
		return n
	}
	return int(u/r + 0.25)
}

// displaceSlowRelayLocked puts p, a newcomer that relays at the task's
// rate, above the shallowest young relay in the pipeline that is slower
// than both p and the rate: x→y becomes x→p→y. A relay of 0.75 to 1 R
// takes a child (childrenAt), and everyone below it gets its rate; peers
// that wait together are placed fastest first (fastFirstLocked), but
// peers that register one after another would otherwise be chained in
// their order, a slower relay above faster ones. Young: y holds at most
// youngHead pieces, so it waits a few piece times for p at most. Only
// known capacities count: an unknown one is presumed to keep up. It
// reports whether p was placed.
func (s *Scheduler) displaceSlowRelayLocked(p *peer, full []*peer, group string, now time.Time) bool {
	t := p.task
	if len(p.parents) > 0 || len(p.children) > 0 || t.rate <= 0 || s.childLimit(p, now) < 1 {
		return false
	}
	cp := s.upCapacity(p.host, now)
	if cp <= 0 {
		return false
	}
	below := slowRelayMargin * min(cp, t.rate)
	var bx, by *peer
	for _, x := range full {
		if _, bad := p.bad[x.id]; bad || s.slowHost(x, now) || x.host == p.host {
			continue
		}
		for _, y := range x.children {
			if by != nil && y.depth >= by.depth {
				continue // a shallower one was found: it holds back more
			}
			if y.host == p.host || y.pieces.count > youngHead || localityGroup(y.host.info) != group || pacedChild(x, y) || (unpacedChildren(y) == 0 && s.slowHost(y, now)) {
				continue
			}
			if _, bad := y.bad[p.id]; bad {
				continue
			}
			if c := s.upCapacity(y.host, now); c > 0 && c < below {
				bx, by = x, y
			}
		}
	}
	if by == nil || s.interposeLocked(bx, p, func(y *peer) bool { return y == by }) == nil {
		return false
	}
	s.sendParentsLocked(by, now)
	if s.debug() {
		s.log.Debug("slower relay displaced", "task_id", t.id, "peer_id", p.id, "parent", bx.id, "relay", by.id)
	}
	return true
}

// slowRelayMargin: a relay is displaced by a newcomer when its capacity is
// below this share of the newcomer's and of the task's rate.
const slowRelayMargin = 0.95
