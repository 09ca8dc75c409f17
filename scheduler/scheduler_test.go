package scheduler

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
)

func TestFirstPeerBackToSourceSecondGetsParents(t *testing.T) {
	ts := startServer(t, nil)
	a := ts.register("t1", "a")
	a.expectBackToSource()
	b := ts.register("t1", "b")
	m := b.nextDecision()
	if got := parentIDs(m); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("b parents %v, want [a]", got)
	}
	if h := m.GetParents().GetParents()[0].GetHost(); h.GetId() != "host-a" || h.GetUploadPort() != 65002 {
		t.Fatalf("parent host not passed on: %v", h)
	}

	// The fetcher's meta reaches the other peers, and later ones at once.
	a.meta(1<<20, 256<<10)
	if info := b.expectTaskInfo(); info.GetContentLength() != 1<<20 || info.GetPieceSize() != 256<<10 {
		t.Fatalf("b task info %v", info)
	}
	c := ts.register("t1", "c")
	if info := c.expectTaskInfo(); info.GetContentLength() != 1<<20 {
		t.Fatalf("c task info %v", info)
	}
	if got := c.expectParents(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("c parents %v, want [a] (b holds nothing yet)", got)
	}
	if n := ts.metric("damselfly_scheduler_decisions_total", "decision", "back_to_source"); n != 1 {
		t.Fatalf("back_to_source decisions %v", n)
	}
	if n := ts.metric("damselfly_scheduler_decisions_total", "decision", "parents"); n != 2 {
		t.Fatalf("parents decisions %v", n)
	}
	if n := ts.metric("damselfly_scheduler_decision_duration_seconds"); n != 3 {
		t.Fatalf("decision latency samples %v", n)
	}
	if n := ts.metric("damselfly_scheduler_tasks"); n != 1 {
		t.Fatalf("tasks gauge %v", n)
	}
	if n := ts.metric("damselfly_scheduler_peers", "state", "running"); n != 2 {
		t.Fatalf("running peers gauge %v", n)
	}
	ts.mustInvariants()
}

func TestFirstMessageMustBeRegister(t *testing.T) {
	ts := startServer(t, nil)
	p := ts.open("x")
	p.pieces(originPiece(0))
	p.startReading()
	if code := p.expectEnd(); code != codes.InvalidArgument {
		t.Fatalf("got %v, want InvalidArgument", code)
	}
	q := ts.open("y")
	q.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Register{Register: &schedulerv1.Register{
		PeerId: "y", Host: ts.newHost("y"), // no task
	}}})
	q.startReading()
	if code := q.expectEnd(); code != codes.InvalidArgument {
		t.Fatalf("register without task: got %v, want InvalidArgument", code)
	}
	r := ts.register("t", "r")
	r.expectBackToSource()
	r.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Register{Register: &schedulerv1.Register{
		PeerId: "r", Host: ts.newHost("r"), Task: spec("t"),
	}}})
	if code := r.expectEnd(); code != codes.InvalidArgument {
		t.Fatalf("second register: got %v, want InvalidArgument", code)
	}
	eventually(t, "peer removed", func() bool {
		n := 0
		ts.inspect(func(s *Scheduler) { n = len(s.tasks[tid("t")].peers) })
		return n == 0
	})
}

func TestMaxBackToSourceBound(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxBackToSource = 1 })
	a := ts.register("t", "a")
	a.expectBackToSource()
	b := ts.register("t", "b")
	c := ts.register("t", "c")
	b.expectParents()
	c.expectParents()
	// Both refuse the only fetcher: the origin budget is used up, so they wait.
	b.reschedule("a")
	c.reschedule("a")
	b.expectWait()
	c.expectWait()
	ts.mustInvariants()

	// The fetcher dies: exactly one waiter takes over the origin, the other
	// gets it as parent.
	a.leave()
	mb, mc := b.nextDecision(), c.nextDecision()
	fetcher, other, om := b, c, mc
	if mc.GetBackToSource() != nil {
		fetcher, other, om = c, b, mb
	}
	if (mb.GetBackToSource() != nil) == (mc.GetBackToSource() != nil) {
		t.Fatalf("want exactly one BackToSource, got b=%v c=%v", mb, mc)
	}
	if got := parentIDs(om); !slices.Equal(got, []string{fetcher.id}) {
		t.Fatalf("%s: want parents [%s], got %v", other.id, fetcher.id, om)
	}
	ts.inspect(func(s *Scheduler) {
		if n := s.tasks[tid("t")].backToSource; n != 1 {
			t.Fatalf("back_to_source count %d", n)
		}
	})
	ts.mustInvariants()
}

func TestMaxBackToSourceAllowsSeveral(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxBackToSource = 2 })
	a := ts.register("t", "a")
	a.expectBackToSource()
	b := ts.register("t", "b")
	b.expectParents()
	b.reschedule("a")
	b.expectBackToSource()
	c := ts.register("t", "c")
	c.reschedule("a", "b")
	c.expectParents() // its first decision, before the reschedule
	c.expectWait()
}

