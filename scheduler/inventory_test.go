package scheduler

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/identity"
)

// testInventory is a host's inventory stream over a real gRPC stream.
type testInventory struct {
	t       *testing.T
	peerID  string
	stream  schedulerv1.Scheduler_InventoryClient
	cancel  context.CancelFunc
	replies chan *schedulerv1.InventoryReply
	end     chan error
	version uint64
}

// openInventory opens an inventory stream whose call names certHost (the
// caller's certificate, under startIdentityServer) and whose hello names h.
func (ts *testServer) openInventory(certHost string, h *schedulerv1.Host, peerID string) *testInventory {
	ts.t.Helper()
	ctx, cancel := context.WithCancel(ts.callCtx(certHost))
	ts.t.Cleanup(cancel)
	stream, err := ts.cl.Inventory(ctx)
	if err != nil {
		ts.t.Fatalf("inventory: %v", err)
	}
	inv := &testInventory{t: ts.t, peerID: peerID, stream: stream, cancel: cancel,
		replies: make(chan *schedulerv1.InventoryReply, 64), end: make(chan error, 1)}
	if err := stream.Send(&schedulerv1.InventoryMessage{Msg: &schedulerv1.InventoryMessage_Hello{
		Hello: &schedulerv1.InventoryHello{Host: h, PeerId: peerID}}}); err != nil {
		ts.t.Fatalf("inventory hello: %v", err)
	}
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				inv.end <- err
				return
			}
			inv.replies <- m
		}
	}()
	return inv
}

// entry is an inventory entry for the test task name: two pieces with
// their true digests (forged: made-up ones).
func entry(name string, forged bool) *schedulerv1.InventoryEntry {
	e := &schedulerv1.InventoryEntry{Task: spec(name), ContentLength: 2 << 18, PieceSize: 1 << 18}
	for n := range uint32(2) {
		d := pieceDigest(n)
		if forged {
			d = core.PieceDigest(fmt.Appendf(nil, "forged-%d", n))
		}
		e.PieceDigests = append(e.PieceDigests, d)
	}
	return e
}

// batch sends the next version with added and removed entries.
func (inv *testInventory) batch(added []*schedulerv1.InventoryEntry, removed ...string) uint64 {
	inv.t.Helper()
	inv.version++
	inv.sendVersion(inv.version, added, removed...)
	return inv.version
}

func (inv *testInventory) sendVersion(v uint64, added []*schedulerv1.InventoryEntry, removed ...string) {
	inv.t.Helper()
	if err := inv.stream.Send(&schedulerv1.InventoryMessage{Msg: &schedulerv1.InventoryMessage_Batch{
		Batch: &schedulerv1.InventoryBatch{Version: v, Added: added, Removed: removed}}}); err != nil {
		inv.t.Fatalf("inventory send: %v", err)
	}
}

// trySend sends a batch to a stream the scheduler may have ended already
// (a refused hello): the send's error is io.EOF then, and the status is
// what expectEnd reads.
func (inv *testInventory) trySend(v uint64, added []*schedulerv1.InventoryEntry) {
	_ = inv.stream.Send(&schedulerv1.InventoryMessage{Msg: &schedulerv1.InventoryMessage_Batch{
		Batch: &schedulerv1.InventoryBatch{Version: v, Added: added}}})
}

// expectReply returns the next reply, which must acknowledge version v.
func (inv *testInventory) expectReply(v uint64) *schedulerv1.InventoryReply {
	inv.t.Helper()
	select {
	case r := <-inv.replies:
		if r.GetApplied() != v {
			inv.t.Fatalf("reply applied %d, want %d", r.GetApplied(), v)
		}
		return r
	case err := <-inv.end:
		inv.t.Fatalf("inventory ended waiting for the ack of %d: %v", v, err)
	case <-time.After(step):
		inv.t.Fatalf("no ack of version %d within %v", v, step)
	}
	return nil
}

