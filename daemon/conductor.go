package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"

	"github.com/damselfly-io/damselfly/api/peerv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon/piece"
	"github.com/damselfly-io/damselfly/daemon/store"
	"github.com/damselfly-io/damselfly/source"
)

// conductor drives one task on this daemon: it talks to the scheduler,
// fetches pieces from parents or the origin, and after completion keeps the
// task announced so others can use this daemon as a parent. All download
// state is owned by the run goroutine; workers report back through events.
type conductor struct {
	d      *Daemon
	req    taskRequest
	id     string
	peerID string
	log    *slog.Logger
	task   *store.Task
	limit  *rate.Limiter // this download's own limit, nil for none
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
	// retried: the content failed its whole-content digest once and is
	// being fetched again from the origin.
	retried bool

	done   chan struct{} // closed when the content is complete or failed
	err    error         // valid once done is closed
	exited chan struct{}

	peerBytes   atomic.Int64
	originBytes atomic.Int64
	fromCache   atomic.Bool

	// fallbackReason is why P2P was given up for the origin ("" if not).
	fallbackReason atomic.Pointer[string]
	// streaming: a reader consumes the content in order, so pieces are
	// picked near-sequentially instead of rarest first.
	streaming atomic.Bool

	events chan any

	// loop state
	stream        schedulerv1.Scheduler_AnnounceClient
	streamCancel  context.CancelFunc
	sendMu        sync.Mutex
	parents       map[string]*parentState
	bad           map[string]bool
	inflight      map[uint32]*parentState
	need          []uint32 // missing pieces, for selection
	needPos       map[uint32]int
	needOK        bool
	mode          int
	pending       []*schedulerv1.PieceResult
	lastProgress  time.Time
	gone          []string  // parents whose stream broke, not yet reported (see handleParent)
	goneAt        time.Time // when the last of them broke
	lastResched   time.Time
	rnd           *rand.Rand
	schedAddr     string // the scheduler of the open Announce stream
	originRunning bool
	shapeSent     bool
}

const (
	modeP2P = iota
	modeBackToSource
	modeOrigin // fallback: P2P failed
)

type parentState struct {
	info     *schedulerv1.PeerInfo
	addr     string
	seed     bool
	has      []bool
	count    int
	inflight int
	failures int
	hasAt    []uint32  // the update (of updates) that last announced each piece
	updates  uint32    // piece-stream messages handled
	rate     float64   // bytes/s delivered, from rates
	rates    core.Rate // pieces from this parent over their delivery times (deliveryCost)
	lastDone time.Time // latest end of a piece fetch from this parent
	cancel   context.CancelFunc
	removed  bool
}

// events
type (
	evSched    struct{ m *schedulerv1.SchedulerMessage }
	evSchedErr struct{ err error }
	evParent   struct {
		id  string
		st  *peerv1.PieceState
		err error
	}
	evPiece struct {
		n      uint32
		parent *parentState
		size   int64
		asked  uint32 // the parent's updates count when the request went out
		start  time.Time
		end    time.Time
		err    error
	}
	evOriginPiece struct {
		n      uint32
		digest []byte
		size   int
		cost   time.Duration // from asking for the piece to holding it
	}
	evOriginShape struct{}
	evOriginDone  struct{ err error }
)

func newConductor(d *Daemon, r taskRequest, hostname string) *conductor {
	c := &conductor{
		d:        d,
		req:      r,
		id:       r.spec.GetTaskId(),
		peerID:   core.NewPeerID(hostname),
		done:     make(chan struct{}),
		exited:   make(chan struct{}),
		events:   make(chan any, 256),
		parents:  map[string]*parentState{},
		bad:      map[string]bool{},
		inflight: map[uint32]*parentState{},
		rnd:      rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
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

func (c *conductor) finish(err error) {
	select {
	case <-c.done:
		return
	default:
	}
	c.err = err
	close(c.done)
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
		c.d.metrics.activeTasks.Inc()
		err := c.download(ctx)
		c.d.metrics.activeTasks.Dec()
		if err != nil {
			c.log.Warn("download failed", "err", err)
		} else {
			c.log.Info("download complete", "peer_bytes", c.peerBytes.Load(), "origin_bytes", c.originBytes.Load())
		}
		c.finish(err)
		if err != nil {
			if c.stream != nil {
				c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Failed{Failed: &schedulerv1.PeerFailed{Reason: err.Error()}}})
			}
			return
		}
	}
	if c.d.p2p() && c.swarm {
		c.serve(ctx)
	}
}

// announce opens a fresh Announce stream and registers, with the task's
// scheduler or, when it is unreachable, the next one in hash order.
func (c *conductor) announce(ctx context.Context) error {
	c.closeStream()
	spec := c.req.spec
	reg := &schedulerv1.Register{
		PeerId:            c.peerID,
		Host:              c.d.Host(),
		Task:              spec,
		Have:              c.task.Pieces(),
		DisableBackSource: c.req.disableBackSource || c.cache,
		SeedRequest:       c.req.seed && !c.cache,
		Imported:          c.cache && c.task.Complete(),
		OriginVerified:    c.req.verified,
		Priority:          c.req.priority,
	}
	cands := c.d.schedulersFor(c.id)
	if len(cands) == 0 {
		return errNoScheduler
	}
	var errs []error
	for _, sc := range cands {
		sctx, cancel := context.WithCancel(ctx)
		stream, err := sc.client.Announce(sctx)
		if err == nil {
			err = stream.Send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Register{Register: reg}})
		}
		if err != nil {
			cancel()
			errs = append(errs, fmt.Errorf("announce to scheduler %s: %w", sc.addr, err))
			continue
		}
		c.listen(sctx, stream, cancel)
		c.schedAddr = sc.addr
		return nil
	}
	return errors.Join(errs...)
}