func TestDigestsTrustedOnlyFromFetcher(t *testing.T) {
	ts := startServer(t, nil)
	a := ts.register("t", "a")
	a.expectBackToSource()
	b := ts.register("t", "b")
	b.expectParents()
	a.meta(4<<18, 1<<18)
	b.expectTaskInfo()

	// b is not a fetcher: its digest for piece 0 is a lie as far as anyone
	// knows, and must not reach a.
	forged := bytes.Repeat([]byte{0xee}, 32)
	b.pieces(&schedulerv1.PieceResult{Number: 0, Digest: forged, Length: 1 << 18})
	// a fetcher's digest for a piece it got from a peer is not trusted either.
	a.pieces(&schedulerv1.PieceResult{Number: 3, ParentId: "b", Digest: forged, Length: 1 << 18})
	a.expectQuiet()

	a.pieces(originPiece(0), originPiece(1))
	info := b.expectTaskInfo()
	if len(info.GetDigests()) != 2 || info.GetContentLength() != 4<<18 || info.GetPieceSize() != 1<<18 {
		t.Fatalf("forwarded info %v", info)
	}
	for _, d := range info.GetDigests() {
		if !bytes.Equal(d.GetDigest(), pieceDigest(d.GetNumber())) {
			t.Fatalf("piece %d: forwarded digest is not the fetcher's", d.GetNumber())
		}
	}
	// A digest already known is not forwarded again.
	a.pieces(originPiece(1), originPiece(2))
	if info := b.expectTaskInfo(); len(info.GetDigests()) != 1 || info.GetDigests()[0].GetNumber() != 2 {
		t.Fatalf("second forward %v", info)
	}

	// A late peer gets every trusted digest, and only those.
	c := ts.register("t", "c")
	info = c.expectTaskInfo()
	var nums []uint32
	for _, d := range info.GetDigests() {
		nums = append(nums, d.GetNumber())
		if !bytes.Equal(d.GetDigest(), pieceDigest(d.GetNumber())) {
			t.Fatalf("late peer: piece %d has an untrusted digest", d.GetNumber())
		}
	}
	if !slices.Equal(nums, []uint32{0, 1, 2}) {
		t.Fatalf("late peer digests for %v, want [0 1 2]", nums)
	}

	// Meta from a non-fetcher is ignored too.
	b.meta(99, 7)
	d := ts.register("t", "d")
	if info := d.expectTaskInfo(); info.GetContentLength() != 4<<18 {
		t.Fatalf("meta from a non-fetcher changed the shape: %v", info)
	}
}

func TestCorruptParentNeverReassigned(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxParents = 3 })
	a := ts.register("t", "a")
	a.expectBackToSource()
	liar := ts.register("t", "liar", withHave(0, 1, 2, 3))
	honest := ts.register("t", "honest", withHave(0, 1, 2, 3))
	liar.expectParents()
	honest.expectParents()

	x := ts.register("t", "x")
	if got := x.expectParents(); !slices.Equal(got, []string{"a", "honest", "liar"}) {
		t.Fatalf("x parents %v", got)
	}
	x.pieceFailed(0, "liar", true)
	if got := x.expectParents(); !slices.Equal(got, []string{"a", "honest"}) {
		t.Fatalf("after the corrupt report x has %v", got)
	}
	for range 5 {
		x.reschedule()
		if got := x.expectParents(); slices.Contains(got, "liar") {
			t.Fatalf("liar re-assigned: %v", got)
		}
	}
	// Even when nothing else is left, the liar is never given to x again.
	x.reschedule("a", "honest")
	if m := x.nextDecision(); m.GetWait() == nil {
		t.Fatalf("x with only the liar left: want Wait, got %v", m)
	}
	// One report is not enough to turn everyone away (a lying reporter
	// could smear an honest host); a second reporter's host is.
	x2 := ts.register("t", "x2")
	if got := x2.expectParents(); !slices.Contains(got, "liar") {
		t.Fatalf("x2 parents %v: one report already penalised the liar for everyone", got)
	}
	x2.pieceFailed(1, "liar", true)
	x2.expectParents()
	// Other peers are steered away from the liar's host: with five
	// candidates, the penalised one is not among the best three.
	for _, id := range []string{"h2", "h3"} {
		ts.register("t", id, withHave(0)).expectParents()
	}
	y := ts.register("t", "y")
	if got := y.expectParents(); slices.Contains(got, "liar") || len(got) != 3 {
		t.Fatalf("y parents %v", got)
	}
	if n := ts.metric("damselfly_scheduler_piece_results_total", "result", "corrupt"); n != 2 {
		t.Fatalf("corrupt results %v", n)
	}
	ts.mustInvariants()
}

func TestPieceFailedKeepsGoodParents(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxParents = 2 })
	a := ts.register("t", "a")
	a.expectBackToSource()
	b := ts.register("t", "b", withHave(0))
	b.expectParents()
	x := ts.register("t", "x")
	if got := x.expectParents(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("x parents %v", got)
	}
	x.pieceFailed(0, "b", false) // a timeout, not a lie
	if got := x.expectParents(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("after a plain failure x has %v", got)
	}
	if n := ts.metric("damselfly_scheduler_piece_results_total", "result", "failed"); n != 1 {
		t.Fatalf("failed results %v", n)
	}
}