// expectEnd returns the status code the stream ended with.
func (inv *testInventory) expectEnd() codes.Code {
	inv.t.Helper()
	deadline := time.After(step)
	for {
		select {
		case <-inv.replies:
		case err := <-inv.end:
			return status.Code(err)
		case <-deadline:
			inv.t.Fatalf("inventory stream did not end within %v", step)
		}
	}
}

func entries(prefix string, n int, forged bool) []*schedulerv1.InventoryEntry {
	var es []*schedulerv1.InventoryEntry
	for i := range n {
		es = append(es, entry(fmt.Sprintf("%s%d", prefix, i), forged))
	}
	return es
}

// A seed host's inventory of N tasks makes it a holder of each, trusted
// (the seed rule): a newcomer in any of them gets the true digests and the
// seed's inventory peer as its parent, and no Announce stream was opened
// for any of them.
func TestInventorySeedHostHoldsEveryTask(t *testing.T) {
	const n = 40
	ts := startIdentityServer(t, nil)
	ts.role = identity.RoleSeed
	h := ts.newHost("seed")
	h.Seed = true
	inv := ts.openInventory("host-seed", h, "seed-inv")
	v := inv.batch(entries("task", n, false))
	if r := inv.expectReply(v); len(r.GetRefused()) != 0 {
		t.Fatalf("refused %v", r.GetRefused())
	}
	if got := ts.metric("damselfly_scheduler_inventory_holders"); got != n {
		t.Fatalf("inventory_holders %v, want %d", got, n)
	}
	if got := ts.metric("damselfly_scheduler_inventory_streams"); got != 1 {
		t.Fatalf("inventory_streams %v, want 1", got)
	}
	if got := ts.metric("damselfly_scheduler_trust_restored_total", "rule", "seed"); got != n {
		t.Fatalf("trust_restored_total{seed} %v, want %d", got, n)
	}
	if got := ts.metric("damselfly_scheduler_peers", "state", "succeeded"); got != n {
		t.Fatalf("succeeded peers %v, want %d", got, n)
	}
	ts.role = identity.RolePeer
	for _, i := range []int{0, n / 2, n - 1} {
		b := ts.register(fmt.Sprintf("task%d", i), fmt.Sprintf("b%d", i))
		expectTrustedDigests(t, b)
		if got := b.expectParents(); !slices.Equal(got, []string{"seed-inv"}) {
			t.Fatalf("task%d: newcomer parents %v, want [seed-inv]", i, got)
		}
	}
	ts.inspect(func(s *Scheduler) {
		if err := checkInvariants(s); err != nil {
			t.Fatal(err)
		}
	})
}

// An ordinary host's word alone is not trusted for a URL task (the
// newcomer goes to the origin); a second host whose inventory agrees
// restores it (two_hosts), and a forger's disagreeing inventory restores
// nothing.
func TestInventoryTwoHostsAgree(t *testing.T) {
	ts := startIdentityServer(t, nil)
	ts.role = identity.RolePeer
	a := ts.openInventory("host-a", ts.newHost("a"), "a-inv")
	a.expectReply(a.batch(entries("t", 3, false)))
	rogue := ts.openInventory("host-rogue", ts.newHost("rogue"), "rogue-inv")
	rogue.expectReply(rogue.batch(entries("t", 3, true)))
	c := ts.register("t0", "c")
	c.expectBackToSource()
	c.leave()
	ts.waitGone("t0", "c")
	if n := ts.metric("damselfly_scheduler_trust_restored_total"); n != 0 {
		t.Fatalf("trust restored from one host and a forger: %v", n)
	}

	b := ts.openInventory("host-b", ts.newHost("b"), "b-inv")
	b.expectReply(b.batch(entries("t", 3, false)))
	if got := ts.metric("damselfly_scheduler_trust_restored_total", "rule", "two_hosts"); got != 3 {
		t.Fatalf("trust_restored_total{two_hosts} %v, want 3", got)
	}
	// The forger's holders leave, and it is told so (a reply acknowledging
	// no batch).
	told := map[string]bool{}
	for range 3 {
		for _, f := range rogue.expectReply(0).GetRefused() {
			told[f.GetTaskId()] = true
		}
	}
	if len(told) != 3 {
		t.Fatalf("forger told of %d entries refused, want 3", len(told))
	}
	d := ts.register("t1", "d")
	expectTrustedDigests(t, d)
	got := d.expectParents()
	if len(got) == 0 || slices.Contains(got, "rogue-inv") {
		t.Fatalf("newcomer parents %v: want holders a-inv/b-inv only", got)
	}
	for _, p := range got {
		if p != "a-inv" && p != "b-inv" {
			t.Fatalf("newcomer parent %s, want a-inv or b-inv", p)
		}
	}
	// Now the task's digests are known: an inventory disagreeing with them
	// is refused outright.
	late := ts.openInventory("host-late", ts.newHost("late"), "late-inv")
	r := late.expectReply(late.batch([]*schedulerv1.InventoryEntry{entry("t1", true)}))
	if len(r.GetRefused()) != 1 || !strings.Contains(r.GetRefused()[0].GetReason(), "digests differ") {
		t.Fatalf("forged entry for a trusted task: refused %v", r.GetRefused())
	}
}

