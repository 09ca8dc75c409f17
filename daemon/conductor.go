package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"github.com/damselfly-io/damselfly/api/peerv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon/fetch"
	"github.com/damselfly-io/damselfly/daemon/piece"
	"github.com/damselfly-io/damselfly/daemon/store"
)

// conductor runs one task on this daemon: it executes the decisions of the
// task's download core (fetch.Core) — the scheduler stream, the parents'
// piece streams, piece transfers, origin fetches, metrics — and after
// completion keeps the task announced so others can use this daemon as a
// parent. The download state is the core's and the run goroutine's;
// workers report back through events.
type conductor struct {
	d      *Daemon
	req    taskRequest
	id     string
	peerID string
	log    *slog.Logger
	task   *store.Task
	limit  *rate.Limiter // this download's own limit, nil for none
	// stretched: the core's StretchedWaits already logged.
	stretched int
	// cache: a dfcache entry; there is no origin, and a daemon holding it
	// complete announces itself as its source (Register.imported).
	cache bool
	// swarm: the URL's scheme may enter the swarm (core.SwarmScheme); a
	// task of any other is fetched for the local caller only and never
	// announced.
	swarm bool
	// local: a file:// URL. It is read on this host through the local
	// caller's descriptor and never shared with the swarm: another host's
	// file of that name is other content, and this one may be private.
	local bool
	// token is the piece token for a private task (see PieceAccess).
	token atomic.Value // string

	done   chan struct{} // closed when the content is complete or failed
	err    error         // valid once done is closed
	exited chan struct{}

	peerBytes   atomic.Int64
	originBytes atomic.Int64
	fromCache   atomic.Bool
	// originOnHost: an origin fetch of this task found the origin sharing
	// this host's uplink (noteOrigin); originNoted: one was checked.
	originOnHost atomic.Bool
	originNoted  atomic.Bool

	// fallbackReason is why P2P was given up for the origin ("" if not).
	fallbackReason atomic.Pointer[string]
	// streaming: a reader consumes the content in order, so pieces are
	// picked near-sequentially instead of rarest first.
	streaming atomic.Bool

	events chan any

	// scheduler session
	stream       schedulerv1.Scheduler_AnnounceClient
	streamCancel context.CancelFunc
	sendMu       sync.Mutex
	schedAddr    string // the scheduler of the open Announce stream
	rnd          *rand.Rand

	// download state (run goroutine)
	fc        *fetch.Core
	infos     map[string]*schedulerv1.PeerInfo // the scheduler's latest word on each parent
	parents   map[string]*parentConn
	fetches   map[uint64]context.CancelFunc // requests in flight by number
	timer     *time.Timer
	streamed  bool  // the streaming mode the core was last told
	result    error // set with ended
	ended     bool
	originRun bool
}

// parentConn is a parent the core chose to connect to.
type parentConn struct {
	info   *schedulerv1.PeerInfo
	addr   string // upload address
	cancel context.CancelFunc
}

// events
type (
	evSched    struct{ m *schedulerv1.SchedulerMessage }
	evSchedErr struct{ err error }
	evParent   struct {
		id  string
		pc  *parentConn // the connection it came from: a newer one replaces it
		st  *peerv1.PieceState
		err error
	}
	evPiece struct {
		n      uint32
		parent string
		req    uint64
		size   int64
		start  time.Time
		end    time.Time
		err    error
	}
	evOriginPiece struct {
		n    uint32
		size int
		cost time.Duration // from asking for the piece to holding it
	}
	evOriginShape struct{}
	evOriginDone  struct{ err error }
)