func TestAcyclicUnderRandomOperations(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.MaxParents = 5
		c.MaxBackToSource = 2
		c.RefreshInterval = Duration(5 * time.Millisecond)
	})
	rnd := rand.New(rand.NewPCG(42, 7))
	const n = 24
	peers := make([]*testPeer, n)
	id := func(i int) string { return fmt.Sprintf("p%02d", i) }
	randomHave := func() []uint32 {
		var h []uint32
		for p := range uint32(8) {
			if rnd.IntN(3) == 0 {
				h = append(h, p)
			}
		}
		return h
	}
	for i := range peers {
		peers[i] = ts.register("t", id(i), withHave(randomHave()...))
		peers[i].nextDecision()
	}
	for op := range 600 {
		i := rnd.IntN(n)
		p := peers[i]
		switch rnd.IntN(10) {
		case 0, 1, 2:
			var bad []string
			for range rnd.IntN(3) {
				bad = append(bad, id(rnd.IntN(n)))
			}
			p.reschedule(bad...)
		case 3, 4:
			p.pieces(&schedulerv1.PieceResult{Number: uint32(rnd.IntN(8)), ParentId: id(rnd.IntN(n)), Length: 1 << 18, CostNs: 1e6})
		case 5:
			p.pieceFailed(uint32(rnd.IntN(8)), id(rnd.IntN(n)), rnd.IntN(4) == 0)
		case 6:
			if rnd.IntN(4) == 0 {
				p.done(8 << 18)
			}
		case 7:
			// Leave and come back under the same id (a restarted daemon).
			// The old stream must be gone first: otherwise its Register may
			// still be in flight and would replace the new one.
			p.leave()
			ts.waitGone("t", id(i))
			peers[i] = ts.register("t", id(i), withHave(randomHave()...))
			peers[i].nextDecision()
		default:
			time.Sleep(time.Millisecond) // let the refresh loop interleave
		}
		if op%20 == 0 {
			ts.mustInvariants()
		}
	}
	time.Sleep(50 * time.Millisecond)
	ts.mustInvariants()
}

func TestSeedTriggerFlow(t *testing.T) {
	ts := startServer(t, nil)
	seedHost := &schedulerv1.Host{Id: "host-seed", Hostname: "seed", Ip: "127.0.0.1", Seed: true, UploadSlots: 64}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seeds, err := ts.cl.SeedTasks(ctx, &schedulerv1.SeedTasksRequest{Host: seedHost})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "seed host connected", func() bool {
		n := 0
		ts.inspect(func(s *Scheduler) { n = len(s.seeds) })
		return n == 1
	})

	headers := map[string]string{"Authorization": "Bearer secret"}
	a := ts.register("t", "a", withHeaders(headers))
	a.expectWait()
	got := make(chan *schedulerv1.SeedTask, 1)
	go func() {
		st, err := seeds.Recv()
		if err == nil {
			got <- st
		}
	}()
	var st *schedulerv1.SeedTask
	select {
	case st = <-got:
	case <-time.After(step):
		t.Fatal("seed host got no task")
	}
	if st.GetTask().GetTaskId() != tid("t") || st.GetTask().GetHeaders()["Authorization"] != "Bearer secret" {
		t.Fatalf("seed task %v", st)
	}
	if n := ts.metric("damselfly_scheduler_seed_triggers_total"); n != 1 {
		t.Fatalf("seed triggers %v", n)
	}
	// A second peer waits for the same seed; nothing is triggered twice.
	b := ts.register("t", "b")
	b.expectWait()

	s := ts.register("t", "seed-peer", withHost(seedHost), seedRequest())
	s.expectBackToSource()
	if got := a.expectParents(); !slices.Equal(got, []string{"seed-peer"}) {
		t.Fatalf("a parents %v", got)
	}
	if got := b.expectParents(); !slices.Equal(got, []string{"seed-peer"}) {
		t.Fatalf("b parents %v", got)
	}
	if n := ts.metric("damselfly_scheduler_seed_triggers_total"); n != 1 {
		t.Fatalf("seed triggers %v", n)
	}
	ts.mustInvariants()
}

func TestSeedPenalisedOnceRegularPeersHaveData(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxParents = 1 })
	seedHost := &schedulerv1.Host{Id: "host-seed", Seed: true, UploadSlots: 16}
	s := ts.register("t", "seed-peer", withHost(seedHost), seedRequest())
	s.expectBackToSource()
	s.meta(4<<18, 1<<18)
	s.pieces(originPiece(0), originPiece(1), originPiece(2), originPiece(3))
	s.done(4 << 18)
	ts.waitPeer("t", "seed-peer", func(p *peer) bool { return p.state == stateSucceeded })
	// A regular peer with most of the data beats the seed with all of it.
	p := ts.register("t", "p", withHave(0, 1, 2))
	p.expectTaskInfo()
	p.expectParents()
	for i := range 4 {
		c := ts.register("t", fmt.Sprintf("c%d", i))
		c.expectTaskInfo()
		if got := c.expectParents(); !slices.Equal(got, []string{"p"}) {
			t.Fatalf("child %d got %v, want the regular peer", i, got)
		}
	}
}

func TestSeedTriggerTimeout(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.SeedTriggerTimeout = Duration(200 * time.Millisecond) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seeds, err := ts.cl.SeedTasks(ctx, &schedulerv1.SeedTasksRequest{Host: &schedulerv1.Host{Id: "host-seed", Seed: true}})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "seed host connected", func() bool {
		n := 0
		ts.inspect(func(s *Scheduler) { n = len(s.seeds) })
		return n == 1
	})
	go func() {
		for {
			if _, err := seeds.Recv(); err != nil {
				return
			}
		}
	}()
	a := ts.register("t", "a")
	a.expectWait()
	// The seed peer never registers: a goes to the origin itself.
	a.expectBackToSource()
	ts.mustInvariants()
}

func TestSeedHostLeavingReleasesWaiters(t *testing.T) {
	ts := startServer(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	seeds, err := ts.cl.SeedTasks(ctx, &schedulerv1.SeedTasksRequest{Host: &schedulerv1.Host{Id: "host-seed", Seed: true}})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "seed host connected", func() bool {
		n := 0
		ts.inspect(func(s *Scheduler) { n = len(s.seeds) })
		return n == 1
	})
	a := ts.register("t", "a")
	a.expectWait()
	if _, err := seeds.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel() // the seed host goes away before its peer registers
	a.expectBackToSource()
}

