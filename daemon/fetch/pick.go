package fetch

import (
	"math"
	"slices"
	"time"

	"github.com/damselfly-io/damselfly/core"
)

// pickSample bounds the candidates one rarest-first pick compares.
const pickSample = 512

// schedule starts requests while there is room: new pieces first, then
// (endgame) a duplicate of a piece a much slower parent holds up.
func (c *Core) schedule(now time.Time) {
	if c.mode != ModeSwarm || c.psize == 0 || c.length < 0 || len(c.order) == 0 {
		return
	}
	c.ensureNeed()
	top := c.estimate()
	c.rescue(now, top)
	for !c.busy() {
		n, p := c.pick(now, top)
		if p == nil {
			break
		}
		c.request(now, n, p)
	}
	for !c.busy() {
		n, p := c.endgame(now)
		if p == nil {
			break
		}
		c.request(now, n, p)
	}
}

// inflightShare is the share of the swarm timeout that the bytes in flight
// may take the downlink to drain (busy): 8 s at the default 20. More
// requests than that bring nothing sooner: they share the downlink with
// those already in flight, and every piece in flight takes longer. A host
// 0.6 Mbit/s down, given three paced parents that each took four requests
// (the simulator's mixed with slow downlinks, hosts 40 times slower), had
// twelve pieces in flight and none done within the swarm timeout: 11 of
// 12 such hosts went to the origin, which sent 11.4 × F.
const inflightShare = 0.4

// busy reports whether the task has as many requests in flight as it may
// have: ConcurrentPieces, or, past the first, the bytes its downlink
// drains in inflightShare of the swarm timeout. The downlink is
// Config.Downlink, or the sum of the rates measured from the parents where
// that is more: a link test's rate is only a lower bound, and the parents'
// rates add up to the downlink when it is what limits them all. With no
// downlink known, only ConcurrentPieces bounds: the parents' rates alone
// cannot tell a slow downlink from slow parents, which several requests in
// flight each make up for (depth).
func (c *Core) busy() bool {
	if c.nreq >= c.cfg.ConcurrentPieces {
		return true
	}
	if c.nreq == 0 || c.cfg.Downlink <= 0 {
		return false
	}
	d := c.cfg.Downlink
	sum := 0.0
	for _, p := range c.order {
		sum += p.rate.BytesPerSec()
	}
	d = max(d, sum)
	return float64(c.nbytes+int64(c.psize)) > d*inflightShare*c.cfg.SwarmTimeout.Seconds()
}

// estimate refreshes every parent's rate estimate and returns the best:
// the rate this peer measured from it, else the rate declared for its
// host, else the best known rate among the parents (a new parent is
// assumed as good as the best until measured, so it gets tried).
func (c *Core) estimate() float64 {
	known := 0.0
	for _, p := range c.order {
		r := p.rate.BytesPerSec()
		if r == 0 {
			r = p.UploadBps
		}
		if p.ShareBps > 0 && (r == 0 || r > p.ShareBps) {
			r = p.ShareBps // paced: it gives no more than its share
		}
		p.est = r
		known = max(known, r)
	}
	c.measured = known > 0
	if known == 0 {
		known = 1 // all alike until something is known
	}
	for _, p := range c.order {
		if p.est == 0 {
			p.est = known
		}
	}
	return known
}

// depth is how many requests a parent may have in flight: the full
// PerParentRequests for the fastest, fewer by their rates for slower ones
// (at least one), so that a slow parent holds few pieces hostage while
// each parent still gets requests in proportion to what it delivers. A
// paced parent may have the full PerParentRequests as well: its pacing
// clock (paceReady) keeps what it sends at the share, and its uplink is
// shared per connection with its full-rate children's requests, so one
// connection at a time got it a fraction of the share (a 25 Mbit/s relay
// with a child's four requests in flight gave a paced leaf 5 of its 7.6).
func (c *Core) depth(p *parent, top float64) int {
	if p.ShareBps > 0 {
		return c.pacedDepth()
	}
	per := c.cfg.PerParentRequests
	if top <= 0 || p.est >= top {
		return per
	}
	return max(1, int(math.Ceil(float64(per)*p.est/top)))
}

// pacedDepth is how many requests a paced parent may have in flight.
func (c *Core) pacedDepth() int { return max(1, c.cfg.PerParentRequests) }

func (c *Core) room(p *parent, top float64) bool { return len(p.inflight) < c.depth(p, top) }

