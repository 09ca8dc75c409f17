package scheduler

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/internal/identity"
)

// vsched drives a Scheduler in virtual time through the transport-free
// session API, as a simulator does: one goroutine, no sleeps, every message
// observed as soon as the call that caused it returns.
type vsched struct {
	t   *testing.T
	s   *Scheduler
	now time.Time
	ctx context.Context // explicit insecure mode: callers are who they claim
}

// newVirtual returns a scheduler on a virtual clock with a fixed random
// seed, configured by testConfig then mutate.
func newVirtual(t *testing.T, mutate func(*Config)) *vsched {
	t.Helper()
	v := &vsched{t: t, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	v.ctx = InsecureContext(context.Background())
	v.s = newTestScheduler(t, mutate, nil, WithClock(func() time.Time { return v.now }), WithRand(mrand.New(mrand.NewPCG(1, 2))))
	return v
}

// pipelineVirtual is newVirtual with the pipeline defaults.
func pipelineVirtual(t *testing.T, mutate func(*Config)) *vsched {
	d := DefaultConfig()
	return newVirtual(t, func(c *Config) {
		c.MaxParents, c.MaxChildren, c.PipelineParents = d.MaxParents, d.MaxChildren, d.PipelineParents
		c.RefreshInterval, c.GCInterval = d.RefreshInterval, d.GCInterval
		if mutate != nil {
			mutate(c)
		}
	})
}

// advance moves the clock by d and runs the periodic work at the new time.
func (v *vsched) advance(d time.Duration) {
	v.now = v.now.Add(d)
	v.s.Tick(v.now)
}

type vpeer struct {
	v    *vsched
	id   string
	sess *Session
	msgs []*schedulerv1.SchedulerMessage
}

func (v *vsched) join(task, id string, opts ...regOpt) *vpeer {
	v.t.Helper()
	r := &schedulerv1.Register{
		PeerId: id,
		Host:   &schedulerv1.Host{Id: "host-" + id, Hostname: id, Ip: "127.0.0.1", PeerPort: 65000, UploadPort: 65002},
		Task:   spec(task),
	}
	for _, o := range opts {
		o(r)
	}
	p := &vpeer{v: v, id: id}
	sess, err := v.s.Open(v.ctx, r, func(m *schedulerv1.SchedulerMessage) error {
		p.msgs = append(p.msgs, m)
		return nil
	}, v.now)
	if err != nil {
		v.t.Fatalf("open %s: %v", id, err)
	}
	p.sess = sess
	return p
}

// decision returns the last decision p got since the last call (nil when
// none) and forgets everything p got.
func (p *vpeer) decision() *schedulerv1.SchedulerMessage {
	var d *schedulerv1.SchedulerMessage
	for _, m := range p.msgs {
		if m.GetTaskInfo() == nil && m.GetAccess() == nil && m.GetUploadBudget() == nil {
			d = m
		}
	}
	p.msgs = nil
	return d
}

func (p *vpeer) parents() []string {
	p.v.t.Helper()
	d := p.decision()
	if d.GetParents() == nil {
		p.v.t.Fatalf("%s: want parents, got %v", p.id, d)
	}
	return parentIDs(d)
}

func (p *vpeer) handle(m *schedulerv1.PeerMessage) {
	p.v.t.Helper()
	if err := p.sess.Handle(m, p.v.now); err != nil {
		p.v.t.Fatalf("%s: handle: %v", p.id, err)
	}
}

// meta reports the content's shape as a fetcher whose origin shares its
// uplink (TaskMeta.origin_on_host): a seed peer sending it is held to about
// one copy, as any seed that has not shown an uplink of its own
// (sharedSeed). metaOwnUplink reports an origin on another host.
func (p *vpeer) meta(length int64, pieceSize uint32) {
	p.handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Meta{Meta: &schedulerv1.TaskMeta{ContentLength: length, PieceSize: pieceSize, OriginOnHost: true}}})
}

func (p *vpeer) metaOwnUplink(length int64, pieceSize uint32) {
	p.handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Meta{Meta: &schedulerv1.TaskMeta{ContentLength: length, PieceSize: pieceSize}}})
}

func (p *vpeer) pieces(rs ...*schedulerv1.PieceResult) {
	p.handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Pieces{Pieces: &schedulerv1.PiecesDone{Pieces: rs}}})
}

