package scheduler

import (
	"cmp"
	"slices"
	"time"
)

// Top-ups (docs/architecture.md, "Top-ups"): a receiver fed by a relay
// slower than the task's rate gets that relay's uplink, however fast its own
// downlink; and a receiver still downloading when the first hosts finish
// gets what its parents give while the finished hosts' uplinks idle. The
// fluid bound is reached only when no uplink idles while some downlink has
// room, so each tick tops such receivers up with paced shares of the spare
// uplinks that hold pieces they lack.

// topUpAhead is how many pieces a receiver lacks that a downloading donor
// must hold: a donor with the same pieces (its own relay's other children,
// its descendants) would have nothing to give it. Counted in the pieces
// themselves, not in how many each holds: a host of another pipeline about
// level with the receiver holds other pieces (on the harness, spread at
// N = 32, a downloading donor's 7.2 Mbit/s of spare idled for 45 s while
// seven receivers about level with the swarm were short of the rate).
const topUpAhead = 4

// topUpScan bounds the donors one receiver looks at, and topUpBudget the
// donors looked at per task and tick, so that a tick's cost stays bounded
// at 10,000 peers.
const (
	topUpScan   = 64
	topUpBudget = 16384
)

// topUpShortLocked gives t's downloading receivers whose parents give them
// less than they could take paced shares of spare uplinks, the receivers
// that hold the fewest pieces first (they finish last). A receiver can take
// the task's fluid rate from downloading donors and its downlink from
// finished ones: a donor that holds everything only idles otherwise. A
// downloading donor must hold topUpAhead pieces the receiver lacks. The
// shares are paced like pacedLocked's but booked apart (linkTopUpLocked):
// they yield to every other booking on the donor, and trimTopUpsLocked
// scales them down when its spare shrinks. A donor is never a seed host
// that may share the origin's uplink (sharedSeed). The swaps and the
// levelling follow, whether or not any donor had spare. Runs once a tick.
func (s *Scheduler) topUpShortLocked(t *task, now time.Time) {
	if !s.cfg.PacedShares || !s.cfg.CapacityAware || t.fluid <= 0 || t.unverifiable() {
		return
	}
	floor := minPacedShare * t.fluid
	donors := s.topUpDonors[:0]
	recv := s.topUpRecv[:0]
	defer func() {
		clear(donors)
		s.topUpDonors = donors[:0]
		clear(recv)
		s.topUpRecv = recv[:0]
	}()
	for _, c := range t.list {
		if !topUpDonor(c, now) {
			continue
		}
		if sp := s.topUpSpare(c, now); sp >= floor {
			donors = append(donors, pacedCand{c, sp})
		}
	}
	if s.debug() {
		sp := 0.0
		for _, d := range donors {
			sp += d.spare
		}
		s.log.Debug("top-up donors", "task_id", t.id, "donors", len(donors), "spare_bps", int64(sp), "fluid_bps", int64(t.fluid), "rate_bps", int64(t.rate))
	}
	// No early return without donors: the levelling below needs none.
	// Finished donors first (they idle otherwise), then the largest spare.
	slices.SortFunc(donors, func(a, b pacedCand) int {
		if ad, bd := a.state == stateSucceeded, b.state == stateSucceeded; ad != bd {
			if ad {
				return -1
			}
			return 1
		}
		return cmp.Compare(b.spare, a.spare)
	})
	for _, p := range t.list {
		// A crowded peer that splits a full uplink with a pipeline is
		// moved to a free slot or to paced parents (rehomeLocked,
		// pacedRehomeLocked), which gives the pipeline its rate back; a
		// top-up would leave it there. A slow one (it relays to nobody)
		// whose parent feeds only leaves (a pipeline's tail slower than
		// the fluid rate) holds back no pipeline and would take no free
		// slot, and is topped up like any receiver when no paced parents
		// give it more than its slot. (In the simulator's spread at N = 16
		// the last host went from 0.88 of the bound to 0.92-0.93 with it.)
		// One that is its parent's only full-rate child (soleChild)
		// splits that uplink with no other child of the task: it is
		// crowded because the parent is slower than the rate (or its
		// host's slots went to other tasks), and is topped up too. One with
		// maxPacedParents takes no new parent, but its shares may grow
		// (growSharesLocked) and others may level from it.
		if p.state == stateRunning && len(p.parents) > 0 && (!p.crowded || s.crowdedLeaf(p, now) || soleChild(p)) {
			recv = append(recv, p)
		}
	}
	slices.SortFunc(recv, func(a, b *peer) int { return cmp.Compare(a.pieces.count, b.pieces.count) })
	// Two passes: everyone up to the fluid rate first, then, from finished
	// donors only, up to the downlink. A relay fed at the rate whose
	// downlink is unknown would otherwise take a finished host's whole
	// spare while a receiver below a slower relay stayed short.
	budget := topUpBudget
	s.epoch++
	e := s.epoch
	var told []*peer
	for pass := range 2 {
		for _, p := range recv {
			if budget <= 0 || len(donors) == 0 {
				break
			}
			d := s.topUpDownlink(p)
			if pass == 0 {
				d = min(d, t.fluid)
			}
			in := s.inflow(p, now)
			if d-in < floor || len(p.parents) >= maxPacedParents {
				continue
			}
			group := localityGroup(p.host.info)
			added := 0
			for i := 0; i < len(donors) && i < topUpScan && len(p.parents) < maxPacedParents && d-in >= floor; i++ {
				budget--
				dn := &donors[i]
				if (pass == 1 && dn.state != stateSucceeded) || !servesNew(dn.peer, p) {
					continue
				}
				if dn.host == p.host || localityGroup(dn.host.info) != group || isParent(p, dn.peer) {
					continue
				}
				if reported(p, dn.peer, now) {
					continue
				}
				sh := min(dn.spare, d-in)
				if s.linkTopUpLocked(dn.peer, p, sh) {
					dn.spare -= sh
					in += sh
					added++
				}
			}
			if added == 0 {
				if s.debug() {
					s.log.Debug("short, no top-up", "task_id", t.id, "peer_id", p.id, "pass", pass, "in_bps", int64(in), "want_bps", int64(d), "pieces", p.pieces.count)
				}
				continue
			}
			// Donors whose spare is spent drop out of the scan.
			donors = slices.DeleteFunc(donors, func(dn pacedCand) bool { return dn.spare < floor })
			s.m.topUps.Add(float64(added))
			told = tellOnce(told, e, p)
			if s.debug() {
				s.log.Debug("topped up", "task_id", t.id, "peer_id", p.id, "parents", added, "in_bps", int64(in))
			}
		}
	}
	told = s.growSharesLocked(recv, floor, &budget, e, told, now)
	// The growth spent part of some donors' spare: the swaps give from
	// what is left (a receiver's own uplink among them).
	for i := range donors {
		donors[i].spare = s.topUpSpare(donors[i].peer, now)
	}
	donors = slices.DeleteFunc(donors, func(dn pacedCand) bool { return dn.spare < floor })
	told = s.swapShortLocked(recv, donors, floor, &budget, e, told, now)
	told = s.levelShortLocked(recv, floor, &budget, e, told, now)
	for _, p := range told {
		s.sendParentsLocked(p, now)
	}
}