func TestPeerLeaveReschedulesChildren(t *testing.T) {
	ts := startServer(t, nil)
	a := ts.register("t", "a")
	a.expectBackToSource()
	a.meta(4<<18, 1<<18)
	b := ts.register("t", "b")
	b.expectParents()
	b.pieces(&schedulerv1.PieceResult{Number: 0, ParentId: "a", Length: 1 << 18, CostNs: 1e6})
	ts.waitPeer("t", "b", func(p *peer) bool { return p.pieces.count == 1 })
	c := ts.register("t", "c")
	if got := c.expectParents(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("c parents %v", got)
	}
	a.leave()
	// b, the only one left with data, now fetches; c keeps b.
	b.expectBackToSource()
	if got := c.expectParents(); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("c parents after a left: %v", got)
	}
	if n := ts.metric("damselfly_scheduler_peers_left_total"); n != 1 {
		t.Fatalf("peers left %v", n)
	}
	ts.inspect(func(s *Scheduler) {
		if h := s.hosts["host-a"]; h.used != 0 {
			t.Fatalf("slots of a's host still used: %d", h.used)
		}
	})
	ts.mustInvariants()
}

func TestPeerFailedRemovesPeer(t *testing.T) {
	ts := startServer(t, nil)
	a := ts.register("t", "a")
	a.expectBackToSource()
	b := ts.register("t", "b")
	b.expectParents()
	a.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Failed{Failed: &schedulerv1.PeerFailed{Reason: "origin 404"}}})
	if code := a.expectEnd(); code != codes.OK {
		t.Fatalf("a's stream ended with %v", code)
	}
	b.expectBackToSource()
}

func TestDoneFetcherFreesOriginBudget(t *testing.T) {
	ts := startServer(t, nil)
	a := ts.register("t", "a")
	a.expectBackToSource()
	a.meta(2<<18, 1<<18)
	a.pieces(originPiece(0), originPiece(1))
	a.done(2 << 18)
	ts.waitPeer("t", "a", func(p *peer) bool { return p.state == stateSucceeded })
	b := ts.register("t", "b")
	b.expectTaskInfo()
	if got := b.expectParents(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("a done peer stays a parent: got %v", got)
	}
	// b refuses a: the origin budget is free again since a finished.
	b.reschedule("a")
	b.expectBackToSource()
	ts.mustInvariants()
}

func TestDisableBackSourceFailsAfterWaitTimeout(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.WaitTimeout = Duration(200 * time.Millisecond) })
	a := ts.register("t", "a", noBackSource())
	a.expectWait()
	a.expectFail()
	if n := ts.metric("damselfly_scheduler_decisions_total", "decision", "fail"); n != 1 {
		t.Fatalf("fail decisions %v", n)
	}
}

func TestWaitingPeerGetsParentsWhenDataAppears(t *testing.T) {
	ts := startServer(t, nil)
	a := ts.register("t", "a", noBackSource())
	a.expectWait()
	b := ts.register("t", "b")
	b.expectBackToSource()
	if got := a.expectParents(); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("a parents %v", got)
	}
}

func TestRefreshAddsParents(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxParents = 3 })
	a := ts.register("t", "a")
	a.expectBackToSource()
	b := ts.register("t", "b")
	b.expectParents()
	c := ts.register("t", "c")
	if got := c.expectParents(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("c parents %v", got)
	}
	b.pieces(&schedulerv1.PieceResult{Number: 0, ParentId: "a", Length: 1 << 18, CostNs: 1e6})
	if got := c.expectParents(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("c parents after refresh %v", got)
	}
	// Nothing changed since: no more pushes.
	c.expectQuiet()
}

func TestGCForgetsEmptyTasks(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.TaskTTL = Duration(100 * time.Millisecond) })
	a := ts.register("t", "a")
	a.expectBackToSource()
	a.meta(1<<18, 1<<18)
	a.pieces(originPiece(0))
	a.leave()
	eventually(t, "task forgotten", func() bool { return ts.metric("damselfly_scheduler_tasks") == 0 })
	ts.inspect(func(s *Scheduler) {
		if len(s.tasks) != 0 || len(s.hosts) != 0 {
			t.Fatalf("left %d tasks, %d hosts", len(s.tasks), len(s.hosts))
		}
	})
	// A new peer starts from scratch: no shape, no digests.
	b := ts.register("t", "b")
	if m := b.next(); m.GetBackToSource() == nil {
		t.Fatalf("first message after GC: %v", m)
	}
}

