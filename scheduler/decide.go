package scheduler

import (
	"cmp"
	"context"
	"hash/fnv"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/scheduler/policy"
)

// All methods ending in Locked run with s.mu held.

// decideLocked computes p's next step and tells p when it changed (always
// when force is set): parents when any candidate has data, else trigger a
// seed peer, else go back to source within the budget, else wait.
func (s *Scheduler) decideLocked(p *peer, now time.Time, force bool) {
	switch p.state {
	case stateLeft, stateSucceeded, stateBackToSource:
		// Done peers need no parents; fetchers keep fetching. A fetcher
		// that asks for parents leaves back_to_source first (onReschedule).
		return
	}
	start := s.now()
	t := p.task
	if t.private && !p.verified {
		if p.state != stateFailed || force {
			s.failLocked(p, "private content: only a peer the origin granted it with its own credentials may take part", start)
		}
		return
	}
	run := func(changed bool) {
		prev := p.state
		s.unwaitLocked(p)
		s.setState(p, stateRunning)
		s.updatePoolLocked(p)
		if changed || force || prev != stateRunning {
			s.sendParentsLocked(p, start)
		}
	}
	if changed := t.parentsCheckable() && s.fillParentsLocked(p, false); len(p.parents) > 0 {
		run(changed)
		return
	}
	switch {
	case t.cache && !othersHaveData(t, p):
		s.failLocked(p, "no peer holds this dfcache entry", start)
	case t.cache:
		s.waitLocked(p, now, "the holders of this dfcache entry are busy", force, start)
	case p.pieces.count > 0 && t.unverifiable():
		// A holder re-announcing a task this scheduler has no trusted
		// digests for (it restarted, or the task moved here): its pieces
		// are unchecked claims (restore.go). It is no fetcher — whatever
		// it reported would pass for the origin's — and triggers nothing;
		// trust comes from the rules of restoreTrustLocked, or from the
		// fetch of the next peer that needs the content.
		s.waitLocked(p, now, "holding pieces with no trusted digests yet", force, start)
	case othersHaveData(t, p) && t.parentsCheckable() && s.fillWideLocked(p):
		// The sample held no parent, but the content is there.
		run(true)
	case s.seedPendingLocked(t, now):
		s.waitLocked(p, now, "waiting for the seed peer", force, start)
	case p.priority == schedulerv1.Priority_LEVEL2 && !othersHaveData(t, p):
		// Peers only: nobody goes to the origin for a first download.
		if t.backToSource > 0 {
			s.waitLocked(p, now, "priority LEVEL2: waiting for the peers fetching the task", force, start)
		} else {
			s.failLocked(p, "priority LEVEL2: no peer holds the task and its first download may not go to the origin", start)
		}
	case p.priority == schedulerv1.Priority_LEVEL3 && !p.disableBackSource && t.backToSource < s.cfg.MaxBackToSource && !othersHaveData(t, p):
		// The peer itself goes to the origin first, not a seed peer.
		s.backToSourceLocked(p, "priority LEVEL3: the peer fetches the first download itself", start)
	case s.triggerSeedLocked(t, now):
		s.waitLocked(p, now, "seed peer triggered", force, start)
	case !p.disableBackSource && t.backToSource < s.cfg.MaxBackToSource && !s.excludedLocked(t, p.host, now) && !t.reporter(p.host):
		s.backToSourceLocked(p, "no peer has the content yet", start)
	case s.fillParentsLocked(p, true):
		// A parent found slow lately beats waiting.
		run(true)
	default:
		s.waitLocked(p, now, "no parent has data and the origin budget is used up", force, start)
	}
}

func isParent(p, c *peer) bool { return parentIndex(p, c) >= 0 }

// parentIndex is the index of c in p.parents, or -1.
func parentIndex(p, c *peer) int {
	return slices.IndexFunc(p.parents, func(l link) bool { return l.peer == c })
}

// debug reports whether debug logs are wanted; hot paths check it first so
// that building the log arguments costs nothing when they are not.
func (s *Scheduler) debug() bool { return s.log.Enabled(context.Background(), slog.LevelDebug) }

func (s *Scheduler) record(kind string, start time.Time) {
	s.m.decision(kind)
	s.m.decisionDuration.Observe(s.now().Sub(start).Seconds())
}

