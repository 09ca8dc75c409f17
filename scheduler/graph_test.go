package scheduler

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
)

// TestGraphInvariantsUnderRandomEvents drives the scheduler's real event
// handlers in process, far faster than over gRPC, with many more events than
// the gRPC property test: joins, restarts, reschedules with bad parents,
// piece reports, corrupt reports, completions, departures and refreshes. The
// parent graph must stay acyclic, the topological order consistent with
// every edge, and the slot and counter bookkeeping exact after every event.
func TestGraphInvariantsUnderRandomEvents(t *testing.T) {
	// Each case: the seed of the events and of the scheduler's own random
	// choices. {3, 250} once left a peer with neither a parent nor pieces
	// in the pool: a crowded peer's paced edge was taken off for a move
	// that did not happen and could not be put back as a full-rate one.
	for _, c := range [][2]uint64{{0, 0}, {1, 1}, {2, 2}, {3, 3}, {3, 250}} {
		seed := c[0]
		t.Run(fmt.Sprint("seed=", seed, "/sched=", c[1]), func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.MaxParents = 1 + int(seed)*2
			cfg.MaxBackToSource = 1 + int(seed%2)
			cfg.CandidateLimit = 8 // sample, so that rejected candidates are replaced
			s, err := New(cfg, nil, nil, WithRand(rand.New(rand.NewPCG(c[1], 5))))
			if err != nil {
				t.Fatal(err)
			}
			rnd := rand.New(rand.NewPCG(seed, 99))
			const n = 60
			live := map[string]*peer{}
			id := func(i int) string { return fmt.Sprintf("p%d", i) }
			now := time.Now()
			join := func(i int) {
				var have []uint32
				for k := range uint32(16) {
					if rnd.IntN(4) == 0 {
						have = append(have, k)
					}
				}
				c := &conn{send: func(*schedulerv1.SchedulerMessage) error { return nil }, cancel: func(error) {}}
				live[id(i)] = s.registerLocked(&schedulerv1.Register{
					PeerId: id(i),
					Host: &schedulerv1.Host{Id: fmt.Sprintf("h%d", i%17), UploadSlots: int32(rnd.IntN(4)),
						// Capacity rules: undeclared, slow, average, fast.
						UploadBps: []int64{0, 1e6, 1e7, 4e7}[rnd.IntN(4)]},
					Task: &schedulerv1.TaskSpec{TaskId: "t"},
					Have: have,
				}, c, now)
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			for i := range n {
				join(i)
				s.flushLocked(now)
			}
			for op := range 20000 {
				i := rnd.IntN(n)
				p := live[id(i)]
				if p.state == stateLeft {
					join(i)
					s.flushLocked(now)
					continue
				}
				var m *schedulerv1.PeerMessage
				switch rnd.IntN(12) {
				case 0, 1, 2, 3:
					var bad []string
					for range rnd.IntN(2) {
						bad = append(bad, id(rnd.IntN(n)))
					}
					m = &schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Reschedule{Reschedule: &schedulerv1.Reschedule{BadParents: bad}}}
				case 4, 5:
					m = &schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Pieces{Pieces: &schedulerv1.PiecesDone{Pieces: []*schedulerv1.PieceResult{
						{Number: uint32(rnd.IntN(16)), ParentId: id(rnd.IntN(n)), Length: 1 << 18, CostNs: int64(1 + rnd.IntN(1e7))},
					}}}}
				case 6:
					m = &schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_PieceFailed{PieceFailed: &schedulerv1.PieceFailed{
						ParentId: id(rnd.IntN(n)), Corrupt: rnd.IntN(8) == 0,
					}}}
				case 7:
					if rnd.IntN(3) == 0 {
						m = &schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: 16 << 18}}}
					}
				case 8:
					s.removeLocked(p, now)
				case 9:
					join(i) // a restart: replaces the live entry
				case 10:
					s.updateRateLocked(p.task, now) // as a Tick does
				default:
					if p.state == stateRunning && s.fillParentsLocked(p, false) {
						s.sendParentsLocked(p, now)
					}
				}
				if m != nil {
					if err := s.handleLocked(p, m, now); err != nil {
						t.Fatal(err)
					}
				}
				s.flushLocked(now)
				if err := checkInvariants(s); err != nil {
					t.Fatalf("after event %d: %v", op, err)
				}
			}
		})
	}
}