// Removing an entry takes the holder out of its task; the stream's end
// takes all its holders out, and their children get a new decision.
func TestInventoryRemoveAndStreamEnd(t *testing.T) {
	ts := startIdentityServer(t, nil)
	ts.role = identity.RoleSeed
	h := ts.newHost("seed")
	h.Seed = true
	inv := ts.openInventory("host-seed", h, "seed-inv")
	inv.expectReply(inv.batch(entries("t", 3, false)))
	ts.role = identity.RolePeer
	child := ts.register("t2", "child")
	expectTrustedDigests(t, child)
	if got := child.expectParents(); !slices.Equal(got, []string{"seed-inv"}) {
		t.Fatalf("parents %v", got)
	}

	inv.expectReply(inv.batch(nil, tid("t0")))
	ts.waitGone("t0", "seed-inv")
	ts.inspect(func(s *Scheduler) {
		if s.tasks[tid("t1")].peers["seed-inv"] == nil {
			t.Error("removing t0 removed t1 too")
		}
	})
	if got := ts.metric("damselfly_scheduler_inventory_holders"); got != 2 {
		t.Fatalf("inventory_holders %v after a removal, want 2", got)
	}
	// Removed and added back in one batch: removals go first.
	inv.expectReply(inv.batch([]*schedulerv1.InventoryEntry{entry("t0", false)}, tid("t0")))
	ts.waitPeer("t0", "seed-inv", func(p *peer) bool { return p.state == stateSucceeded })

	inv.cancel()
	for _, task := range []string{"t0", "t1", "t2"} {
		ts.waitGone(task, "seed-inv")
	}
	eventually(t, "gauges back to zero", func() bool {
		return ts.metric("damselfly_scheduler_inventory_holders") == 0 && ts.metric("damselfly_scheduler_inventory_streams") == 0
	})
	// The child lost its only parent: it is decided again (no holder, no
	// seed stream: the origin).
	child.expectBackToSource()
	ts.inspect(func(s *Scheduler) {
		if err := checkInvariants(s); err != nil {
			t.Fatal(err)
		}
	})
}