func TestScoringSpreadsChildrenBySlots(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxParents = 1 })
	for _, p := range []struct {
		id    string
		slots int32
	}{{"p1", 8}, {"p2", 8}, {"small", 4}} {
		h := ts.newHost(p.id)
		h.UploadSlots = p.slots
		tp := ts.register("t", p.id, withHost(h), withHave(0, 1, 2, 3))
		tp.nextDecision()
		// Holders re-announcing: their agreeing claims (two hosts) make
		// the task's digests (restore.go).
		tp.meta(4<<18, 1<<18)
		tp.pieces(originPiece(0), originPiece(1), originPiece(2), originPiece(3))
		tp.done(4 << 18) // done peers hold no slots of their own parents
	}
	eventually(t, "parents done", func() bool {
		done := 0
		ts.inspect(func(s *Scheduler) {
			for _, p := range s.tasks[tid("t")].peers {
				if p.state == stateSucceeded && p.host.used == 0 {
					done++
				}
			}
		})
		return done == 3
	})
	count := map[string]int{}
	for i := range 10 {
		c := ts.register("t", fmt.Sprintf("c%d", i))
		c.expectTaskInfo()
		got := c.expectParents()
		if len(got) != 1 {
			t.Fatalf("child %d parents %v", i, got)
		}
		count[got[0]]++
	}
	// Scoring by free share of slots fills 8+8+4 slots evenly: half each.
	if count["p1"] != 4 || count["p2"] != 4 || count["small"] != 2 {
		t.Fatalf("children per parent %v, want p1=4 p2=4 small=2", count)
	}
	ts.mustInvariants()
}

func TestFullHostsUsedOnlyAsLastResort(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxParents = 2 })
	h := ts.newHost("one")
	h.UploadSlots = 1
	a := ts.register("t", "a", withHost(h))
	a.expectBackToSource()
	b := ts.register("t", "b")
	if got := b.expectParents(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("b parents %v", got)
	}
	// a's only slot is taken, but it is the only candidate.
	c := ts.register("t", "c")
	if got := c.expectParents(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("c parents %v", got)
	}
	// Once b has data, d prefers b to the overloaded a.
	b.pieces(&schedulerv1.PieceResult{Number: 0, ParentId: "a", Length: 1 << 18, CostNs: 1e6})
	ts.waitPeer("t", "b", func(p *peer) bool { return p.poolIdx >= 0 })
	d := ts.register("t", "d")
	if got := d.expectParents(); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("d parents %v, want only b (a has no free slot)", got)
	}
}

func TestReRegisterReplacesOldStream(t *testing.T) {
	ts := startServer(t, nil)
	a := ts.register("t", "a")
	a.expectBackToSource()
	a2 := ts.register("t", "a")
	a2.expectBackToSource() // the old entry, and its origin slot, are gone
	if code := a.expectEnd(); code != codes.Aborted {
		t.Fatalf("old stream ended with %v", code)
	}
	ts.mustInvariants()
}

func TestSlowPeerIsDropped(t *testing.T) {
	// Small flow-control windows so that a peer that stops reading fills its
	// stream, then its send buffer, after a few thousand messages.
	ts := startServer(t, func(c *Config) { c.SendBuffer = 8 },
		grpc.WithInitialWindowSize(1<<16), grpc.WithInitialConnWindowSize(1<<16))
	a := ts.register("t", "a")
	a.expectBackToSource()
	slow := ts.open("slow")
	slow.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Register{Register: &schedulerv1.Register{
		PeerId: "slow", Host: ts.newHost("slow"), Task: spec("t"),
	}}})
	eventually(t, "slow peer registered", func() bool {
		ok := false
		ts.inspect(func(s *Scheduler) { ok = s.tasks[tid("t")].peers["slow"] != nil })
		return ok
	})
	// Every new digest is forwarded to slow, which does not read.
	for n := uint32(0); n < 8000; n += 4 {
		a.pieces(originPiece(n), originPiece(n+1), originPiece(n+2), originPiece(n+3))
	}
	eventually(t, "all digests known", func() bool {
		n := 0
		ts.inspect(func(s *Scheduler) { n = len(s.tasks[tid("t")].digests) })
		return n == 8000
	})
	eventually(t, "slow peer dropped", func() bool {
		gone := false
		ts.inspect(func(s *Scheduler) { gone = s.tasks[tid("t")].peers["slow"] == nil })
		return gone
	})
	// The fetcher was never held up and still works.
	b := ts.register("t", "b")
	b.expectTaskInfo()
	if got := b.expectParents(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("b parents %v", got)
	}
	slow.startReading()
	if code := slow.expectEnd(); code != codes.ResourceExhausted {
		t.Fatalf("slow peer's stream ended with %v", code)
	}
	ts.mustInvariants()
}

func TestServeStopsWithOpenStreams(t *testing.T) {
	ts := startServer(t, nil)
	a := ts.register("t", "a")
	a.expectBackToSource()
	if err := ts.stop(); err != nil {
		t.Fatal(err)
	}
	if code := a.expectEnd(); code != codes.Unavailable {
		t.Fatalf("stream ended with %v, want Unavailable so the peer re-registers elsewhere", code)
	}
}

func TestShapeFromFetcherDoneOnly(t *testing.T) {
	ts := startServer(t, nil)
	a := ts.register("t", "a")
	a.expectBackToSource()
	b := ts.register("t", "b", withHave(0))
	b.expectParents()
	b.done(12345) // not a fetcher: its length is not trusted
	ts.waitPeer("t", "b", func(p *peer) bool { return p.state == stateSucceeded })
	a.done(1 << 20)
	ts.waitPeer("t", "a", func(p *peer) bool { return p.state == stateSucceeded })
	c := ts.register("t", "c")
	if info := c.expectTaskInfo(); info.GetContentLength() != 1<<20 {
		t.Fatalf("shape %v, want the fetcher's length", info)
	}
	ts.mustInvariants()
}

