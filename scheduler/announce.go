package scheduler

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
)

var (
	// errPeerFinished ends a stream normally after PeerFailed.
	errPeerFinished = errors.New("peer finished")
	errOverflow     = status.Error(codes.ResourceExhausted, "scheduler send buffer full: peer too slow")
	errReplaced     = status.Error(codes.Aborted, "replaced by a newer registration of the same id")
	errShutdown     = status.Error(codes.Unavailable, "scheduler shutting down")
)

// Announce serves one peer in one task for the life of the stream. This
// goroutine sends; a second one receives and applies messages under the lock.
func (svc *service) Announce(stream schedulerv1.Scheduler_AnnounceServer) error {
	s := svc.s
	first, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	reg := first.GetRegister()
	if reg == nil {
		return status.Error(codes.InvalidArgument, "first message must be Register")
	}
	if err := validateRegister(reg); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}

	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	c := &conn{out: make(chan *schedulerv1.SchedulerMessage, s.cfg.SendBuffer), cancel: cancel}
	now := time.Now()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errShutdown
	}
	if ctx.Err() != nil {
		// The peer hung up already; registering it now could replace a
		// newer registration of the same id.
		s.mu.Unlock()
		return status.FromContextError(ctx.Err()).Err()
	}
	p := s.registerLocked(reg, c, now)
	s.flushLocked(now)
	s.mu.Unlock()
	defer s.leave(p)

	recvDone := make(chan error, 1)
	go func() { recvDone <- s.receive(stream, p) }()
	for {
		select {
		case m := <-c.out:
			if err := stream.Send(m); err != nil {
				return err
			}
		case err := <-recvDone:
			return streamEnd(err)
		case <-ctx.Done():
			return statusFromCause(ctx)
		}
	}
}

// receive applies p's messages until the stream ends or a message is invalid.
func (s *Scheduler) receive(stream schedulerv1.Scheduler_AnnounceServer, p *peer) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		now := time.Now()
		s.mu.Lock()
		err = s.handleLocked(p, m, now)
		s.flushLocked(now)
		s.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// streamEnd turns the error that ended a peer's receive loop into the
// stream's status: nil for a peer that closed its side or finished.
func streamEnd(err error) error {
	switch {
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, errPeerFinished):
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.FromContextError(err).Err()
}

// leave removes p when its stream ends, however it ended.
func (s *Scheduler) leave(p *peer) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.state != stateLeft {
		if s.debug() {
			s.log.Debug("peer left", "task_id", p.task.id, "peer_id", p.id)
		}
		s.removeLocked(p, now)
		s.flushLocked(now)
	}
}

func validateRegister(r *schedulerv1.Register) error {
	switch {
	case r.GetPeerId() == "":
		return fmt.Errorf("register: peer_id is empty: %w", core.ErrInvalid)
	case r.GetHost().GetId() == "":
		return fmt.Errorf("register: host.id is empty: %w", core.ErrInvalid)
	case r.GetTask().GetTaskId() == "":
		return fmt.Errorf("register: task.task_id is empty: %w", core.ErrInvalid)
	case r.GetImported() && !isCacheSpec(r.GetTask()):
		return fmt.Errorf("register: imported is only for dfcache tasks (url dfcache://ID, task_id core.CacheTaskID(ID, tag)): %w", core.ErrInvalid)
	}
	return nil
}

// isCacheSpec reports whether spec names a dfcache entry: content imported
// by a user, with no origin, whose task ID follows from its ID and tag (so a
// claim to be its source can never touch a URL's task).
func isCacheSpec(spec *schedulerv1.TaskSpec) bool {
	id, ok := core.ParseCacheURL(spec.GetUrl())
	return ok && spec.GetTaskId() == core.CacheTaskID(id, spec.GetTag())
}

// hostLocked returns the host of info, created or refreshed.
func (s *Scheduler) hostLocked(info *schedulerv1.Host, now time.Time) *host {
	h := s.hosts[info.GetId()]
	if h == nil {
		h = &host{id: info.GetId(), idleSince: now}
		s.hosts[h.id] = h
	}
	h.info = info
	h.slots = int(info.GetUploadSlots())
	if h.slots <= 0 {
		h.slots = s.cfg.DefaultUploadSlots
	}
	return h
}

