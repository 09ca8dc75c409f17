package scheduler

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
)

// This file serves a host's inventory: every complete task it holds whose
// home this scheduler is, on one stream (Inventory) instead of one Announce
// stream per task. docs/architecture.md ("Inventory") explains the design.

// MaxInventoryBatch bounds the entries (added plus removed) of one
// inventory batch, so that one batch holds the scheduler's lock briefly.
const MaxInventoryBatch = 256

// An InventorySession is one host's inventory stream without transport:
// the gRPC Inventory handler runs one per stream and a simulator may drive
// it directly. Like a Session, its calls work synchronously under the
// scheduler's lock.
//
// Each entry makes the host a holder peer of the task, in state succeeded
// with every piece, exactly as a complete task re-announced on its own
// stream would be: the same checks (the caller's certificate names the
// host, the task ID follows from the spec) and the same trust rules for its
// claim (restore.go). A holder has no connection of its own: it shares the
// session's, which drops what the scheduler would tell a done peer (a
// holder needs neither parents nor digests; private tasks, the only ones
// with piece tokens, are not carried). Refusals go back on the stream in
// the batch's reply.
type InventorySession struct {
	s      *Scheduler
	hello  *schedulerv1.InventoryHello
	peerID string
	conn   *conn // shared by every holder of this session
	send   func(*schedulerv1.InventoryReply) error
	// holders: the peers this session added, in order; entries removed
	// since (live counts those still in) are compacted away lazily.
	holders []*peer
	live    int
	version uint64
	closed  bool
	ctx     context.Context
	cancel  context.CancelCauseFunc
}

// OpenInventory starts the inventory session of the host hello names,
// which must be the caller's (authorizeHost: a peer or seed certificate
// naming that host; a seed host needs a seed certificate). A newer session
// of the same host replaces the older one, whose holders leave. send
// queues one reply; like a Session's it must not block nor call back into
// the Scheduler, and an error from it ends the session.
func (s *Scheduler) OpenInventory(ctx context.Context, hello *schedulerv1.InventoryHello, send func(*schedulerv1.InventoryReply) error, now time.Time) (*InventorySession, error) {
	switch {
	case hello == nil:
		return nil, status.Error(codes.InvalidArgument, "inventory: first message must be InventoryHello")
	case hello.GetHost().GetId() == "":
		return nil, status.Error(codes.InvalidArgument, "inventory: host.id is empty")
	case hello.GetPeerId() == "":
		return nil, status.Error(codes.InvalidArgument, "inventory: peer_id is empty")
	}
	if err := authorizeHost(ctx, hello.GetHost()); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancelCause(ctx)
	is := &InventorySession{s: s, hello: hello, peerID: hello.GetPeerId(), send: send, ctx: sctx, cancel: cancel}
	is.conn = &conn{send: discard, cancel: func(error) {}, inv: is}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		cancel(errShutdown)
		return nil, errShutdown
	}
	if sctx.Err() != nil {
		return nil, status.FromContextError(sctx.Err()).Err()
	}
	id := hello.GetHost().GetId()
	if old := s.inventories[id]; old != nil {
		old.cancel(errReplaced)
		old.removeAllLocked(now)
	}
	s.inventories[id] = is
	s.m.inventoryStreams.Inc()
	s.hostLocked(hello.GetHost(), now)
	s.flushLocked(now)
	s.log.Debug("inventory opened", "host_id", id, "peer_id", is.peerID)
	return is, nil
}

// discard is a holder's send: nothing the scheduler tells a done peer is
// of use to a holder (see InventorySession).
func discard(*schedulerv1.SchedulerMessage) error { return nil }

