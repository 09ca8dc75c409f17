package scheduler

import (
	"slices"
	"time"
)

// Sinking slow relays (docs/architecture.md, "Slow relays sink"). In a
// pipeline every host below a relay gets at most that relay's uplink. A
// relay a little slower than the task's rate takes a full-rate child
// (childrenAt), and a newcomer goes above a young one that is slower
// (displaceSlowRelayLocked); but peers that register together are chained
// before the rate is known: on the harness (spread, N = 32) a relay of
// 11 Mbit/s placed while the rate was still low sat above ten hosts when
// the rate rose to 12.9, and all ten got 11 for the whole download, their
// own faster uplinks partly idle. Each tick, such a relay trades places
// with its full-rate child when the child is faster: x→par→p→c becomes
// x→p→par→c. It sinks one place per trade, as far as faster children
// follow, and ends at the tail, where it feeds no pipeline and its uplink
// is free for paced shares and top-ups.

// sinkLag bounds, in piece times at the task's rate, how far a relay may
// be ahead of the child it trades places with: it waits that long for its
// new parent to catch up (it keeps serving its own children meanwhile).
const sinkLag = 2 * time.Second

// sinkBudget bounds the trades per task and tick.
const sinkBudget = 256

// sinkSlowRelaysLocked makes t's slow relays trade places with faster
// full-rate children (above). Only known capacities count, and only a
// plain pipeline link is traded: par has one full-rate parent and one
// full-rate child p, p has par as its only full-rate parent and at most
// one full-rate child, all in one locality group, and p is faster than
// both par and the rate by slowRelayMargin. A trade that the graph's order
// refuses is undone. Runs once a tick.
func (s *Scheduler) sinkSlowRelaysLocked(t *task, now time.Time) {
	if !s.cfg.CapacityAware || t.rate <= 0 || t.pieceSize == 0 {
		return
	}
	budget := sinkBudget
	var told []*peer
	for i := 0; i < len(t.list) && budget > 0; i++ {
		par := t.list[i]
		for budget > 0 {
			x, p := s.sinkPartner(par, now)
			if p == nil || !s.tradeLocked(x, par, p, &told) {
				break
			}
			budget--
			s.m.sunkRelays.Inc()
		}
	}
	// Each peer is told its parents once, as they are after all the
	// trades: a relay sinking several places changes its neighbours'
	// parents twice each, and a daemon told A, then B, then A again in a
	// burst dropped its stream to A and reconnected while the old one's
	// end was still on its way.
	for _, p := range told {
		s.sendParentsLocked(p, now)
	}
}

// sinkPartner returns par's full-rate parent and the full-rate child that
// par should trade places with; nil, nil when there is none.
func (s *Scheduler) sinkPartner(par *peer, now time.Time) (*peer, *peer) {
	t := par.task
	if par.state != stateRunning || par.host.info.GetSeed() || par.crowded || unpacedChildren(par) != 1 {
		return nil, nil
	}
	gp := fullParent(par)
	if gp == nil || gp.state == stateLeft {
		return nil, nil
	}
	p := fullChild(par)
	if p == nil || p.state != stateRunning || p.crowded || fullParent(p) != par || unpacedChildren(p) > 1 {
		return nil, nil
	}
	cpar, cp := s.upCapacity(par.host, now), s.upCapacity(p.host, now)
	if cpar <= 0 || cp <= 0 || cpar >= slowRelayMargin*min(cp, t.rate) {
		return nil, nil
	}
	g := localityGroup(par.host.info)
	if localityGroup(p.host.info) != g || localityGroup(gp.host.info) != g || gp.host == p.host {
		return nil, nil
	}
	if _, bad := p.bad[gp.id]; bad {
		return nil, nil
	}
	if _, bad := par.bad[p.id]; bad {
		return nil, nil
	}
	if lag := float64(par.pieces.count-p.pieces.count) * float64(t.pieceSize) / t.rate; lag > sinkLag.Seconds() {
		return nil, nil
	}
	return gp, p
}

// fullParent returns p's one full-rate (unpaced) parent, nil when it has
// none or several (pipelineParent returns the first).
func fullParent(p *peer) *peer {
	var f *peer
	for _, l := range p.parents {
		if l.share == 0 {
			if f != nil {
				return nil
			}
			f = l.peer
		}
	}
	return f
}

// fullChild returns a full-rate (unpaced) child of p, nil when it has
// none: the one, where p has at most one (unpacedChildren).
func fullChild(p *peer) *peer {
	for _, c := range p.children {
		if !pacedChild(p, c) {
			return c
		}
	}
	return nil
}

// tradeLocked turns x→par→p→c (c, p's full-rate child, optional) into
// x→p→par→c and adds the three to told (each once), to be sent their new
// parents. It reports whether the trade was made; a refused link puts the
// old edges back.
func (s *Scheduler) tradeLocked(x, par, p *peer, told *[]*peer) bool {
	c := fullChild(p)
	s.removeEdge(x, par)
	s.removeEdge(par, p)
	if c != nil {
		s.removeEdge(p, c)
	}
	ok := s.linkLocked(x, p)
	if ok && !s.linkLocked(p, par) {
		s.removeEdge(x, p)
		ok = false
	}
	if ok && c != nil && !s.linkLocked(par, c) {
		s.removeEdge(p, par)
		s.removeEdge(x, p)
		ok = false
	}
	if !ok {
		// Back as it was: x before par before p before c held already.
		s.restoreEdgeLocked(x, par, 0)
		s.restoreEdgeLocked(par, p, 0)
		if c != nil {
			s.restoreEdgeLocked(p, c, 0)
		}
		return false
	}
	for _, q := range []*peer{p, par, c} {
		if q != nil && !slices.Contains(*told, q) {
			*told = append(*told, q)
		}
	}
	if s.debug() {
		s.log.Debug("slow relay sunk", "task_id", par.task.id, "peer_id", par.id, "below", p.id)
	}
	return true
}
