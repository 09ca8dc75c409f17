package scheduler

import (
	"slices"
	"time"
)

// The parent→child graph of a task must stay acyclic. Checking a new edge by
// walking all of the child's descendants costs O(swarm) per decision once the
// graph is deep, so every peer carries a topological order (ord) instead, kept
// with the Pearce–Kelly dynamic topological sort: for every edge u→v,
// u.ord < v.ord. An edge that already agrees with the order is free; one
// against it searches only the nodes whose order lies between the two ends,
// refuses the edge if that reaches the parent (a cycle) and otherwise
// reorders just those nodes. A new peer takes the highest order, so parents
// for a joining peer never need a search.

// maxReorder bounds the nodes one edge insertion may visit. An edge needing
// a larger search is refused as if it closed a cycle: the graph stays
// acyclic and the decision stays cheap; the next candidate is tried instead.
const maxReorder = 2048

// link is one parent of a peer and the child's index in parent.children,
// so that removing an edge never scans a parent's (possibly huge) child list.
type link struct {
	peer *peer
	at   int
	// share: bytes/s of the parent's uplink booked for the child, which
	// paces its requests to it (capacity.go, pacedLocked); 0: unpaced.
	share float64
	// top: the share is a top-up (topup.go), booked in the parent's
	// topBooked: it yields to any other booking on the parent.
	top bool
	// The edge's delivery window (settleSharesLocked): it started at from
	// (when the edge was linked, or last judged), when the child had
	// reported gotAt bytes in all; sent counts those from this parent.
	from        time.Time
	sent, gotAt float64
}

// linkLocked makes parent a parent of child when that keeps the graph
// acyclic, consuming an upload slot on the parent's host.
func (s *Scheduler) linkLocked(parent, child *peer) bool {
	return s.linkShareLocked(parent, child, 0)
}

// linkShareLocked is linkLocked for a paced edge when share > 0: share
// bytes/s of parent's uplink are booked for child.
func (s *Scheduler) linkShareLocked(parent, child *peer, share float64) bool {
	return s.linkEdgeLocked(parent, child, share, false)
}

// linkEdgeLocked links parent→child with share bytes/s booked (0:
// unpaced), as a top-up when top (topup.go: booked in parent.topBooked).
func (s *Scheduler) linkEdgeLocked(parent, child *peer, share float64, top bool) bool {
	if parent == child || isParent(child, parent) {
		return false // one edge per pair: removeEdge finds the first only
	}
	// Only full-rate (unpaced) edges are ordered: they are the pipeline,
	// whose relays pass pieces on as they arrive and must not loop. A
	// paced edge asks for pieces the parent holds whole, so it needs no
	// order; ordering it too made every pipeline above a paced receiver's
	// parents part of each reorder, which at a few thousand peers ran past
	// maxReorder and refused nearly every paced share.
	if share == 0 && parent.ord > child.ord && !s.reorderLocked(parent, child) {
		return false
	}
	if parent.topBooked > 0 && !parent.topTrimQ {
		parent.topTrimQ = true
		// A booking or a child that may leave no room for the parent's
		// top-ups: they are trimmed at the flush (trimTopUpsLocked).
		s.topTrim = append(s.topTrim, parent)
	}
	switch {
	case share > 0:
		parent.task.paced++
		parent.pacedKids++
		parent.addBooking(top, share)
		parent.bookFluid = parent.task.fluid
	default:
		child.depth = sourceDepth(parent) + 1
	}
	now := s.now()
	child.parents = append(child.parents, link{peer: parent, at: len(parent.children), share: share, top: top, from: now, gotAt: child.gotBytes})
	child.parentsAt = now
	parent.children = append(parent.children, child)
	parent.host.used++
	parent.host.edges++
	child.host.edges++
	s.touchOpenLocked(parent)
	return true
}

// addBooking adds delta bytes/s to what p books for its paced children:
// to its top-ups (topBooked) when top, else to its other shares (booked).
func (p *peer) addBooking(top bool, delta float64) {
	if top {
		p.topBooked += delta
	} else {
		p.booked += delta
	}
}

