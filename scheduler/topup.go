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
// that may share the origin's uplink (sharedSeed). Runs once a tick.
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
		if (c.state != stateSucceeded && c.state != stateRunning) || sharedSeed(c) || c.dropping || barred(c, now) {
			continue
		}
		if sp := s.spare(c, now) - c.topBooked; sp >= floor {
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
	if len(donors) == 0 {
		return
	}
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
		// A crowded peer splits a full uplink with a pipeline: it is moved
		// to a free slot or to paced parents (rehomeLocked,
		// pacedRehomeLocked), which gives the pipeline its rate back; a
		// top-up would leave it there.
		if p.state == stateRunning && len(p.parents) > 0 && len(p.parents) < maxPacedParents && !p.crowded {
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
				if dn.state != stateSucceeded && (pass == 1 || !dn.pieces.holdsNew(&p.pieces, topUpAhead)) {
					continue
				}
				if dn.host == p.host || localityGroup(dn.host.info) != group || isParent(p, dn.peer) {
					continue
				}
				if m, bad := p.bad[dn.id]; bad && (m.kind == badCorrupt || now.Sub(m.at) < badParentTTL) {
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
			if p.mark != e {
				p.mark = e
				told = append(told, p)
			}
			if s.debug() {
				s.log.Debug("topped up", "task_id", t.id, "peer_id", p.id, "parents", added, "in_bps", int64(in))
			}
		}
	}
	for _, p := range told {
		s.sendParentsLocked(p, now)
	}
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
// tails, and the last host went from 0.81 to 0.78 of the bound.
func (s *Scheduler) inflow(p *peer, now time.Time) float64 {
	in := 0.0
	for _, l := range p.parents {
		switch u := s.uplink(l.peer.host, now); {
		case l.share > 0:
			in += l.share
		case u > 0 && unpacedChildren(l.peer) == 1:
			in += min(u, p.task.rate)
		default:
			in += p.task.rate
		}
	}
	return in
}

// linkTopUpLocked links a paced edge of share bytes/s from parent to child
// as a top-up: booked in parent.topBooked rather than in booked, so that
// every other booking on parent sees it as free and takes it back
// (trimTopUpsLocked). A newcomer that would otherwise split a full uplink
// (a pipeline head's) gets the spare a top-up holds.
func (s *Scheduler) linkTopUpLocked(parent, child *peer, share float64) bool {
	return s.linkEdgeLocked(parent, child, share, true)
}