// listen makes stream the conductor's and forwards what it receives.
func (c *conductor) listen(sctx context.Context, stream grpc.BidiStreamingClient[schedulerv1.PeerMessage, schedulerv1.SchedulerMessage], cancel context.CancelFunc) {
	c.stream, c.streamCancel = stream, cancel
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				c.post(sctx, evSchedErr{err})
				return
			}
			if !c.post(sctx, evSched{m}) {
				return
			}
		}
	}()
}

func (c *conductor) post(ctx context.Context, ev any) bool {
	select {
	case c.events <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

func (c *conductor) closeStream() {
	if c.streamCancel != nil {
		if c.stream != nil {
			_ = c.stream.CloseSend()
		}
		c.streamCancel()
	}
	c.stream, c.streamCancel, c.schedAddr = nil, nil, ""
}

func (c *conductor) send(m *schedulerv1.PeerMessage) {
	if c.stream == nil {
		return
	}
	c.sendMu.Lock()
	err := c.stream.Send(m)
	c.sendMu.Unlock()
	if err != nil {
		c.log.Debug("send to scheduler failed", "err", err)
	}
}

func (c *conductor) backSourceAllowed() bool { return !c.req.disableBackSource && !c.cache }

// download runs until the task is complete, or fails.
func (c *conductor) download(ctx context.Context) error {
	c.lastProgress = time.Now()
	if c.local {
		if err := c.fallback(ctx, "local_file"); err != nil {
			return err
		}
	} else if !c.swarm {
		if err := c.fallback(ctx, "local_only"); err != nil {
			return err
		}
	} else if !c.d.p2p() {
		if err := c.fallback(ctx, "no_scheduler"); err != nil {
			return err
		}
	} else if err := c.announce(ctx); err != nil {
		c.log.Warn("scheduler unreachable", "err", err)
		if err := c.fallback(ctx, "scheduler_unreachable"); err != nil {
			return err
		}
	}
	tick := time.NewTicker(c.d.cfg.Download.ReportInterval.D())
	defer tick.Stop()
	defer c.dropParents()
	for {
		// (a running origin fetch winds down before the task is committed)
		if !c.originRunning && c.shapeKnown() && c.task.Count() == c.pieceCount() {
			if err := c.complete(ctx); !errors.Is(err, errFetchAgain) {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return errClosed
		case ev := <-c.events:
			if err := c.handle(ctx, ev); err != nil {
				return err
			}
		case <-tick.C:
			c.flushReports()
			if err := c.checkStall(ctx); err != nil {
				return err
			}
		}
		c.schedule(ctx)
		if len(c.events) == 0 {
			// Idle: report now. Under load events queue up and reports batch.
			c.flushReports()
		}
	}
}

func (c *conductor) shapeKnown() bool {
	l, ps := c.task.Shape()
	return l >= 0 && ps > 0
}

func (c *conductor) pieceCount() uint32 {
	l, ps := c.task.Shape()
	return core.PieceCount(l, ps)
}

func (c *conductor) handle(ctx context.Context, ev any) error {
	switch e := ev.(type) {
	case evSched:
		return c.handleSched(ctx, e.m)
	case evSchedErr:
		if c.mode == modeBackToSource || c.mode == modeOrigin {
			c.stream = nil // keep fetching; nobody to report to
			return nil
		}
		c.log.Warn("scheduler stream lost; fetching the rest from the origin", "err", e.err)
		c.stream = nil
		return c.fallback(ctx, "scheduler_lost")
	case evParent:
		c.handleParent(ctx, e)
	case evPiece:
		return c.handlePiece(ctx, e)
	case evOriginPiece:
		c.lastProgress = time.Now()
		c.removeNeed(e.n)
		c.pending = append(c.pending, &schedulerv1.PieceResult{Number: e.n, Digest: e.digest, Length: uint32(e.size), CostNs: e.cost.Nanoseconds()})
		if len(c.pending) >= 32 {
			c.flushReports()
		}
	case evOriginShape:
		c.sendShape()
	case evOriginDone:
		c.originRunning = false
		if e.err != nil {
			return e.err
		}
		c.flushReports()
		if c.mode == modeBackToSource && !c.shapeSent {
			c.sendShape()
		}
		if !c.shapeKnown() || c.task.Count() != c.pieceCount() {
			return fmt.Errorf("task %s: origin fetch ended with %d of %d pieces: %w", c.id, c.task.Count(), c.pieceCount(), core.ErrOrigin)
		}
	}
	return nil
}

// onAccess keeps a private task's key (for the upload port to check
// children's tokens) and this peer's own token (for its parents).
func (c *conductor) onAccess(a *schedulerv1.PieceAccess) {
	if len(a.GetKey()) > 0 {
		c.d.setTaskKey(c.id, a.GetKey())
	}
	if a.GetToken() != "" {
		c.token.Store(a.GetToken())
	}
}

func (c *conductor) pieceToken() string {
	s, _ := c.token.Load().(string)
	return s
}

func (c *conductor) sendShape() {
	l, ps := c.task.Shape()
	if c.mode != modeBackToSource || ps == 0 {
		return
	}
	if l >= 0 {
		c.shapeSent = true
	}
	c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Meta{Meta: &schedulerv1.TaskMeta{ContentLength: l, PieceSize: ps}}})
}

func (c *conductor) handleSched(ctx context.Context, m *schedulerv1.SchedulerMessage) error {
	switch x := m.Msg.(type) {
	case *schedulerv1.SchedulerMessage_TaskInfo:
		ti := x.TaskInfo
		if ti.GetPieceSize() > 0 {
			if err := c.task.SetShape(ti.GetContentLength(), ti.GetPieceSize()); err != nil {
				return fmt.Errorf("scheduler task info: %w", err)
			}
		}
		ds := make(map[uint32][]byte, len(ti.GetDigests()))
		for _, d := range ti.GetDigests() {
			if len(d.GetDigest()) == core.DigestSize {
				ds[d.GetNumber()] = d.GetDigest()
			}
		}
		c.task.SetDigests(ds)
	case *schedulerv1.SchedulerMessage_Parents:
		if c.mode != modeP2P {
			return nil
		}
		c.setParents(ctx, x.Parents.GetParents())
	case *schedulerv1.SchedulerMessage_BackToSource:
		if c.mode != modeP2P {
			return nil
		}
		if c.cache {
			return fmt.Errorf("dfcache task %s: no peer holds it: %w", c.id, core.ErrNotFound)
		}
		c.log.Info("fetching from the origin", "reason", x.BackToSource.GetReason())
		c.d.metrics.backSource.WithLabelValues("scheduled").Inc()
		c.mode = modeBackToSource
		c.dropParents()
		c.startOrigin(ctx)
	case *schedulerv1.SchedulerMessage_Wait:
		c.log.Debug("scheduler says wait", "reason", x.Wait.GetReason())
	case *schedulerv1.SchedulerMessage_Access:
		c.onAccess(x.Access)
	case *schedulerv1.SchedulerMessage_Fail:
		c.log.Warn("scheduler gave up on the task", "reason", x.Fail.GetReason())
		if c.cache {
			return fmt.Errorf("dfcache task %s: %s: %w", c.id, x.Fail.GetReason(), core.ErrNotFound)
		}
		if p := c.req.priority; p == schedulerv1.Priority_LEVEL1 || p == schedulerv1.Priority_LEVEL2 {
			// The level forbids this download or its trip to the origin.
			return fmt.Errorf("task %s: %s: %w", c.id, x.Fail.GetReason(), core.ErrUnavailable)
		}
		return c.fallback(ctx, "scheduler_failed")
	}
	return nil
}

// fallback switches to fetching the missing pieces from the origin.
func (c *conductor) fallback(ctx context.Context, reason string) error {
	if c.mode != modeP2P {
		return nil
	}
	if c.cache {
		return fmt.Errorf("dfcache task %s: the swarm cannot serve it (%s), and it has no origin: %w", c.id, reason, core.ErrUnavailable)
	}
	if !c.backSourceAllowed() && !c.local {
		return fmt.Errorf("task %s: P2P failed (%s) and back-to-source is disabled: %w", c.id, reason, core.ErrUnavailable)
	}
	c.d.metrics.backSource.WithLabelValues(reason).Inc()
	c.fallbackReason.Store(&reason)
	c.mode = modeOrigin
	c.dropParents()
	c.startOrigin(ctx)
	return nil
}

func (c *conductor) checkStall(ctx context.Context) error {
	if c.mode != modeP2P {
		return nil
	}
	if len(c.gone) > 0 {
		switch {
		case len(c.parents) > 0:
			c.gone = nil
		case time.Since(c.goneAt) >= parentGoneGrace:
			c.reschedule(c.gone, "parent gone")
			c.gone = nil
		}
	}
	idle := time.Since(c.lastProgress)
	if idle >= c.d.cfg.Download.SwarmTimeout.D() {
		c.log.Warn("no progress from the swarm", "for", idle.Round(time.Millisecond))
		return c.fallback(ctx, "swarm_stalled")
	}
	if len(c.parents) == 0 && c.stream != nil && idle > 2*time.Second && time.Since(c.lastResched) > 2*time.Second {
		c.reschedule(nil, "no parents")
	}
	return nil
}

// parentGoneGrace is how long a peer left without parents by a broken
// parent stream waits for the scheduler's own new parents before asking.
const parentGoneGrace = time.Second

func (c *conductor) reschedule(bad []string, reason string) {
	c.lastResched = time.Now()
	c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Reschedule{Reschedule: &schedulerv1.Reschedule{BadParents: bad, Reason: reason}}})
}