func newConductor(d *Daemon, r taskRequest, hostname string) *conductor {
	c := &conductor{
		d:       d,
		req:     r,
		id:      r.spec.GetTaskId(),
		peerID:  core.NewPeerID(hostname),
		done:    make(chan struct{}),
		exited:  make(chan struct{}),
		events:  make(chan any, 256),
		parents: map[string]*parentConn{},
		infos:   map[string]*schedulerv1.PeerInfo{},
		fetches: map[uint64]context.CancelFunc{},
		rnd:     rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
	}
	c.log = d.log.With("task_id", c.id, "peer_id", c.peerID)
	_, c.cache = core.ParseCacheURL(r.spec.GetUrl())
	c.local = store.IsLocalURL(r.spec.GetUrl())
	c.swarm = !c.local && core.CheckSwarmURL(r.spec.GetUrl()) == nil
	if r.rateLimit > 0 {
		c.limit = piece.NewLimiter(r.rateLimit)
	}
	return c
}

// downlink is what this download may receive in bytes/s as far as the
// daemon knows (Daemon.downlink, and this download's own rate limit); 0
// when unknown.
func (c *conductor) downlink() int64 {
	d := c.d.downlink()
	if r := c.req.rateLimit; r > 0 && (d == 0 || r < d) {
		d = r
	}
	return d
}

// fetchConfig is the download core's configuration for this task.
func (c *conductor) fetchConfig() fetch.Config {
	dc := c.d.cfg.Download
	p := c.req.priority
	return fetch.Config{
		TaskID:            c.id,
		PeerID:            c.peerID,
		ConcurrentPieces:  dc.ConcurrentPieces,
		PerParentRequests: dc.PerParentRequests,
		MinStall:          dc.MinStallTimeout.D(),
		MaxStall:          dc.MaxStallTimeout.D(),
		SwarmTimeout:      dc.SwarmTimeout.D(),
		ParentFailures:    dc.ParentFailures,
		ReportDelay:       dc.ReportInterval.D(),
		Downlink:          float64(c.downlink()),
		NoOrigin:          c.req.disableBackSource,
		Cache:             c.cache,
		Local:             c.local,
		// The level forbids this download or its trip to the origin.
		FailIsFinal: p == schedulerv1.Priority_LEVEL1 || p == schedulerv1.Priority_LEVEL2,
		Rand:        rand.New(rand.NewPCG(c.rnd.Uint64(), c.rnd.Uint64())),
	}
}

func (c *conductor) finish(err error) {
	select {
	case <-c.done:
		return
	default:
	}
	c.err = err
	outcome, src := "success", "peer"
	if err != nil {
		outcome = "failure"
	}
	switch {
	case c.fromCache.Load():
		src = "cache"
	case c.originBytes.Load() > c.peerBytes.Load():
		src = "origin"
	case err != nil && c.peerBytes.Load() == 0:
		src = "none" // failed before any byte arrived
	}
	// Cache hits are counted per request by the local API.
	if !c.req.fromCache && src != "cache" {
		c.d.metrics.downloads.WithLabelValues(outcome, core.FailureReason(err), src).Inc()
	}
	// Counted before the waiters are released: a client that reads the
	// metrics right after its download returned must find it (a CI run
	// of TestDownloadMetricsReasonAndOriginPieces did not).
	close(c.done)
}

func (c *conductor) run(ctx context.Context) {
	defer close(c.exited)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer c.closeStream()
	t := c.task
	if t.Complete() {
		c.fromCache.Store(true)
		c.finish(nil)
	} else {
		c.d.inflight.Add(1)
		err := c.download(ctx)
		c.d.downloadEnded()
		if err != nil {
			c.log.Warn("download failed", "err", err)
		} else {
			c.log.Info("download complete", "peer_bytes", c.peerBytes.Load(), "origin_bytes", c.originBytes.Load())
		}
		c.finish(err)
		if err != nil {
			if c.stream != nil {
				c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Failed{Failed: &schedulerv1.PeerFailed{Reason: err.Error()}}})
				c.endStream(ctx, streamDrain)
			}
			return
		}
	}
	if c.d.p2p() && c.swarm {
		// A download that showed the origin grants it the content
		// (origin_verified: an s3 object through a seed's own bucket) may
		// serve the task if it turns private, with piece tokens the
		// scheduler sends per task: it keeps its own stream, as private
		// tasks do.
		if inv := c.d.inventory(); inv != nil && inventoried(t) && !c.req.verified {
			// The host's inventory announces it from now on. This
			// download's own stream (its peer, done) stays until the
			// inventory's entry is in, so that its children and newcomers
			// never find the task without this host.
			applied := inv.add(t)
			if c.stream != nil {
				timer := time.NewTimer(inventoryHandover)
				defer timer.Stop()
				select {
				case <-applied:
				case <-timer.C:
				case <-ctx.Done():
				}
				c.endStream(ctx, streamDrain)
			}
			return
		}
		c.serve(ctx)
	}
}

