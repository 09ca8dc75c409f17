package sim

import (
	"cmp"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"time"

	schedulerv1 "github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/daemon/fetch"
)

// realCore runs the daemon's download core (daemon/fetch) and plays the
// part of the daemon's executor around it: it turns the scheduler's
// messages and the simulated transfers into the core's events, and the
// core's actions into scheduler messages and transfers. Verification and
// storage take no time here, and a request's Stall is not enforced (the
// simulated links never stall: a dead parent breaks its connections at
// once).
var coreTrace = os.Getenv("SIM_CORE_TRACE")

type realCore struct {
	p    CoreParams
	c    *fetch.Core
	done bool
	bts  string // the scheduler's reason for its last BackToSource
}

func newRealCore(p CoreParams) (Core, error) {
	if p.Spec == nil || p.Host == nil {
		return nil, errors.New("real core: no task spec or host")
	}
	c := fetch.New(fetch.Config{
		TaskID: p.Spec.GetTaskId(),
		PeerID: p.PeerID,
		// What the daemon knows of its downlink: declared, else its link
		// tests' best (Daemon.downlink).
		Downlink: float64(cmp.Or(p.Host.GetDownloadBps(), p.Host.GetLinkDownloadBps())),
		Rand:     mrand.New(mrand.NewPCG(p.Seed, p.Seed^0xc0de)),
	})
	return &realCore{p: p, c: c}, nil
}

func (r *realCore) Handle(now time.Time, ev Event) []Action {
	var out []Action
	var evs []fetch.Event
	switch ev.Kind {
	case EvStart:
		out = append(out, send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Register{Register: &schedulerv1.Register{
			PeerId: r.p.PeerID, Host: r.p.Host, Task: r.p.Spec, SeedRequest: r.p.SeedRequest}}}))
		evs = append(evs, fetch.EvStart{Length: -1})
	case EvScheduler:
		if bts := ev.Msg.GetBackToSource(); bts != nil {
			r.bts = bts.GetReason()
		}
		evs = append(evs, schedulerEvent(ev.Msg)...)
	case EvParentPieces:
		evs = append(evs, fetch.EvParentConnected{Parent: ev.Parent},
			fetch.EvParentPieces{Parent: ev.Parent, Pieces: ev.Pieces, Relaying: ev.RelayingPieces})
	case EvParentHas:
		pp := fetch.EvParentPieces{Parent: ev.Parent}
		if ev.Relaying {
			pp.Relaying = []uint32{ev.Piece}
		} else {
			pp.Pieces = []uint32{ev.Piece}
		}
		evs = append(evs, pp)
	case EvParentGone:
		evs = append(evs, fetch.EvParentGone{Parent: ev.Parent, Err: errors.New("piece stream broke")})
	case EvPieceDone:
		if ev.Parent == "" {
			evs = append(evs, fetch.EvOriginPiece{Piece: ev.Piece, Bytes: ev.Bytes, Cost: ev.Cost})
		} else {
			evs = append(evs, fetch.EvPieceDone{Parent: ev.Parent, Piece: ev.Piece, Req: ev.Req, Bytes: ev.Bytes, Start: now.Add(-ev.Cost), End: now})
		}
		// The executor is idle after storing a piece: it reports at once.
		evs = append(evs, fetch.EvFlush{})
	case EvPieceFailed:
		kind := fetch.KindError
		switch ev.Reason {
		case FailNotFound:
			kind = fetch.KindNotFound
		case FailConnLost, FailRelay:
			kind = fetch.KindConnLost
		}
		evs = append(evs, fetch.EvPieceFailed{Parent: ev.Parent, Piece: ev.Piece, Req: ev.Req, Kind: kind, Err: errors.New(ev.Reason)})
	case EvTick:
		evs = append(evs, fetch.EvTick{})
	case EvOriginMeta:
		evs = append(evs, fetch.EvOriginShape{Length: ev.Length, PieceSize: r.p.PieceSize})
	case EvOriginDone:
		evs = append(evs, fetch.EvOriginDone{})
	}
	trace := coreTrace != "" && r.p.PeerID == coreTrace
	for _, e := range evs {
		if trace {
			fmt.Fprintf(os.Stderr, "core %.3f ev %T %+v\n", now.Sub(epoch).Seconds(), e, e)
		}
		for _, a := range r.c.Step(now, e) {
			if trace {
				fmt.Fprintf(os.Stderr, "core %.3f act %T %+v\n", now.Sub(epoch).Seconds(), a, a)
			}
			out = append(out, r.action(a, ev)...)
		}
	}
	return out
}

func send(m *schedulerv1.PeerMessage) Action { return Action{Kind: ActSend, Msg: m} }