func (c *conductor) setParents(ctx context.Context, ps []*schedulerv1.PeerInfo) {
	want := map[string]*schedulerv1.PeerInfo{}
	for _, p := range ps {
		if p.GetPeerId() == "" || p.GetPeerId() == c.peerID || c.bad[p.GetPeerId()] || p.GetHost() == nil {
			continue
		}
		want[p.GetPeerId()] = p
	}
	for id, p := range c.parents {
		if _, ok := want[id]; !ok {
			c.removeParent(p)
		}
	}
	for id, info := range want {
		if _, ok := c.parents[id]; ok {
			continue
		}
		h := info.GetHost()
		pctx, cancel := context.WithCancel(ctx)
		p := &parentState{
			info:   info,
			addr:   net.JoinHostPort(h.GetIp(), strconv.Itoa(int(h.GetUploadPort()))),
			seed:   h.GetSeed(),
			cancel: cancel,
		}
		c.parents[id] = p
		go c.syncParent(pctx, id, net.JoinHostPort(h.GetIp(), strconv.Itoa(int(h.GetPeerPort()))))
	}
	c.lastProgress = maxTime(c.lastProgress, time.Now().Add(-c.d.cfg.Download.SwarmTimeout.D()/2))
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (c *conductor) removeParent(p *parentState) {
	if p.removed {
		return
	}
	p.removed = true
	p.cancel()
	delete(c.parents, p.info.GetPeerId())
}

func (c *conductor) dropParents() {
	for _, p := range c.parents {
		c.removeParent(p)
	}
}

// syncParent follows the parent's piece set until ctx ends.
func (c *conductor) syncParent(ctx context.Context, id, addr string) {
	conn, err := c.d.peerConn(addr)
	if err != nil {
		c.post(ctx, evParent{id: id, err: err})
		return
	}
	stream, err := peerv1.NewPeerClient(conn).SyncPieces(ctx, &peerv1.SyncPiecesRequest{TaskId: c.id, PeerId: c.peerID})
	if err != nil {
		c.post(ctx, evParent{id: id, err: err})
		return
	}
	for {
		st, err := stream.Recv()
		if err != nil {
			if ctx.Err() == nil {
				c.post(ctx, evParent{id: id, err: err})
			}
			return
		}
		if !c.post(ctx, evParent{id: id, st: st}) {
			return
		}
		if st.GetDone() {
			<-ctx.Done()
			return
		}
	}
}

func (c *conductor) handleParent(ctx context.Context, e evParent) {
	p, ok := c.parents[e.id]
	if !ok {
		return
	}
	if e.err != nil {
		c.log.Debug("parent gone", "parent", e.id, "err", e.err)
		c.removeParent(p)
		if len(c.parents) == 0 {
			// A parent that died is seen by the scheduler on its own
			// stream, which then gives us the dead peer's place (under its
			// parent, whose slot just freed). Asking at once races that and
			// can get a parent that already serves a child, splitting its
			// uplink; ask only if nothing came within parentGoneGrace.
			c.gone = append(c.gone, e.id)
			c.goneAt = time.Now()
		}
		return
	}
	p.updates++
	for _, ns := range [2][]uint32{e.st.GetPieces(), e.st.GetRelaying()} {
		for _, n := range ns {
			if n <= 1<<26 {
				p.mark(n)
			}
		}
	}
	// A parent that stored a new piece is progress of the swarm even when
	// it is not ours yet: a source shared by many tasks may trickle, and
	// leaving for the origin then only adds to its load (swarm_timeout is
	// for a swarm that has stopped, not for a slow one).
	if len(e.st.GetPieces()) > 0 {
		c.lastProgress = time.Now()
	}
	// A complete parent holds every piece, whatever a not-found answer
	// (to a request that raced its announcements) made us believe.
	if e.st.GetDone() && c.shapeKnown() {
		for n := range c.pieceCount() {
			p.mark(n)
		}
	}
}

// mark records that the parent announced piece n in its current update.
func (p *parentState) mark(n uint32) {
	for int(n) >= len(p.has) {
		p.has = append(p.has, false)
		p.hasAt = append(p.hasAt, 0)
	}
	p.hasAt[n] = p.updates
	if !p.has[n] {
		p.has[n] = true
		p.count++
	}
}

func (c *conductor) removeNeed(n uint32) {
	i, ok := c.needPos[n]
	if !ok {
		return
	}
	last := len(c.need) - 1
	c.need[i] = c.need[last]
	c.needPos[c.need[i]] = i
	c.need = c.need[:last]
	delete(c.needPos, n)
}

// setNeed sets the missing pieces selection works on.
func (c *conductor) setNeed(ns []uint32) {
	c.need = ns
	c.needPos = make(map[uint32]int, len(ns))
	for i, n := range ns {
		c.needPos[n] = i
	}
	c.needOK = true
}

// schedule starts piece fetches while there is room.
func (c *conductor) schedule(ctx context.Context) {
	if c.mode != modeP2P || !c.shapeKnown() || len(c.parents) == 0 {
		return
	}
	if !c.needOK {
		c.setNeed(c.task.Missing())
	}
	cfg := c.d.cfg.Download
	for len(c.inflight) < cfg.ConcurrentPieces {
		n, p := c.pick()
		if p == nil {
			return
		}
		dg, _ := c.task.PieceDigest(n)
		l, ps := c.task.Shape()
		_, size := core.PieceRange(n, l, ps)
		c.inflight[n] = p
		p.inflight++
		req := piece.Request{
			Addr: p.addr, TaskID: c.id, Number: n, Size: size, Digest: dg,
			Stall:  c.stallTimeout(p, size),
			Limits: []*rate.Limiter{c.d.dl, c.limit},
			PeerID: c.peerID,
			Token:  c.pieceToken(),
		}
		go c.fetchPiece(ctx, req, p, p.updates)
	}
}

// stallTimeout follows the parent's measured rate: ten 64 KiB chunks' worth
// of time at that rate shared by the requests one parent may serve at once,
// within the configured bounds.
func (c *conductor) stallTimeout(p *parentState, size int64) time.Duration {
	cfg := c.d.cfg.Download
	t := cfg.MaxStallTimeout.D()
	if p.rate > 0 {
		per := max(cfg.PerParentRequests, 1)
		t = time.Duration(float64(10*64<<10*per) / p.rate * float64(time.Second))
	}
	return min(max(t, cfg.MinStallTimeout.D()), cfg.MaxStallTimeout.D())
}

// pickSample bounds the candidates one rarest-first pick compares.
const pickSample = 512

// pick chooses the next piece and parent: rarest first among the parents'
// pieces (ties broken from a random start, so peers hold different pieces
// and have something to trade), preferring non-seed parents and parents
// with spare capacity.
func (c *conductor) pick() (uint32, *parentState) {
	nn := len(c.need)
	if nn == 0 {
		return 0, nil
	}
	per := c.d.cfg.Download.PerParentRequests
	free := false
	for _, p := range c.parents {
		if p.inflight < per {
			free = true
			break
		}
	}
	if !free {
		return 0, nil
	}
	if c.streaming.Load() {
		if n, ok := c.pickSequential(per); ok {
			return n, c.chooseParent(n)
		}
		return 0, nil
	}
	start := c.rnd.IntN(nn)
	bestN, bestRare := uint32(0), -1
	// The rarest among a bounded sample of available pieces, from a random
	// start: exact for small tasks, and a pick stays cheap on a 100 GB task
	// (tens of thousands of pieces) where a full scan per pick would be
	// quadratic over the download.
	seen := 0
	for i := 0; i < nn && seen < pickSample; i++ {
		n := c.need[(start+i)%nn]
		if _, busy := c.inflight[n]; busy {
			continue
		}
		if _, ok := c.task.PieceDigest(n); !ok {
			continue
		}
		rare, avail := 0, false
		for _, p := range c.parents {
			if int(n) < len(p.has) && p.has[n] {
				rare++
				if p.inflight < per {
					avail = true
				}
			}
		}
		if !avail {
			continue
		}
		seen++
		if bestRare < 0 || rare < bestRare {
			bestN, bestRare = n, rare
			if rare == 1 {
				break
			}
		}
	}
	if bestRare < 0 {
		return 0, nil
	}
	return bestN, c.chooseParent(bestN)
}

// pickSequential returns the lowest-numbered missing piece that some parent
// with spare capacity holds: with several requests in flight the reader's
// next bytes are always among them.
func (c *conductor) pickSequential(per int) (uint32, bool) {
	best, found := uint32(0), false
	for _, n := range c.need {
		if found && n >= best {
			continue
		}
		if _, busy := c.inflight[n]; busy {
			continue
		}
		if _, ok := c.task.PieceDigest(n); !ok {
			continue
		}
		for _, p := range c.parents {
			if int(n) < len(p.has) && p.has[n] && p.inflight < per {
				best, found = n, true
				break
			}
		}
	}
	return best, found
}

// deliveryCost is the time a parent spent delivering a piece fetched from
// start to end: from the later of start and the end of the parent's
// previous piece. With several requests in flight to one parent, a piece's
// own start-to-end time also counts the time it waited behind the others,
// which made a backlogged parent look several times slower than its link
// (and got the seed peer, with children always behind it, replaced as
// slow); the time between completions is what the parent's uplink gave.
func (p *parentState) deliveryCost(start, end time.Time) time.Duration {
	from := start
	if p.lastDone.After(start) && p.lastDone.Before(end) {
		from = p.lastDone
	}
	if end.After(p.lastDone) {
		p.lastDone = end
	}
	return max(end.Sub(from), time.Microsecond)
}

// observeRate folds one delivered piece into the parent's rate.
func (p *parentState) observeRate(size int64, cost time.Duration) {
	p.rates.Observe(size, cost.Nanoseconds(), 0.3)
	p.rate = p.rates.BytesPerSec()
}

func (c *conductor) chooseParent(n uint32) *parentState {
	per := c.d.cfg.Download.PerParentRequests
	var best *parentState
	bestScore := -1.0
	nonSeed := false
	for _, p := range c.parents {
		if !p.seed && int(n) < len(p.has) && p.has[n] && p.inflight < per {
			nonSeed = true
		}
	}
	for _, p := range c.parents {
		if int(n) >= len(p.has) || !p.has[n] || p.inflight >= per || (nonSeed && p.seed) {
			continue
		}
		s := (p.rate + 1) / float64(p.inflight+1) * (1 + 0.1*c.rnd.Float64())
		if s > bestScore {
			best, bestScore = p, s
		}
	}
	return best
}

func (c *conductor) fetchPiece(ctx context.Context, r piece.Request, p *parentState, asked uint32) {
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
	buf, err := c.d.pieces.Fetch(ctx, r)
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
	c.post(ctx, evPiece{n: r.Number, parent: p, size: r.Size, asked: asked, start: start, end: time.Now(), err: err})
}

func (c *conductor) handlePiece(ctx context.Context, e evPiece) error {
	p := e.parent
	delete(c.inflight, e.n)
	p.inflight--
	cost := p.deliveryCost(e.start, e.end)
	if e.err == nil {
		c.d.pm.PieceDuration.WithLabelValues("peer").Observe(e.end.Sub(e.start).Seconds())
		c.peerBytes.Add(e.size)
		c.lastProgress = time.Now()
		p.failures = 0
		p.observeRate(e.size, cost)
		c.removeNeed(e.n)
		c.pending = append(c.pending, &schedulerv1.PieceResult{
			Number: e.n, ParentId: p.info.GetPeerId(), Length: uint32(e.size), CostNs: cost.Nanoseconds()})
		if len(c.pending) >= 32 {
			c.flushReports()
		}
		return nil
	}
	if ctx.Err() != nil {
		return nil
	}
	if errors.Is(e.err, core.ErrNoSpace) {
		// Not the parent's fault, and no other parent helps: fail cleanly.
		return e.err
	}
	corrupt := errors.Is(e.err, core.ErrDigestMismatch)
	reason := "error"
	switch {
	case corrupt:
		reason = "corrupt"
	case errors.Is(e.err, core.ErrNotFound):
		reason = "not_found"
		// Forget the piece at this parent unless it was announced again
		// after the request went out: a relay that failed and started over,
		// or the piece now held, arrives on the piece stream, which may
		// overtake this answer.
		if int(e.n) < len(p.has) && p.has[e.n] && p.hasAt[e.n] <= e.asked {
			p.has[e.n] = false
			p.count--
		}
	}
	if p.removed && !corrupt {
		return nil // a parent we already dropped; its in-flight failures are expected
	}
	c.d.pm.PieceFailures.WithLabelValues(reason).Inc()
	c.log.Debug("piece failed", "piece", e.n, "parent", p.info.GetPeerId(), "err", e.err)
	c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_PieceFailed{PieceFailed: &schedulerv1.PieceFailed{
		Number: e.n, ParentId: p.info.GetPeerId(), Reason: e.err.Error(), Corrupt: corrupt}}})
	p.failures++
	if corrupt {
		c.log.Warn("parent served corrupt piece; avoiding it", "parent", p.info.GetPeerId(), "addr", p.addr, "piece", e.n)
		c.bad[p.info.GetPeerId()] = true
		c.removeParent(p)
		return nil
	}
	if p.failures >= c.d.cfg.Download.ParentFailures {
		c.removeParent(p)
		c.reschedule([]string{p.info.GetPeerId()}, "parent failed repeatedly")
	}
	return nil
}

