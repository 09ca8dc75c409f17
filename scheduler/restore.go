package scheduler

import (
	"bytes"
	"maps"
	"slices"
	"time"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
)

// This file re-establishes trust in a task's piece digests on a scheduler
// that does not know the task yet (restarted, or new to the task after a
// hash-ring change) from what the peers holding it complete re-announce.
// docs/architecture.md ("Scheduler restarts") explains the design.

// claim is what a peer holding a task says about it when it re-announces:
// the content's shape and every piece's digest. A claim alone is never
// trusted; restoreTrustLocked decides when claims become the task's digests.
type claim struct {
	length    int64
	pieceSize uint32
	digests   map[uint32][]byte
}

// pieceCount is the number of pieces of the claimed shape, 0 while unknown.
func (c *claim) pieceCount() uint32 {
	if c == nil || c.length < 0 || c.pieceSize == 0 {
		return 0
	}
	return core.PieceCount(c.length, c.pieceSize)
}

// complete reports whether the claim names a shape and a digest per piece.
func (c *claim) complete() bool {
	return c != nil && c.length >= 0 && c.pieceSize > 0 && uint32(len(c.digests)) == c.pieceCount()
}

// agrees reports whether two complete claims say the same thing.
func (c *claim) agrees(o *claim) bool {
	if !c.complete() || !o.complete() || c.length != o.length || c.pieceSize != o.pieceSize {
		return false
	}
	for n, d := range c.digests {
		if !bytes.Equal(d, o.digests[n]) {
			return false
		}
	}
	return true
}

// claimable reports whether t takes claims at all: not private (its
// holders' credentials are theirs alone), not a dfcache entry (its
// importer re-registers as its source), and not under a content-corrupt
// suspicion (settled by a fresh origin fetch only).
func (t *task) claimable() bool {
	return !t.private && !t.cache && t.suspect == nil
}

// contentTask reports whether t's ID is its content's digest (a registry
// blob): every register checked it (checkSpec), so every peer of t checks
// the whole content against that digest when it completes.
func (t *task) contentTask() bool {
	id, err := core.ContentTaskID(t.spec.GetDigest())
	return err == nil && id == t.id
}

// unverifiable reports whether nobody could check a piece of t right now:
// the scheduler knows neither its shape nor a digest (both come only from a
// trusted source) and no fetcher is bringing them. Parents of such a task only hold unchecked bytes: a peer handed one
// would wait for digests that never come and then fetch everything from the
// origin (the stampede after a scheduler restart), so it is better sent to a
// seed or to the origin at once.
func (t *task) unverifiable() bool {
	return !t.cache && !t.shapeKnown() && t.backToSource == 0
}

// parentsCheckable reports whether what a parent of t sends can be checked:
// not while t's digests are suspended and no fresh ones came yet (the
// origin, or a seed, first), nor while nobody could check a piece at all
// (unverifiable: a task cached before a scheduler restart whose holders'
// digests are not trusted yet).
func (t *task) parentsCheckable() bool {
	return (t.suspect == nil || len(t.digests) > 0) && !t.unverifiable()
}

// claimMetaLocked records the shape a peer not fetching from the origin
// says t has.
func (s *Scheduler) claimMetaLocked(p *peer, m *schedulerv1.TaskMeta) {
	if !p.task.claimable() || len(p.task.digests) > 0 {
		return
	}
	if p.claim == nil {
		p.claim = &claim{length: -1, digests: map[uint32][]byte{}}
	}
	if m.GetContentLength() >= 0 {
		p.claim.length = m.GetContentLength()
	}
	if m.GetPieceSize() > 0 {
		p.claim.pieceSize = m.GetPieceSize()
	}
	// A holder registered with every piece it claims (Register.have, sent
	// before the shape): a claim of more pieces than that is no holder's,
	// and would only make the scheduler keep digests for nothing.
	if n := p.claim.pieceCount(); n > maxPieces || n > p.pieces.count {
		p.claim = nil
	}
}

// claimDigestLocked records the digest of piece n that p, not fetching
// from the origin, says it holds; it reports whether it was taken.
func (s *Scheduler) claimDigestLocked(p *peer, n uint32, d []byte) bool {
	c := p.claim
	if c == nil || !p.task.claimable() || len(p.task.digests) > 0 || len(d) != core.DigestSize || n >= c.pieceCount() {
		return false
	}
	c.digests[n] = bytes.Clone(d)
	return true
}

// restoreTrustLocked makes p's claim t's trusted shape and digests when the
// task has none and one of these holds:
//
//   - p is on a seed host (a seed certificate: authorizeHost), which the
//     scheduler would have sent to the origin for the task anyway;
//   - t is a content task: every child checks the whole content against
//     the digest the task ID is, and a liar is caught by the content-corrupt
//     path (suspicion, fresh origin fetch, ban) like any fetcher;
//   - another peer on another host claims exactly the same (two hosts, two
//     certificates, agree).
//
// Otherwise the claim waits; the task's next peer goes to a seed or to the
// origin (unverifiable), and the digests that fetch brings are the task's.
func (s *Scheduler) restoreTrustLocked(p *peer, now time.Time) {
	t := p.task
	c := p.claim
	if !t.claimable() || len(t.digests) > 0 || !c.complete() || p.pieces.count < c.pieceCount() ||
		s.excludedLocked(t, p.host, now) || now.Before(p.host.falseReportUntil) ||
		(t.contentLength >= 0 && t.contentLength != c.length) || (t.pieceSize > 0 && t.pieceSize != c.pieceSize) {
		return
	}
	from := []string{p.host.id}
	rule := ""
	switch {
	case p.host.info.GetSeed():
		rule = "seed"
	case t.contentTask():
		rule = "content_digest"
	default:
		for _, o := range t.list {
			if o == p || o.host == p.host || o.state == stateLeft || o.pieces.count < c.pieceCount() ||
				s.excludedLocked(t, o.host, now) || !o.claim.agrees(c) {
				continue
			}
			rule = "two_hosts"
			from = append(from, o.host.id)
			break
		}
	}
	if rule == "" {
		if s.debug() {
			s.log.Debug("claim not trusted yet: needs a seed host, a content task or a second host agreeing",
				"task_id", t.id, "peer_id", p.id, "host_id", p.host.id)
		}
		return
	}
	t.contentLength, t.pieceSize = c.length, c.pieceSize
	// Sources alternate over the agreeing hosts, so a content-corrupt
	// report accuses every one of them.
	for n, d := range c.digests {
		t.digests[n] = d
		t.digestHost[n] = from[int(n)%len(from)]
	}
	var others []*peer
	for _, o := range t.list {
		if o.conn.inv != nil && o.claim != nil && o != p && !o.claim.agrees(c) {
			others = append(others, o)
		}
		o.claim = nil // no longer needed: the task's digests are known
	}
	// An inventory holder that claimed other content holds nothing a
	// child could check: it leaves, told so on its stream.
	for _, o := range others {
		o.conn.inv.refuseLocked(o, "the piece digests differ from the task's", now)
	}
	t.info = nil
	s.m.trustRestored.WithLabelValues(rule).Inc()
	s.log.Info("piece digests restored from a holder's re-announcement", "task_id", t.id, "rule", rule,
		"hosts", slices.Sorted(maps.Keys(hostSet(from))), "pieces", len(t.digests))
	s.broadcastInfoLocked(t, nil, t.infoMessage())
	s.markDirty(t)
}

func hostSet(ids []string) map[string]struct{} {
	m := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		m[id] = struct{}{}
	}
	return m
}
