// Package scheduler is Damselfly's scheduling service: it tracks tasks, the
// peers downloading them and which pieces each peer holds; it picks parents
// for every peer, bounds how many peers fetch a task from the origin, triggers
// seed peers, and forwards the trusted piece digests reported by the peers
// that fetched from the origin.
//
// It owns the soft state of its tasks and speaks schedulerv1.Scheduler over
// gRPC. It must not move content, persist anything (a scheduler that dies
// loses only soft state: peers re-register elsewhere), log or forward task
// headers to anyone but a triggered seed peer, trust piece digests from peers
// that did not fetch from the origin, or block on one slow peer while holding
// its lock. Scoring is delegated to the pure functions of scheduler/policy.
package scheduler

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/obs"
	"github.com/damselfly-io/damselfly/scheduler/policy"
)

// refreshBatch is how many peers the refresh loop handles per lock hold, so
// a 10,000-peer task never stalls registrations for long.
const refreshBatch = 256

// Keepalive: peers may ping every 10 s or slower; a connection silent for
// 30 s is pinged and closed 10 s later without an answer, which ends its
// streams and so removes its peers.
const (
	keepaliveMinTime = 10 * time.Second
	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 10 * time.Second
	// stopGrace bounds Serve's graceful stop before it cuts connections.
	stopGrace = 5 * time.Second
)

// Scheduler is one scheduling service instance. Create it with New, expose it
// with Register (or Serve) and drive its timers with Run.
type Scheduler struct {
	cfg     Config
	log     *slog.Logger
	m       *metrics
	running atomic.Bool

	// mu guards everything below. Decisions take microseconds; nothing that
	// blocks (sending on a stream, I/O) happens while it is held.
	mu       sync.Mutex
	closed   bool
	tasks    map[string]*task
	taskList []*task // the tasks in an order that depends only on events
	hosts    map[string]*host
	seeds    map[string]*seedConn // by host ID
	// inventories: the open inventory session of each host, by host ID.
	inventories map[string]*InventorySession
	// linkPool: the hosts that asked for a link test partner, by host ID,
	// and their IDs in linkIDs (linktest.go).
	linkPool map[string]*linkHost
	linkIDs  []string
	rnd      *mrand.Rand
	epoch    uint64 // visit marks: a fresh epoch per walk avoids clearing
	visited  uint64 // candidates looked at by decisions (tests count them)
	// fillFreeOnly and fillExclude narrow fillParentsLocked for rehoming
	// (capacity.go): free candidates only, and not the current parent.
	fillFreeOnly bool
	fillExclude  *peer
	// fillWide: fillParentsLocked walks the whole pool, skipping the
	// peer's descendants (fillWideLocked).
	fillWide bool
	dirty    []*task // tasks whose waiting peers need a new look
	dropped  []*peer // peers whose send buffer overflowed
	counters counters
	started  time.Time
	now      func() time.Time // the clock (Option WithClock)
	lastGC   time.Time        // when Tick last collected

	// Scratch space reused across decisions (under mu).
	fwd             []*peer
	bwd             []*peer
	stack           []*peer
	ords            []uint64
	freeCands       []*peer
	fullCands       []*peer
	spareCands      []*peer
	cands           []policy.Candidate
	waitScratch     []*peer
	sortIdx         []int       // fastFirstLocked's scratch
	sortPeers       []keyedPeer // fastFirstLocked's scratch
	rateScratch     []float64
	pacedScratch    []pacedCand
	topUpDonors     []pacedCand // topUpShortLocked's scratch
	topUpRecv       []*peer
	topTrim         []*peer // parents whose top-ups may have lost their room (trimTopUpsLocked)
	unpaced         []*peer // lost their last paced parent to trimPacedLocked: decided at the flush
	pacedOnly       bool    // fillParentsLocked: paced parents or none (pacedRehomeLocked)
	pacedTopUp      bool    // fillParentsLocked: more paced parents for a peer short of its rate
	pacedMin        float64 // pacedLocked: what the peer has without them
	pacedRelief     bool    // pacedLocked: a slow leaf gives way to a pipeline, any paced parents do
	measuredScratch []float64
	depthScratch    []int32 // halfwayDownDeepestLocked: run lengths by listIdx
	// declaredMedian is the median declared uplink (usable part) of the
	// hosts connected, bytes/s, 0 when none declared; updated once a Tick
	// (updateRateLocked's prior while a task has few receivers).
	declaredMedian float64
}