func (s *Scheduler) registerLocked(reg *schedulerv1.Register, c *conn, now time.Time) *peer {
	spec := reg.GetTask()
	t := s.tasks[spec.GetTaskId()]
	if t == nil {
		t = newTask(spec.GetTaskId(), now)
		t.cache = isCacheSpec(spec)
		s.tasks[t.id] = t
		s.m.tasks.Inc()
		s.log.Debug("task created", "task_id", t.id)
	}
	// The latest spec wins: its headers (e.g. a fresh token) go to a seed.
	t.spec = spec
	h := s.hostLocked(reg.GetHost(), now)

	if old := t.peers[reg.GetPeerId()]; old != nil {
		s.log.Info("peer re-registered, replacing the old entry", "task_id", t.id, "peer_id", old.id)
		s.removeLocked(old, now)
		old.conn.cancel(errReplaced)
	}
	p := &peer{
		id:                reg.GetPeerId(),
		task:              t,
		host:              h,
		ord:               t.nextOrd,
		lastSeen:          now,
		disableBackSource: reg.GetDisableBackSource(),
		seedRequest:       reg.GetSeedRequest(),
		priority:          reg.GetPriority(),
		conn:              c,
		poolIdx:           -1,
	}
	t.nextOrd++
	t.peers[p.id] = p
	h.peers++
	s.setState(p, statePending)
	for _, n := range reg.GetHave() {
		if t.validPiece(n) {
			p.pieces.set(n)
		}
	}
	s.updatePoolLocked(p)
	s.markDirty(t)
	if t.shapeKnown() {
		s.sendLocked(p, t.infoMessage())
	}
	if s.debug() {
		s.log.Debug("peer registered", "task_id", t.id, "peer_id", p.id, "host_id", h.id,
			"have", p.pieces.count, "seed_request", p.seedRequest)
	}

	if p.priority == schedulerv1.Priority_LEVEL1 {
		s.failLocked(p, "priority LEVEL1: downloading this task is forbidden", now)
		return p
	}
	if reg.GetImported() && t.cache {
		// The importer is the origin of a dfcache entry: trusted for shape
		// and digests exactly like a peer fetching from the origin.
		s.backToSourceLocked(p, "imported: this peer is the source", now)
		return p
	}
	if p.seedRequest {
		t.seedPhase, t.seedPeer = seedRunning, p
		if !othersHaveData(t, p) {
			s.backToSourceLocked(p, "seed peer fetches from the origin", time.Now())
			return p
		}
	}
	s.decideLocked(p, now, true)
	return p
}

func othersHaveData(t *task, p *peer) bool {
	for _, c := range t.pool {
		if c != p {
			return true
		}
	}
	return false
}

// removeLocked takes p out of its task: edges are dropped (freeing slots),
// its children get a fresh decision, and waiting peers get another look so
// that someone else fetches from the origin when the only fetcher left.
func (s *Scheduler) removeLocked(p *peer, now time.Time) {
	if p.state == stateLeft {
		return
	}
	t := p.task
	wasFetcher := p.state == stateBackToSource
	s.unwaitLocked(p)
	s.setState(p, stateLeft)
	s.updatePoolLocked(p)
	s.m.peersLeft.Inc()
	if t.peers[p.id] == p {
		delete(t.peers, p.id)
	}
	children := slices.Clone(p.children)
	for _, c := range children {
		s.removeEdge(p, c)
	}
	// In a pipeline the leaving peer's child takes its place under its
	// parent, whose slot this frees: any other parent would already serve a
	// child and split its uplink.
	var heir *peer
	if len(children) == 1 && children[0].state == stateRunning {
		heir = s.heirParent(p, children[0])
	}
	s.dropParentsLocked(p)
	if heir != nil {
		s.linkLocked(heir, children[0])
	}
	if wasFetcher {
		t.backToSource--
	}
	if t.seedPeer == p {
		s.seedFailedLocked(t, p.host.id)
	}
	p.host.peers--
	if p.host.peers == 0 {
		p.host.idleSince = now
	}
	if len(t.peers) == 0 {
		t.emptySince = now
	}
	for _, c := range children {
		s.decideLocked(c, now, true)
	}
	s.markDirty(t)
}

// handleLocked applies one message from p. A returned error ends p's stream
// with that status.
func (s *Scheduler) handleLocked(p *peer, m *schedulerv1.PeerMessage, now time.Time) error {
	if p.state == stateLeft {
		return nil // replaced or dropped; its stream is closing
	}
	p.lastSeen = now
	switch msg := m.GetMsg().(type) {
	case *schedulerv1.PeerMessage_Register:
		return status.Error(codes.InvalidArgument, "register sent twice on one stream")
	case *schedulerv1.PeerMessage_Meta:
		s.onMetaLocked(p, msg.Meta)
	case *schedulerv1.PeerMessage_Pieces:
		s.onPiecesLocked(p, msg.Pieces)
	case *schedulerv1.PeerMessage_PieceFailed:
		s.onPieceFailedLocked(p, msg.PieceFailed, now)
	case *schedulerv1.PeerMessage_Done:
		s.onDoneLocked(p, msg.Done)
	case *schedulerv1.PeerMessage_Failed:
		s.log.Debug("peer failed", "task_id", p.task.id, "peer_id", p.id, "reason", msg.Failed.GetReason())
		s.removeLocked(p, now)
		return errPeerFinished
	case *schedulerv1.PeerMessage_Reschedule:
		s.onRescheduleLocked(p, msg.Reschedule, now)
	default:
		s.log.Debug("unknown peer message ignored", "task_id", p.task.id, "peer_id", p.id)
	}
	return nil
}