// streamDrain bounds how long a download that is done with its Announce
// stream waits for the scheduler to end it (endStream).
const streamDrain = 2 * time.Second

// inventoryHandover bounds how long a finished download keeps its Announce
// stream while the inventory takes the task over.
const inventoryHandover = 10 * time.Second

// download runs until the task is complete, or fails.
func (c *conductor) download(ctx context.Context) error {
	c.fc = fetch.New(c.fetchConfig())
	c.timer = time.NewTimer(time.Hour)
	c.timer.Stop()
	defer c.timer.Stop()
	defer c.dropParents()
	defer c.cancelFetches()

	origin := ""
	switch {
	case c.local:
		origin = "local_file"
	case !c.swarm:
		origin = "local_only"
	case !c.d.p2p():
		origin = "no_scheduler"
	default:
		if err := c.announce(ctx); err != nil {
			c.log.Warn("scheduler unreachable", "err", err)
			origin = "scheduler_unreachable"
		}
	}
	l, ps := c.task.Shape()
	c.step(ctx, fetch.EvStart{Length: l, PieceSize: ps, Held: c.task.Pieces(), Trusted: c.trustedPieces(), Origin: origin})
	for !c.ended {
		if s := c.streaming.Load(); s != c.streamed {
			c.streamed = s
			c.step(ctx, fetch.EvStreaming{On: s})
			continue
		}
		select {
		case <-ctx.Done():
			return errClosed
		case ev := <-c.events:
			c.handle(ctx, ev)
		case <-c.timer.C:
			c.step(ctx, fetch.EvTick{})
		}
		if len(c.events) == 0 && !c.ended {
			// Idle: report now. Under load events queue up and reports batch.
			c.step(ctx, fetch.EvFlush{})
		}
	}
	return c.result
}

// trustedPieces lists the pieces whose trusted digests the cache holds.
func (c *conductor) trustedPieces() []uint32 {
	var out []uint32
	for n, d := range c.task.Meta().PieceDigests {
		if len(d) == core.DigestSize {
			out = append(out, uint32(n))
		}
	}
	return out
}

// step feeds one event to the download core and executes its actions.
func (c *conductor) step(ctx context.Context, ev fetch.Event) {
	c.exec(ctx, c.fc.Step(time.Now(), ev))
	if n := c.fc.StretchedWaits(); n > c.stretched {
		c.stretched = n
		c.log.Info("the swarm went on after a wait longer than swarm_timeout: the content's source brings its pieces slowly, and leaving for the origin would only load what it waits on",
			"swarm_timeout", c.d.cfg.Download.SwarmTimeout.D(), "times", n)
	}
}

func (c *conductor) end(err error) {
	if !c.ended {
		c.ended, c.result = true, err
	}
}