func TestReorderRefusesCycleAndKeepsOrder(t *testing.T) {
	s, err := New(DefaultConfig(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	tk := newTask("t", time.Now())
	h := &host{id: "h", slots: 100}
	mk := func(ord uint64) *peer {
		p := &peer{id: fmt.Sprint(ord), task: tk, host: h, ord: ord, poolIdx: -1, waitIdx: -1, openIdx: -1}
		tk.peers[p.id] = p
		return p
	}
	// a→b→c in order; then c→d with d ordered before all of them.
	a, b, c, d := mk(1), mk(2), mk(3), mk(0)
	for _, e := range [][2]*peer{{a, b}, {b, c}} {
		if !s.linkLocked(e[0], e[1]) {
			t.Fatalf("edge %s→%s refused", e[0].id, e[1].id)
		}
	}
	if s.linkLocked(c, a) {
		t.Fatal("c→a closes a cycle but was accepted")
	}
	if !s.linkLocked(c, d) {
		t.Fatal("c→d refused")
	}
	if !(a.ord < b.ord && b.ord < c.ord && c.ord < d.ord) {
		t.Fatalf("order not topological: a=%d b=%d c=%d d=%d", a.ord, b.ord, c.ord, d.ord)
	}
	if s.linkLocked(d, a) {
		t.Fatal("d→a closes a cycle but was accepted")
	}
	if err := acyclic(tk); err != nil {
		t.Fatal(err)
	}
	if h.used != 3 {
		t.Fatalf("slots used %d", h.used)
	}
}

// A host's throughput weighs its reports by the time they cover: pieces that
// a child got together (one long report, then three nearly free ones) give
// the rate the host really delivered.
func TestHostThroughputWeighsReportsByTime(t *testing.T) {
	const size = 256 << 10
	d := int64(40 * time.Millisecond)
	h := &host{}
	for range 20 {
		h.observeThroughput(size, 4*d)
		for range 3 {
			h.observeThroughput(size, 1000)
		}
	}
	want := float64(size) / (float64(d) / 1e9)
	if h.throughput < want/2 || h.throughput > want*2 {
		t.Fatalf("throughput %.0f B/s, want about %.0f", h.throughput, want)
	}
	h = &host{}
	for range 10 {
		h.observeThroughput(size, d)
	}
	if math.Abs(h.throughput-want)/want > 1e-9 {
		t.Fatalf("steady: throughput %.0f B/s, want %.0f", h.throughput, want)
	}
}

// TestRestoreEdgeRefusedLeavesPeerDecided: an edge taken off for a move
// that did not happen may not go back (here it would close a cycle). The
// child, left with neither pieces nor a parent, must leave the candidate
// pool at once and be decided again at the flush.
func TestRestoreEdgeRefusedLeavesPeerDecided(t *testing.T) {
	s, err := New(DefaultConfig(), nil, nil, WithRand(rand.New(rand.NewPCG(1, 2))))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	reg := func(id string, have ...uint32) *peer {
		c := &conn{send: func(*schedulerv1.SchedulerMessage) error { return nil }, cancel: func(error) {}}
		p := s.registerLocked(&schedulerv1.Register{
			PeerId: id,
			Host:   &schedulerv1.Host{Id: "h-" + id, UploadSlots: 4},
			Task:   &schedulerv1.TaskSpec{TaskId: "t"},
			Have:   have,
		}, c, now)
		s.flushLocked(now)
		return p
	}
	reg("a", 0, 1, 2, 3)
	reg("f") // fetches from the origin or takes a
	x := reg("x")
	c := reg("c")
	for _, p := range []*peer{x, c} {
		if p.state != stateRunning || p.pieces.count != 0 {
			t.Fatalf("setup: %s is %v with %d pieces, want running with none", p.id, p.state, p.pieces.count)
		}
	}
	// c's only parent is x.
	for len(c.parents) > 0 {
		s.removeEdge(c.parents[0].peer, c)
	}
	if !s.linkLocked(x, c) {
		t.Fatal("setup: x→c refused")
	}
	if err := checkInvariants(s); err != nil {
		t.Fatalf("setup: %v", err)
	}
	// The move: x→c comes off, and meanwhile c became x's only parent.
	s.removeEdge(x, c)
	for len(x.parents) > 0 {
		s.removeEdge(x.parents[0].peer, x)
	}
	if !s.linkLocked(c, x) {
		t.Fatal("c→x refused")
	}
	if s.restoreEdgeLocked(x, c, 0) {
		t.Fatal("x→c put back though it closes a cycle")
	}
	if len(c.parents) != 0 || c.poolIdx >= 0 {
		t.Fatalf("c: %d parents, pool index %d; want none and out of the pool", len(c.parents), c.poolIdx)
	}
	if err := checkInvariants(s); err != nil {
		t.Fatalf("after the refused restore: %v", err)
	}
	s.flushLocked(now)
	if err := checkInvariants(s); err != nil {
		t.Fatalf("after the flush: %v", err)
	}
	if len(c.parents) == 0 && c.state != stateWaiting {
		t.Fatalf("c neither has a parent nor waits after the flush (state %v)", c.state)
	}
}