func (c *conductor) flushReports() {
	if len(c.pending) == 0 {
		return
	}
	batch := c.pending
	c.pending = nil
	c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Pieces{Pieces: &schedulerv1.PiecesDone{Pieces: batch}}})
}

func (c *conductor) startOrigin(ctx context.Context) {
	if c.originRunning {
		return
	}
	c.originRunning = true
	go func() {
		// The host's cap on concurrent origin fetches.
		start := time.Now()
		waited, err := c.d.originSlots.Acquire(ctx)
		if err == nil {
			if waited {
				c.d.pm.ObserveWait("origin_slots", time.Since(start))
			}
			err = c.fetchOrigin(ctx)
			c.d.originSlots.Release()
		}
		c.post(ctx, evOriginDone{err})
	}()
}

// fetchOrigin fetches the missing pieces from the origin, one range request
// per run of missing pieces (the whole content when its shape is unknown).
func (c *conductor) fetchOrigin(ctx context.Context) error {
	l, ps := c.task.Shape()
	if l >= 0 && ps > 0 {
		missing := c.task.Missing()
		for i := 0; i < len(missing); {
			j := i + 1
			for j < len(missing) && missing[j] == missing[j-1]+1 {
				j++
			}
			off, _ := core.PieceRange(missing[i], l, ps)
			lastOff, lastSize := core.PieceRange(missing[j-1], l, ps)
			if err := c.fetchOriginRange(ctx, off, lastOff+lastSize-off); err != nil {
				return err
			}
			i = j
		}
		return nil
	}
	return c.fetchOriginRange(ctx, 0, -1)
}