// With the defaults (one parent, one child per peer, downloading peers as
// parents before their first piece) newcomers form a pipeline below the
// fetcher instead of all hanging off it, and the chain heals when a link
// leaves.
func TestPipelineDefaults(t *testing.T) {
	d := DefaultConfig()
	ts := startServer(t, func(c *Config) {
		c.MaxParents, c.MaxChildren, c.PipelineParents = d.MaxParents, d.MaxChildren, d.PipelineParents
	})
	a := ts.register("t1", "a")
	a.expectBackToSource()
	parentOf := map[string]string{}
	peers := map[string]*testPeer{}
	prev := "a"
	for _, id := range []string{"b", "c", "d", "e"} {
		p := ts.register("t1", id)
		got := p.expectParents()
		if len(got) != 1 {
			t.Fatalf("%s parents %v, want exactly one", id, got)
		}
		if got[0] != prev {
			t.Fatalf("%s parents %v, want [%s]: the chain's tail (nobody holds data yet)", id, got, prev)
		}
		parentOf[id], peers[id], prev = got[0], p, id
	}
	// every peer serves one child: a→b→c→d→e
	ts.inspect(func(s *Scheduler) {
		for _, p := range s.tasks[tid("t1")].peers {
			if len(p.children) > 1 {
				t.Errorf("%s has %d children", p.id, len(p.children))
			}
		}
	})
	// c leaves: d gets a parent that is not its own descendant (e), and no
	// peer ends with two children
	peers["c"].leave()
	got := peers["d"].expectParents()
	if !slices.Equal(got, []string{"b"}) {
		t.Fatalf("d re-parented to %v, want [b]: c's place", got)
	}
	ts.inspect(func(s *Scheduler) {
		if err := checkInvariants(s); err != nil {
			t.Error(err)
		}
	})
}

// A parent whose host uploads far below the others is replaced.
func TestSlowParentReplaced(t *testing.T) {
	ts := startSlowParentServer(t, 100*time.Millisecond)
	a := ts.register("t1", "a")
	a.expectBackToSource()
	a.meta(16<<20, 256<<10)
	b := ts.register("t1", "b")
	if got := b.expectParents(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("b parents %v", got)
	}
	c := ts.register("t1", "c")
	if got := c.expectParents(); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("c parents %v", got)
	}
	e := ts.register("t1", "e")
	if got := e.expectParents(); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("e parents %v", got)
	}
	const piece = 256 << 10
	fast, slow := int64(20*time.Millisecond), int64(400*time.Millisecond)
	for n := uint32(0); n < 3; n++ {
		b.pieces(&schedulerv1.PieceResult{Number: n, ParentId: "a", Length: piece, CostNs: fast})
		c.pieces(&schedulerv1.PieceResult{Number: n, ParentId: "b", Length: piece, CostNs: slow})
		e.pieces(&schedulerv1.PieceResult{Number: n, ParentId: "c", Length: piece, CostNs: fast})
	}
	got := c.expectParents()
	if len(got) != 1 || got[0] == "b" {
		t.Fatalf("c kept its slow parent: %v", got)
	}
	if n := ts.metric("damselfly_scheduler_slow_parents_replaced_total"); n != 1 {
		t.Fatalf("slow parents replaced %v, want 1", n)
	}
}

func cacheSpec(id, tag string) *schedulerv1.TaskSpec {
	return &schedulerv1.TaskSpec{TaskId: core.CacheTaskID(id, tag), Url: core.CacheURL(id), Tag: tag}
}

// The importer of a dfcache entry is its source: its digests are trusted and
// handed to the peers exporting it; a peer asking for an entry nobody holds
// fails at once; and no peer may claim to have imported a URL's content.
func TestCacheImportIsTrustedSource(t *testing.T) {
	ts := startServer(t, nil)
	taskID := core.CacheTaskID("model", "v1")

	early := ts.register(taskID, "early", func(r *schedulerv1.Register) { r.Task = cacheSpec("model", "v1") }, noBackSource())
	early.expectFail()

	imp := ts.register(taskID, "importer", func(r *schedulerv1.Register) {
		r.Task, r.Imported = cacheSpec("model", "v1"), true
	})
	imp.expectBackToSource()
	imp.meta(2*1024, 1024)
	imp.pieces(originPiece(0), originPiece(1))
	imp.done(2 * 1024)
	ts.waitPeer(taskID, "importer", func(p *peer) bool { return p.state == stateSucceeded })

	exp := ts.register(taskID, "exporter", func(r *schedulerv1.Register) { r.Task = cacheSpec("model", "v1") }, noBackSource())
	info := exp.expectTaskInfo()
	if info.GetContentLength() != 2*1024 || len(info.GetDigests()) != 2 || !bytes.Equal(info.GetDigests()[0].GetDigest(), pieceDigest(0)) {
		t.Fatalf("exporter got task info %v, want the importer's shape and digests", info)
	}
	if got := exp.expectParents(); len(got) != 1 || got[0] != "importer" {
		t.Fatalf("exporter parents %v, want [importer]", got)
	}

	// imported on a URL task, or on a cache URL whose task ID does not
	// follow from it, is refused
	for name, sp := range map[string]*schedulerv1.TaskSpec{
		"url task":     spec("t-url"),
		"id mismatch":  {TaskId: core.CacheTaskID("other", ""), Url: core.CacheURL("model"), Tag: "v1"},
		"tag mismatch": {TaskId: taskID, Url: core.CacheURL("model")},
	} {
		liar := ts.register(sp.GetTaskId(), "liar-"+strings.ReplaceAll(name, " ", "-"), func(r *schedulerv1.Register) { r.Task, r.Imported = sp, true })
		if code := liar.expectEnd(); code != codes.InvalidArgument {
			t.Errorf("%s: imported register ended with %v, want InvalidArgument", name, code)
		}
	}
}