// Handle applies one batch at now: removals, then additions, then the
// reply (the version applied and the entries refused) goes out. A batch
// that breaks the protocol (a version not above the last one, too many
// entries, a second hello) ends the session with that status.
func (is *InventorySession) Handle(m *schedulerv1.InventoryMessage, now time.Time) error {
	b := m.GetBatch()
	switch {
	case m.GetHello() != nil:
		return is.end(status.Error(codes.InvalidArgument, "inventory: hello sent twice on one stream"))
	case b == nil:
		return nil // unknown message: ignored
	case len(b.GetAdded())+len(b.GetRemoved()) > MaxInventoryBatch:
		return is.end(status.Errorf(codes.InvalidArgument, "inventory: batch of %d entries, at most %d", len(b.GetAdded())+len(b.GetRemoved()), MaxInventoryBatch))
	}
	s := is.s
	s.mu.Lock()
	if is.ctx.Err() != nil {
		s.mu.Unlock()
		return nil // replaced or shut down: its holders are gone
	}
	if b.GetVersion() <= is.version {
		s.mu.Unlock()
		return is.end(status.Errorf(codes.InvalidArgument, "inventory: batch version %d not above the last applied %d", b.GetVersion(), is.version))
	}
	is.version = b.GetVersion()
	for _, id := range b.GetRemoved() {
		if p := is.holderLocked(id); p != nil {
			s.removeLocked(p, now)
		}
	}
	reply := &schedulerv1.InventoryReply{Applied: b.GetVersion()}
	for _, e := range b.GetAdded() {
		if reason := is.addLocked(e, now); reason != "" {
			s.m.inventoryRefused.Inc()
			if s.debug() {
				s.log.Debug("inventory entry refused", "host_id", is.hello.GetHost().GetId(), "task_id", e.GetTask().GetTaskId(), "reason", reason)
			}
			reply.Refused = append(reply.Refused, &schedulerv1.InventoryRefused{TaskId: e.GetTask().GetTaskId(), Reason: reason})
		}
	}
	if len(is.holders) > 64 && is.live < len(is.holders)/2 {
		is.compactLocked()
	}
	s.flushLocked(now)
	err := is.send(reply)
	s.mu.Unlock()
	if err != nil {
		return is.end(errOverflow)
	}
	return nil
}

func (is *InventorySession) end(err error) error {
	is.cancel(err)
	return err
}

// holderLocked returns this session's holder of task id, nil when none.
func (is *InventorySession) holderLocked(id string) *peer {
	t := is.s.tasks[id]
	if t == nil {
		return nil
	}
	if p := t.peers[is.peerID]; p != nil && p.conn == is.conn {
		return p
	}
	return nil
}