func (c *conductor) handle(ctx context.Context, ev any) {
	switch e := ev.(type) {
	case evSched:
		c.handleSched(ctx, e.m)
	case evSchedErr:
		if c.fc.Mode() == fetch.ModeSwarm {
			c.log.Warn("scheduler stream lost; fetching the rest from the origin", "err", e.err)
		}
		c.stream = nil // keep fetching; nobody to report to
		c.step(ctx, fetch.EvSchedulerLost{Err: e.err})
	case evParent:
		if pc, ok := c.parents[e.id]; !ok || pc != e.pc {
			// A connection dropped since: the parent left the set, or
			// left and came back in one burst of parent sets, and this
			// is the old stream's end (context canceled), not the
			// parent's. Taken as the new one's, it made the peer report
			// a live parent gone and be decided again.
			return
		}
		if e.err != nil {
			c.log.Debug("parent gone", "parent", e.id, "err", e.err)
			c.step(ctx, fetch.EvParentGone{Parent: e.id, Err: e.err})
			return
		}
		src := e.st.GetSourceBytes()
		if src > 0 {
			// passed on to this daemon's own children (SyncPieces)
			c.task.NoteSourceBytes(src)
		}
		c.step(ctx, fetch.EvParentPieces{Parent: e.id, Pieces: e.st.GetPieces(), Relaying: e.st.GetRelaying(), Done: e.st.GetDone(), SourceBytes: src})
	case evPiece:
		c.handlePiece(ctx, e)
	case evOriginPiece:
		c.step(ctx, fetch.EvOriginPiece{Piece: e.n, Bytes: int64(e.size), Cost: e.cost})
	case evOriginShape:
		l, ps := c.task.Shape()
		c.step(ctx, fetch.EvOriginShape{Length: l, PieceSize: ps})
	case evOriginDone:
		c.originRun = false
		c.step(ctx, fetch.EvOriginDone{Err: e.err})
	}
}

func (c *conductor) handleSched(ctx context.Context, m *schedulerv1.SchedulerMessage) {
	switch x := m.Msg.(type) {
	case *schedulerv1.SchedulerMessage_TaskInfo:
		ti := x.TaskInfo
		if ti.GetPieceSize() > 0 {
			if err := c.task.SetShape(ti.GetContentLength(), ti.GetPieceSize()); err != nil {
				c.end(fmt.Errorf("scheduler task info: %w", err))
				return
			}
		}
		ds := make(map[uint32][]byte, len(ti.GetDigests()))
		trusted := make([]uint32, 0, len(ti.GetDigests()))
		for _, d := range ti.GetDigests() {
			if len(d.GetDigest()) == core.DigestSize {
				ds[d.GetNumber()] = d.GetDigest()
				trusted = append(trusted, d.GetNumber())
			}
		}
		c.task.SetDigests(ds)
		l, ps := c.task.Shape()
		c.step(ctx, fetch.EvTaskInfo{Length: l, PieceSize: ps, Trusted: trusted})
	case *schedulerv1.SchedulerMessage_Parents:
		var ps []fetch.Parent
		for _, p := range x.Parents.GetParents() {
			if p.GetHost() == nil {
				continue
			}
			ps = append(ps, fetch.Parent{ID: p.GetPeerId(), Host: p.GetHost().GetId(), Seed: p.GetHost().GetSeed(), UploadBps: float64(p.GetHost().GetUploadBps()), ShareBps: float64(p.GetShareBps())})
			c.infos[p.GetPeerId()] = p
		}
		if c.log.Enabled(ctx, slog.LevelDebug) {
			c.log.Debug("parents", "parents", parentsLog(ps))
		}
		c.step(ctx, fetch.EvParents{Parents: ps})
	case *schedulerv1.SchedulerMessage_BackToSource:
		if c.fc.Mode() == fetch.ModeSwarm && !c.cache {
			c.log.Info("fetching from the origin", "reason", x.BackToSource.GetReason())
		}
		c.step(ctx, fetch.EvBackToSource{Reason: x.BackToSource.GetReason()})
	case *schedulerv1.SchedulerMessage_Wait:
		c.log.Debug("scheduler says wait", "reason", x.Wait.GetReason())
		c.step(ctx, fetch.EvWait{Reason: x.Wait.GetReason()})
	case *schedulerv1.SchedulerMessage_Access:
		c.onAccess(x.Access)
	case *schedulerv1.SchedulerMessage_UploadBudget:
		c.d.adviseUploadBudget(x.UploadBudget.GetBps())
	case *schedulerv1.SchedulerMessage_Fail:
		c.log.Warn("scheduler gave up on the task", "reason", x.Fail.GetReason())
		c.step(ctx, fetch.EvFail{Reason: x.Fail.GetReason()})
	}
}