// Option sets what a Scheduler takes from outside besides its Config.
type Option func(*Scheduler)

// WithClock makes the Scheduler read the time from now instead of time.Now:
// every decision, timeout and TTL follows it. A simulator passes its virtual
// clock, and then passes the same clock's reading as the now argument of
// Tick, Open, Session.Handle and Session.Close.
func WithClock(now func() time.Time) Option {
	return func(s *Scheduler) {
		if now != nil {
			s.now = now
		}
	}
}

// WithRand makes the Scheduler draw its random choices (candidate sampling,
// ties between parents) from r instead of a PCG seeded from crypto/rand: the
// same seed and the same events give the same decisions. r is used under the
// scheduler's lock only.
func WithRand(r *mrand.Rand) Option {
	return func(s *Scheduler) {
		if r != nil {
			s.rnd = r
		}
	}
}

// New returns a Scheduler for cfg. Metrics are registered on reg (skipped
// when reg is nil); log may be nil to discard logs. Without options the
// clock is time.Now and the random source a PCG seeded from crypto/rand.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer, opts ...Option) (*Scheduler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("new scheduler: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg, cfg.Metrics.DragonflyCompat)
	if err != nil {
		return nil, fmt.Errorf("new scheduler: %w", err)
	}
	s := &Scheduler{
		cfg:         cfg,
		log:         log,
		m:           m,
		tasks:       make(map[string]*task),
		hosts:       make(map[string]*host),
		seeds:       make(map[string]*seedConn),
		inventories: make(map[string]*InventorySession),
		linkPool:    make(map[string]*linkHost),
		now:         time.Now,
	}
	for _, o := range opts {
		o(s)
	}
	if s.rnd == nil {
		var seed [16]byte
		_, _ = rand.Read(seed[:]) // crypto/rand.Read never fails on supported platforms
		s.rnd = mrand.New(mrand.NewPCG(binary.LittleEndian.Uint64(seed[:8]), binary.LittleEndian.Uint64(seed[8:])))
	}
	s.started = s.now()
	s.lastGC = s.started
	return s, nil
}

// service adapts Scheduler to the generated interface without exporting the
// RPC methods on Scheduler itself.
type service struct {
	schedulerv1.UnimplementedSchedulerServer
	s *Scheduler
}

// Register registers the Scheduler service on gs.
func (s *Scheduler) Register(gs *grpc.Server) {
	schedulerv1.RegisterSchedulerServer(gs, &service{s: s})
}

// Run calls Tick every RefreshInterval with the scheduler's clock until ctx
// is done. It then closes every open session with codes.Unavailable so that
// peers re-register elsewhere and a graceful gRPC stop can finish, and
// returns nil. Run may be called once.
func (s *Scheduler) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return fmt.Errorf("run scheduler: already running: %w", core.ErrInvalid)
	}
	defer s.closeAll()
	refresh := time.NewTicker(s.cfg.RefreshInterval.D())
	defer refresh.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-refresh.C:
			s.tick(ctx, s.now())
		}
	}
}

// Tick runs the scheduler's periodic work at now, synchronously: waiting
// peers that waited WaitTimeout fail, waiting peers get another look, slow
// parents are replaced, peers with fewer than MaxParents parents get new
// ones when candidates appeared, piece tokens are renewed, and, when
// GCInterval passed since the last collection, tasks and hosts idle for
// TaskTTL are forgotten. Messages go out through the sessions' send
// functions before Tick returns. Run calls it every RefreshInterval; a
// simulator driving virtual time calls it itself at that period.
func (s *Scheduler) Tick(now time.Time) { s.tick(context.Background(), now) }

func (s *Scheduler) tick(ctx context.Context, now time.Time) {
	s.refresh(ctx, now)
	s.mu.Lock()
	due := now.Sub(s.lastGC) >= s.cfg.GCInterval.D()
	if due {
		s.lastGC = now
	}
	s.mu.Unlock()
	if due {
		s.gc(now)
	}
}

