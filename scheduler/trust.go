package scheduler

import (
	"crypto/rand"
	"maps"
	"slices"
	"time"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
)

// This file holds what the scheduler trusts and how it withdraws trust:
// private tasks and their piece tokens, and content-corrupt reports against
// the sources of a task's piece digests. docs/security.md explains the design.

// makePrivateLocked marks t private for good: from now on only peers that
// showed the origin grants them the content take part, and they get piece
// tokens signed with a key of this task alone.
func (s *Scheduler) makePrivateLocked(t *task, now time.Time) {
	t.private = true
	t.key = make([]byte, 32)
	_, _ = rand.Read(t.key) // crypto/rand.Read never fails on supported platforms
	s.log.Info("task is private: fetched with credentials", "task_id", t.id)
	var redo []*peer
	for _, o := range t.list {
		if o.verified {
			s.grantLocked(o, now)
			continue
		}
		// A peer that never showed credentials neither serves nor gets it.
		for _, c := range slices.Clone(o.children) {
			s.removeEdge(o, c)
			redo = append(redo, c)
		}
		s.dropParentsLocked(o)
		redo = append(redo, o)
	}
	for _, o := range redo {
		s.decideLocked(o, now, true)
	}
	s.markDirty(t)
}

// grantLocked sends p a fresh piece token for its private task, and the
// task's key so its upload port can check its children's tokens.
func (s *Scheduler) grantLocked(p *peer, now time.Time) {
	t := p.task
	exp := now.Add(s.cfg.PieceTokenTTL.D())
	p.accessUntil = exp
	s.sendLocked(p, &schedulerv1.SchedulerMessage{Msg: &schedulerv1.SchedulerMessage_Access{Access: &schedulerv1.PieceAccess{
		Key:           t.key,
		Token:         core.PieceToken(t.key, t.id, p.id, exp),
		ExpiresUnixMs: exp.UnixMilli(),
	}}})
}

// renewAccessLocked renews the tokens of t's peers with less than half of
// their lifetime left.
func (s *Scheduler) renewAccessLocked(t *task, now time.Time) {
	half := s.cfg.PieceTokenTTL.D() / 2
	for _, p := range t.list {
		if p.verified && p.state != stateLeft && p.accessUntil.Sub(now) < half {
			s.grantLocked(p, now)
		}
	}
}

// excludedLocked reports whether host h may not serve t's content or fetch
// it from the origin for the swarm: banned, or its digests under suspicion.
func (s *Scheduler) excludedLocked(t *task, h *host, now time.Time) bool {
	return now.Before(h.bannedUntil) || t.accused(h)
}