func (c *conductor) handlePiece(ctx context.Context, e evPiece) {
	delete(c.fetches, e.req)
	if e.err == nil {
		c.d.pm.PieceDuration.WithLabelValues("peer").Observe(e.end.Sub(e.start).Seconds())
		c.peerBytes.Add(e.size)
		if c.log.Enabled(ctx, slog.LevelDebug) {
			c.log.Debug("piece received", "piece", e.n, "parent", c.infos[e.parent].GetHost().GetId(), "bytes", e.size, "ms", e.end.Sub(e.start).Milliseconds())
		}
		c.step(ctx, fetch.EvPieceDone{Parent: e.parent, Piece: e.n, Bytes: e.size, Start: e.start, End: e.end, Req: e.req})
		return
	}
	if ctx.Err() != nil {
		return
	}
	c.step(ctx, fetch.EvPieceFailed{Parent: e.parent, Piece: e.n, Kind: failureKind(e.err), Err: e.err, Req: e.req})
}

// failureKind classifies a piece transfer's error for the download core.
func failureKind(err error) fetch.Kind {
	switch {
	case errors.Is(err, core.ErrNoSpace):
		return fetch.KindNoSpace
	case errors.Is(err, core.ErrDigestMismatch):
		return fetch.KindCorrupt
	case errors.Is(err, core.ErrNotFound):
		return fetch.KindNotFound
	case errors.Is(err, piece.ErrStalled):
		return fetch.KindTimeout
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED):
		return fetch.KindConnLost
	default:
		return fetch.KindError
	}
}