// addLocked makes the host a holder of e's task; it returns why not
// ("" when added or already held).
func (is *InventorySession) addLocked(e *schedulerv1.InventoryEntry, now time.Time) string {
	s := is.s
	spec := e.GetTask()
	if spec.GetTaskId() == "" {
		return "task.task_id is empty"
	}
	if err := checkSpec(spec); err != nil {
		s.m.specRefused.Inc()
		return core.TaskRefused + err.Error()
	}
	if isCacheSpec(spec) {
		return "a dfcache entry is announced by its importer, not in an inventory"
	}
	if spec.GetPrivate() {
		return "a private task is announced on its own stream, not in an inventory"
	}
	for k := range spec.GetHeaders() {
		// The one header a cached task keeps: an s3 object's version
		// (core.SpecVersion), part of its task ID. Anything else would be
		// a credential, which an inventory never carries.
		if !strings.EqualFold(k, "If-Match") {
			return "an inventory entry carries no header but an object version (If-Match)"
		}
	}
	length, size := e.GetContentLength(), e.GetPieceSize()
	if length < 0 || size == 0 {
		return "the shape is not known: not a complete task"
	}
	n := core.PieceCount(length, size)
	if n > maxPieces {
		return fmt.Sprintf("%d pieces, at most %d", n, maxPieces)
	}
	if uint32(len(e.GetPieceDigests())) != n {
		return fmt.Sprintf("%d piece digests for %d pieces: not a complete task", len(e.GetPieceDigests()), n)
	}
	for _, d := range e.GetPieceDigests() {
		if len(d) != core.DigestSize {
			return "a piece digest of the wrong size"
		}
	}
	t := s.taskLocked(spec, now)
	switch {
	case t.private:
		return "the task is private here: announced on its own stream"
	case t.cache:
		return "a dfcache entry is announced by its importer"
	case (t.contentLength >= 0 && t.contentLength != length) || (t.pieceSize > 0 && t.pieceSize != size):
		// Other content under the task's name (the origin's changed, or
		// a lie): it could serve no piece that checks.
		return "the shape differs from the task's"
	}
	for i, d := range e.GetPieceDigests() {
		if td, ok := t.digests[uint32(i)]; ok && !bytes.Equal(td, d) {
			return "the piece digests differ from the task's"
		}
	}
	h := s.hosts[is.hello.GetHost().GetId()]
	if h == nil {
		h = s.hostLocked(is.hello.GetHost(), now) // forgotten while idle
	}
	if old := t.peers[is.peerID]; old != nil {
		if old.conn == is.conn {
			return "" // held already
		}
		if old.host != h {
			return "the peer ID is another host's in this task"
		}
		s.removeLocked(old, now)
		old.conn.cancel(errReplaced)
	}
	p := &peer{
		id:                is.peerID,
		task:              t,
		host:              h,
		ord:               t.nextOrd,
		lastSeen:          now,
		disableBackSource: true,
		conn:              is.conn,
		poolIdx:           -1,
		waitIdx:           -1,
		openIdx:           -1,
	}
	t.nextOrd++
	p.pieces.fillShared(t, n)
	t.addPeer(p)
	s.counters.registrations++
	h.peers++
	s.m.registered(h.info.GetSeed())
	s.setState(p, stateSucceeded)
	is.holders = append(is.holders, p)
	is.live++
	t.holders++
	s.m.inventoryHolders.Inc()
	if t.claimable() && len(t.digests) == 0 {
		c := &claim{length: length, pieceSize: size, digests: make(map[uint32][]byte, n)}
		for i, d := range e.GetPieceDigests() {
			c.digests[uint32(i)] = bytes.Clone(d)
		}
		p.claim = c
		s.restoreTrustLocked(p, now)
	}
	s.updatePoolLocked(p)
	s.handoverLocked(p, nil, now)
	if len(t.list) <= capacitySmallTask {
		s.updateRateLocked(t, now)
	}
	s.markDirty(t)
	return ""
}

// handoverLocked gives holder q the children of its host's peer that just
// finished the task and is about to leave (its daemon announces the task in
// its inventory, then closes the download's stream): the same host, the
// same uplink, and the children were there first. Otherwise a newcomer
// takes the holder's free slot (a seed of unknown capacity has one), and
// when the done peer leaves, its child, the head of the pipeline, is
// rehomed below peers that are behind it and lack the pieces it lacks. On
// the netns harness that cost every host in the pipeline the 25 s after
// the seed peer finished, and, with the seed on the origin's host, stalled
// the whole swarm into its origin fallback. The holder may so serve more
// children than its limit: those are rehomed as from any crowded parent.
// The inventory entry and the peer's PeerDone travel on different streams,
// so either may come first: called with the holder when it is added, and
// with the done peer when it finishes (q nil: its host's holder, if any).
func (s *Scheduler) handoverLocked(q, d *peer, now time.Time) {
	switch {
	case q == nil:
		is := s.inventories[d.host.id]
		if is == nil {
			return
		}
		if q = is.holderLocked(d.task.id); q == nil {
			return
		}
	case d == nil:
		h := q.host
		for i, x := range h.handover {
			if x.task == q.task && x != q {
				h.handover = slices.Delete(h.handover, i, i+1)
				d = x
				break
			}
		}
		if d == nil {
			return
		}
	}
	if d.state != stateSucceeded || q == d || q.host != d.host {
		return
	}
	for _, c := range slices.Clone(d.children) {
		share := 0.0
		if j := parentIndex(c, d); j >= 0 {
			share = c.parents[j].share
		}
		s.removeEdge(d, c)
		if isParent(c, q) {
			// q tops c up already (a finished host's spare): that edge
			// gives way to d's, so that c has one edge from q, at d's
			// rate. Two edges between the same peers broke the children's
			// indexes, and the scheduler panicked when c's parents were
			// next dropped (on the harness, mixed at N = 32).
			s.removeEdge(q, c)
		}
		if !s.linkShareLocked(q, c, share) {
			s.linkShareLocked(d, c, share) // put back: it is rehomed when d leaves
			continue
		}
		s.sendParentsLocked(c, now)
		if s.debug() {
			s.log.Debug("child handed over to its parent's holder", "task_id", q.task.id, "peer_id", c.id, "from", d.id, "to", q.id)
		}
	}
}