// A parent found slow is kept from the peer for a while, but comes back when
// the alternative is to wait; a parent the peer reported failed does not,
// until its mark expires; a corrupt one never does.
func TestBadParentMarksExpireAndSlowBeatsWaiting(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxBackToSource = 1 })
	a := ts.register("t", "a")
	a.expectBackToSource()
	b := ts.register("t", "b")
	if got := b.expectParents(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("b parents %v", got)
	}
	mark := func(kind badKind, age time.Duration) {
		ts.inspect(func(s *Scheduler) {
			p := s.tasks[tid("t")].peers["b"]
			s.removeEdge(s.tasks[tid("t")].peers["a"], p)
			p.bad = map[string]badMark{"a": {kind: kind, at: time.Now().Add(-age)}}
		})
	}
	// Slow, the only candidate, no origin budget: b gets it back.
	mark(badSlow, 0)
	b.reschedule()
	if got := b.expectParents(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("slow parent as a last resort: b parents %v", got)
	}
	ts.mustInvariants()
	// Reported failed, just now: b waits.
	b.reschedule("a")
	b.expectWait()
	// The same mark, expired: a comes back and the mark is forgotten.
	mark(badFailed, badParentTTL+time.Second)
	b.reschedule()
	if got := b.expectParents(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("expired failure mark: b parents %v", got)
	}
	ts.inspect(func(s *Scheduler) {
		if _, ok := s.tasks[tid("t")].peers["b"].bad["a"]; ok {
			t.Fatal("expired mark kept")
		}
	})
	// Corrupt, however old: never.
	mark(badCorrupt, time.Hour)
	b.reschedule()
	b.expectWait()
	ts.mustInvariants()
}

// A peer heading a long branch of the pipeline that loses its parent gets a
// parent outside its own branch, even when almost every other peer descends
// from it, rather than going to the origin or waiting.
func TestReparentAvoidsOwnBranch(t *testing.T) {
	d := DefaultConfig()
	ts := startServer(t, func(c *Config) {
		c.MaxParents, c.MaxChildren, c.PipelineParents = d.MaxParents, d.MaxChildren, d.PipelineParents
		c.MaxBackToSource = 2 // a budget left: the old code spent it here
	})
	ts.register("t1", "a").expectBackToSource()
	ids := []string{"a"}
	peers := map[string]*testPeer{}
	for i := 1; i <= 24; i++ {
		id := fmt.Sprintf("p%02d", i)
		p := ts.register("t1", id)
		if got := p.expectParents(); len(got) != 1 || got[0] != ids[len(ids)-1] {
			t.Fatalf("%s parents %v, want [%s]", id, got, ids[len(ids)-1])
		}
		ids, peers[id] = append(ids, id), p
	}
	// 21 of the other 23 peers descend from p03, and only a and p01 may take
	// it (both already serve one child). The descendants look best: fast,
	// reliable uplinks, where a's and p01's are slow.
	ts.inspect(func(s *Scheduler) {
		byID := map[string]*peer{}
		for _, q := range s.tasks[tid("t1")].peers {
			byID[q.id] = q
		}
		for i, id := range ids {
			h := byID[id].host
			h.successes = 100
			h.throughput = 1e9
			if i < 2 {
				h.throughput = 1e6
			}
		}
		p02, p03 := byID["p02"], byID["p03"]
		for trial := 0; trial < 20; trial++ {
			s.removeEdge(p02, p03)
			s.markBadLocked(p03, p02.id, badFailed, time.Now())
			if !s.fillParentsLocked(p03, false) {
				t.Fatalf("trial %d: no parent for p03", trial)
			}
			if got := p03.parents[0].peer.id; len(p03.parents) != 1 || (got != "a" && got != "p01") {
				t.Fatalf("trial %d: p03 got parent %s, want a or p01", trial, got)
			}
			if err := checkInvariants(s); err != nil {
				t.Fatal(err)
			}
			s.dropParentsLocked(p03)
			delete(p03.bad, p02.id)
			if !s.linkLocked(p02, p03) {
				t.Fatal("relinking p02→p03 failed")
			}
		}
	})
	// The same through the protocol: p03 reports p02 failed.
	peers["p03"].reschedule("p02")
	if got := peers["p03"].expectParents(); len(got) != 1 || (got[0] != "a" && got[0] != "p01") {
		t.Fatalf("p03 re-parented to %v, want a or p01", got)
	}
}