// exec carries out the download core's actions.
func (c *conductor) exec(ctx context.Context, acts []fetch.Action) {
	for _, a := range acts {
		switch a := a.(type) {
		case fetch.ActConnect:
			c.connect(ctx, a.Parent.ID)
		case fetch.ActDisconnect:
			if p, ok := c.parents[a.Parent]; ok {
				p.cancel()
				delete(c.parents, a.Parent)
			}
			delete(c.infos, a.Parent) // a new parent set brings it back
		case fetch.ActRequest:
			c.request(ctx, a)
		case fetch.ActCancel:
			if cancel, ok := c.fetches[a.Req]; ok {
				cancel()
			}
		case fetch.ActReport:
			batch := make([]*schedulerv1.PieceResult, 0, len(a.Pieces))
			for _, r := range a.Pieces {
				pr := &schedulerv1.PieceResult{Number: r.Piece, ParentId: r.Parent, Length: uint32(r.Bytes), CostNs: r.Cost.Nanoseconds()}
				if r.Parent == "" {
					pr.Digest, _ = c.task.PieceDigest(r.Piece)
				}
				batch = append(batch, pr)
			}
			c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Pieces{Pieces: &schedulerv1.PiecesDone{Pieces: batch}}})
		case fetch.ActPieceFailed:
			reason := "error"
			switch a.Kind {
			case fetch.KindCorrupt:
				reason = "corrupt"
			case fetch.KindNotFound:
				reason = "not_found"
			}
			c.d.pm.PieceFailures.WithLabelValues(reason).Inc()
			c.log.Debug("piece failed", "piece", a.Piece, "parent", a.Parent, "err", a.Reason)
			if a.Corrupt {
				c.log.Warn("parent served corrupt piece; avoiding it", "parent", a.Parent, "piece", a.Piece)
			}
			c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_PieceFailed{PieceFailed: &schedulerv1.PieceFailed{
				Number: a.Piece, ParentId: a.Parent, Reason: a.Reason, Corrupt: a.Corrupt}}})
		case fetch.ActReschedule:
			c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Reschedule{Reschedule: &schedulerv1.Reschedule{BadParents: a.Bad, Reason: a.Reason}}})
		case fetch.ActSendMeta:
			c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Meta{Meta: &schedulerv1.TaskMeta{
				ContentLength: a.Length, PieceSize: a.PieceSize, OriginOnHost: c.originOnHost.Load()}}})
		case fetch.ActContentCorrupt:
			c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_ContentCorrupt{ContentCorrupt: &schedulerv1.ContentCorrupt{Reason: a.Reason}}})
		case fetch.ActStartOrigin:
			if a.Fallback {
				c.fallbackReason.Store(&a.Reason)
				c.log.Warn("fetching the missing pieces from the origin", "reason", a.Reason, "ranges", len(a.Ranges))
			}
			if a.Reason != fetch.ReasonRest {
				c.d.metrics.backSource.WithLabelValues(a.Reason).Inc()
			}
			c.startOrigin(ctx, a.Ranges)
		case fetch.ActReset:
			c.log.Warn("content failed its digest although every piece matched the scheduler's digests; fetching it again from the origin")
			if err := c.task.Reset(); err != nil {
				c.end(fmt.Errorf("task %s: reset after a digest failure: %w", c.id, err))
			}
		case fetch.ActSetTimer:
			c.timer.Stop()
			if !a.At.IsZero() {
				c.timer.Reset(max(time.Until(a.At), 0))
			}
		case fetch.ActComplete:
			c.complete(ctx)
		case fetch.ActFailed:
			c.end(a.Err)
		}
		if c.ended {
			return
		}
	}
}

func (c *conductor) connect(ctx context.Context, id string) {
	info := c.infos[id]
	if info == nil {
		return
	}
	h := info.GetHost()
	pctx, cancel := context.WithCancel(ctx)
	pc := &parentConn{
		info:   info,
		addr:   uploadAddr(h),
		cancel: cancel,
	}
	c.parents[id] = pc
	go c.syncParent(pctx, id, pc, net.JoinHostPort(h.GetIp(), strconv.Itoa(int(h.GetPeerPort()))))
}

func (c *conductor) dropParents() {
	for id, p := range c.parents {
		p.cancel()
		delete(c.parents, id)
	}
}

func (c *conductor) cancelFetches() {
	for _, cancel := range c.fetches {
		cancel()
	}
}

// syncParent follows the parent's piece set until ctx ends.
func (c *conductor) syncParent(ctx context.Context, id string, pc *parentConn, addr string) {
	conn, err := c.d.peerConn(addr)
	if err != nil {
		c.post(ctx, evParent{id: id, pc: pc, err: err})
		return
	}
	stream, err := peerv1.NewPeerClient(conn).SyncPieces(ctx, &peerv1.SyncPiecesRequest{TaskId: c.id, PeerId: c.peerID})
	if err != nil {
		c.post(ctx, evParent{id: id, pc: pc, err: err})
		return
	}
	for {
		st, err := stream.Recv()
		if err != nil {
			if ctx.Err() == nil {
				c.post(ctx, evParent{id: id, pc: pc, err: err})
			}
			return
		}
		if !c.post(ctx, evParent{id: id, pc: pc, st: st}) {
			return
		}
		if st.GetDone() {
			<-ctx.Done()
			return
		}
	}
}