// The attack: a rogue caller with a valid peer certificate for its own
// host puts an inventory under another host's ID (to make that host a
// holder of content it does not have, or to displace its inventory), or
// claims a seed host. Every such stream is refused and adds nothing.
func TestInventoryIdentity(t *testing.T) {
	ts := startIdentityServer(t, nil)
	ts.role = identity.RolePeer
	victim := ts.newHost("victim")
	good := ts.openInventory("host-victim", victim, "victim-inv")
	good.expectReply(good.batch(entries("t", 1, false)))

	rogue := ts.openInventory("host-rogue", victim, "rogue-inv")
	rogue.trySend(1, entries("x", 2, false))
	if code := rogue.expectEnd(); code != codes.PermissionDenied {
		t.Fatalf("inventory under another host's ID: %v, want PermissionDenied", code)
	}
	seedHost := ts.newHost("rogue")
	seedHost.Seed = true
	fake := ts.openInventory("host-rogue", seedHost, "rogue-inv")
	fake.trySend(1, entries("x", 2, false))
	if code := fake.expectEnd(); code != codes.PermissionDenied {
		t.Fatalf("a peer certificate claiming a seed host: %v, want PermissionDenied", code)
	}
	ts.role = identity.RoleManager
	mgr := ts.openInventory("host-rogue", ts.newHost("rogue"), "rogue-inv")
	mgr.trySend(1, entries("x", 2, false))
	if code := mgr.expectEnd(); code != codes.PermissionDenied {
		t.Fatalf("a manager certificate: %v, want PermissionDenied", code)
	}
	ts.inspect(func(s *Scheduler) {
		for _, name := range []string{"x0", "x1"} {
			if s.tasks[tid(name)] != nil {
				t.Errorf("refused inventory created task %s", name)
			}
		}
		if s.tasks[tid("t0")].peers["victim-inv"] == nil {
			t.Error("the victim's own inventory was displaced")
		}
	})
	if got := ts.metric("damselfly_scheduler_inventory_streams"); got != 1 {
		t.Fatalf("inventory_streams %v, want the victim's 1", got)
	}
}

// Versions must grow; every batch is acknowledged with its version; a
// batch over MaxInventoryBatch entries ends the stream; entries that do not
// hold are refused one by one and the others applied.
func TestInventoryVersionsAndRefusals(t *testing.T) {
	ts := startIdentityServer(t, nil)
	ts.role = identity.RolePeer
	inv := ts.openInventory("host-a", ts.newHost("a"), "a-inv")
	inv.version = 10
	v := inv.batch(entries("ok", 1, false))
	if r := inv.expectReply(v); len(r.GetRefused()) != 0 {
		t.Fatalf("refused %v", r.GetRefused())
	}

	wrongID := entry("w", false)
	wrongID.Task.TaskId = tid("other")
	private := entry("p", false)
	private.Task.Private = true
	cache := &schedulerv1.InventoryEntry{Task: &schedulerv1.TaskSpec{TaskId: core.CacheTaskID("c", ""), Url: "dfcache://c"},
		ContentLength: 2 << 18, PieceSize: 1 << 18, PieceDigests: entry("c", false).PieceDigests}
	short := entry("s", false)
	short.PieceDigests = short.PieceDigests[:1]
	headers := entry("h", false)
	headers.Task.Headers = map[string]string{"Authorization": "x"}
	// An s3 object's version (its ETag as If-Match) is part of its task
	// ID: the one header an entry may carry.
	s3 := entry("s3", false)
	s3.Task = &schedulerv1.TaskSpec{TaskId: core.TaskID("s3://bucket/obj", core.TaskOptions{Version: `"etag"`}), Url: "s3://bucket/obj",
		Headers: map[string]string{"If-Match": `"etag"`}}
	v = inv.batch([]*schedulerv1.InventoryEntry{wrongID, private, cache, short, headers, entry("ok2", false), s3})
	r := inv.expectReply(v)
	refused := map[string]string{}
	for _, f := range r.GetRefused() {
		refused[f.GetTaskId()] = f.GetReason()
	}
	if len(refused) != 5 {
		t.Fatalf("refused %v, want 5 entries", refused)
	}
	if !strings.HasPrefix(refused[tid("other")], core.TaskRefused) {
		t.Errorf("a task ID that does not follow from its spec: reason %q, want the %q prefix", refused[tid("other")], core.TaskRefused)
	}
	ts.inspect(func(s *Scheduler) {
		if s.tasks[tid("ok2")] == nil || s.tasks[tid("ok2")].peers["a-inv"] == nil {
			t.Error("the valid entry beside the refused ones was not applied")
		}
		if tk := s.tasks[core.TaskID("s3://bucket/obj", core.TaskOptions{Version: `"etag"`})]; tk == nil || tk.peers["a-inv"] == nil {
			t.Error("the s3 object's entry with its version was not applied")
		}
		if tk := s.tasks[tid("other")]; tk != nil && tk.peers["a-inv"] != nil {
			t.Error("the entry under another task's ID was applied")
		}
	})
	if got := ts.metric("damselfly_scheduler_inventory_refused_total"); got != 5 {
		t.Fatalf("inventory_refused_total %v, want 5", got)
	}

	inv.sendVersion(v, entries("again", 1, false)) // not above the last
	if code := inv.expectEnd(); code != codes.InvalidArgument {
		t.Fatalf("a repeated version: %v, want InvalidArgument", code)
	}
	ts.waitGone("ok", "a-inv") // the end took the holders out

	big := ts.openInventory("host-a", ts.newHost("a"), "a-inv")
	big.batch(entries("big", MaxInventoryBatch+1, false))
	if code := big.expectEnd(); code != codes.InvalidArgument {
		t.Fatalf("a batch of %d entries: %v, want InvalidArgument", MaxInventoryBatch+1, code)
	}
}