// paceReady reports whether p may take a request at now as far as its
// pacing goes: an unpaced parent always; a paced one (ShareBps > 0) once
// the bytes of the requests made of it so far, at ShareBps, have elapsed
// (request clocks at the share: nextAt), so that what it sends this peer
// stays at or below its share however fast its uplink momentarily is.
// Requests still in flight do not hold the next one back: when each
// connection gets less than the share, several in flight make it up.
func (c *Core) paceReady(p *parent, now time.Time) bool {
	return p.ShareBps <= 0 || !now.Add(paceSlack).Before(p.nextAt)
}

// paceSlack: a paced parent is ready this much before its time, so that a
// timer fired a little early (an executor's clock or rounding) finds it
// ready instead of waiting for a timer that is never set again.
const paceSlack = time.Millisecond

func (c *Core) request(now time.Time, n uint32, p *parent) {
	_, size := core.PieceRange(n, c.length, c.psize)
	var ahead int64
	for _, r := range p.inflight {
		ahead += r.size
	}
	c.lastReq++
	r := &request{id: c.lastReq, piece: n, p: p, size: size, start: now, ahead: ahead, asked: p.updates, active: true}
	c.reqs[n] = append(c.reqs[n], r)
	p.inflight = append(p.inflight, r)
	c.nreq++
	c.nbytes += size
	if p.ShareBps > 0 {
		// The clock runs from the last request's slot, or from now when
		// that is past (an idle parent earns no burst).
		p.nextAt = later(p.nextAt, now).Add(secs(float64(size) / p.ShareBps))
	}
	c.emit(ActRequest{Parent: p.ID, Piece: n, Size: size, Stall: c.stallTimeout(p), Req: r.id})
}

// stallTimeout follows the parent's measured rate: ten 64 KiB chunks' worth
// of time at that rate shared by the requests one parent may serve at once,
// within the configured bounds.
func (c *Core) stallTimeout(p *parent) time.Duration {
	t := c.cfg.MaxStall
	if r := p.rate.BytesPerSec(); r > 0 {
		per := max(c.cfg.PerParentRequests, 1)
		t = time.Duration(float64(10*64<<10*per) / r * float64(time.Second))
	}
	return min(max(t, c.cfg.MinStall), c.cfg.MaxStall)
}

// eta is when a request is expected to end at its parent's estimated rate.
func (r *request) eta() time.Time {
	return r.start.Add(secs(float64(r.ahead+r.size) / r.p.est))
}

