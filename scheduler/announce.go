package scheduler

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/identity"
)

// authorizeHost refuses a caller that speaks for a host its certificate
// does not name, or claims to be a seed peer without a seed certificate.
func authorizeHost(ctx context.Context, h *schedulerv1.Host) error {
	if !identity.Allows(ctx, identity.RolePeer, identity.RoleSeed) {
		return status.Error(codes.PermissionDenied, "only peers and seed peers may announce")
	}
	if !identity.OwnsHost(ctx, h.GetId()) {
		id, _ := identity.FromContext(ctx)
		return status.Errorf(codes.PermissionDenied, "host %q is not the caller's (certificate names %q)", h.GetId(), id.HostID)
	}
	if h.GetSeed() && !identity.Allows(ctx, identity.RoleSeed) {
		return status.Error(codes.PermissionDenied, "a peer certificate cannot announce a seed host")
	}
	return nil
}

var (
	// errPeerFinished ends a stream normally after PeerFailed.
	errPeerFinished = errors.New("peer finished")
	errOverflow     = status.Error(codes.ResourceExhausted, "scheduler send buffer full: peer too slow")
	errReplaced     = status.Error(codes.Aborted, "replaced by a newer registration of the same id")
	errShutdown     = status.Error(codes.Unavailable, "scheduler shutting down")
)

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

// authorizeRegister checks what the caller's certificate allows beyond
// announcing for its own host (authorizeHost): only a seed may ask to be sent
// to the origin at once (seed_request), which would otherwise let any peer
// become the trusted source of a task's piece digests.
func (s *Scheduler) authorizeRegister(ctx context.Context, reg *schedulerv1.Register) error {
	if reg.GetSeedRequest() && !identity.Allows(ctx, identity.RoleSeed) {
		s.m.specRefused.Inc()
		s.log.Warn("register refused: seed_request from a caller without the seed role", "task_id", reg.GetTask().GetTaskId(),
			"peer_id", reg.GetPeerId(), "host_id", reg.GetHost().GetId())
		return status.Error(codes.PermissionDenied, "seed_request needs a seed certificate")
	}
	return nil
}

// checkSpec checks that a task's ID follows from its spec and that its URL
// is one the swarm may fetch (core.CheckSwarmURL): a peer registering under
// another task's ID, or with a file:// URL, could otherwise make a seed or a
// back-to-source peer fetch something else and file it under that task.
func checkSpec(spec *schedulerv1.TaskSpec) error {
	return core.CheckSpec(spec.GetTaskId(), spec.GetUrl(), spec.GetDigest(), spec.GetTag(), spec.GetApplication(), spec.GetFilteredQuery(), spec.GetHeaders())
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
	h.info = effectiveHost(info)
	if info.GetLinkUploadBps() > 0 && linkDialable(info) {
		s.linkSeenLocked(info, now) // it answers link tests
	}
	h.linkOnly = info.GetUploadBps() <= 0 && h.info.GetUploadBps() > 0
	h.linkDown = info.GetDownloadBps() <= 0 && h.info.GetDownloadBps() > 0
	h.slots = int(info.GetUploadSlots())
	if h.slots <= 0 {
		h.slots = s.cfg.DefaultUploadSlots
	}
	return h
}

// taskLocked returns the task spec names, created when new.
func (s *Scheduler) taskLocked(spec *schedulerv1.TaskSpec, now time.Time) *task {
	t := s.tasks[spec.GetTaskId()]
	if t == nil {
		t = newTask(spec.GetTaskId(), now)
		t.cache = isCacheSpec(spec)
		t.spec = spec
		s.tasks[t.id] = t
		t.listIdx = len(s.taskList)
		s.taskList = append(s.taskList, t)
		s.m.tasks.Inc()
		s.log.Debug("task created", "task_id", t.id)
	}
	return t
}