// A host's newer inventory stream replaces its older one (a reconnect the
// scheduler saw before the old stream's end): the old ends Aborted, the
// new one's entries stand.
func TestInventoryReplaced(t *testing.T) {
	ts := startIdentityServer(t, nil)
	ts.role = identity.RolePeer
	old := ts.openInventory("host-a", ts.newHost("a"), "a-inv")
	old.expectReply(old.batch(entries("t", 2, false)))
	cur := ts.openInventory("host-a", ts.newHost("a"), "a-inv2")
	if code := old.expectEnd(); code != codes.Aborted {
		t.Fatalf("replaced inventory ended %v, want Aborted", code)
	}
	cur.expectReply(cur.batch(entries("t", 1, false)))
	ts.waitGone("t1", "a-inv")
	ts.waitGone("t0", "a-inv")
	ts.waitPeer("t0", "a-inv2", func(p *peer) bool { return p.state == stateSucceeded })
	if got := ts.metric("damselfly_scheduler_inventory_streams"); got != 1 {
		t.Fatalf("inventory_streams %v, want 1", got)
	}
	if got := ts.metric("damselfly_scheduler_inventory_holders"); got != 1 {
		t.Fatalf("inventory_holders %v, want 1", got)
	}
}

// Holders share their task's full bitset; a change to one copies it first.
func TestBitsetSharedCopyOnWrite(t *testing.T) {
	tk := newTask("t", time.Unix(0, 0))
	var a, b bitset
	a.fillShared(tk, 70)
	b.fillShared(tk, 70)
	if a.count != 70 || &a.words[0] != &b.words[0] || a.words[1] != 1<<6-1 {
		t.Fatalf("fillShared: count %d, words %x (shared %v)", a.count, a.words, &a.words[0] == &b.words[0])
	}
	if !a.set(100) || a.count != 71 {
		t.Fatalf("set past the full range: count %d", a.count)
	}
	if len(b.words) != 2 || len(tk.full.words) != 2 || tk.full.words[1] != 1<<6-1 || b.count != 70 {
		t.Fatalf("a change to one holder's bitset changed the shared one: %x", tk.full.words)
	}
	if a.set(3) {
		t.Fatal("piece 3 was held already")
	}
}

// holderChain builds the chain src → a → b of task t1 with src holding
// every piece, and returns the peers and the inventory entry src's host
// announces for the task once it is done.
func holderChain(v *vsched) (map[string]*vpeer, *schedulerv1.InventoryEntry) {
	ps := v.chain("t1", "src", "a", "b")
	n := uint32(chainLength / chainPieceSize)
	e := &schedulerv1.InventoryEntry{Task: spec("t1"), ContentLength: chainLength, PieceSize: chainPieceSize}
	var rs []*schedulerv1.PieceResult
	for i := range n {
		rs = append(rs, originPiece(i))
		e.PieceDigests = append(e.PieceDigests, pieceDigest(i))
	}
	ps["src"].pieces(rs...)
	return ps, e
}

