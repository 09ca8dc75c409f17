package sim

import (
	"errors"
	"time"

	schedulerv1 "github.com/damselfly-io/damselfly/api/schedulerv1"
)

// The doubles: a pipeline scheduler and an in-order core, written for the
// simulator's own tests (the network model and the event loop checked
// against hand-computed answers without the real scheduler's policies).
// Runs of the simulator use the real ones (real.go); -models double
// selects these.

// NewDoubleScheduler returns the stand-in scheduler: the seed peer first,
// every newcomer the child of the tail, a leaving peer's child handed to
// its parent.
func NewDoubleScheduler(env SchedulerEnv) (Scheduler, error) {
	return &dsched{env: env, sess: map[string]*dsess{}}, nil
}

type dsched struct {
	env     SchedulerEnv
	sess    map[string]*dsess
	chain   []*dsess
	pending []*dsess
	trig    bool
}

type dsess struct {
	s       *dsched
	id      string
	deliver func(*schedulerv1.SchedulerMessage)
	closed  bool
	seed    bool
}

func (d *dsched) Open(now time.Time, peerID string, host *schedulerv1.Host, deliver func(*schedulerv1.SchedulerMessage)) (Session, error) {
	s := &dsess{s: d, id: peerID, deliver: deliver, seed: host.GetSeed()}
	d.sess[peerID] = s
	return s, nil
}

func (d *dsched) Tick(time.Time) {}

func (d *dsched) attach(s *dsess) {
	parent := d.chain[len(d.chain)-1]
	d.chain = append(d.chain, s)
	s.deliver(&schedulerv1.SchedulerMessage{Msg: &schedulerv1.SchedulerMessage_Parents{Parents: &schedulerv1.Parents{
		Parents: []*schedulerv1.PeerInfo{{PeerId: parent.id}}}}})
}

func (s *dsess) Send(now time.Time, m *schedulerv1.PeerMessage) error {
	if s.closed {
		return errSessionClosed
	}
	d := s.s
	switch {
	case m.GetRegister() != nil:
		if m.GetRegister().GetSeedRequest() {
			d.chain = append([]*dsess{s}, d.chain...)
			s.deliver(&schedulerv1.SchedulerMessage{Msg: &schedulerv1.SchedulerMessage_BackToSource{BackToSource: &schedulerv1.BackToSource{}}})
			for _, p := range d.pending {
				d.attach(p)
			}
			d.pending = nil
			return nil
		}
		if len(d.chain) == 0 {
			d.pending = append(d.pending, s)
			if !d.trig {
				d.trig = true
				d.env.TriggerSeed(&schedulerv1.TaskSpec{})
			}
			return nil
		}
		d.attach(s)
	case m.GetReschedule() != nil:
		for i, c := range d.chain {
			if c == s && i > 0 {
				// Splice out and re-attach at the tail.
				d.chain = append(d.chain[:i], d.chain[i+1:]...)
				d.attach(s)
				break
			}
		}
	}
	return nil
}

func (s *dsess) Close(time.Time) {
	if s.closed {
		return
	}
	s.closed = true
	d := s.s
	for i, c := range d.chain {
		if c != s {
			continue
		}
		d.chain = append(d.chain[:i], d.chain[i+1:]...)
		if i > 0 && i < len(d.chain) {
			child := d.chain[i]
			child.deliver(&schedulerv1.SchedulerMessage{Msg: &schedulerv1.SchedulerMessage_Parents{Parents: &schedulerv1.Parents{
				Parents: []*schedulerv1.PeerInfo{{PeerId: d.chain[i-1].id}}}}})
		}
		break
	}
}

// NewDoubleCore returns the stand-in core: lowest missing piece first, at
// most four requests in flight per parent.
func NewDoubleCore(p CoreParams) (Core, error) {
	if p.Spec == nil {
		return nil, errors.New("no task spec")
	}
	return &dcore{p: p, parents: map[string]map[uint32]bool{}, inflight: map[uint32]string{}, per: map[string]int{}}, nil
}

type dcore struct {
	p        CoreParams
	have     map[uint32]bool
	parents  map[string]map[uint32]bool
	order    []string
	inflight map[uint32]string
	per      map[string]int
	origin   bool
	done     bool
}