func (c *conductor) headers() http.Header {
	h := specHeaders(c.req.spec.GetHeaders())
	if v := core.SpecVersion(c.req.spec.GetUrl(), c.req.spec.GetHeaders()); v != "" {
		// An object's version is part of its task ID (checked against the
		// spec), so this If-Match names the bytes the ID stands for.
		h.Set("If-Match", v)
	}
	for k, vs := range c.req.originHeaders {
		h[k] = vs
	}
	return h
}

// representationHeaders would make the origin send other bytes than the
// content as it stores it (a part, an encoding, nothing when unchanged) or
// another resource: a task's spec travels to seed peers, so whoever
// registered it last must not choose what they fetch through these.
var representationHeaders = []string{
	"Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since",
	"Accept-Encoding", "Te", "Host", "Connection", "Upgrade", "Transfer-Encoding", "Content-Length",
}

// specHeaders returns a task spec's headers for an origin request, without
// representationHeaders.
func specHeaders(m map[string]string) http.Header {
	h := http.Header{}
	for k, v := range m {
		if !core.ContainsString(representationHeaders, http.CanonicalHeaderKey(k)) {
			h.Set(k, v)
		}
	}
	return h
}

func (c *conductor) fetchOriginRange(ctx context.Context, off, length int64) error {
	url := c.req.spec.GetUrl()
	var src source.Source = c.d.src
	if c.req.localFile != nil {
		src = &source.Opened{F: c.req.localFile}
	}
	fetchStart := time.Now()
	resp, err := src.Fetch(ctx, source.Request{URL: url, Header: c.headers(), Offset: off, Length: length, Trusted: c.req.seed || c.req.preheat})
	if err != nil {
		return fmt.Errorf("fetch %s from origin: %w", url, err)
	}
	defer resp.Body.Close()
	l, ps := c.task.Shape()
	total := resp.ContentLength
	if ps == 0 {
		ps = core.PieceSize(total)
		if err := c.task.SetShape(total, ps); err != nil {
			return err
		}
		c.post(ctx, evOriginShape{})
	} else if l < 0 && total >= 0 {
		if err := c.task.SetShape(total, ps); err != nil {
			return err
		}
		c.post(ctx, evOriginShape{})
	} else if l >= 0 && total >= 0 && total != l {
		return fmt.Errorf("origin %s: content length changed from %d to %d: %w", url, l, total, core.ErrOrigin)
	}
	n := uint32(off / int64(ps))
	buf := make([]byte, ps)
	var read int64
	// A piece's latency runs from asking for it (the request, for the first)
	// to holding it verified and stored, as for pieces from peers.
	pieceStart := fetchStart
	for length < 0 || read < length {
		want := buf
		if length >= 0 && length-read < int64(len(buf)) {
			want = buf[:length-read]
		}
		k, err := readLimited(ctx, c.d.pm, resp.Body, want, c.d.dl, c.limit)
		if k > 0 {
			read += int64(k)
			c.originBytes.Add(int64(k))
			c.d.metrics.originBytes.Add(float64(k))
			c.d.pm.DownloadBytes.WithLabelValues("origin").Add(float64(k))
			if !c.task.Has(n) {
				if werr := c.task.WritePiece(n, want[:k], nil); werr != nil {
					return werr
				}
				cost := time.Since(pieceStart)
				c.d.pm.PieceDuration.WithLabelValues("origin").Observe(cost.Seconds())
				dg, _ := c.task.PieceDigest(n)
				c.post(ctx, evOriginPiece{n: n, digest: dg, size: k, cost: cost})
			}
			pieceStart = time.Now()
			n++
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read %s from origin at byte %d: %w", url, off+read, err)
		}
	}
	if length >= 0 && read != length {
		return fmt.Errorf("origin %s: got %d of %d bytes: %w", url, read, length, core.ErrOrigin)
	}
	if l, _ := c.task.Shape(); l < 0 {
		if err := c.task.SetShape(off+read, ps); err != nil {
			return err
		}
		c.post(ctx, evOriginShape{})
	}
	return nil
}