// Serve serves the Scheduler on lis with keepalive enforcement and runs it
// until ctx is done, then stops gracefully (cutting connections after a few
// seconds). It returns nil after a stop caused by ctx.
// opts are the transport's: pki.ServerOptions (mutual TLS and the identity
// interceptors the handlers rely on).
func (s *Scheduler) Serve(ctx context.Context, lis net.Listener, opts ...grpc.ServerOption) error {
	gs := grpc.NewServer(append(opts,
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             keepaliveMinTime,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    keepaliveTime,
			Timeout: keepaliveTimeout,
		}),
	)...)
	s.Register(gs)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.Run(gctx) })
	g.Go(func() error {
		if err := obs.ServeGRPC(gctx, gs, lis, stopGrace); err != nil {
			return fmt.Errorf("serve scheduler on %s: %w", lis.Addr(), err)
		}
		return nil
	})
	return g.Wait()
}

// closeAll ends every stream; new ones are refused from now on.
func (s *Scheduler) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, t := range s.taskList {
		for _, p := range t.list {
			p.conn.cancel(errShutdown)
		}
	}
	for _, sc := range s.seeds {
		sc.cancel(errShutdown)
	}
	for _, is := range s.inventories {
		is.cancel(errShutdown)
	}
}

// refresh gives peers with fewer than MaxParents parents new ones when
// candidates appeared, re-evaluates waiting peers and fails those that waited
// too long.
func (s *Scheduler) refresh(ctx context.Context, now time.Time) {
	var under []*peer
	s.mu.Lock()
	if s.cfg.CapacityAware {
		s.meterLocked(now)
	}
	for _, t := range s.taskList {
		if t.onlyHolders() {
			// Only inventory holders (done, never waiting): nothing here
			// times out, is slow or lacks parents. The open set and the
			// target rate are brought up to date at the first tick after
			// a downloader joins; decisions check every candidate anyway.
			// Hosts holding 500 cached tasks each made this walk the
			// largest part of a tick.
			continue
		}
		// Backwards: failing a peer swaps the last waiting one into its
		// place, which was visited already.
		for i := len(t.waitList) - 1; i >= 0; i-- {
			if w := t.waitList[i]; now.Sub(w.waitSince) >= s.cfg.WaitTimeout.D() {
				s.failLocked(w, "no parent and no origin budget within wait_timeout", now)
			}
		}
		t.crowded = slices.DeleteFunc(t.crowded, func(p *peer) bool {
			if p.state != stateRunning {
				p.crowded = false // left or done: nothing to rehome
				return true
			}
			return false
		})
		if len(t.waitList) > 0 || len(t.crowded) > 0 {
			s.markDirty(t)
		}
		if t.private {
			s.renewAccessLocked(t, now)
		}
		s.updateRateLocked(t, now)
		if len(t.pool) == 0 {
			continue
		}
		s.replaceSlowParentsLocked(t, now)
		s.sinkSlowRelaysLocked(t, now)
		s.settleSharesLocked(t, now)
		s.topUpShortLocked(t, now)
		for _, p := range t.list {
			s.touchOpenLocked(p)
			if p.state == stateRunning && !p.crowded && len(p.parents) == 1 && p.parents[0].share == 0 &&
				unpacedChildren(p) == 0 && s.slowSlot(p.parents[0].peer, now) {
				// A leaf whose full-rate parent became a slow slot (the
				// rate rose, or the parent took more children since)
				// gets the look a newcomer there gets: paced parents,
				// when they give it more (pacedRehomeLocked).
				s.crowdLocked(p)
				s.markDirty(t)
			}
			if p.state == stateRunning && len(p.parents) < s.cfg.MaxParents {
				under = append(under, p)
			}
			if p.state == stateRunning && len(p.parents) > 0 && p.parents[0].share > 0 && (s.pacedShort(p) || len(t.open) > 0) {
				s.unpaced = append(s.unpaced, p) // topped up or moved at the flush
			}
		}
	}
	s.flushLocked(now)
	s.mu.Unlock()

	for len(under) > 0 && ctx.Err() == nil {
		n := min(refreshBatch, len(under))
		s.mu.Lock()
		for _, p := range under[:n] {
			if p.state != stateRunning || p.task.unverifiable() {
				continue // no parent could be checked (restore.go)
			}
			if s.fillParentsLocked(p, false) {
				s.sendParentsLocked(p, now)
			}
		}
		s.flushLocked(now)
		s.mu.Unlock()
		clear(under[:n])
		under = under[n:]
	}
}