func (s *Scheduler) sendParentsLocked(p *peer, start time.Time) {
	infos := make([]*schedulerv1.PeerInfo, len(p.parents))
	for i, l := range p.parents {
		infos[i] = &schedulerv1.PeerInfo{PeerId: l.peer.id, Host: l.peer.host.info, ShareBps: int64(l.share)}
	}
	s.record(decisionParents, start)
	s.sendLocked(p, &schedulerv1.SchedulerMessage{Msg: &schedulerv1.SchedulerMessage_Parents{
		Parents: &schedulerv1.Parents{Parents: infos},
	}})
	if s.debug() {
		ids := make([]string, len(infos))
		for i, in := range infos {
			ids[i] = in.PeerId
		}
		s.log.Debug("parents", "task_id", p.task.id, "peer_id", p.id, "parents", len(infos), "parent_ids", ids)
	}
}

func (s *Scheduler) waitLocked(p *peer, now time.Time, reason string, force bool, start time.Time) {
	if p.state == stateWaiting && !force {
		return
	}
	if p.state != stateWaiting {
		p.waitSince = now
		p.task.addWaiting(p)
		s.setState(p, stateWaiting)
		s.updatePoolLocked(p)
	}
	s.record(decisionWait, start)
	s.sendLocked(p, &schedulerv1.SchedulerMessage{Msg: &schedulerv1.SchedulerMessage_Wait{
		Wait: &schedulerv1.Wait{Reason: reason},
	}})
	if s.debug() {
		s.log.Debug("wait", "task_id", p.task.id, "peer_id", p.id, "reason", reason)
	}
}

func (s *Scheduler) backToSourceLocked(p *peer, reason string, start time.Time) {
	t := p.task
	s.unwaitLocked(p)
	s.dropParentsLocked(p)
	s.setState(p, stateBackToSource)
	t.backToSource++
	s.counters.backToSource++
	s.updatePoolLocked(p)
	s.markDirty(t)
	s.record(decisionBackToSource, start)
	s.sendLocked(p, &schedulerv1.SchedulerMessage{Msg: &schedulerv1.SchedulerMessage_BackToSource{
		BackToSource: &schedulerv1.BackToSource{Reason: reason},
	}})
	if s.debug() {
		s.log.Debug("back to source", "task_id", t.id, "peer_id", p.id, "back_to_source", t.backToSource)
	}
}

func (s *Scheduler) failLocked(p *peer, reason string, start time.Time) {
	s.unwaitLocked(p)
	s.setState(p, stateFailed)
	s.record(decisionFail, start)
	s.sendLocked(p, &schedulerv1.SchedulerMessage{Msg: &schedulerv1.SchedulerMessage_Fail{
		Fail: &schedulerv1.Fail{Reason: reason},
	}})
	s.log.Info("peer failed by scheduler", "task_id", p.task.id, "peer_id", p.id, "reason", reason)
}

func (s *Scheduler) unwaitLocked(p *peer) {
	p.task.removeWaiting(p)
}

func (s *Scheduler) setState(p *peer, st peerState) {
	s.m.stateChanged(p.state, st)
	p.state = st
}

// sendLocked queues msg for p without blocking. A peer whose buffer is full
// is dropped at the next flush: one slow peer must not stall the scheduler.
func (s *Scheduler) sendLocked(p *peer, msg *schedulerv1.SchedulerMessage) {
	if p.state == stateLeft || p.dropping {
		return
	}
	if err := p.conn.send(msg); err != nil {
		p.dropping = true
		s.dropped = append(s.dropped, p)
	}
}

// markDirty queues t's waiting peers for re-evaluation at the next flush.
func (s *Scheduler) markDirty(t *task) {
	if !t.dirty {
		t.dirty = true
		s.dirty = append(s.dirty, t)
	}
}