// sourceDepth is how many relaying hops p's data comes through: 0 for a
// peer that holds or fetches the whole content itself (a seed, a fetcher
// from the origin, a finished peer), else its depth. Each hop of a
// pipeline adds latency to every piece, so among parents that give the
// same rate the shallowest is the best (fillParentsLocked).
func sourceDepth(p *peer) int32 {
	if len(p.parents) == 0 || p.state == stateSucceeded || p.state == stateBackToSource {
		return 0
	}
	return p.depth
}

// removeEdge removes parent→child if present and frees the slot.
func (s *Scheduler) removeEdge(parent, child *peer) bool {
	i := parentIndex(child, parent)
	if i < 0 {
		return false
	}
	at := child.parents[i].at
	if sh := child.parents[i].share; sh > 0 {
		parent.task.paced--
		parent.pacedKids--
		parent.addBooking(child.parents[i].top, -sh)
		if parent.pacedKids == 0 {
			parent.booked, parent.topBooked = 0, 0 // no float residue
		}
	}
	child.parents = slices.Delete(child.parents, i, i+1)
	last := len(parent.children) - 1
	if at != last {
		moved := parent.children[last]
		parent.children[at] = moved
		for j := range moved.parents {
			if moved.parents[j].peer == parent {
				moved.parents[j].at = at
				break
			}
		}
	}
	parent.children[last] = nil
	parent.children = parent.children[:last]
	parent.host.used--
	parent.host.edges++
	child.host.edges++
	s.touchOpenLocked(parent)
	return true
}

func (s *Scheduler) dropParentsLocked(p *peer) {
	for len(p.parents) > 0 {
		s.removeEdge(p.parents[len(p.parents)-1].peer, p)
	}
}

// reorderLocked prepares the insertion of x→y where x.ord > y.ord: it
// reports false when x is reachable from y (the edge would close a cycle) or
// the search grows past maxReorder, and otherwise reassigns the orders of
// the affected nodes so that x comes before y.
func (s *Scheduler) reorderLocked(x, y *peer) bool {
	lb, ub := y.ord, x.ord
	s.epoch++
	e := s.epoch
	fwd, bwd, stack := s.fwd[:0], s.bwd[:0], s.stack[:0]
	defer func() {
		clear(fwd)
		clear(bwd)
		clear(stack)
		s.fwd, s.bwd, s.stack = fwd[:0], bwd[:0], stack[:0]
	}()

	// Forward from y through nodes ordered before x.
	y.mark = e
	fwd = append(fwd, y)
	stack = append(stack, y)
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, c := range n.children {
			if pacedChild(n, c) {
				continue // not ordered (linkShareLocked)
			}
			if c == x {
				return false // x descends from y: cycle
			}
			if c.mark != e && c.ord < ub {
				c.mark = e
				fwd = append(fwd, c)
				stack = append(stack, c)
				if len(fwd) > maxReorder {
					return false
				}
			}
		}
	}
	// Backward from x through nodes ordered after y. None of them is in fwd:
	// such a node would lie on a path y→…→x, found above.
	x.mark = e
	bwd = append(bwd, x)
	stack = append(stack, x)
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, l := range n.parents {
			w := l.peer
			if l.share > 0 {
				continue // not ordered
			}
			if w.mark != e && w.ord > lb {
				w.mark = e
				bwd = append(bwd, w)
				stack = append(stack, w)
				if len(fwd)+len(bwd) > maxReorder {
					return false
				}
			}
		}
	}
	// The affected nodes keep their set of orders; x's ancestors take the
	// lowest ones, y's descendants the rest, each group in its old order.
	byOrd := func(a, b *peer) int {
		switch {
		case a.ord < b.ord:
			return -1
		case a.ord > b.ord:
			return 1
		}
		return 0
	}
	slices.SortFunc(bwd, byOrd)
	slices.SortFunc(fwd, byOrd)
	ords := s.ords[:0]
	for _, n := range bwd {
		ords = append(ords, n.ord)
	}
	for _, n := range fwd {
		ords = append(ords, n.ord)
	}
	slices.Sort(ords)
	for i, n := range bwd {
		n.ord = ords[i]
	}
	for i, n := range fwd {
		n.ord = ords[len(bwd)+i]
	}
	s.ords = ords[:0]
	return true
}