// announceHolder opens src's host's inventory stream and announces e on it:
// its holder is "src-inv".
func (v *vsched) announceHolder(e *schedulerv1.InventoryEntry) {
	v.t.Helper()
	is, err := v.s.OpenInventory(v.ctx, &schedulerv1.InventoryHello{
		Host:   &schedulerv1.Host{Id: "host-src", Hostname: "src", Ip: "127.0.0.1", PeerPort: 65000, UploadPort: 65002},
		PeerId: "src-inv"}, func(*schedulerv1.InventoryReply) error { return nil }, v.now)
	if err != nil {
		v.t.Fatal(err)
	}
	if err := is.Handle(&schedulerv1.InventoryMessage{Msg: &schedulerv1.InventoryMessage_Batch{
		Batch: &schedulerv1.InventoryBatch{Version: 1, Added: []*schedulerv1.InventoryEntry{e}}}}, v.now); err != nil {
		v.t.Fatal(err)
	}
}

// A peer that finished hands its children to the holder its host announces
// for the task: the head of a pipeline stays below the host that holds
// everything, instead of being rehomed, when the done peer leaves, below
// peers that are behind it. The inventory entry and the PeerDone come on
// different streams, in either order.
func TestDonePeerHandsChildrenToItsHolder(t *testing.T) {
	for _, holderFirst := range []bool{false, true} {
		v := pipelineVirtual(t, nil)
		ps, e := holderChain(v)
		src := ps["src"]
		done := func() {
			src.handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: chainLength}}})
		}
		if !holderFirst {
			done()
		}
		ps["a"].msgs = nil
		v.announceHolder(e)
		if holderFirst {
			if d := ps["a"].decision(); d != nil {
				t.Fatalf("holder first: a was sent %v while src still fetches", d)
			}
			done()
		}
		if got := ps["a"].parents(); !slices.Equal(got, []string{"src-inv"}) {
			t.Fatalf("holder first %v: a's parents %v once src is done and its host holds the task, want [src-inv]", holderFirst, got)
		}
		src.leave()
		if d := ps["a"].decision(); d != nil {
			t.Fatalf("holder first %v: a was sent %v when the done src left, want nothing: it had moved already", holderFirst, d)
		}
		if got := v.children("t1", "src-inv"); !slices.Equal(got, []string{"a"}) {
			t.Fatalf("holder first %v: the holder's children %v, want [a]", holderFirst, got)
		}
		v.invariants()
	}
}

// A done peer's child that has the holder as a parent already (a top-up
// from the finished host) keeps one edge from it, at the done peer's rate:
// a second edge to the same parent broke the graph's child indexes, and
// the scheduler panicked when the child's parents were next dropped (on the
// harness, mixed at N = 32).
func TestHandoverToHolderAlreadyParent(t *testing.T) {
	v := pipelineVirtual(t, nil)
	ps, e := holderChain(v)
	src := ps["src"]
	v.announceHolder(e)
	v.s.mu.Lock()
	tk := v.s.tasks[tid("t1")]
	if !v.s.linkTopUpLocked(tk.peers["src-inv"], tk.peers["a"], 1*mbps) {
		v.s.mu.Unlock()
		t.Fatal("cannot top a up from the holder")
	}
	v.s.mu.Unlock()
	src.handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: chainLength}}})
	v.invariants()
	v.s.mu.Lock()
	var links []string
	for _, l := range tk.peers["a"].parents {
		links = append(links, fmt.Sprintf("%s@%.0f", l.peer.id, l.share))
	}
	v.s.mu.Unlock()
	if !slices.Equal(links, []string{"src-inv@0"}) {
		t.Fatalf("a's parent edges %v, want one full-rate edge from the holder [src-inv@0]", links)
	}
	src.leave()
	ps["a"].leave() // drops a's parents: the edge indexes must hold
	v.invariants()
}