// flushLocked removes overflowed peers and re-evaluates the waiting peers of
// changed tasks, until nothing is left to do. Every event ends with it, so
// many changes in one event cost one pass.
func (s *Scheduler) flushLocked(now time.Time) {
	for len(s.dropped) > 0 || len(s.dirty) > 0 || len(s.unpaced) > 0 || len(s.topTrim) > 0 {
		for len(s.topTrim) > 0 {
			p := s.topTrim[len(s.topTrim)-1]
			s.topTrim[len(s.topTrim)-1] = nil
			s.topTrim = s.topTrim[:len(s.topTrim)-1]
			s.trimTopUpsLocked(p, now)
		}
		for len(s.unpaced) > 0 {
			p := s.unpaced[len(s.unpaced)-1]
			s.unpaced[len(s.unpaced)-1] = nil
			s.unpaced = s.unpaced[:len(s.unpaced)-1]
			switch {
			case p.state != stateRunning:
			case len(p.parents) == 0:
				s.decideLocked(p, now, true)
			default:
				s.topUpPacedLocked(p, now)
			}
		}
		for len(s.dropped) > 0 {
			p := s.dropped[len(s.dropped)-1]
			s.dropped = s.dropped[:len(s.dropped)-1]
			s.log.Warn("peer dropped: send buffer full", "task_id", p.task.id, "peer_id", p.id)
			s.removeLocked(p, now)
			p.conn.cancel(errOverflow)
		}
		if len(s.dirty) > 0 {
			t := s.dirty[len(s.dirty)-1]
			s.dirty = s.dirty[:len(s.dirty)-1]
			t.dirty = false
			if len(t.crowded) > 0 && len(t.open) > 0 && s.cfg.CapacityAware {
				s.rehomeLocked(t, now)
			}
			if len(t.crowded) > 0 && s.cfg.CapacityAware && s.cfg.PacedShares && t.fluid > 0 {
				s.pacedRehomeLocked(t, now)
			}
			ws := append(s.waitScratch[:0], t.waitList...)
			s.fastFirstLocked(t, ws, now)
			for _, w := range ws {
				if w.waitIdx >= 0 { // not decided away by an earlier one
					s.decideLocked(w, now, false)
				}
			}
			clear(ws)
			s.waitScratch = ws[:0]
		}
	}
}

// isSource reports whether p belongs in its task's candidate pool.
func isSource(p *peer, pipeline bool) bool {
	switch p.state {
	case stateLeft:
		return false
	case stateSucceeded, stateBackToSource:
		return true
	case stateRunning:
		// A peer that is downloading is a parent before its first piece
		// lands: it relays pieces as they arrive (pipelining), which lets
		// the swarm form chains below the seed instead of hanging every
		// newcomer off the seed's uplink.
		return (pipeline && len(p.parents) > 0) || p.pieces.count > 0
	}
	return p.pieces.count > 0
}

// updatePoolLocked adds p to or removes p from its task's candidate pool and
// reports whether p joined it.
func (s *Scheduler) updatePoolLocked(p *peer) bool {
	t := p.task
	in := isSource(p, s.cfg.PipelineParents)
	joined := false
	switch {
	case in && p.poolIdx < 0:
		p.poolIdx = len(t.pool)
		t.pool = append(t.pool, p)
		joined = true
	case !in && p.poolIdx >= 0:
		last := t.pool[len(t.pool)-1]
		t.pool[p.poolIdx] = last
		last.poolIdx = p.poolIdx
		t.pool[len(t.pool)-1] = nil
		t.pool = t.pool[:len(t.pool)-1]
		p.poolIdx = -1
	}
	s.touchOpenLocked(p)
	if joined {
		s.markDirty(t) // a new candidate: waiting peers get another look
	}
	return joined
}

// touchOpenLocked puts p in its task's open set when it is a candidate
// with a free child slot, and takes it out otherwise. Call it whenever p's
// children, pool membership or host change; what it cannot see (another
// task using the host's slots, a limit changed by a new target rate, a slow
// mark expiring) is set right by the rebuild in every Tick, and decisions
// check every candidate anyway.
func (s *Scheduler) touchOpenLocked(p *peer) {
	p.task.setOpen(p, s.slotFree(p, 0))
}

// slotFree reports whether p has a free full-rate slot: it is in the pool,
// its host has an upload slot, it is not stalled nor marked slow, its child
// limit has room, and its paced shares, less release of them, leave a
// child the fluid rate (bookedFull).
func (s *Scheduler) slotFree(p *peer, release float64) bool {
	if p.poolIdx < 0 || p.state == stateLeft || p.host.used >= p.host.slots {
		return false
	}
	now := s.now()
	if !p.stalledAt.IsZero() && stalled(p, now) {
		return false
	}
	lim := s.childLimit(p, now)
	return (lim < 0 || unpacedChildren(p) < lim) && !now.Before(p.host.slowUntil) && !s.bookedFull(p, release, now)
}