func (p *vpeer) reschedule(bad ...string) {
	p.handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Reschedule{Reschedule: &schedulerv1.Reschedule{BadParents: bad}}})
}

func (p *vpeer) leave() { p.sess.Close(p.v.now) }

// A peer that may not go to the origin fails exactly when it has waited
// wait_timeout, not a tick before.
func TestWaitTimeoutVirtual(t *testing.T) {
	v := newVirtual(t, func(c *Config) { c.WaitTimeout = Duration(30 * time.Second) })
	a := v.join("t", "a", noBackSource())
	if d := a.decision(); d.GetWait() == nil {
		t.Fatalf("want wait, got %v", d)
	}
	for range 29 {
		v.advance(time.Second)
	}
	v.advance(time.Second - time.Millisecond)
	if d := a.decision(); d != nil {
		t.Fatalf("before wait_timeout: got %v", d)
	}
	v.advance(time.Millisecond)
	if d := a.decision(); d.GetFail() == nil {
		t.Fatalf("at wait_timeout: want fail, got %v", d)
	}
}

// A task with a peer survives any number of TTLs; once empty, it is
// forgotten one TTL later, at the first collection after that.
func TestGCVirtual(t *testing.T) {
	v := newVirtual(t, func(c *Config) {
		c.TaskTTL, c.GCInterval, c.RefreshInterval = Duration(time.Minute), Duration(10*time.Second), Duration(time.Second)
	})
	a := v.join("t", "a")
	if d := a.decision(); d.GetBackToSource() == nil {
		t.Fatalf("want back to source, got %v", d)
	}
	tasks := func() int {
		v.s.mu.Lock()
		defer v.s.mu.Unlock()
		return len(v.s.tasks)
	}
	for range 300 {
		v.advance(time.Second)
	}
	if n := tasks(); n != 1 {
		t.Fatalf("task with a peer: %d tasks after 5 TTLs", n)
	}
	a.leave()
	for range 59 {
		v.advance(time.Second)
	}
	if n := tasks(); n != 1 {
		t.Fatalf("empty task forgotten before its TTL: %d tasks", n)
	}
	for range 11 {
		v.advance(time.Second)
	}
	if n := tasks(); n != 0 {
		t.Fatalf("empty task kept past TTL + gc_interval: %d tasks", n)
	}
}

// A parent a peer reported failed stays away for badParentTTL of virtual
// time, then comes back.
func TestBadParentTTLVirtual(t *testing.T) {
	v := newVirtual(t, func(c *Config) { c.MaxParents, c.WaitTimeout = 1, Duration(time.Hour) })
	a := v.join("t", "a")
	a.decision()
	b := v.join("t", "b", noBackSource())
	if got := b.parents(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("b parents %v", got)
	}
	b.reschedule("a")
	if d := b.decision(); d.GetWait() == nil {
		t.Fatalf("after reporting its only parent: want wait, got %v", d)
	}
	v.advance(badParentTTL - time.Second)
	if d := b.decision(); d != nil {
		t.Fatalf("before the TTL: got %v", d)
	}
	v.advance(time.Second)
	if got := b.parents(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("after the TTL: b parents %v, want [a]", got)
	}
}

// The input grace and the slow-parent rule run on the virtual clock: a
// slow uplink is replaced at the first tick after its reports, a peer that
// just got a new parent is not judged within inputGrace.
func TestSlowParentReplacedVirtual(t *testing.T) {
	v := pipelineVirtual(t, func(c *Config) { c.SlowParentRatio, c.SlowParentSamples = 0.3, 2 })
	ps := v.chain("t1", "a", "b", "c", "d")
	// c's parents were set just now: within the grace nothing is judged.
	const piece = 256 << 10
	fast, slow := int64(20*time.Millisecond), int64(400*time.Millisecond)
	report := func(n uint32) {
		ps["b"].pieces(&schedulerv1.PieceResult{Number: n, ParentId: "a", Length: piece, CostNs: fast})
		ps["c"].pieces(&schedulerv1.PieceResult{Number: n, ParentId: "b", Length: piece, CostNs: slow})
		ps["d"].pieces(&schedulerv1.PieceResult{Number: n, ParentId: "c", Length: piece, CostNs: fast})
	}
	for n := range uint32(3) {
		report(n)
	}
	v.advance(inputGrace - time.Second)
	if d := ps["c"].decision(); d != nil {
		t.Fatalf("c judged within the input grace of its parent: %v", d)
	}
	v.advance(time.Second)
	if d := ps["c"].decision(); d.GetParents() == nil || slices.Contains(parentIDs(d), "b") {
		t.Fatalf("c: want new parents without slow b, got %v", d)
	}
}