// onContentCorruptLocked handles a peer whose assembled content failed the
// task's whole-content digest although every piece matched its trusted
// digest: the digests themselves are wrong, or the reporter lies.
//
// From a peer the scheduler sent to the origin it is a confession: the
// origin gave it other bytes than the digest names; its digests are dropped.
// From any other peer it is an accusation of the hosts that gave the digests.
// One accusation is not enough to ban anyone: the digests are suspended
// (nobody gets them, the accused hosts serve and fetch nothing for the
// task) and a fresh fetch from the origin, by a host that is neither accused
// nor a reporter (a seed peer when one is connected), settles it: a digest
// that differs proves its source wrong and bans that host for BanTTL; a fetch
// that agrees on every piece clears the accused and makes the reporters'
// later reports count for nothing for BanTTL.
func (s *Scheduler) onContentCorruptLocked(p *peer, m *schedulerv1.ContentCorrupt, now time.Time) {
	t := p.task
	if p.state == stateBackToSource {
		n := 0
		for k, h := range t.digestHost {
			if h == p.host.id {
				delete(t.digests, k)
				delete(t.digestHost, k)
				n++
			}
		}
		if n > 0 {
			t.info = nil
		}
		s.m.contentCorrupt.WithLabelValues("self").Inc()
		s.log.Warn("origin content failed its digest at the fetcher; its piece digests dropped", "task_id", t.id,
			"peer_id", p.id, "host_id", p.host.id, "digests_dropped", n, "reason", m.GetReason())
		return
	}
	ignore := func(why string) {
		s.m.contentCorrupt.WithLabelValues("ignored").Inc()
		s.log.Info("content-corrupt report ignored", "task_id", t.id, "peer_id", p.id, "host_id", p.host.id, "why", why)
	}
	switch {
	case now.Before(p.host.falseReportUntil):
		ignore("the reporter's last accusation was disproved")
		return
	case t.suspect != nil:
		if len(t.suspect.reporters) < maxCorruptReporters {
			t.suspect.reporters[p.host.id] = struct{}{}
		}
		s.m.contentCorrupt.WithLabelValues("reported").Inc()
		return
	case len(t.digests) == 0:
		ignore("the task has no trusted digests to accuse")
		return
	case t.pieceCount() == 0 || p.pieces.count < t.pieceCount():
		ignore("the reporter does not hold every piece")
		return
	}
	sus := &suspicion{
		digests:   t.digests,
		from:      t.digestHost,
		accused:   map[string]struct{}{},
		reporters: map[string]struct{}{p.host.id: {}},
	}
	for _, h := range t.digestHost {
		sus.accused[h] = struct{}{}
	}
	if _, self := sus.accused[p.host.id]; self {
		ignore("the reporter is a source of the digests")
		return
	}
	s.m.contentCorrupt.WithLabelValues("reported").Inc()
	t.suspect = sus
	t.digests, t.digestHost, t.info = map[uint32][]byte{}, map[uint32]string{}, nil
	s.log.Warn("content reported corrupt: digests suspended until a fresh fetch from the origin checks them",
		"task_id", t.id, "peer_id", p.id, "host_id", p.host.id, "accused", slices.Sorted(maps.Keys(sus.accused)), "reason", m.GetReason())
	var redo []*peer
	for _, o := range t.list {
		if !t.accused(o.host) {
			continue
		}
		for _, c := range slices.Clone(o.children) {
			s.removeEdge(o, c)
			redo = append(redo, c)
		}
		if o.state == stateBackToSource {
			// Its origin slot goes to someone else; whatever it reports is
			// no longer trusted while the suspicion stands.
			t.backToSource--
			s.setState(o, stateFailed)
			s.updatePoolLocked(o)
		}
	}
	for h := range sus.accused {
		if t.seedFailed == nil {
			t.seedFailed = make(map[string]struct{})
		}
		t.seedFailed[h] = struct{}{}
	}
	if t.seedPeer != nil && t.accused(t.seedPeer.host) {
		t.seedPeer = nil
	}
	if t.seedPhase != seedIdle {
		t.seedPhase, t.seedAttempts = seedFailed, 0
	}
	for _, c := range redo {
		s.decideLocked(c, now, true)
	}
	// A seed peer checks at once; without one, the next peer that needs
	// the content and may go to the origin does.
	if !t.private {
		s.triggerSeedLocked(t, now)
	}
	s.markDirty(t)
}

// checkSuspectLocked compares a fresh digest d of piece n, from fetcher p,
// with the suspended one: a difference proves the suspended digest's source
// wrong.
func (s *Scheduler) checkSuspectLocked(t *task, n uint32, d []byte, p *peer, now time.Time) {
	sus := t.suspect
	old, ok := sus.digests[n]
	if !ok {
		return
	}
	if core.EqualDigest(old, d) {
		sus.agreed++
		return
	}
	liar := sus.from[n]
	if h := s.hosts[liar]; h != nil {
		h.bannedUntil = now.Add(s.cfg.BanTTL.D())
	}
	s.m.contentCorrupt.WithLabelValues("confirmed").Inc()
	s.log.Warn("piece digests proven wrong by a fresh fetch from the origin: host banned", "task_id", t.id,
		"banned_host", liar, "piece", n, "checked_by", p.host.id, "ban", s.cfg.BanTTL.D())
	t.suspect = nil
	// Every peer of the banned host loses its children, in every task.
	for _, ot := range s.taskList {
		var redo []*peer
		for _, o := range ot.list {
			if o.host.id != liar {
				continue
			}
			for _, c := range slices.Clone(o.children) {
				s.removeEdge(o, c)
				redo = append(redo, c)
			}
		}
		for _, c := range redo {
			s.decideLocked(c, now, true)
		}
	}
}

// clearSuspectLocked ends a suspicion that fetcher p's complete fetch did
// not confirm: the accused are cleared, the reporters are not heard again
// for BanTTL.
func (s *Scheduler) clearSuspectLocked(t *task, p *peer, now time.Time) {
	sus := t.suspect
	t.suspect = nil
	for id := range sus.reporters {
		if h := s.hosts[id]; h != nil {
			h.falseReportUntil = now.Add(s.cfg.BanTTL.D())
		}
	}
	s.m.contentCorrupt.WithLabelValues("cleared").Inc()
	s.log.Warn("content-corrupt report disproved by a fresh fetch from the origin; reporters ignored for a while",
		"task_id", t.id, "checked_by", p.host.id, "agreed", sus.agreed, "reporters", slices.Sorted(maps.Keys(sus.reporters)))
	s.markDirty(t)
}