// fillParentsLocked adds parents to p up to MaxParents from the best
// candidates and reports whether any was added. Candidates are peers of the
// task with data (or fetching it from the origin), other than p, its current
// parents and peers p reported bad; a candidate that is p's descendant (it
// would close a cycle) is refused by linkLocked. Hosts without a free upload
// slot are used only when nothing else is left. At most CandidateLimit
// candidates are scored, sampled at random.
func (s *Scheduler) fillParentsLocked(p *peer, lastResort bool) bool {
	need := s.cfg.MaxParents - len(p.parents)
	if s.pacedTopUp {
		need = maxPacedParents - len(p.parents)
	}
	t := p.task
	if need <= 0 || len(t.pool) == 0 || p.state == stateLeft {
		return false
	}
	s.epoch++
	e := s.epoch
	p.mark = e
	for _, l := range p.parents {
		l.peer.mark = e
	}
	if s.fillWide {
		// p's descendants would close a cycle: marked as seen, so that
		// the candidates kept are ones that can take p.
		s.markSubtree(p, e)
	}

	// Children are counted per locality group (IDC), so every IDC grows its
	// own pipeline and only its head crosses between IDCs.
	group := localityGroup(p.host.info)
	free, full := s.freeCands[:0], s.fullCands[:0]
	// spare: hosts without a free slot whose uplink has room for a paced
	// share (pacedLocked), sampled apart from full, whose preference for
	// hosts feeding only leaves fills it with slow hosts whose idle
	// uplinks are booked already: at 3,000 simulated hosts 90 slow
	// receivers stayed crowded below other slow hosts for five seconds
	// while the relays of the pipelines had 30 fluid rates to spare.
	spareC := s.spareCands[:0]
	defer func() {
		clear(spareC)
		s.spareCands = spareC[:0]
	}()
	var soft []*peer // found slow lately: the last resort
	now := s.now()
	limit := s.cfg.CandidateLimit
	// A slow host takes a seed's slot only when nothing else is left: it
	// relays nothing, and the seed's uplink is what everyone else gets
	// (on the harness, declared mixed, slow leaves moved one after another
	// to the seed's free slot and got the content from it at their full
	// downlink, 2.55 × F from the seed, while the pipeline crawled).
	slowP := s.cfg.CapacityAware && s.slowHost(p, now)
	// consider sorts one candidate into its tier; false once enough free
	// candidates are found.
	consider := func(c *peer) bool {
		s.visited++
		if c.mark == e || c == s.fillExclude {
			return true
		}
		c.mark = e
		if barred(c, now) {
			return true
		}
		if m, bad := p.bad[c.id]; bad {
			if m.kind == badCorrupt || now.Sub(m.at) < badParentTTL {
				if m.kind == badSlow && len(soft) < limit {
					soft = append(soft, c)
				}
				return true
			}
			delete(p.bad, c.id) // forgiven
		}
		// A host replaced as slow lately is used like a full one: only when
		// nothing else can take p, so it drifts to the end of the pipeline
		// instead of slowing whoever joins below it next.
		if c.host.used >= c.host.slots || s.childrenFull(c, group, now) || now.Before(c.host.slowUntil) || (slowP && c.host.info.GetSeed()) {
			if len(spareC) < limit && s.cfg.PacedShares && t.fluid > 0 && s.spare(c, now) >= minPacedShare*t.fluid {
				spareC = append(spareC, c)
			}
			switch {
			case len(full) < limit:
				full = append(full, c)
			case s.cfg.CapacityAware && s.feedsLeaves(c, now):
				// The sample is full: a host that feeds only leaves
				// (the one to split, see preferLeafSplits) takes the
				// place of one that feeds a pipeline.
				if i := slices.IndexFunc(full, func(f *peer) bool { return !s.feedsLeaves(f, now) }); i >= 0 {
					full[i] = c
				}
			}
			return true
		}
		free = append(free, c)
		return len(free) < limit
	}
	walk := func(list []*peer, visits int) { s.sampleWalk(list, visits, limit, consider) }
	if len(t.pool) <= largeTask*limit || s.fillWide {
		walk(t.pool, len(t.pool))
	} else {
		walk(t.open, len(t.open))
		if len(free) == 0 || lastResort {
			walk(t.pool, 2*limit)
		}
	}
	// A free candidate in p's own group beats any other free candidate.
	// When there is none, a newcomer may take the place of another IDC's
	// young head below a host of its own (displaceCrossHeadLocked).
	if group != "" {
		local := 0
		for _, c := range free {
			if localityGroup(c.host.info) == group {
				free[local] = c
				local++
			}
		}
		if local > 0 {
			clear(free[local:])
			free = free[:local]
		} else if s.cfg.CapacityAware && !lastResort && !s.fillFreeOnly && !s.pacedOnly && s.displaceCrossHeadLocked(p, full, group, now) {
			clear(free)
			clear(full)
			s.freeCands, s.fullCands = free[:0], full[:0]
			return true
		}
	}
	if len(free) > 0 && s.cfg.CapacityAware && !lastResort && !s.fillFreeOnly && !s.pacedOnly && s.displaceSlowRelayLocked(p, full, group, now) {
		clear(free)
		clear(full)
		s.freeCands, s.fullCands = free[:0], full[:0]
		return true
	}
	pref := len(full)
	if s.pacedOnly {
		clear(free)
		free = free[:0] // a free slot is rehomeLocked's
	}
	if len(free) == 0 && !lastResort && !s.fillFreeOnly {
		pref = s.preferLeafSplits(p, full, now)
		if s.displaceSlowLeafLocked(p, full, group, now) || s.pacedLocked(p, full, pref, spareC, group, now) {
			clear(full)
			s.freeCands, s.fullCands = free[:0], full[:0]
			return true
		}
		if s.pacedOnly {
			clear(full)
			s.freeCands, s.fullCands = free[:0], full[:0]
			return false
		}
	}
	// Free candidates first; hosts (or peers) without a free slot only when
	// the free ones cannot take p (none, or all would close a cycle). With
	// lastResort, only parents replaced as slow lately: the caller asks for
	// those when the alternative is to wait.
	added := 0
	// With capacities known, every free slot gives the full rate; what
	// still differs is latency: each relaying hop above a parent delays
	// every piece. The shallowest free candidates go first, so a source
	// with room for several children (a seed peer on a fast uplink) starts
	// several pipelines instead of the newest end of one growing without
	// end (at 10,000 hosts one chain costs two hop latencies per host).
	shallow := free
	if s.cfg.CapacityAware && len(free) > 1 {
		shallow = s.shallowest(free, now)
		free = free[len(shallow):]
	} else {
		free = nil
	}
	tiers := [][]*peer{shallow, free, full[:pref], full[pref:]}
	switch {
	case lastResort:
		tiers = [][]*peer{nil, nil, soft}
	case s.fillFreeOnly:
		tiers = tiers[:2]
	}
	for k, chosen := range tiers {
		if added == need || len(chosen) == 0 || (k > 1 && added > 0) {
			continue
		}
		cands := s.cands[:0]
		fastest := 0.0
		for _, c := range chosen {
			fastest = max(fastest, c.host.throughput)
		}
		for _, c := range chosen {
			cands = append(cands, s.candidate(c, fastest))
		}
		child := policy.Child{IDC: p.host.info.GetIdc(), Location: p.host.info.GetLocation()}
		// Rank a few more than needed: a candidate that turns out to be a
		// descendant of p is skipped for the next best. When all of those
		// close a cycle (p heads a long branch of a pipeline, so most
		// peers descend from it), rank the whole tier: a parent among the
		// rest beats sending p to the origin.
		ranked := policy.SelectParents(cands, child, s.cfg.Weights, 2*(need-added), s.rnd)
		for pass := 0; pass < 2 && added < need; pass++ {
			if pass == 1 {
				if len(ranked) >= len(chosen) {
					break // the first pass ranked them all
				}
				ranked = policy.SelectParents(cands, child, s.cfg.Weights, len(chosen), s.rnd)
			}
			for _, i := range ranked {
				if added == need {
					break
				}
				c := chosen[i]
				if pass == 1 && isParent(p, c) {
					continue // linked in the first pass
				}
				if s.linkLocked(c, p) {
					added++
					delete(p.bad, c.id)
					if k > 1 || s.slowSlot(c, now) {
						s.crowdLocked(p) // sharing a full or slow uplink
					}
				}
			}
		}
		clear(cands)
		s.cands = cands[:0]
	}
	clear(shallow)
	clear(free)
	clear(full)
	s.freeCands, s.fullCands = shallow[:0], full[:0]
	return added > 0
}