// soleChild reports whether p is its full-rate parent's only full-rate
// child: crowded there, it splits that uplink with no pipeline of the task
// (the parent is slower than the rate), and a top-up gives it, and every
// host it relays to, the rest of the rate. Peers that join together are
// placed below parents with no room for them, and a relay is not moved to
// paced parents: in the simulator's spread at N = 16 and 100 Mbit/s, hosts
// joining 5 ms apart, a 91 Mbit/s relay crowded below a 57 Mbit/s one, and
// the two hosts below it, took in about 57 of the 70.5 Mbit/s the rate
// asked for 8 s, untopped, and finished last (0.78 of the bound; 0.87
// with it).
func soleChild(p *peer) bool {
	fp := fullParent(p)
	return fp != nil && unpacedChildren(fp) == 1
}

// growStep is the least a share is grown by (growSharesLocked), as a
// fraction of minPacedShare: smaller steps would retell a receiver its
// parents every tick for a trickle.
const growStep = 0.25

// growSharesLocked grows the paced shares that short receivers already
// hold by the spare their parents have left. A donor gives new shares of at
// least minPacedShare of the fluid rate (a parent worth its connection), so
// once shares are booked on an uplink whatever is left below that floor
// was given to nobody: each fast relay's last fragment. In the simulator's
// mixed at N = 32 with the seed on the origin's host, fourteen relays each
// kept 0.64 Mbit/s (the floor was 0.68) while three slow receivers, paced
// by those very relays, were 2.6-4.8 Mbit/s short of the fluid rate; the
// last of them finished 5 s after the others. Growing a share adds no
// parent, so there is no floor to it, only growStep. A downloading donor
// must still hold topUpAhead pieces the receiver lacks (canTakeShare). It
// returns told with the receivers it changed added.
func (s *Scheduler) growSharesLocked(recv []*peer, floor float64, budget *int, e uint64, told []*peer, now time.Time) []*peer {
	step := growStep * floor
	for _, p := range recv { // the fewest pieces first
		if *budget <= 0 {
			break
		}
		short := min(s.topUpDownlink(p), p.task.fluid) - s.inflow(p, now)
		group := localityGroup(p.host.info)
		for j := 0; j < len(p.parents) && short >= step && *budget > 0; j++ {
			*budget--
			l := &p.parents[j]
			d := l.peer
			if !topUpDonor(d, now) || !s.canTakeShare(p, d, l.share, group, now) {
				continue
			}
			a := min(short, s.topUpSpare(d, now))
			if a < step {
				continue
			}
			l.share += a
			d.addBooking(l.top, a)
			l.restart(now, p)
			short -= a
			s.m.topUps.Inc()
			told = tellOnce(told, e, p)
			if s.debug() {
				s.log.Debug("share grown", "task_id", p.task.id, "peer_id", p.id, "donor", d.id, "bps", int64(a))
			}
		}
	}
	return told
}