func (c *conductor) request(ctx context.Context, a fetch.ActRequest) {
	p, ok := c.parents[a.Parent]
	if !ok {
		// Cannot happen: the core asks only parents it connected. Answer
		// from another goroutine: this one drains the events.
		go c.post(ctx, evPiece{n: a.Piece, parent: a.Parent, req: a.Req, err: fmt.Errorf("piece %d: parent %s not connected", a.Piece, a.Parent)})
		return
	}
	dg, _ := c.task.PieceDigest(a.Piece)
	fctx, cancel := context.WithCancel(ctx)
	c.fetches[a.Req] = cancel
	r := piece.Request{
		Addr: p.addr, TaskID: c.id, Number: a.Piece, Size: a.Size, Digest: dg,
		Stall:  a.Stall,
		Limits: []*rate.Limiter{c.d.dl, c.limit},
		PeerID: c.peerID,
		Token:  c.pieceToken(),
	}
	go func() {
		defer cancel()
		c.fetchPiece(ctx, fctx, r, a)
	}()
}

// fetchPiece transfers one piece; ctx is the download's (for posting the
// outcome), fctx the request's own (cancelled by the core).
func (c *conductor) fetchPiece(ctx, fctx context.Context, r piece.Request, a fetch.ActRequest) {
	start := time.Now()
	// Relayed: this daemon's children may fetch the piece while it arrives.
	var relay *store.Relay
	if c.d.cfg.Upload.Relay {
		buf := c.d.pieces.Buffer(int(r.Size))
		if relay = c.task.StartRelay(r.Number, buf, c.d.pieces.Release); relay != nil {
			r.Buf, r.Progress = buf, relay.Progress
		} else {
			c.d.pieces.Release(buf)
		}
	}
	buf, err := c.d.pieces.Fetch(fctx, r)
	if err == nil {
		if relay != nil {
			relay.Verified()
		}
		err = c.task.WritePiece(r.Number, buf, r.Digest)
		if relay == nil {
			c.d.pieces.Release(buf)
		}
	}
	if relay != nil {
		relay.Finish()
	}
	c.post(ctx, evPiece{n: r.Number, parent: a.Parent, req: a.Req, size: r.Size, start: start, end: time.Now(), err: err})
}

func (c *conductor) startOrigin(ctx context.Context, ranges []fetch.Range) {
	if c.originRun {
		return
	}
	c.originRun = true
	go func() {
		// The host's cap on concurrent origin fetches.
		start := time.Now()
		waited, err := c.d.originSlots.Acquire(ctx)
		if err == nil {
			if waited {
				c.d.pm.ObserveWait("origin_slots", time.Since(start))
			}
			err = c.fetchOrigin(ctx, ranges)
			c.d.originSlots.Release()
		}
		c.post(ctx, evOriginDone{err})
	}()
}

// complete verifies the whole content when a digest is known, commits the
// task and tells the scheduler. A content that fails its digest goes back
// to the core, which fetches it again from the origin once or fails.
func (c *conductor) complete(ctx context.Context) {
	if d := c.req.spec.GetDigest(); d != "" {
		if err := verifyFile(ctx, c.task.DataPath(), d); err != nil {
			if !errors.Is(err, core.ErrDigestMismatch) {
				_ = c.d.store.Delete(c.id)
				c.end(fmt.Errorf("task %s: %w", c.id, err))
				return
			}
			acts := c.fc.Step(time.Now(), fetch.EvContentCorrupt{Err: err})
			for _, a := range acts {
				if _, failed := a.(fetch.ActFailed); failed {
					_ = c.d.store.Delete(c.id)
				}
			}
			c.exec(ctx, acts)
			return
		}
	}
	if err := c.task.Commit(); err != nil {
		c.end(err)
		return
	}
	l, _ := c.task.Shape()
	c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: l}}})
	c.end(nil)
}

// parentsLog lists a parent set for the debug log: host, and the paced
// share in bytes/s where there is one.
func parentsLog(ps []fetch.Parent) string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p.Host)
		if p.ShareBps > 0 {
			fmt.Fprintf(&b, "@%.0f", p.ShareBps)
		}
	}
	return b.String()
}