// fillWideLocked looks for parents for p beyond the sample that
// fillParentsLocked takes in a large task, when that sample held none: the
// whole pool but p's descendants, which would close a cycle. After a
// mass failure (a rack going down under a pipeline of thousands) the few
// candidates sampled can all be p's own descendants, and sending p to the
// origin then costs a whole copy of the content that thousands of peers
// hold. O(pool), and only when the usual search failed. (In a task small
// enough the usual search walks the whole pool already.)
func (s *Scheduler) fillWideLocked(p *peer) bool {
	if len(p.task.pool) <= largeTask*s.cfg.CandidateLimit {
		return false
	}
	s.fillWide = true
	defer func() { s.fillWide = false }()
	return s.fillParentsLocked(p, false)
}

// shallowest moves the candidates of least depth (shallowDepth) to the
// front of cands and returns that front part.
func (s *Scheduler) shallowest(cands []*peer, now time.Time) []*peer {
	lo := s.shallowDepth(cands[0], now)
	for _, c := range cands[1:] {
		lo = min(lo, s.shallowDepth(c, now))
	}
	n := 0
	for i, c := range cands {
		if s.shallowDepth(c, now) == lo {
			cands[n], cands[i] = cands[i], cands[n]
			n++
		}
	}
	return cands[:n]
}