// swapShortLocked serves the receivers the top-ups left short whose own
// uplink has spare: no donor can give to its own host, and a receiver that
// registered after the others had booked every spare share (a slow host,
// paced-only) would idle its uplink while it fell behind. So a short
// receiver p takes over part of another receiver q's paced share from a
// donor D, and gives q the same from its own uplink as a top-up: D's
// bookings and q's inflow stay as they were, and p's uplink is used. (On
// the harness's mixed at N = 16, the last slow host to register got 0.85
// of the fluid rate for the whole download while the one donor with spare
// was its own host, and finished 3 s after the others.) p must hold
// topUpAhead pieces q lacks, and D as many that p lacks unless D is
// done, as for any downloading donor. It returns told with the receivers
// it changed added.
func (s *Scheduler) swapShortLocked(recv []*peer, donors []pacedCand, floor float64, budget *int, e uint64, told []*peer, now time.Time) []*peer {
	if len(donors) == 0 {
		return told // a swap gives from the receiver's own spare: none left
	}
	var ownAt map[*peer]int // p's own entry in donors, built at the first short p
	for _, p := range recv {
		if *budget <= 0 {
			break
		}
		t := p.task
		if len(p.parents) >= maxPacedParents {
			continue
		}
		short := min(s.topUpDownlink(p), t.fluid) - s.inflow(p, now)
		if short < floor {
			continue
		}
		if ownAt == nil {
			ownAt = make(map[*peer]int, len(donors))
			for i, dn := range donors {
				ownAt[dn.peer] = i
			}
		}
		own, ok := ownAt[p]
		if !ok || donors[own].spare < floor {
			continue
		}
		group := localityGroup(p.host.info)
		for _, q := range recv {
			if *budget <= 0 || short < floor || donors[own].spare < floor {
				break
			}
			*budget--
			if q == p || q.host == p.host || localityGroup(q.host.info) != group || len(q.parents) >= maxPacedParents ||
				isParent(q, p) || isParent(p, q) || !servesNew(p, q) {
				continue
			}
			if reported(q, p, now) {
				continue
			}
			for j := range q.parents {
				l := q.parents[j]
				if !s.canTakeShare(p, l.peer, l.share, group, now) {
					continue
				}
				a := keepFloor(min(donors[own].spare, short, l.share), l.share, floor)
				if a < floor {
					continue
				}
				// p→q as a top-up on p's own uplink, then part of D→q
				// moved to D→p: D's books and q's inflow do not change.
				if !s.linkTopUpLocked(p, q, a) {
					continue
				}
				d := l.peer
				if !s.moveShareLocked(q, j, p, a) {
					s.removeEdge(p, q)
					continue
				}
				donors[own].spare -= a
				short -= a
				s.m.topUps.Inc()
				told = tellOnce(told, e, p, q)
				if s.debug() {
					s.log.Debug("share swapped", "task_id", t.id, "peer_id", p.id, "with", q.id, "donor", d.id, "bps", int64(a))
				}
				break
			}
		}
	}
	return told
}