// onMetaLocked records the content's shape, from a fetcher only.
func (s *Scheduler) onMetaLocked(p *peer, m *schedulerv1.TaskMeta) {
	t := p.task
	if p.state != stateBackToSource {
		s.log.Debug("task meta from a peer not fetching from the origin ignored", "task_id", t.id, "peer_id", p.id)
		return
	}
	changed := false
	if m.GetContentLength() >= 0 {
		switch {
		case t.contentLength < 0:
			t.contentLength, changed = m.GetContentLength(), true
		case t.contentLength != m.GetContentLength():
			s.log.Warn("fetchers disagree on content length", "task_id", t.id, "peer_id", p.id,
				"known", t.contentLength, "reported", m.GetContentLength())
		}
	}
	if m.GetPieceSize() > 0 {
		switch {
		case t.pieceSize == 0:
			t.pieceSize, changed = m.GetPieceSize(), true
		case t.pieceSize != m.GetPieceSize():
			s.log.Warn("fetchers disagree on piece size", "task_id", t.id, "peer_id", p.id,
				"known", t.pieceSize, "reported", m.GetPieceSize())
		}
	}
	if changed {
		t.info = nil
		s.broadcastLocked(t, p, t.infoMessage())
	}
}

// broadcastLocked sends msg to every peer of t but except.
func (s *Scheduler) broadcastLocked(t *task, except *peer, msg *schedulerv1.SchedulerMessage) {
	for _, o := range t.peers {
		if o != except {
			s.sendLocked(o, msg)
		}
	}
}

func (s *Scheduler) onPiecesLocked(p *peer, m *schedulerv1.PiecesDone) {
	t := p.task
	// Only a peer the scheduler sent to the origin is trusted for digests,
	// and only for pieces it says came from the origin.
	fetcher := p.state == stateBackToSource
	var fresh []*schedulerv1.PieceDigest
	for _, r := range m.GetPieces() {
		n := r.GetNumber()
		if !t.validPiece(n) {
			s.log.Debug("piece number out of range ignored", "task_id", t.id, "peer_id", p.id, "piece", n)
			continue
		}
		p.pieces.set(n)
		s.m.pieceSuccess.Inc()
		if fetcher && r.GetParentId() == "" && len(r.GetDigest()) > 0 {
			switch old, ok := t.digests[n]; {
			case len(r.GetDigest()) != core.DigestSize:
				s.log.Warn("piece digest of wrong size ignored", "task_id", t.id, "peer_id", p.id, "piece", n)
			case !ok:
				d := bytes.Clone(r.GetDigest())
				t.digests[n] = d
				fresh = append(fresh, &schedulerv1.PieceDigest{Number: n, Digest: d})
			case !bytes.Equal(old, r.GetDigest()):
				s.log.Warn("fetchers disagree on a piece digest; keeping the first", "task_id", t.id, "peer_id", p.id, "piece", n)
			}
		}
		if id := r.GetParentId(); id != "" && id != p.id {
			if par := t.peers[id]; par != nil {
				par.host.successes++
				par.host.observeThroughput(r.GetLength(), r.GetCostNs())
			}
		}
	}
	s.updatePoolLocked(p)
	s.markDirty(t)
	if len(fresh) > 0 {
		t.info = nil
		s.broadcastLocked(t, p, taskInfo(t, fresh))
	}
}

func (s *Scheduler) onPieceFailedLocked(p *peer, m *schedulerv1.PieceFailed, now time.Time) {
	t := p.task
	id := m.GetParentId()
	var par *peer
	if id != "" && id != p.id {
		par = t.peers[id]
	}
	if m.GetCorrupt() {
		s.m.pieceCorrupt.Inc()
	} else {
		s.m.pieceFailed.Inc()
	}
	if par != nil {
		par.host.failures++
	}
	if m.GetCorrupt() && id != "" && id != p.id {
		s.log.Warn("corrupt piece reported", "task_id", t.id, "peer_id", p.id, "parent_id", id, "piece", m.GetNumber())
		s.markBadLocked(p, id, badCorrupt, now)
		if par != nil {
			h := par.host
			h.corrupt++
			if h.corruptBy == nil {
				h.corruptBy = map[string]struct{}{}
			}
			if len(h.corruptBy) < maxCorruptReporters {
				h.corruptBy[p.host.id] = struct{}{}
			}
			s.removeEdge(par, p)
		}
	}
	switch p.state {
	case statePending, stateWaiting, stateRunning, stateFailed:
		s.decideLocked(p, now, true)
	}
}