// shallowDepth is c's sourceDepth for the shallowest-first rule, except
// that a seed host feeding at most one child that may share the origin's
// uplink (sharedSeed) is no preferred parent: that uplink should carry the
// content about once (its one child is there to start the swarm; the policy's seed
// penalty decides about it as before). A seed that can feed several
// pipelines (a known uplink several times the rate) is the shallowest.
func (s *Scheduler) shallowDepth(c *peer, now time.Time) int32 {
	if sharedSeed(c) && s.childLimit(c, now) <= 1 {
		return math.MaxInt32
	}
	return sourceDepth(c)
}

// stalled reports whether a child reported c stalled and c has not sent a
// message since, within badParentTTL: a host that died without closing its
// stream must not get new children while its keepalive runs out.
func stalled(c *peer, now time.Time) bool {
	return !c.stalledAt.IsZero() && now.Sub(c.stalledAt) < badParentTTL
}

// barred reports whether c may be nobody's parent now: banned hosts,
// accused sources and those that reported their content corrupt, peers of
// a private task that never showed credentials, and stalled peers.
func barred(c *peer, now time.Time) bool {
	t := c.task
	return now.Before(c.host.bannedUntil) || (t.suspect != nil && (t.accused(c.host) || t.reporter(c.host))) || (t.private && !c.verified) ||
		stalled(c, now)
}

// stallSilence: a downloading peer reports every piece it gets, so one
// silent this long while a child reports it stalled is taken for dead.
const stallSilence = 2 * time.Second

// largeTask: a task whose pool holds more than largeTask×CandidateLimit
// peers has its free candidates looked up in t.open instead of walking the
// whole pool on every decision.
const largeTask = 4

func (s *Scheduler) candidate(c *peer, fastest float64) policy.Candidate {
	h := c.host
	free := 0.0
	if h.slots > 0 && h.used < h.slots {
		free = float64(h.slots-h.used) / float64(h.slots)
	}
	return policy.Candidate{
		Progress:    progress(c),
		FreeSlots:   free,
		SuccessRate: policy.SuccessRate(h.successes, h.failures),
		Throughput:  policy.NormalizeThroughput(h.throughput, fastest),
		IDC:         h.info.GetIdc(),
		Location:    h.info.GetLocation(),
		Seed:        h.info.GetSeed(),
		Corrupt:     len(h.corruptBy) >= corruptReportersToPenalise,
	}
}

// progress is the share of the content p holds: 1 when done, 0.5 for a peer
// that holds pieces (or fetches from the origin) while the total is unknown.
func progress(p *peer) float64 {
	if p.state == stateSucceeded {
		return 1
	}
	total := p.task.pieceCount()
	if total == 0 {
		if p.pieces.count > 0 || p.state == stateBackToSource {
			return 0.5
		}
		return 0
	}
	return min(1, float64(p.pieces.count)/float64(total))
}