// topUpDownlink is what p may take in all, in bytes/s: its declared
// downlink, else what its link tests saw come in (a lower bound: the link
// takes at least that), else the task's fluid rate. Booked beyond the
// downlink, a top-up takes the place of the main parent's bytes, and a
// relay's children get less: at 10,000 simulated hosts of 1 Gbit/s, with
// unknown downlinks taken at twice the fluid rate, the last host went from
// 0.81 to 0.78 of the bound.
func (s *Scheduler) topUpDownlink(p *peer) float64 {
	if d := declaredDownlink(p.host); d > 0 {
		return float64(d)
	}
	return max(p.task.fluid, float64(p.host.info.GetLinkDownloadBps()))
}

// inflow is what p's parents are taken to give it, in bytes/s: a paced
// parent its share; a full-rate parent that feeds p alone its uplink when
// known, at most the task's rate R (what it passes on beyond what it gets
// is not known here); any other full-rate parent R. A full-rate slot gives
// R, not the fluid rate, where slow uplinks pull the mean below the median:
// counted at the fluid rate, the fast relays of the simulator's mixed at
// 10,000 hosts drew top-ups beyond their downlinks from finished hosts,
// their children got less, and the last host went from 0.72 to 0.67 of
// the bound. A
// parent that feeds several at the full rate was given them for an uplink
// that feeds them all (a seed whose uplink was probed: its link tests say
// a tenth of it), or p is crowded there and is moved (rehomeLocked): taken
// at its uplink over its children, the ten children of a 10 Gbit/s seed
// at 10,000 simulated hosts looked short, drew top-ups from the pipelines'
// tails, and the last host went from 0.81 to 0.78 of the bound. But a
// crowded slow host below a parent that feeds only leaves is not moved (it
// holds back no pipeline there) and is topped up instead, so it is taken
// at its part of that uplink: taken at R, two slow leaves splitting a
// tail's uplink in the simulator's mixed with the seed on the origin's host
// got 12.5 Mbit/s each against a fluid rate of 20.8 for 20 s while spare
// idled.
func (s *Scheduler) inflow(p *peer, now time.Time) float64 {
	in := 0.0
	for _, l := range p.parents {
		switch u := s.uplink(l.peer.host, now); {
		case l.share > 0:
			in += l.share
		case u > 0 && unpacedChildren(l.peer) == 1:
			in += min(u, p.task.rate)
		case u > 0 && s.crowdedLeaf(p, now):
			in += min(u/float64(unpacedChildren(l.peer)), p.task.rate)
		default:
			in += p.task.rate
		}
	}
	return in
}