func (s *Scheduler) markBadLocked(p *peer, id string, kind badKind, now time.Time) {
	if p.bad == nil {
		p.bad = make(map[string]badMark)
	}
	if old, ok := p.bad[id]; ok && old.kind == badCorrupt {
		return // corrupt stays corrupt
	}
	if len(p.bad) < maxBadPerPeer {
		p.bad[id] = badMark{kind: kind, at: now}
	}
}

func (s *Scheduler) onDoneLocked(p *peer, m *schedulerv1.PeerDone) {
	t := p.task
	if p.state == stateSucceeded {
		return
	}
	fetcher := p.state == stateBackToSource
	if fetcher {
		t.backToSource--
	}
	if t.seedPeer == p {
		t.seedPhase, t.seedPeer = seedDone, nil
	}
	s.unwaitLocked(p)
	s.dropParentsLocked(p) // a done peer needs no parents: free their slots
	s.setState(p, stateSucceeded)
	s.updatePoolLocked(p)
	// Like TaskMeta, the length is trusted from a fetcher only.
	if l := m.GetContentLength(); fetcher && l >= 0 && t.contentLength < 0 {
		t.contentLength = l
		t.info = nil
		s.broadcastLocked(t, p, t.infoMessage())
	}
	s.markDirty(t)
	if s.debug() {
		s.log.Debug("peer done", "task_id", t.id, "peer_id", p.id)
	}
}

func (s *Scheduler) onRescheduleLocked(p *peer, m *schedulerv1.Reschedule, now time.Time) {
	t := p.task
	for _, id := range m.GetBadParents() {
		if id == "" || id == p.id {
			continue
		}
		s.markBadLocked(p, id, badFailed, now)
		if par := t.peers[id]; par != nil {
			s.removeEdge(par, p)
		}
	}
	switch p.state {
	case stateSucceeded:
		return
	case stateBackToSource:
		// A fetcher asking for parents gives up its origin slot.
		t.backToSource--
		s.setState(p, statePending)
		s.updatePoolLocked(p)
		s.markDirty(t)
	}
	s.log.Debug("reschedule", "task_id", t.id, "peer_id", p.id, "reason", m.GetReason())
	s.decideLocked(p, now, true)
}

// seedConn is one seed host's open SeedTasks stream.
type seedConn struct {
	host   *host
	out    chan *schedulerv1.SeedTask
	cancel context.CancelCauseFunc
	dead   bool
}

// SeedTasks keeps a seed host connected and pushes it the tasks to seed.
func (svc *service) SeedTasks(req *schedulerv1.SeedTasksRequest, stream schedulerv1.Scheduler_SeedTasksServer) error {
	s := svc.s
	info := req.GetHost()
	if info.GetId() == "" {
		return status.Error(codes.InvalidArgument, "seed tasks: host.id is empty")
	}
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	sc := &seedConn{out: make(chan *schedulerv1.SeedTask, s.cfg.SendBuffer), cancel: cancel}
	now := time.Now()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errShutdown
	}
	sc.host = s.hostLocked(info, now)
	if old := s.seeds[info.GetId()]; old != nil {
		old.dead = true
		old.cancel(errReplaced)
	}
	s.seeds[info.GetId()] = sc
	sc.host.seed = sc
	// A seed peer may unblock peers that were waiting without one.
	for _, t := range s.tasks {
		if len(t.waiting) > 0 {
			s.markDirty(t)
		}
	}
	s.flushLocked(now)
	s.mu.Unlock()
	s.log.Info("seed host connected", "host_id", info.GetId())
	defer s.seedLeft(sc)

	for {
		select {
		case m := <-sc.out:
			if err := stream.Send(m); err != nil {
				return err
			}
		case <-ctx.Done():
			return statusFromCause(ctx)
		}
	}
}

// seedLeft forgets a seed stream; tasks still waiting for that host's seed
// peer may trigger another seed or go to the origin.
func (s *Scheduler) seedLeft(sc *seedConn) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	sc.dead = true
	id := sc.host.id
	if s.seeds[id] != sc {
		return
	}
	delete(s.seeds, id)
	sc.host.seed = nil
	if sc.host.peers == 0 {
		sc.host.idleSince = now
	}
	for _, t := range s.tasks {
		if t.seedPhase == seedTriggered && t.seedHost == id {
			s.seedFailedLocked(t, id)
		}
	}
	s.flushLocked(now)
	s.log.Info("seed host disconnected", "host_id", id)
}

// A host is penalised for every child only once reporters on this many
// different hosts called it corrupt: a single lying reporter must not be able
// to turn the swarm away from an honest host. The reporter itself never gets
// the host back either way.
const (
	corruptReportersToPenalise = 2
	maxCorruptReporters        = 16
)