// sampleWalk calls visit on members of list until it returns false or
// visits calls were made. With visits at least len(list) it walks from a
// random start with a random stride coprime to the length: every member is
// visited once, in an order that differs per decision, so a sample is
// unbiased enough and cheap (lists of at most small members are walked in
// order). In a large task the peers with a free slot (t.open) are walked
// first: in a pipeline of 10,000 nearly every peer is full, and finding
// the few free ones by walking the whole pool made every decision O(N).
// The pool is then only sampled, for hosts without a free slot and for
// those t.open misses (a peer full in one locality group may be free in
// another).
//
// A sample of fewer than all is drawn index by index at random instead
// (a repeat is visited again; fillParentsLocked's marks skip it): the
// first k of a strided walk are an arithmetic progression, which follows
// any period in the list's order. In the simulator's mixed scenario every
// fourth host is slow; with a stride divisible by 4 all 128 sampled hosts
// were slow ones, and a fast newcomer took one as its parent.
func (s *Scheduler) sampleWalk(list []*peer, visits, small int, visit func(*peer) bool) {
	n := len(list)
	if visits < n {
		for range visits {
			if !visit(list[s.rnd.IntN(n)]) {
				return
			}
		}
		return
	}
	idx, stride := 0, 1
	if n > small {
		idx, stride = s.rnd.IntN(n), s.coprimeStride(n)
	}
	for range n {
		c := list[idx]
		if idx += stride; idx >= n {
			idx -= n
		}
		if !visit(c) {
			return
		}
	}
}