// refuseLocked takes holder p out of its task and tells the host, in a
// reply acknowledging no batch (applied 0), to stop offering it.
func (is *InventorySession) refuseLocked(p *peer, reason string, now time.Time) {
	s := is.s
	s.removeLocked(p, now)
	s.m.inventoryRefused.Inc()
	err := is.send(&schedulerv1.InventoryReply{Refused: []*schedulerv1.InventoryRefused{{TaskId: p.task.id, Reason: reason}}})
	if err != nil {
		is.cancel(errOverflow)
	}
}

// removeAllLocked takes every holder of the session out of its task.
func (is *InventorySession) removeAllLocked(now time.Time) {
	for _, p := range is.holders {
		if p.state != stateLeft && p.conn == is.conn {
			is.s.removeLocked(p, now)
		}
	}
	clear(is.holders)
	is.holders = nil
}

// compactLocked drops the holders that left from is.holders.
func (is *InventorySession) compactLocked() {
	live := is.holders[:0]
	for _, p := range is.holders {
		if p.state != stateLeft && p.conn == is.conn {
			live = append(live, p)
		}
	}
	clear(is.holders[len(live):])
	is.holders = live
}

// Close ends the session: every holder it added leaves its task (their
// children get new parents at once), as when a peer's Announce stream
// ends. Close may be called more than once.
func (is *InventorySession) Close(now time.Time) {
	defer is.cancel(nil)
	s := is.s
	s.mu.Lock()
	defer s.mu.Unlock()
	id := is.hello.GetHost().GetId()
	if s.inventories[id] == is {
		delete(s.inventories, id)
	}
	if is.closed {
		return
	}
	is.closed = true
	s.m.inventoryStreams.Dec()
	is.removeAllLocked(now)
	s.flushLocked(now)
	s.log.Debug("inventory closed", "host_id", id)
}

// Done is closed when the session ended (replaced, a protocol error, an
// overflowing send, shutdown, or OpenInventory's ctx done).
func (is *InventorySession) Done() <-chan struct{} { return is.ctx.Done() }

// Err is the gRPC status the stream ends with (see Session.Err).
func (is *InventorySession) Err() error {
	if is.ctx.Err() == nil {
		return nil
	}
	return statusFromCause(is.ctx)
}

// Inventory serves one host's inventory stream through an
// InventorySession.
func (svc *service) Inventory(stream schedulerv1.Scheduler_InventoryServer) error {
	s := svc.s
	first, err := stream.Recv()
	if err != nil {
		return firstRecv(err)
	}
	out, send := sendQueue[*schedulerv1.InventoryReply](s.cfg.SendBuffer)
	is, err := s.OpenInventory(stream.Context(), first.GetHello(), send, s.now())
	if err != nil {
		return err
	}
	defer func() { is.Close(s.now()) }()
	return pump(stream, out, func(m *schedulerv1.InventoryMessage) error { return is.Handle(m, s.now()) }, is.Done(), is.Err)
}