// crowdedLeaf reports whether p is crowded (it shares a full uplink) as a
// slow host whose one full-rate parent feeds only leaves, a pipeline's
// tail: it holds back no pipeline there and would take no free slot, so
// it stays and is topped up rather than moved.
func (s *Scheduler) crowdedLeaf(p *peer, now time.Time) bool {
	if !p.crowded || !s.slowHost(p, now) {
		return false
	}
	fp := fullParent(p)
	return fp != nil && s.feedsLeaves(fp, now)
}

// linkTopUpLocked links a paced edge of share bytes/s from parent to child
// as a top-up: booked in parent.topBooked rather than in booked, so that
// every other booking on parent sees it as free and takes it back
// (trimTopUpsLocked). A newcomer that would otherwise split a full uplink
// (a pipeline head's) gets the spare a top-up holds.
func (s *Scheduler) linkTopUpLocked(parent, child *peer, share float64) bool {
	return s.linkEdgeLocked(parent, child, share, true)
}

// topUpDonor reports whether c may give top-ups and grown shares: it is
// downloading or done, not a seed that may share the origin's uplink
// (sharedSeed), not being dropped, and not barred.
func topUpDonor(c *peer, now time.Time) bool {
	return (c.state == stateSucceeded || c.state == stateRunning) && !sharedSeed(c) && !c.dropping && !barred(c, now)
}

// topUpSpare is what c's uplink has for top-ups and grown shares: its
// spare less the top-ups already booked on it.
func (s *Scheduler) topUpSpare(c *peer, now time.Time) float64 {
	return s.spare(c, now) - c.topBooked
}

// servesNew reports whether d has something for p: it is done, or it
// holds topUpAhead pieces p lacks (a donor level with p gives it nothing
// new, however much spare it books).
func servesNew(d, p *peer) bool {
	return d.state == stateSucceeded || d.pieces.holdsNew(&p.pieces, topUpAhead)
}

// canTakeShare reports whether receiver p may be given part of a paced
// share of size share that donor d books for another receiver: d is not
// p's host, is in p's locality group, is not being dropped, holds
// topUpAhead pieces p lacks unless it is done, feeds p at most through a
// paced share (which then grows), and p has not reported it.
func (s *Scheduler) canTakeShare(p, d *peer, share float64, group string, now time.Time) bool {
	if share <= 0 || d.host == p.host || localityGroup(d.host.info) != group || d.dropping || !servesNew(d, p) {
		return false
	}
	if k := parentIndex(p, d); k >= 0 && p.parents[k].share <= 0 {
		return false
	}
	return !reported(p, d, now)
}

// reported reports whether p reported parent as bad and the mark still
// holds (a corrupt parent's always, any other's for badParentTTL).
func reported(p, parent *peer, now time.Time) bool {
	m, bad := p.bad[parent.id]
	return bad && (m.kind == badCorrupt || now.Sub(m.at) < badParentTTL)
}

// keepFloor trims a, taken from a share of size share, so that what is
// left is either nothing or at least floor (still worth a parent).
func keepFloor(a, share, floor float64) float64 {
	if rest := share - a; rest > 0 && rest < floor {
		return share - floor
	}
	return a
}