// gc forgets tasks and hosts that have had no peers for TaskTTL.
func (s *Scheduler) gc(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gcLinkPoolLocked(now)
	ttl := s.cfg.TaskTTL.D()
	for i := len(s.taskList) - 1; i >= 0; i-- {
		t := s.taskList[i]
		if len(t.peers) == 0 && now.Sub(t.emptySince) >= ttl {
			delete(s.tasks, t.id)
			last := s.taskList[len(s.taskList)-1]
			s.taskList[i], last.listIdx = last, i
			s.taskList[len(s.taskList)-1] = nil
			s.taskList = s.taskList[:len(s.taskList)-1]
			s.m.tasks.Dec()
			s.log.Debug("task forgotten", "task_id", t.id)
		}
	}
	for id, h := range s.hosts {
		if h.peers == 0 && h.seed == nil && now.Sub(h.idleSince) >= ttl {
			delete(s.hosts, id)
		}
	}
}

// statusFromCause turns the cause of a stream's end into its gRPC status.
func statusFromCause(ctx context.Context) error {
	cause := context.Cause(ctx)
	if errors.Is(cause, errPeerFinished) || errors.Is(cause, errRefused) {
		return nil
	}
	if _, ok := status.FromError(cause); ok {
		return cause
	}
	return status.FromContextError(ctx.Err()).Err()
}