func (s *Scheduler) registerLocked(reg *schedulerv1.Register, c *conn, now time.Time) *peer {
	spec := reg.GetTask()
	t := s.taskLocked(spec, now)
	// The latest spec wins: its headers (e.g. a fresh token) go to a seed.
	t.spec = spec
	h := s.hostLocked(reg.GetHost(), now)
	if spec.GetPrivate() && !t.private {
		s.makePrivateLocked(t, now)
	}

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
		verified:          reg.GetOriginVerified(),
		priority:          reg.GetPriority(),
		conn:              c,
		poolIdx:           -1,
		waitIdx:           -1,
		openIdx:           -1,
	}
	t.nextOrd++
	t.addPeer(p)
	s.counters.registrations++
	h.peers++
	s.m.registered(h.info.GetSeed())
	s.setState(p, statePending)
	for _, n := range reg.GetHave() {
		if t.validPiece(n) {
			p.pieces.set(n)
		}
	}
	s.updatePoolLocked(p) // marks t dirty when p holds pieces
	if len(t.list) <= capacitySmallTask {
		s.updateRateLocked(t, now)
	}
	if t.private && p.verified {
		s.grantLocked(p, now)
	}
	if t.shapeKnown() && (!t.private || p.verified) {
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
	if p.seedRequest && (!t.private || p.verified) && !s.excludedLocked(t, p.host, now) {
		t.seedPhase, t.seedPeer = seedRunning, p
		if t.suspect != nil || !othersHaveData(t, p) || t.unverifiable() {
			s.backToSourceLocked(p, "seed peer fetches from the origin", now)
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
	if len(p.host.handover) > 0 {
		p.host.handover = slices.DeleteFunc(p.host.handover, func(q *peer) bool { return q == p })
	}
	s.unwaitLocked(p)
	s.setState(p, stateLeft)
	s.updatePoolLocked(p)
	s.m.peersLeft.Inc()
	t.removePeer(p)
	children := slices.Clone(p.children)
	var main []*peer // children with the whole uplink: not paced
	for _, c := range children {
		if !pacedChild(p, c) {
			main = append(main, c)
		}
	}
	for _, c := range children {
		s.removeEdge(p, c)
	}
	// In a pipeline the leaving peer's child takes its place under its
	// parent, whose slot this frees: any other parent would already serve a
	// child and split its uplink.
	var heir *peer
	if len(main) == 1 && main[0].state == stateRunning {
		heir = s.heirParent(p, main[0])
	}
	s.dropParentsLocked(p)
	if heir != nil {
		s.linkLocked(heir, main[0])
	}
	if wasFetcher {
		t.backToSource--
	}
	if t.seedPeer == p {
		s.seedFailedLocked(t, p.host.id)
	}
	if is := p.conn.inv; is != nil {
		is.live--
		t.holders--
		s.m.inventoryHolders.Dec()
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
	if !p.stalledAt.IsZero() {
		// It speaks: whatever stalled it, it is alive.
		p.stalledAt = time.Time{}
		s.touchOpenLocked(p)
		if p.poolIdx >= 0 {
			s.markDirty(p.task)
		}
	}
	switch msg := m.GetMsg().(type) {
	case *schedulerv1.PeerMessage_Register:
		return status.Error(codes.InvalidArgument, "register sent twice on one stream")
	case *schedulerv1.PeerMessage_Meta:
		s.onMetaLocked(p, msg.Meta)
	case *schedulerv1.PeerMessage_Pieces:
		s.onPiecesLocked(p, msg.Pieces, now)
	case *schedulerv1.PeerMessage_PieceFailed:
		s.onPieceFailedLocked(p, msg.PieceFailed, now)
	case *schedulerv1.PeerMessage_Done:
		s.onDoneLocked(p, msg.Done, now)
	case *schedulerv1.PeerMessage_Failed:
		s.log.Debug("peer failed", "task_id", p.task.id, "peer_id", p.id, "reason", msg.Failed.GetReason())
		s.removeLocked(p, now)
		return errPeerFinished
	case *schedulerv1.PeerMessage_Reschedule:
		s.onRescheduleLocked(p, msg.Reschedule, now)
	case *schedulerv1.PeerMessage_ContentCorrupt:
		s.onContentCorruptLocked(p, msg.ContentCorrupt, now)
	default:
		s.log.Debug("unknown peer message ignored", "task_id", p.task.id, "peer_id", p.id)
	}
	return nil
}

// onMetaLocked records the content's shape, from a fetcher only.
func (s *Scheduler) onMetaLocked(p *peer, m *schedulerv1.TaskMeta) {
	t := p.task
	if p.state != stateBackToSource || t.accused(p.host) {
		// Not trusted as it is; a holder's claim (restore.go) at most.
		s.claimMetaLocked(p, m)
		return
	}
	if p.host.info.GetSeed() {
		p.ownUplink = !m.GetOriginOnHost()
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
		s.broadcastInfoLocked(t, p, t.infoMessage())
	}
}

// broadcastInfoLocked sends a TaskInfo to every peer of t but except; in a
// private task only to the peers taking part in it.
func (s *Scheduler) broadcastInfoLocked(t *task, except *peer, msg *schedulerv1.SchedulerMessage) {
	for _, o := range t.list {
		if o != except && (!t.private || o.verified) {
			s.sendLocked(o, msg)
		}
	}
}

func (s *Scheduler) onPiecesLocked(p *peer, m *schedulerv1.PiecesDone, now time.Time) {
	t := p.task
	// Only a peer the scheduler sent to the origin is trusted for digests,
	// and only for pieces it says came from the origin.
	fetcher := p.state == stateBackToSource && !t.accused(p.host)
	var fresh []*schedulerv1.PieceDigest
	claimed := false
	var probe *peer // a seed whose uplink is probed, when p reported pieces from it
	for _, r := range m.GetPieces() {
		n := r.GetNumber()
		if !t.validPiece(n) {
			s.log.Debug("piece number out of range ignored", "task_id", t.id, "peer_id", p.id, "piece", n)
			continue
		}
		if p.pieces.set(n) { // new: traffic counted once per piece
			p.host.downloadBytes += int64(r.GetLength())
			p.gotBytes += float64(r.GetLength())
			if r.GetParentId() == "" {
				s.counters.originBytes += int64(r.GetLength())
			} else {
				s.counters.peerBytes += int64(r.GetLength())
				s.counters.observeLatency(r.GetCostNs())
			}
		}
		s.m.pieceSuccess.Inc()
		s.m.pieceReported(r.GetParentId() == "", r.GetCostNs())
		if fetcher && r.GetParentId() == "" && len(r.GetDigest()) > 0 {
			switch old, ok := t.digests[n]; {
			case len(r.GetDigest()) != core.DigestSize:
				s.log.Warn("piece digest of wrong size ignored", "task_id", t.id, "peer_id", p.id, "piece", n)
			case !ok:
				d := bytes.Clone(r.GetDigest())
				t.digests[n] = d
				t.digestHost[n] = p.host.id
				fresh = append(fresh, &schedulerv1.PieceDigest{Number: n, Digest: d})
				if t.suspect != nil && !t.reporter(p.host) {
					s.checkSuspectLocked(t, n, d, p, now)
				}
			case !bytes.Equal(old, r.GetDigest()):
				s.log.Warn("fetchers disagree on a piece digest; keeping the first", "task_id", t.id, "peer_id", p.id, "piece", n)
			}
		} else if !fetcher && r.GetParentId() == "" && len(r.GetDigest()) > 0 {
			claimed = s.claimDigestLocked(p, n, r.GetDigest()) || claimed
		}
		if id := r.GetParentId(); id != "" && id != p.id {
			if par := t.peers[id]; par != nil {
				par.host.successes++
				par.host.uploadBytes += int64(r.GetLength())
				k := parentIndex(p, par)
				if k >= 0 {
					p.parents[k].sent += float64(r.GetLength())
				}
				if par.host.info.GetSeed() && !s.slowHost(p, now) {
					// (Bytes to a slow leaf go no further: they do not
					// count as the content sent once.)
					t.seedSent += int64(r.GetLength())
				}
				// A piece over a paced edge went out beside the parent's
				// main child, sharing its uplink while it lasted: its rate
				// says nothing of what the host can give one child, and
				// counted, it would get fast relays replaced as slow.
				// (pacedChild(par, p), from the link found above.)
				if paced := k >= 0 && p.parents[k].share > 0; !paced && !downlinkBound(p) {
					par.host.observeThroughput(r.GetLength(), r.GetCostNs())
					if s.probing(par) {
						probe = par
						p.probe.add(float64(r.GetLength()), float64(r.GetCostNs()), &par.host.probe, now)
					}
				}
			}
		}
	}
	if probe != nil && p.state != stateLeft {
		// After the pieces: a step may move p itself.
		s.probeLocked(probe, p, now)
	}
	// A new piece of a peer already in the pool changes nothing a waiting
	// peer could use; marking the task dirty on every report re-decided
	// every waiting peer per piece (O(waiting) per event).
	s.updatePoolLocked(p) // marks t dirty when p joins the pool
	if len(fresh) > 0 {
		s.markDirty(t) // trusted digests: unverifiable tasks may move on
		t.info = nil
		s.broadcastInfoLocked(t, p, taskInfo(t, fresh))
	}
	if claimed {
		s.restoreTrustLocked(p, now)
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

func (s *Scheduler) onDoneLocked(p *peer, m *schedulerv1.PeerDone, now time.Time) {
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
	if len(p.children) > 0 {
		// Its host's holder takes its children, now if the inventory
		// entry came first, else when it comes (handoverLocked).
		s.handoverLocked(nil, p, now)
		if len(p.children) > 0 {
			p.host.handover = append(p.host.handover, p)
		}
	}
	s.updatePoolLocked(p)
	// Like TaskMeta, the length is trusted from a fetcher only.
	if l := m.GetContentLength(); fetcher && !t.accused(p.host) && l >= 0 && t.contentLength < 0 {
		t.contentLength = l
		t.info = nil
		s.broadcastInfoLocked(t, p, t.infoMessage())
	}
	if fetcher && t.suspect != nil && !t.accused(p.host) && !t.reporter(p.host) {
		s.clearSuspectLocked(t, p, now)
	}
	s.markDirty(t)
	if s.debug() {
		s.log.Debug("peer done", "task_id", t.id, "peer_id", p.id)
	}
}

func (s *Scheduler) onRescheduleLocked(p *peer, m *schedulerv1.Reschedule, now time.Time) {
	t := p.task
	var spliced []*peer
	for _, id := range m.GetBadParents() {
		if id == "" || id == p.id {
			continue
		}
		s.markBadLocked(p, id, badFailed, now)
		par := t.peers[id]
		if par == nil || !s.removeEdge(par, p) {
			continue
		}
		// A downloading parent that stalled for its child and has not
		// reported a piece for stallSilence is likely dead (a host gone
		// without closing its stream) or cut off: until it speaks again
		// nobody else is sent to it either. One that spoke lately is
		// alive, whatever the report says: a lone reporter cannot turn
		// the swarm away from it.
		if (par.state == stateRunning || par.state == stateBackToSource) && now.Sub(par.lastSeen) >= stallSilence {
			par.stalledAt = now
			s.touchOpenLocked(par)
		}
		// In a pipeline a stalled parent is spliced out as a slow one is
		// (replaceSlowParentsLocked): p takes its place under its own
		// parent at once, whose uplink it then has whole, and the stalled
		// peer, left without children, goes to the tail. Any other parent
		// would already serve a child and split its uplink.
		if gp := s.heirParent(par, p); gp != nil && len(par.children) == 0 && par.state == stateRunning &&
			p.state == stateRunning && !s.excludedLocked(t, gp.host, now) {
			s.removeEdge(gp, par)
			if s.linkLocked(gp, p) {
				spliced = append(spliced, par)
			} else {
				s.linkLocked(gp, par) // put back: the chain stays as it was
			}
		}
	}
	defer func() {
		for _, par := range spliced {
			s.decideLocked(par, now, true)
		}
	}()
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

// seedConn is one seed host's open seed session (SeedTasks stream). send
// must not block (see conn).
type seedConn struct {
	host   *host
	send   func(*schedulerv1.SeedTask) error
	cancel context.CancelCauseFunc
	dead   bool
}

// A host is penalised for every child only once reporters on this many
// different hosts called it corrupt: a single lying reporter must not be able
// to turn the swarm away from an honest host. The reporter itself never gets
// the host back either way.
const (
	corruptReportersToPenalise = 2
	maxCorruptReporters        = 16
)

// downlinkBound reports whether p's own downlink, as its host declared it
// or its link tests measured it, is below half its task's rate: its pieces
// come at its downlink's pace, which tells nothing of its parents'
// uplinks. (Half: a link test is only as fast as the partner's uplink, and
// a host tested by slower partners still tells its parents' rates.)
// Counted, the pieces of a child 2 Mbit/s down had the 25 Mbit/s relay
// above it, in a pipeline of six, replaced as slow (the simulator's mixed
// with slow downlinks, N = 8): the relay's next child moved up beside it,
// and the pipeline below ran at half its rate.
func downlinkBound(p *peer) bool {
	r := p.task.rate
	if r <= 0 {
		return false
	}
	d := p.host.info.GetDownloadBps()
	if d <= 0 {
		d = p.host.info.GetLinkDownloadBps()
	}
	return d > 0 && float64(d) < r/2
}