// moveShareLocked moves a bytes/s of q's paced share from its parent
// q.parents[j] to p: p's share from that donor grows (or p gets one,
// booked as q's was), and q's shrinks (or goes, when a is all of it). The
// donor's books do not change. It reports false, changing nothing, when
// the new edge cannot be linked.
func (s *Scheduler) moveShareLocked(q *peer, j int, p *peer, a float64) bool {
	l := q.parents[j]
	d := l.peer
	if k := parentIndex(p, d); k >= 0 {
		p.parents[k].share += a
		d.addBooking(p.parents[k].top, a)
		p.parents[k].restart(s.now(), p)
	} else {
		bf := d.bookFluid // not a new booking: D's fluid rate stays
		ok := s.linkEdgeLocked(d, p, a, l.top)
		d.bookFluid = bf
		if !ok {
			return false
		}
	}
	if a >= l.share {
		s.removeEdge(d, q)
		return true
	}
	q.parents[j].share -= a
	d.addBooking(l.top, -a)
	return true
}

// levelShortLocked evens out the receivers that every spare share still
// leaves short: one short receiver p takes part of a paced share of a
// receiver at least topUpAhead pieces ahead of it, up to half the
// difference of their inflows (so that two receivers never trade a share
// back and forth), from a donor that can serve p. Paced-only receivers
// are booked as they register, and when the spare runs out the last one
// to register was left with all of the shortfall: on the harness's mixed
// at N = 16, a slow host booked 0.75–0.85 of the fluid rate while the
// paced receivers before it had the full rate, and it finished 2–4 s
// after every other host. Spread over them, the shortfall costs the
// last host a fraction of that. It returns told with the receivers it
// changed added.
func (s *Scheduler) levelShortLocked(recv []*peer, floor float64, budget *int, e uint64, told []*peer, now time.Time) []*peer {
	step := growStep * floor
	for _, p := range recv { // the fewest pieces first
		if *budget <= 0 {
			break
		}
		t := p.task
		pIn := s.inflow(p, now)
		short := min(s.topUpDownlink(p), t.fluid) - pIn
		group := localityGroup(p.host.info)
		for i := len(recv) - 1; i >= 0 && short >= step && *budget > 0; i-- {
			q := recv[i]
			if q.pieces.count < p.pieces.count+topUpAhead {
				break // sorted: nobody further on is far enough ahead
			}
			*budget--
			if q.host == p.host || localityGroup(q.host.info) != group {
				continue
			}
			qIn := s.inflow(q, now)
			for j := 0; j < len(q.parents) && short >= step; j++ {
				l := q.parents[j]
				if !s.canTakeShare(p, l.peer, l.share, group, now) {
					continue
				}
				// A share p already has from that donor grows, adding no
				// parent, by as little as growStep; a new parent must be
				// worth its connection.
				least := floor
				if parentIndex(p, l.peer) >= 0 {
					least = step
				} else if len(p.parents) >= maxPacedParents {
					continue
				}
				a := keepFloor(min(short, l.share, (qIn-pIn)/2), l.share, floor)
				if a < least || !s.moveShareLocked(q, j, p, a) {
					continue
				}
				j-- // q's parents may have lost this one
				pIn += a
				qIn -= a
				short -= a
				s.m.topUps.Inc()
				told = tellOnce(told, e, p, q)
				if s.debug() {
					s.log.Debug("share levelled", "task_id", t.id, "peer_id", p.id, "from", q.id, "donor", l.peer.id, "bps", int64(a))
				}
			}
		}
	}
	return told
}

// tellOnce appends to told those of ps not yet marked with epoch e, and
// marks them: each changed receiver is told its parents once a tick.
func tellOnce(told []*peer, e uint64, ps ...*peer) []*peer {
	for _, c := range ps {
		if c.mark != e {
			c.mark = e
			told = append(told, c)
		}
	}
	return told
}

// A paced share from a downloading parent is judged by what it delivered
// (settleSharesLocked) over a window of at least shareWindow in which it
// should have brought shareSample pieces: a share of a few percent of the
// fluid rate brings a piece every few seconds, and a shorter window would
// see nothing come. shareIntake is the part of what the receiver could take
// (its downlink, at most the fluid rate) below which it is short, and
// shareDelivered the part of its share a parent must have delivered,
// relative to the part of its booked inflow the receiver took in.
const (
	shareWindow    = 3 * time.Second
	shareSample    = 4
	shareIntake    = 0.85
	shareDelivered = 0.7
)