// The same seed and the same events give the same decisions: the messages
// every peer gets are equal across two runs.
func TestDeterministicWithSeed(t *testing.T) {
	run := func() []string {
		v := newVirtual(t, func(c *Config) { c.MaxParents, c.CandidateLimit = 2, 4 })
		var log []string
		ps := []*vpeer{v.join("t", "src")}
		ps[0].meta(64<<18, 1<<18)
		for i := range 40 {
			ps = append(ps, v.join("t", fmt.Sprintf("p%d", i), withHave(uint32(i%8))))
			if i%7 == 3 {
				ps[i/2].leave()
			}
			v.advance(300 * time.Millisecond)
		}
		for _, p := range ps {
			for _, m := range p.msgs {
				log = append(log, p.id+":"+m.String())
			}
		}
		return log
	}
	a, b := run(), run()
	if !slices.Equal(a, b) {
		t.Fatalf("two runs with one seed differ (%d vs %d messages)", len(a), len(b))
	}
	if len(a) < 40 {
		t.Fatalf("only %d messages", len(a))
	}
}

// The session API keeps the gRPC handler's checks: a second Register is a
// protocol error that ends the session, seed_request needs the seed role, a
// spec that does not hold gets a Fail and an ended session, and a failed
// send drops the peer.
func TestSessionChecks(t *testing.T) {
	v := newVirtual(t, nil)
	a := v.join("t", "a")
	err := a.sess.Handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Register{Register: &schedulerv1.Register{}}}, v.now)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("second register: %v", err)
	}
	select {
	case <-a.sess.Done():
	default:
		t.Fatal("session goes on after a protocol error")
	}
	if status.Code(a.sess.Err()) != codes.InvalidArgument {
		t.Fatalf("session end: %v", a.sess.Err())
	}
	a.leave()

	peerCtx := identity.NewContext(context.Background(), identity.Identity{Role: identity.RolePeer, HostID: "host-x", Verified: true})
	_, err = v.s.Open(peerCtx, &schedulerv1.Register{PeerId: "x", Host: &schedulerv1.Host{Id: "host-x"}, Task: spec("t"), SeedRequest: true},
		func(*schedulerv1.SchedulerMessage) error { return nil }, v.now)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("seed_request from a peer certificate: %v", err)
	}
	_, err = v.s.Open(peerCtx, &schedulerv1.Register{PeerId: "x", Host: &schedulerv1.Host{Id: "host-y"}, Task: spec("t")},
		func(*schedulerv1.SchedulerMessage) error { return nil }, v.now)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("register for another host: %v", err)
	}

	bad := spec("t")
	bad.TaskId = tid("other")
	var got []*schedulerv1.SchedulerMessage
	sess, err := v.s.Open(v.ctx, &schedulerv1.Register{PeerId: "y", Host: &schedulerv1.Host{Id: "host-y"}, Task: bad},
		func(m *schedulerv1.SchedulerMessage) error { got = append(got, m); return nil }, v.now)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].GetFail() == nil {
		t.Fatalf("spec that does not hold: got %v", got)
	}
	select {
	case <-sess.Done():
	default:
		t.Fatal("refused session not ended")
	}
	if sess.Err() != nil {
		t.Fatalf("refused session ends with %v, want a normal end", sess.Err())
	}

	full := errSendFull
	sess, err = v.s.Open(v.ctx, &schedulerv1.Register{PeerId: "z", Host: &schedulerv1.Host{Id: "host-z"}, Task: spec("t")},
		func(*schedulerv1.SchedulerMessage) error { return full }, v.now)
	if err != nil {
		t.Fatal(err)
	}
	if status.Code(sess.Err()) != codes.ResourceExhausted {
		t.Fatalf("peer whose send fails: %v", sess.Err())
	}
	v.s.mu.Lock()
	_, still := v.s.tasks[tid("t")].peers["z"]
	v.s.mu.Unlock()
	if still {
		t.Fatal("peer whose send fails stays registered")
	}
}