// left is how long r is still expected to take at now; an overdue request
// counts by how much it is overdue, since its estimate was wrong by as much.
func (r *request) left(now time.Time) time.Duration {
	l := r.eta().Sub(now)
	if l < 0 {
		return -l
	}
	return l
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func secs(s float64) time.Duration {
	if s > 1e6 || math.IsNaN(s) {
		return 1e6 * time.Second
	}
	return time.Duration(s * float64(time.Second))
}

// pick chooses the next piece and parent: rarest first among the parents'
// pieces (ties broken from a random start, so peers hold different pieces
// and have something to trade), or in order while a reader streams the
// content; a piece only once its trusted digest is known.
func (c *Core) pick(now time.Time, top float64) (uint32, *parent) {
	nn := len(c.need)
	if nn == 0 {
		return 0, nil
	}
	free := false
	for _, p := range c.order {
		p.roomy = c.room(p, top) && c.paceReady(p, now) // fixed for this pick
		free = free || p.roomy
	}
	if !free {
		return 0, nil
	}
	if c.streaming {
		if n, ok := c.pickSequential(); ok {
			return n, c.chooseParent(n)
		}
		return 0, nil
	}
	start := c.rnd.IntN(nn)
	bestN, bestRare := uint32(0), -1
	// The rarest among a bounded sample of available pieces, from a random
	// start: exact for small tasks, and a pick stays cheap on a task of
	// tens of thousands of pieces, where a full scan per pick would be
	// quadratic over the download.
	seen := 0
	for i := 0; i < nn && seen < pickSample; i++ {
		n := c.need[(start+i)%nn]
		if len(c.reqs[n]) > 0 || !c.trusted(n) {
			continue
		}
		rare, avail := 0, false
		for _, p := range c.order {
			if p.holds(n) {
				rare++
				if p.roomy && p.offers(n) {
					avail = true
				}
			}
		}
		if !avail {
			continue
		}
		seen++
		if bestRare < 0 || rare < bestRare {
			bestN, bestRare = n, rare
			if rare == 1 {
				break
			}
		}
	}
	if bestRare < 0 {
		return 0, nil
	}
	return bestN, c.chooseParent(bestN)
}

// pickSequential returns the lowest-numbered missing piece that some parent
// with room holds: with several requests in flight the reader's next bytes
// are always among them.
func (c *Core) pickSequential() (uint32, bool) {
	best, found := uint32(0), false
	for _, n := range c.need {
		if found && n >= best {
			continue
		}
		if len(c.reqs[n]) > 0 || !c.trusted(n) {
			continue
		}
		for _, p := range c.order {
			if p.offers(n) && p.roomy {
				best, found = n, true
				break
			}
		}
	}
	return best, found
}

// chooseParent picks, among the parents with room that hold piece n, a
// non-seed one when there is any (a seed's uplink is as scarce as
// anyone's), then the one that would deliver it soonest: the best
// estimated rate per request in flight, with a little noise so that equal
// parents share.
func (c *Core) chooseParent(n uint32) *parent {
	nonSeed := false
	for _, p := range c.order {
		if !p.Seed && p.offers(n) && p.roomy {
			nonSeed = true
			break
		}
	}
	var best *parent
	bestScore := -1.0
	for _, p := range c.order {
		if !p.offers(n) || !p.roomy || (nonSeed && p.Seed) {
			continue
		}
		s := p.est / float64(len(p.inflight)+1) * (1 + 0.1*c.rnd.Float64())
		if s > bestScore {
			best, bestScore = p, s
		}
	}
	return best
}

// rescue asks the current parents for the pieces still coming from a
// parent the scheduler replaced. Its requests were left to finish (it is
// not stalled, and may be fast: the scheduler also moves children to
// balance a tree), but the scheduler mostly replaces a parent because it
// is slow, and the pieces it still owes are the oldest this peer lacks:
// its own children wait on them. In the simulator, a relay whose slow
// parent was replaced got the four pieces that parent still owed 2.5 s
// later, and the whole pipeline below it stood still until then. As in the
// endgame, a piece is asked again (the first copy wins, the other is
// cancelled) from the measured current parent with room that would bring
// it soonest, when that parent would deliver it in under half the time it
// is still expected to take where it is. A new parent is measured by its
// first piece, so the rescue comes one piece time after the replacement.
func (c *Core) rescue(now time.Time, top float64) {
	c.orphans = slices.DeleteFunc(c.orphans, func(p *parent) bool { return len(p.inflight) == 0 })
	for _, q := range c.orphans {
		for _, r := range slices.Clone(q.inflight) {
			if c.busy() {
				return
			}
			if len(c.reqs[r.piece]) != 1 {
				continue // asked twice already
			}
			var best *parent
			bestScore := -1.0
			for _, p := range c.order {
				if p.rate.BytesPerSec() <= 0 || !p.offers(r.piece) || !c.room(p, top) || !c.paceReady(p, now) {
					continue
				}
				if s := p.est / float64(len(p.inflight)+1); s > bestScore {
					best, bestScore = p, s
				}
			}
			if best == nil {
				continue
			}
			if r.left(now) > 2*secs(float64(r.size)*float64(len(best.inflight)+1)/best.est) {
				c.request(now, r.piece, best)
			}
		}
	}
}

// endgame finds a piece to request a second time once every missing piece
// is requested: an idle parent that holds a piece outstanding at another
// parent asks for it too when it would deliver it in well under half the
// time that request is still expected to take (or it is long overdue).
// Whichever copy arrives first wins; the other is cancelled. So the last
// pieces never wait on a slow parent while a fast one idles.
func (c *Core) endgame(now time.Time) (uint32, *parent) {
	if !c.measured {
		return 0, nil // nothing tells a slow parent from a fast one yet
	}
	// Only at the end: every missing piece is requested already. Before,
	// an idle parent waits for new pieces rather than spending its uplink
	// on copies (len(c.reqs) counts requested pieces, held ones included:
	// at worst the endgame starts a few pieces early).
	if len(c.reqs) < int(c.count-c.nheld) {
		return 0, nil
	}
	for _, p := range c.order {
		if len(p.inflight) > 0 || !c.paceReady(p, now) {
			continue
		}
		own := secs(float64(c.psize) / p.est)
		var bestN uint32
		var bestLeft time.Duration = -1
		for _, q := range c.order {
			if q == p {
				continue
			}
			for _, r := range q.inflight {
				if len(c.reqs[r.piece]) != 1 || !p.offers(r.piece) {
					continue
				}
				if left := r.left(now); left > 2*own && left > bestLeft {
					bestN, bestLeft = r.piece, left
				}
			}
		}
		if bestLeft >= 0 {
			return bestN, p
		}
	}
	return 0, nil
}