// schedulerEvent turns a scheduler message into the core's events, as the
// daemon's executor does.
func schedulerEvent(m *schedulerv1.SchedulerMessage) []fetch.Event {
	switch {
	case m.GetParents() != nil:
		var ps []fetch.Parent
		for _, pi := range m.GetParents().GetParents() {
			ps = append(ps, fetch.Parent{ID: pi.GetPeerId(), Host: pi.GetHost().GetId(), Seed: pi.GetHost().GetSeed(), UploadBps: float64(pi.GetHost().GetUploadBps()), ShareBps: float64(pi.GetShareBps())})
		}
		return []fetch.Event{fetch.EvParents{Parents: ps}}
	case m.GetTaskInfo() != nil:
		ti := m.GetTaskInfo()
		ns := make([]uint32, 0, len(ti.GetDigests()))
		for _, d := range ti.GetDigests() {
			ns = append(ns, d.GetNumber())
		}
		return []fetch.Event{fetch.EvTaskInfo{Length: ti.GetContentLength(), PieceSize: ti.GetPieceSize(), Trusted: ns}}
	case m.GetBackToSource() != nil:
		return []fetch.Event{fetch.EvBackToSource{Reason: m.GetBackToSource().GetReason()}}
	case m.GetWait() != nil:
		return []fetch.Event{fetch.EvWait{Reason: m.GetWait().GetReason()}}
	case m.GetFail() != nil:
		return []fetch.Event{fetch.EvFail{Reason: m.GetFail().GetReason()}}
	}
	return nil
}

// action turns one of the core's actions into the simulator's.
func (r *realCore) action(a fetch.Action, ev Event) []Action {
	switch a := a.(type) {
	case fetch.ActConnect:
		return []Action{{Kind: ActSync, Parent: a.Parent.ID}}
	case fetch.ActDisconnect:
		return []Action{{Kind: ActUnsync, Parent: a.Parent}}
	case fetch.ActRequest:
		return []Action{{Kind: ActRequest, Parent: a.Parent, Piece: a.Piece, Req: a.Req}}
	case fetch.ActCancel:
		return []Action{{Kind: ActCancel, Parent: a.Parent, Piece: a.Piece, Req: a.Req}}
	case fetch.ActReport:
		rs := make([]*schedulerv1.PieceResult, 0, len(a.Pieces))
		for _, p := range a.Pieces {
			pr := &schedulerv1.PieceResult{Number: p.Piece, ParentId: p.Parent, Length: uint32(p.Bytes), CostNs: int64(p.Cost)}
			if p.Parent == "" {
				pr.Digest = pieceDigest(p.Piece)
			}
			rs = append(rs, pr)
		}
		return []Action{send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Pieces{Pieces: &schedulerv1.PiecesDone{Pieces: rs}}})}
	case fetch.ActPieceFailed:
		return []Action{send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_PieceFailed{PieceFailed: &schedulerv1.PieceFailed{
			Number: a.Piece, ParentId: a.Parent, Reason: a.Reason, Corrupt: a.Corrupt}}})}
	case fetch.ActReschedule:
		return []Action{send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Reschedule{Reschedule: &schedulerv1.Reschedule{
			BadParents: a.Bad, Reason: a.Reason}}})}
	case fetch.ActSendMeta:
		return []Action{send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Meta{Meta: &schedulerv1.TaskMeta{
			ContentLength: a.Length, PieceSize: a.PieceSize, OriginOnHost: r.p.OriginOnHost}}})}
	case fetch.ActContentCorrupt:
		return []Action{send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_ContentCorrupt{ContentCorrupt: &schedulerv1.ContentCorrupt{Reason: a.Reason}}})}
	case fetch.ActStartOrigin:
		var ps []uint32
		if a.Ranges == nil {
			for i := range r.p.pieces() {
				ps = append(ps, i)
			}
		}
		for _, rg := range a.Ranges {
			for i := rg.First; i <= rg.Last; i++ {
				ps = append(ps, i)
			}
		}
		reason := a.Reason
		switch {
		case a.Fallback:
			reason = "fallback: " + reason
		case r.bts != "":
			reason += ": " + r.bts
		}
		return []Action{{Kind: ActOrigin, Pieces: ps, Reason: reason}}
	case fetch.ActSetTimer:
		return []Action{{Kind: ActTimer, At: a.At}}
	case fetch.ActComplete:
		if r.done {
			return nil
		}
		r.done = true
		return []Action{send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: r.p.Length}}}),
			{Kind: ActDone}}
	case fetch.ActFailed:
		reason := fmt.Sprint(a.Err)
		return []Action{send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Failed{Failed: &schedulerv1.PeerFailed{Reason: reason}}}),
			{Kind: ActFail, Reason: reason}}
	case fetch.ActReset:
		// Content corruption cannot happen in the simulation.
	}
	return nil
}