// With relays every peer below a slow uplink passes pieces on at that
// uplink's rate, so most measured parents are slow: the slow link is the
// parent much slower than its own input, and only it is replaced — spliced
// out of the pipeline and moved to its end, so no uplink is split.
func TestSlowParentJudgedAgainstItsInput(t *testing.T) {
	ts := startSlowParentServer(t, 300*time.Millisecond)
	ids := []string{"a", "b", "c", "d", "e", "f", "g"}
	peers := ts.chain("t1", ids...)
	const piece = 256 << 10
	fast, slow := int64(20*time.Millisecond), int64(200*time.Millisecond)
	// c's uplink is slow; d, e, f relay what they get at that rate
	for n := uint32(0); n < 3; n++ {
		for i, id := range ids[1:] {
			cost := slow
			if i < 2 { // b from a, c from b
				cost = fast
			}
			peers[id].pieces(&schedulerv1.PieceResult{Number: n, ParentId: ids[i], Length: piece, CostNs: cost})
		}
	}
	// d takes c's place under b; c, now childless, goes to the end (g)
	got := peers["d"].expectParents()
	if !slices.Equal(got, []string{"b"}) {
		t.Fatalf("d re-parented to %v, want [b] (c spliced out)", got)
	}
	if got := peers["c"].expectParents(); !slices.Equal(got, []string{"g"}) {
		t.Fatalf("slow c re-parented to %v, want [g], the end of the pipeline", got)
	}
	ts.inspect(func(s *Scheduler) {
		if err := checkInvariants(s); err != nil {
			t.Error(err)
		}
		for _, p := range s.tasks[tid("t1")].peers {
			if len(p.children) > 1 {
				t.Errorf("%s serves %d children after the splice", p.id, len(p.children))
			}
		}
	})
	// d now gets pieces fast and passes them on fast; within the grace
	// period its children's old reports must not get it replaced.
	for n := uint32(3); n < 20; n++ {
		peers["d"].pieces(&schedulerv1.PieceResult{Number: n, ParentId: got[0], Length: piece, CostNs: fast})
		for i, id := range ids[4:] {
			peers[id].pieces(&schedulerv1.PieceResult{Number: n, ParentId: ids[3+i], Length: piece, CostNs: fast})
		}
	}
	time.Sleep(time.Second) // many refresh rounds
	if n := ts.metric("damselfly_scheduler_slow_parents_replaced_total"); n != 1 {
		t.Fatalf("slow parents replaced %v, want 1 (c only)", n)
	}
}

// startSlowParentServer runs the pipeline defaults with slow parents judged
// after 2 pieces and a short input grace (restored after the server stops).
func startSlowParentServer(t *testing.T, grace time.Duration) *testServer {
	g := inputGrace
	t.Cleanup(func() { inputGrace = g })
	inputGrace = grace
	d := DefaultConfig()
	return startServer(t, func(c *Config) {
		c.MaxParents, c.MaxChildren, c.PipelineParents = d.MaxParents, d.MaxChildren, d.PipelineParents
		c.SlowParentRatio, c.SlowParentSamples = 0.3, 2
	})
}

// Reported piece times land in the piece-cost histogram by source (a piece
// without a parent came from the origin), and registrations are counted.
func TestPieceCostAndRegistrationMetrics(t *testing.T) {
	ts := startServer(t, nil)
	a := ts.register("t", "a")
	a.expectBackToSource()
	a.pieces(originPiece(0), originPiece(1))
	b := ts.register("t", "b")
	b.expectParents()
	b.pieces(&schedulerv1.PieceResult{Number: 0, ParentId: "a", Length: 1 << 18, CostNs: 3e6})
	eventually(t, "piece costs recorded", func() bool {
		return ts.metric("damselfly_scheduler_piece_cost_seconds", "source", "origin") == 2 &&
			ts.metric("damselfly_scheduler_piece_cost_seconds", "source", "peer") == 1
	})
	if n := ts.metric("damselfly_scheduler_peer_registrations_total", "host_type", "normal"); n != 2 {
		t.Errorf("registrations %v, want 2", n)
	}
}

func withPriority(p schedulerv1.Priority) regOpt {
	return func(r *schedulerv1.Register) { r.Priority = p }
}

// TestPriorityLevels: Dragonfly's levels change the first download of a
// task: LEVEL1 is refused, LEVEL2 may not go to the origin (and fails with
// nobody holding the task), LEVEL3 goes to the origin itself instead of
// triggering a seed peer; LEVEL0 (and LEVEL4..6) trigger the seed peer.
func TestPriorityLevels(t *testing.T) {
	ts := startServer(t, nil)
	seedHost := &schedulerv1.Host{Id: "host-seed", Hostname: "seed", Ip: "127.0.0.1", Seed: true, UploadSlots: 64}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := ts.cl.SeedTasks(ctx, &schedulerv1.SeedTasksRequest{Host: seedHost}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "seed host connected", func() bool {
		n := 0
		ts.inspect(func(s *Scheduler) { n = len(s.seeds) })
		return n == 1
	})

	ts.register("t1", "forbidden", withPriority(schedulerv1.Priority_LEVEL1)).expectFail()
	ts.register("t2", "peers-only", withPriority(schedulerv1.Priority_LEVEL2)).expectFail()
	ts.register("t3", "self", withPriority(schedulerv1.Priority_LEVEL3)).expectBackToSource()
	if n := ts.metric("damselfly_scheduler_seed_triggers_total"); n != 0 {
		t.Fatalf("seed triggered %v times for LEVEL1..3", n)
	}
	ts.register("t4", "seeded", withPriority(schedulerv1.Priority_LEVEL5)).expectWait()
	if n := ts.metric("damselfly_scheduler_seed_triggers_total"); n != 1 {
		t.Fatalf("LEVEL5: seed triggers %v, want 1", n)
	}

	// Not the first download: LEVEL2 gets the peer that holds data (one
	// that fetched it from the origin, so its digests are trusted).
	holder := ts.register("t5", "holder", withPriority(schedulerv1.Priority_LEVEL3))
	holder.expectBackToSource()
	holder.pieces(originPiece(0))
	ts.waitPeer("t5", "holder", func(p *peer) bool { return p.pieces.count == 1 })
	if got := ts.register("t5", "late", withPriority(schedulerv1.Priority_LEVEL2)).expectParents(); !slices.Equal(got, []string{"holder"}) {
		t.Fatalf("LEVEL2 with a holder: parents %v", got)
	}
	// LEVEL1 is refused even then.
	ts.register("t5", "forbidden-late", withPriority(schedulerv1.Priority_LEVEL1)).expectFail()
}