// readLimited fills b from r, paying the limiters as it goes.
func readLimited(ctx context.Context, m *piece.Metrics, r io.Reader, b []byte, ls ...*rate.Limiter) (int, error) {
	const step = 64 << 10
	got := 0
	for got < len(b) {
		end := min(len(b), got+step)
		for _, l := range ls {
			if err := waitObserved(ctx, m, l, end-got); err != nil {
				return got, err
			}
		}
		k, err := io.ReadFull(r, b[got:end])
		got += k
		if err != nil {
			if err == io.ErrUnexpectedEOF || (err == io.EOF && got > 0) {
				return got, io.ErrUnexpectedEOF
			}
			return got, err
		}
	}
	return got, nil
}

// waitObserved pays n bytes to l, recording a wait in m.
func waitObserved(ctx context.Context, m *piece.Metrics, l *rate.Limiter, n int) error {
	if piece.Unlimited(l) {
		return nil
	}
	start := time.Now()
	err := piece.WaitN(ctx, l, n)
	m.ObserveWait("download", time.Since(start))
	return err
}

// complete verifies the whole content when a digest is known, commits the
// task and tells the scheduler.
func (c *conductor) complete(ctx context.Context) error {
	c.flushReports()
	if d := c.req.spec.GetDigest(); d != "" {
		if err := verifyFile(ctx, c.task.DataPath(), d); err != nil {
			if errors.Is(err, core.ErrDigestMismatch) {
				if rerr := c.contentCorrupt(ctx, err); rerr != nil {
					return rerr
				}
			}
			_ = c.d.store.Delete(c.id)
			return fmt.Errorf("task %s: %w", c.id, err)
		}
	}
	if err := c.task.Commit(); err != nil {
		return err
	}
	if c.mode == modeBackToSource && !c.shapeSent {
		c.sendShape()
	}
	l, _ := c.task.Shape()
	c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: l}}})
	return nil
}