const doubleRequests = 4

func (c *dcore) Handle(now time.Time, ev Event) []Action {
	var out []Action
	switch ev.Kind {
	case EvStart:
		out = append(out, Action{Kind: ActSend, Msg: &schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Register{
			Register: &schedulerv1.Register{PeerId: c.p.PeerID, SeedRequest: c.p.SeedRequest, Host: c.p.Host, Task: c.p.Spec}}}})
	case EvScheduler:
		switch {
		case ev.Msg.GetParents() != nil:
			for _, id := range c.order {
				out = append(out, Action{Kind: ActUnsync, Parent: id})
				c.drop(id)
			}
			c.order = nil
			for _, pi := range ev.Msg.GetParents().GetParents() {
				c.order = append(c.order, pi.GetPeerId())
				c.parents[pi.GetPeerId()] = map[uint32]bool{}
				out = append(out, Action{Kind: ActSync, Parent: pi.GetPeerId()})
			}
		case ev.Msg.GetBackToSource() != nil || ev.Msg.GetFail() != nil:
			if c.origin {
				break
			}
			c.origin = true
			out = append(out, Action{Kind: ActSend, Msg: &schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Meta{
				Meta: &schedulerv1.TaskMeta{ContentLength: c.p.Length, PieceSize: c.p.PieceSize, OriginOnHost: c.p.OriginOnHost}}}})
			var all []uint32
			for i := range c.total() {
				if !c.has(i) {
					all = append(all, i)
				}
			}
			out = append(out, Action{Kind: ActOrigin, Pieces: all})
		}
	case EvParentPieces:
		if set := c.parents[ev.Parent]; set != nil {
			for _, n := range append(ev.Pieces, ev.RelayingPieces...) {
				set[n] = true
			}
		}
	case EvParentHas:
		if set := c.parents[ev.Parent]; set != nil {
			set[ev.Piece] = true
		}
	case EvParentGone:
		c.drop(ev.Parent)
		for i, id := range c.order {
			if id == ev.Parent {
				c.order = append(c.order[:i], c.order[i+1:]...)
				break
			}
		}
		delete(c.parents, ev.Parent)
	case EvPieceDone:
		if c.inflight[ev.Piece] == ev.Parent {
			delete(c.inflight, ev.Piece)
			c.per[ev.Parent]--
		}
		if c.have == nil {
			c.have = map[uint32]bool{}
		}
		if !c.have[ev.Piece] {
			c.have[ev.Piece] = true
			out = append(out, Action{Kind: ActSend, Msg: &schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Pieces{Pieces: &schedulerv1.PiecesDone{
				Pieces: []*schedulerv1.PieceResult{{Number: ev.Piece, ParentId: ev.Parent, Digest: ev.Digest, Length: uint32(ev.Bytes), CostNs: int64(ev.Cost)}}}}}})
		}
		if uint32(len(c.have)) == c.total() && !c.done {
			c.done = true
			out = append(out,
				Action{Kind: ActSend, Msg: &schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{}}}},
				Action{Kind: ActDone})
		}
	case EvPieceFailed:
		if c.inflight[ev.Piece] == ev.Parent {
			delete(c.inflight, ev.Piece)
			c.per[ev.Parent]--
		}
		if set := c.parents[ev.Parent]; set != nil {
			delete(set, ev.Piece)
		}
	}
	return append(out, c.fill()...)
}

func (c *dcore) total() uint32 { return c.p.pieces() }

func (c *dcore) has(n uint32) bool { return c.have[n] }

func (c *dcore) drop(parent string) {
	for n, p := range c.inflight {
		if p == parent {
			delete(c.inflight, n)
		}
	}
	delete(c.per, parent)
}

func (c *dcore) fill() []Action {
	if c.done || c.origin {
		return nil
	}
	var out []Action
	for _, id := range c.order {
		set := c.parents[id]
		for n := uint32(0); n < c.total() && c.per[id] < doubleRequests; n++ {
			if c.has(n) || c.inflight[n] != "" || !set[n] {
				continue
			}
			c.inflight[n] = id
			c.per[id]++
			out = append(out, Action{Kind: ActRequest, Parent: id, Piece: n})
		}
	}
	return out
}