// replaceSlowParentsLocked drops parents whose hosts upload at less than
// SlowParentRatio of the task's median parent throughput (once measured over
// SlowParentSamples pieces) and gives their children other parents: one slow
// uplink must not hold back everyone below it.
func (s *Scheduler) replaceSlowParentsLocked(t *task, now time.Time) {
	judge := s.cfg.SlowParentRatio > 0
	if !judge && !s.cfg.CapacityAware {
		return
	}
	var rates []float64
	seen := map[*host]bool{}
	for _, p := range t.list {
		for _, l := range p.parents {
			h := l.peer.host
			if !seen[h] && h.throughput > 0 && h.successes >= uint64(s.cfg.SlowParentSamples) {
				seen[h] = true
				rates = append(rates, h.throughput)
			}
		}
	}
	median := 0.0
	if len(rates) < 3 {
		judge = false // too few parents measured to call one slow
	} else {
		slices.Sort(rates)
		median = rates[len(rates)/2]
	}
	var moved []*peer
	for _, p := range t.list {
		if p.state != stateRunning {
			continue
		}
		for i := 0; i < len(p.parents); i++ {
			par := p.parents[i].peer
			h := par.host
			if par.state == stateBackToSource && p.parents[i].share == 0 && unpacedChildren(par) <= 1 {
				// A peer fetching from the origin holds the newest pieces
				// and nobody else does: slow or not, it keeps its last
				// child, or nothing new reaches the swarm (every peer
				// then waits out its swarm timeout and goes to the origin).
				continue
			}
			if s.cfg.CapacityAware && p.parents[i].share == 0 && s.overMeteredLimit(par, now) {
				// Its meter found its uplink below what its children
				// take at the task's rate (meter.go): the excess
				// children move, as from a slow parent.
				s.log.Info("moving child off a parent over its measured capacity", "task_id", t.id, "peer_id", p.id, "parent", par.id,
					"parent_bps", int64(h.meter.cap), "rate_bps", int64(t.rate))
				s.removeEdge(par, p)
				moved = s.spliceLocked(par, p, moved)
				i--
				continue
			}
			if s.cfg.CapacityAware && p.parents[i].share == 0 && len(p.parents) == 1 && len(par.children) == 1 &&
				s.unfitRelay(par, now) && s.heirFor(par, p) != nil {
				// A declared relay well below the task's rate (it took
				// its child while the rate was still low, from the first
				// few hosts to register) holds everyone below it at its
				// uplink. Its child takes its place under its parent, and
				// it is decided again, as a leaf.
				s.log.Info("relay below the task's rate spliced out", "task_id", t.id, "peer_id", p.id, "parent", par.id,
					"parent_bps", int64(s.uplink(h, now)), "rate_bps", int64(t.rate))
				s.removeEdge(par, p)
				moved = s.spliceLocked(par, p, moved)
				i--
				continue
			}
			if par.state == stateSucceeded && p.parents[i].share == 0 && unpacedChildren(par) <= 1 {
				// A finished parent holds everything its child lacks: it
				// keeps its last full-rate child as a fetching source
				// does (above). Its holder takes over a done peer's
				// children (handoverLocked); judged against the median
				// of relays on loopback, the seed's holder lost the
				// pipeline's head, which then had nobody to fetch from
				// but the origin (test/e2e TestRelayedPipeline).
				continue
			}
			if !judge || !seen[h] || p.parents[i].share > 0 || (s.cfg.CapacityAware && ((h.info.GetUploadBps() > 0 && !h.meter.bound) || (h.info.GetUploadBps() <= 0 && h.meter.judged))) {
				// A paced parent gives its booked share by design: it was
				// chosen knowing its capacity (pacedLocked). An undeclared
				// host its meter has judged is left to the meter: what its
				// children got per piece mixes its uplink with its input
				// and with requests made ahead of it, and called fast
				// relays slow in pipelines being rebuilt. So is a
				// declared one, unless the meter found it sending less
				// than its children could take: a relay that passes on
				// all it gets is not what holds its child back, however
				// slow its pieces look (four requests ahead of a relay
				// fed at 20 Mbit/s took 5 Mbit/s each, and the simulator
				// replaced every fast relay of a declared pipeline built
				// as peers came). Also before the meter judged any
				// window: in a task's first second, at 10,000 simulated
				// hosts, eleven fast relays were replaced per piece, and
				// the peers moved with them sat below slow hosts for
				// four seconds.
				continue
			}
			// A parent is judged against what it gets itself when that is
			// measured: with relays, every peer below a slow uplink passes
			// pieces on at that uplink's rate, so the task's median drops
			// to it and only the comparison with the parent's own input
			// still tells the slow link from those merely fed slowly.
			// Fetchers from the origin are judged against the median.
			ref := median
			if in := s.inputRate(par); in > 0 {
				if now.Sub(par.parentsAt) < inputGrace {
					continue // its new input has yet to show in what it passes on
				}
				ref = in
			}
			limit := s.cfg.SlowParentRatio * ref
			if h.throughput >= limit {
				continue
			}
			if g := localityGroup(p.host.info); g != localityGroup(h.info) {
				continue // links between IDCs are expected to be slower
			}
			if s.cfg.CapacityAware && unpacedChildren(p) > 0 && !s.slowHost(p, now) && !s.fastAlternative(p, par, now) {
				// p relays, and every host that could take it is slow,
				// a seed, or below p: moved, it would hang below a slow
				// uplink with all its pipeline (in the simulator, mixed
				// with the seed on the origin's host, a pipeline's head
				// went below a slow host and the last host's T*/T_last
				// fell from 0.83 to 0.47). A slow parent beats that.
				continue
			}
			s.log.Info("replacing slow parent", "task_id", t.id, "peer_id", p.id, "parent", par.id,
				"parent_bps", int64(h.throughput), "reference_bps", int64(ref))
			s.removeEdge(par, p)
			s.markBadLocked(p, par.id, badSlow, now)
			h.slowUntil = now.Add(badParentTTL)
			s.m.slowParents.Inc()
			moved = s.spliceLocked(par, p, moved)
			i--
		}
	}
	for _, p := range moved {
		s.decideLocked(p, now, true)
	}
}

// fastAlternative reports whether some peer of p's task other than par
// could be p's parent without holding it below a slow uplink: not p's
// descendant, not a seed host that may share the origin's uplink (kept for
// the content's first copy; sharedSeed), not known to be slow or replaced as slow lately, and not one p
// reported. O(p's subtree + the pool); called only before a relay is
// moved off a parent found slow.
func (s *Scheduler) fastAlternative(p, par *peer, now time.Time) bool {
	s.epoch++
	e := s.epoch
	p.mark = e
	s.markSubtree(p, e)
	for _, c := range p.task.pool {
		if c == par || c.mark == e || sharedSeed(c) || now.Before(c.host.slowUntil) || s.slowHost(c, now) {
			continue
		}
		if _, bad := p.bad[c.id]; bad {
			continue
		}
		return true
	}
	return false
}