// contentCorrupt handles a content whose every piece matched the digests the
// scheduler gave but whose whole does not match the task's digest: those
// digests are wrong. The scheduler is told (ContentCorrupt: it checks the
// digests' source against a fresh origin fetch and bans it if they prove
// wrong), and, once, every piece is fetched again from the origin. It reports
// errFetchAgain when the download goes on; a content fetched from the origin
// itself that fails is the origin's (or the caller's digest's) fault, and the
// download fails.
func (c *conductor) contentCorrupt(ctx context.Context, cause error) error {
	fromPeers := c.mode != modeBackToSource && c.peerBytes.Load() > 0
	if c.mode == modeBackToSource || fromPeers {
		c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_ContentCorrupt{ContentCorrupt: &schedulerv1.ContentCorrupt{Reason: cause.Error()}}})
	}
	if !fromPeers || c.retried || !c.backSourceAllowed() {
		return nil
	}
	c.retried = true
	c.log.Warn("content failed its digest although every piece matched the scheduler's digests; fetching it again from the origin", "err", cause)
	if err := c.task.Reset(); err != nil {
		return fmt.Errorf("task %s: reset after a digest failure: %w", c.id, err)
	}
	c.needOK = false
	c.d.metrics.backSource.WithLabelValues("content_corrupt").Inc()
	c.mode = modeOrigin
	c.dropParents()
	c.startOrigin(ctx)
	return errFetchAgain
}