// A decision in a large pipeline looks at a bounded number of candidates,
// not at every peer of the task: the free ones come from the task's open
// set. (Walking the pool for the few free peers made every event O(N).)
func TestDecisionCostBoundedInLargeTask(t *testing.T) {
	v := pipelineVirtual(t, nil)
	src := v.join("t", "src")
	src.decision()
	src.meta(64<<20, 1<<20)
	const n = 3000
	for i := range n {
		p := v.join("t", fmt.Sprintf("p%d", i))
		if i%500 == 0 {
			v.advance(time.Second)
		}
		p.msgs = nil
	}
	limit := uint64(v.s.cfg.CandidateLimit)
	for i := range 20 {
		v.s.mu.Lock()
		before := v.s.visited
		v.s.mu.Unlock()
		p := v.join("t", fmt.Sprintf("new%d", i))
		if d := p.decision(); d.GetParents() == nil {
			t.Fatalf("newcomer %d: %v", i, d)
		}
		v.s.mu.Lock()
		visits := v.s.visited - before
		v.s.mu.Unlock()
		if visits > 3*limit {
			t.Fatalf("newcomer %d: its decision looked at %d candidates in a task of %d peers (bound %d)", i, visits, n, 3*limit)
		}
	}
	v.invariants()
}

// The peer fetching from the origin holds the newest pieces and nobody
// else does: however slow it looks to its children (here its uplink is
// split among several of them), the slow-parent rule never takes its last
// child, or the swarm gets nothing new until every peer gives up on it.
func TestSlowSourceKeepsOneChild(t *testing.T) { slowParentKeepsOneChild(t, false) }

// A finished parent keeps its last full-rate child against the per-piece
// slow-parent rule, as a fetching source does: it holds everything the
// child lacks (its host's holder takes over a done peer's children, and the
// seed's holder, judged slow, left the pipeline's head with only the origin).
func TestSlowFinishedParentKeepsOneChild(t *testing.T) { slowParentKeepsOneChild(t, true) }

// slowParentKeepsOneChild: src, fetching from the origin (finished: done
// with all it fetched), feeds three children slowly, each of which feeds a
// grandchild fast; after a tick src keeps one child and two moved as slow.
func slowParentKeepsOneChild(t *testing.T, finished bool) {
	v := pipelineVirtual(t, func(c *Config) { c.SlowParentRatio, c.SlowParentSamples, c.MaxChildren = 0.3, 2, 3 })
	src := v.join("t1", "src")
	if d := src.decision(); d.GetBackToSource() == nil {
		t.Fatalf("src: want back to source, got %v", d)
	}
	src.meta(16<<20, 256<<10)
	kids := []*vpeer{v.join("t1", "b"), v.join("t1", "c"), v.join("t1", "e")}
	for _, k := range kids {
		if got := k.parents(); !slices.Equal(got, []string{"src"}) {
			t.Fatalf("%s parents %v, want [src]", k.id, got)
		}
	}
	const piece = 256 << 10
	fast, slow := int64(20*time.Millisecond), int64(400*time.Millisecond)
	if finished {
		var all []*schedulerv1.PieceResult
		for n := range uint32(64) {
			all = append(all, originPiece(n))
		}
		src.pieces(all...)
		src.handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: 16 << 20}}})
	}
	for n := range uint32(3) {
		if !finished {
			src.pieces(originPiece(n))
		}
		for _, k := range kids {
			k.pieces(&schedulerv1.PieceResult{Number: n, ParentId: "src", Length: piece, CostNs: slow})
		}
	}
	grand := map[*vpeer]string{}
	for _, id := range []string{"b2", "c2", "e2"} {
		g := v.join("t1", id)
		par := g.parents()
		if len(par) != 1 || par[0] == "src" {
			t.Fatalf("%s parents %v, want one of src's children", id, par)
		}
		grand[g] = par[0]
	}
	for n := range uint32(3) {
		for g, par := range grand {
			g.pieces(&schedulerv1.PieceResult{Number: n, ParentId: par, Length: piece, CostNs: fast})
		}
	}
	v.advance(time.Second)
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	p := v.s.tasks[tid("t1")].peers["src"]
	want := stateBackToSource
	if finished {
		want = stateSucceeded
	}
	if p.state != want {
		t.Fatalf("src in state %v, want %v", p.state, want)
	}
	if n := unpacedChildren(p); n != 1 {
		t.Fatalf("src (finished %v) keeps %d children, want 1 (the others moved as slow)", finished, n)
	}
	if n := testutil.ToFloat64(v.s.m.slowParents); n != 2 {
		t.Fatalf("%v children moved off the slow src (finished %v), want 2", n, finished)
	}
}