// markSubtree sets the mark of every peer below p (children, theirs, and
// so on) to e: candidates so marked would close a cycle as p's parents.
func (s *Scheduler) markSubtree(p *peer, e uint64) {
	stack := append(s.stack[:0], p)
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, c := range n.children {
			if c.mark != e {
				c.mark = e
				stack = append(stack, c)
			}
		}
	}
	s.stack = stack[:0]
}

// spliceLocked follows the removal of the edge par→p, par too slow for
// it: p is to be decided again (appended to moved). In a pipeline every
// other peer above p already serves a child, so p would split one of their
// uplinks. Splice instead: p takes par's place under par's own parent, and
// par, left without children, goes to the end.
func (s *Scheduler) spliceLocked(par, p *peer, moved []*peer) []*peer {
	moved = append(moved, p)
	if gp := s.heirParent(par, p); gp != nil && len(par.children) == 0 && par.state == stateRunning {
		s.removeEdge(gp, par)
		s.linkLocked(gp, p)
		moved = append(moved, par) // decided by the caller, like p
	}
	return moved
}

// overMeteredLimit reports whether par, of undeclared capacity, feeds a
// full-rate child though its measured uplink feeds none at the task's
// rate. (A parent merely over its count keeps the child: it was given as
// a share of a full uplink when no slot was free, and moving it brings it
// straight back.)
func (s *Scheduler) overMeteredLimit(par *peer, now time.Time) bool {
	if par.host.info.GetUploadBps() > 0 || par.host.meter.cap <= 0 || par.task.rate <= 0 {
		return false
	}
	return s.childLimit(par, now) == 0 && unpacedChildren(par) > 0
}

// heirParent returns the parent under which child may take x's place in a
// pipeline (x leaving, or spliced out as slow): x's only parent, when child
// has no parent left, the two share a locality group, it is still in the
// task and child has not reported it bad; nil otherwise.
func (s *Scheduler) heirParent(x, child *peer) *peer {
	if len(child.parents) != 0 {
		return nil
	}
	return s.heirFor(x, child)
}

// heirFor is heirParent without the condition on child's own parents:
// whether child could take x's place once its edge from x is gone.
func (s *Scheduler) heirFor(x, child *peer) *peer {
	if len(x.parents) != 1 || x.parents[0].share > 0 {
		return nil
	}
	gp := x.parents[0].peer
	if gp == child || gp.state == stateLeft || localityGroup(gp.host.info) != localityGroup(child.host.info) {
		return nil
	}
	if _, bad := child.bad[gp.id]; bad {
		return nil
	}
	return gp
}

// relayUnfit: a declared relay whose uplink is below this share of the
// task's rate is spliced out of the pipeline (unfitRelay). Below
// childrenAt's 0.75, so that a relay taken at about that share is not
// moved as the rate wavers.
const relayUnfit = 0.7

// unfitRelay reports whether par, a downloading relay of declared uplink,
// is too slow to relay at its task's current rate.
func (s *Scheduler) unfitRelay(par *peer, now time.Time) bool {
	h := par.host
	r := par.task.rate
	if par.state != stateRunning || h.info.GetUploadBps() <= 0 || h.info.GetSeed() || r <= 0 {
		return false
	}
	return s.uplink(h, now) < relayUnfit*r
}

// inputGrace is how long a peer that got a new parent is not judged
// against that parent's rate: its children's reports still describe what it
// passed on from the old one.
var inputGrace = 3 * time.Second

// inputRate is the best measured upload throughput among p's own parents'
// hosts: how fast p could receive, 0 when none is measured.
func (s *Scheduler) inputRate(p *peer) float64 {
	best := 0.0
	for _, l := range p.parents {
		h := l.peer.host
		if h.successes >= uint64(s.cfg.SlowParentSamples) {
			best = max(best, h.throughput)
		}
	}
	return best
}