// settleSharesLocked brings the paced shares of downloading parents
// towards what they deliver. A downloading parent passes on only the
// pieces it took in that its child lacks, and a receiver level with its
// paced parent (the two fed the same pieces by the same pipelines) gets
// next to nothing from it: booked at full, the shares of the two slowest
// hosts of the simulator's spread over 12.5-25 Mbit/s at N = 32 summed to
// the fluid rate, so nobody topped them up, and they received 59 % of it
// for the whole download and finished 7 s after the other 30.
//
// So when a share's window closes, if the receiver took in clearly less
// than it could (shareIntake), the share's downloading parent holds fewer
// than topUpAhead pieces the receiver lacks (it is level with it: a parent
// ahead of it was held back by something that passes, and halving its
// share would idle part of its uplink), and it delivered clearly
// less of its share than the receiver's parents did of theirs on the
// whole (shareDelivered: a downlink slower than known holds every parent
// back alike, and cuts none), the share is halved, or cut to
// what it delivered when that is more (never below minPacedShare of the
// fluid rate). The receiver is then short by its booked shares, so
// top-ups, swaps and the levelling (topUpShortLocked, which runs next)
// spread its shortfall over the swarm, and what the parent no longer books
// goes to receivers that lack its pieces. Halving, not cutting to what
// was delivered: two slow receivers are level at first and exchange
// pieces later, and cut outright for good, their uplinks idled (the
// simulator's mixed with hosts 4 times slower lost up to 0.11 of the bound
// on the last host); a share that can deliver again grows again when its
// receiver is short (growSharesLocked). A share linked or grown in the
// window is judged at its next one.
func (s *Scheduler) settleSharesLocked(t *task, now time.Time) {
	if !s.cfg.PacedShares || !s.cfg.CapacityAware || t.fluid <= 0 || t.pieceSize == 0 || t.paced == 0 {
		return
	}
	floor := minPacedShare * t.fluid
	sample := shareSample * float64(t.pieceSize)
	for _, p := range t.list {
		if p.state != stateRunning {
			continue
		}
		part := -1.0 // the part of its booked inflow p took in; computed once
		changed := false
		for j := range p.parents {
			l := &p.parents[j]
			if l.share <= 0 {
				continue
			}
			secs := now.Sub(l.from).Seconds()
			if secs < shareWindow.Seconds() || l.share*secs < sample {
				continue
			}
			rate := l.sent / secs
			intake := (p.gotBytes - l.gotAt) / secs
			l.restart(now, p)
			if l.peer.state != stateRunning || servesNew(l.peer, p) || intake >= shareIntake*min(s.topUpDownlink(p), t.fluid) {
				continue
			}
			if part < 0 {
				part = 0
				if in := s.inflow(p, now); in > 0 {
					part = min(1, intake/in)
				}
			}
			sh := max(rate, l.share/2, floor)
			if rate >= shareDelivered*part*l.share || sh >= l.share {
				continue
			}
			l.peer.addBooking(l.top, sh-l.share)
			if s.debug() {
				s.log.Debug("share settled", "task_id", t.id, "peer_id", p.id, "parent_id", l.peer.id, "share_bps", int64(l.share), "new_bps", int64(sh), "delivered_bps", int64(rate), "intake_bps", int64(intake))
			}
			l.share, changed = sh, true
			s.m.sharesSettled.Inc()
		}
		if changed {
			s.sendParentsLocked(p, now)
		}
	}
}

// restart starts l's delivery window at now: l is one of child's parents,
// linked or grown then.
func (l *link) restart(now time.Time, child *peer) {
	l.from, l.sent, l.gotAt = now, 0, child.gotBytes
}