func (s *Scheduler) coprimeStride(n int) int {
	for range 8 {
		st := 1 + s.rnd.IntN(n-1)
		if gcd(st, n) == 1 {
			return st
		}
	}
	return 1
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// seedPendingLocked reports whether t's triggered seed peer may still
// register: peers wait for it rather than going to the origin themselves.
func (s *Scheduler) seedPendingLocked(t *task, now time.Time) bool {
	return t.seedPhase == seedTriggered && now.Sub(t.seedAt) < s.cfg.SeedTriggerTimeout.D()
}

// triggerSeedLocked pushes t to a seed peer when one is connected and t was
// not seeded yet (or the last attempt failed), and reports whether it did.
func (s *Scheduler) triggerSeedLocked(t *task, now time.Time) bool {
	// A private task's credentials never leave the peers that hold them,
	// so a seed peer could fetch it only with credentials of its own: an
	// object store's bucket configured on the seed. The seed then shows the
	// store granted them (origin_verified) like any peer of a private task.
	if len(s.seeds) == 0 || t.spec == nil || (t.private && !seedMayHoldCredentials(t.spec.GetUrl())) {
		return false
	}
	if t.seedPhase != seedIdle && (t.seedPhase != seedFailed || t.seedAttempts >= maxSeedAttempts) {
		return false
	}
	sc := s.pickSeedLocked(t)
	if sc == nil {
		return false
	}
	if err := sc.send(&schedulerv1.SeedTask{Task: t.spec}); err != nil {
		s.log.Warn("seed peer dropped: send failed", "host_id", sc.host.id, "err", err)
		sc.dead = true
		sc.cancel(errOverflow)
		return false
	}
	t.seedPhase, t.seedHost, t.seedAt = seedTriggered, sc.host.id, now
	t.seedAttempts++
	s.m.seedTriggers.Inc()
	s.log.Info("seed peer triggered", "task_id", t.id, "host_id", sc.host.id, "attempt", t.seedAttempts)
	return true
}

// pickSeedLocked chooses a connected seed host for t by rendezvous hashing
// of the task ID, so every scheduler replica picks the same host for a task
// and a host that joins or leaves moves only its share of tasks. Hosts that
// already failed t are skipped while others remain.
func (s *Scheduler) pickSeedLocked(t *task) *seedConn {
	var best, bestFailed *seedConn
	var bestW, bestFailedW uint64
	now := s.now()
	for id, sc := range s.seeds {
		if sc.dead || now.Before(sc.host.bannedUntil) || t.accused(sc.host) {
			continue
		}
		h := fnv.New64a()
		h.Write([]byte(t.id))
		h.Write([]byte{0})
		h.Write([]byte(id))
		w := h.Sum64()
		if _, failed := t.seedFailed[id]; failed {
			if bestFailed == nil || w > bestFailedW {
				bestFailed, bestFailedW = sc, w
			}
			continue
		}
		if best == nil || w > bestW {
			best, bestW = sc, w
		}
	}
	if best == nil {
		return bestFailed
	}
	return best
}

// seedFailedLocked records that t's seed attempt on host failed, so waiting
// peers may trigger another seed or go to the origin.
func (s *Scheduler) seedFailedLocked(t *task, hostID string) {
	t.seedPhase = seedFailed
	t.seedPeer = nil
	if t.seedFailed == nil {
		t.seedFailed = make(map[string]struct{})
	}
	t.seedFailed[hostID] = struct{}{}
	s.markDirty(t)
}

// localityGroup is the IDC label of a host: pipelines and child limits are
// per group. Hosts without one form a single group.
func localityGroup(h *schedulerv1.Host) string { return h.GetIdc() }

// childrenIn counts c's children in the given locality group.
func childrenIn(c *peer, group string) int {
	if group == "" {
		return unpacedChildren(c)
	}
	n := 0
	for _, ch := range c.children {
		if localityGroup(ch.host.info) == group && !pacedChild(c, ch) {
			n++
		}
	}
	return n
}

// seedMayHoldCredentials reports whether a seed peer can have credentials of
// its own for url: object storage, whose buckets a seed's configuration may
// name. For any other origin a private task's credentials are the fetching
// peers' alone.
func seedMayHoldCredentials(rawURL string) bool {
	scheme, _, ok := strings.Cut(rawURL, "://")
	return ok && strings.EqualFold(scheme, "s3")
}

// fastFirstLocked orders waiting peers for their decisions: those that
// relay (a capacity of 0.75 R or more, or unknown and presumed to keep up)
// by their relay capacity, highest first, each taking one of the places
// such peers held, ties in their order; the others keep their places.
// Peers that wait together (for the seed peer, at a task's start) are
// thus placed so that a pipeline is built from its fastest relays down,
// and a relay slower than the rate (one of 0.75 to 1 R still takes a
// child, childrenAt) sits below the faster ones instead of setting the
// pace of everyone it happens to precede. Hosts that relay nobody keep
// their places: sorted to the end, 250 slow hosts of 1,000 found the
// spare uplink booked (the simulator's mixed, T*/T_last 0.79 -> 0.71).
func (s *Scheduler) fastFirstLocked(t *task, ws []*peer, now time.Time) {
	r := t.rate
	if len(ws) < 2 || r <= 0 || !s.cfg.CapacityAware {
		return
	}
	at, relays := s.sortIdx[:0], s.sortPeers[:0]
	for i, p := range ws {
		k := s.upCapacity(p.host, now)
		if k <= 0 {
			k = r // unknown: presumed to keep up
		}
		if childrenAt(k, r) >= 1 {
			at, relays = append(at, i), append(relays, keyedPeer{p, k})
		}
	}
	if len(relays) > 1 {
		slices.SortStableFunc(relays, func(a, b keyedPeer) int { return cmp.Compare(b.k, a.k) })
		for j, i := range at {
			ws[i] = relays[j].p
		}
	}
	clear(relays)
	s.sortIdx, s.sortPeers = at[:0], relays[:0]
}

// keyedPeer is a peer with the capacity fastFirstLocked orders it by,
// computed once per decision round rather than at every comparison.
type keyedPeer struct {
	p *peer
	k float64
}

// slowSlot reports whether a full-rate child of c gets clearly less than
// the task's fluid rate from it: c's uplink is slower than that (a relay
// of 0.75 to 1 R takes a child, and at a pipeline's tail it may be the
// only free slot). Its child is then remembered as crowded, and moved to
// paced parents when they give more (pacedRehomeLocked). On the
// simulator's spread, a 9 Mbit/s host at the tail below a 14 Mbit/s one
// finished 3.5 s after everyone else.
func (s *Scheduler) slowSlot(c *peer, now time.Time) bool {
	t := c.task
	if !s.cfg.CapacityAware || !s.cfg.PacedShares || t.fluid <= 0 {
		return false
	}
	r := s.slotRate(c, now)
	return r > 0 && r < slowSlotShare*t.fluid
}

// slowSlotShare: a full-rate child that gets less than this share of the
// fluid rate from its parent is better off on paced parents (slowSlot,
// pacedRehomeLocked).
const slowSlotShare = 0.9

// slotRate is what each of c's full-rate children gets of its uplink, in
// bytes/s: its known uplink over their number; 0 when either is unknown
// or none.
func (s *Scheduler) slotRate(c *peer, now time.Time) float64 {
	u, n := s.uplink(c.host, now), unpacedChildren(c)
	if u <= 0 || n == 0 {
		return 0
	}
	return u / float64(n)
}