// reconnectDelay returns a random delay in [d/2, d): the jitter that keeps
// the re-registrations of many cached tasks on many daemons, after a
// scheduler restart, from arriving in step.
func reconnectDelay(r *rand.Rand, d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + time.Duration(r.Int64N(int64(d/2)))
}

// errFetchAgain: complete found the content corrupt and started fetching it
// again from the origin; the download goes on.
var errFetchAgain = errors.New("fetching the content again from the origin")

// verifyFile checks a file against "sha256:<hex>".
func verifyFile(ctx context.Context, path, digest string) error {
	_, want, err := core.ParseDigest(digest)
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, &ctxReader{ctx: ctx, r: f}); err != nil {
		return fmt.Errorf("hash content: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("content is sha256:%s, want sha256:%s: %w", got, want, core.ErrDigestMismatch)
	}
	return nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r *ctxReader) Read(b []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(b)
}

// serve keeps a complete task announced so the scheduler can hand this
// daemon out as a parent; it re-registers when the stream breaks (e.g. the
// scheduler restarted) or the task's scheduler changes (the hash ring), until
// ctx ends or the task leaves the cache. Every re-registration carries the
// task's shape and piece digests, so that a scheduler that does not know the
// task can trust them by its rules (a seed host, a content digest, two hosts
// agreeing) instead of leaving the task's next peers without digests.
// Re-registrations wait a random delay first (reconnectDelay): after a
// scheduler restart, thousands of streams must not come back in step.
func (c *conductor) serve(ctx context.Context) {
	backoff := 500 * time.Millisecond
	var wait time.Duration // before the next re-announce; 0 on the first
	var announced time.Time
	for ctx.Err() == nil {
		if t, ok := c.d.store.Get(c.id); !ok || t != c.task {
			return // deleted (perhaps already imported or fetched anew)
		}
		if c.stream == nil {
			if wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
			announced = time.Now()
			if err := c.announce(ctx); err != nil {
				c.log.Debug("re-announce failed", "err", err)
				wait = reconnectDelay(c.rnd, backoff)
				backoff = min(2*backoff, 30*time.Second)
				continue
			}
			c.sendSource()
			l, _ := c.task.Shape()
			c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: l}}})
		}
		select {
		case <-ctx.Done():
			return
		case <-c.d.ringChanged():
			// The scheduler list changed: when this task's home is another
			// scheduler now, register there (the old one forgets us).
			if home := c.d.schedulersFor(c.id); len(home) > 0 && home[0].addr != c.schedAddr {
				c.log.Info("task moved to another scheduler; re-announcing", "scheduler", home[0].addr)
				c.closeStream()
				wait = reconnectDelay(c.rnd, time.Second)
			}
		case ev := <-c.events:
			switch e := ev.(type) {
			case evSchedErr:
				c.closeStream()
				wait = reconnectDelay(c.rnd, backoff)
				if time.Since(announced) < time.Second {
					// Ended at once (refused, say): do not hammer the
					// scheduler; back off further each time. A stream that
					// lived a while (the scheduler restarted) comes back
					// after the first, jittered, delay.
					c.log.Debug("announce stream ended at once; backing off", "err", e.err, "backoff", backoff)
					backoff = min(2*backoff, 30*time.Second)
				}
			case evSched:
				if a := e.m.GetAccess(); a != nil {
					c.onAccess(a)
				}
				if f := e.m.GetFail(); f != nil && strings.HasPrefix(f.GetReason(), core.TaskRefused) {
					// The scheduler will not have this task (its spec does
					// not hold there): asking again changes nothing.
					c.log.Warn("scheduler refused the task; no longer announcing it", "reason", f.GetReason())
					c.closeStream()
					return
				}
				backoff = 500 * time.Millisecond
			default:
				backoff = 500 * time.Millisecond
			}
		case <-c.task.Changed():
			// task deleted or changed: loop re-checks the store
		}
	}
}

// sendSource tells the scheduler the task's shape and piece digests: as
// the source of a dfcache entry (it registered as imported), or as a holder
// re-announcing a complete task (a claim the scheduler trusts only by its
// rules; see docs/architecture.md, "Scheduler restarts").
func (c *conductor) sendSource() {
	m := c.task.Meta()
	c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Meta{Meta: &schedulerv1.TaskMeta{ContentLength: m.ContentLength, PieceSize: m.PieceSize}}})
	var batch []*schedulerv1.PieceResult
	for _, n := range m.Pieces {
		if int(n) >= len(m.PieceDigests) {
			continue
		}
		_, size := core.PieceRange(n, m.ContentLength, m.PieceSize)
		batch = append(batch, &schedulerv1.PieceResult{Number: n, Digest: m.PieceDigests[n], Length: uint32(size)})
		if len(batch) == 1024 {
			c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Pieces{Pieces: &schedulerv1.PiecesDone{Pieces: batch}}})
			batch = nil
		}
	}
	if len(batch) > 0 {
		c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Pieces{Pieces: &schedulerv1.PiecesDone{Pieces: batch}}})
	}
}
