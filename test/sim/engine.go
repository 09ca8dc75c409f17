package sim

import (
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"time"

	schedulerv1 "github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/test/swarm/scenario"
)

// epoch is virtual time 0 as the scheduler and the cores see it.
var epoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// pieceDigest is the simulated content's digest of piece n.
func pieceDigest(n uint32) []byte {
	d := make([]byte, core.DigestSize)
	binary.BigEndian.PutUint32(d, n)
	copy(d[4:], "damselfly-sim")
	return d
}

// node is one simulated host running a daemon (or the seed peer).
type node struct {
	idx    int
	name   string
	peerID string
	host   *schedulerv1.Host
	rack   int
	up     *Link
	down   *Link
	upBps  float64 // bits per second, as configured
	downBp float64
	seed   bool
	victim bool // the harness's churn kills it

	core    Core
	sess    Session
	started bool
	joinAt  float64
	doneAt  float64
	done    bool
	gone    bool
	failed  string
	settled bool // done, failed or gone: no longer counted in Sim.pending

	have   []bool
	avail  []bool // held or arriving (announced to children)
	haveN  int
	recv   map[uint32][]*transfer // in flight, by piece (endgame: from several parents)
	out    map[*transfer]struct{}
	subs   map[*node]struct{} // children syncing this node's pieces
	synced map[*node]struct{} // parents this node syncs with

	originQ    []uint32 // pieces left in its origin stream
	originBusy bool
	originMeta bool // the origin's answer (shape) was given
	// The core's timer: when it wants EvTick (timerAt, +Inf: never) and
	// the earliest event queued for it (timerEv). A core moves its timer
	// on every piece; one queued event per node, re-armed when it fires
	// early, keeps the event heap from filling with stale timers.
	timerAt float64
	timerEv float64

	uploaded int64
}

// transfer is one piece in flight from a parent (nil: the origin) to a node.
type transfer struct {
	from, to  *node
	piece     uint32
	req       uint64 // the core's request number (0: none)
	size      int64
	flow      *Flow
	requested float64
	gate      *transfer // relay: the parent's own incoming transfer of this piece
	drained   bool      // the flow is done, waiting for gate
	waiters   []*transfer
	over      bool
}

// Sim is one simulation.
type Sim struct {
	cfg      Config
	net      *Net
	sched    Scheduler
	newCore  NewCoreFunc
	spec     *schedulerv1.TaskSpec
	pieces   uint32
	pieceLen []int64
	digests  [][]byte

	origin     *node // links only
	originUp   *Link
	seedNode   *node
	nodes      []*node // peers, then joiners
	byPeer     map[string]*node
	rackIn     []*Link // router link into each rack (racks scenario)
	events     eventHeap
	seq        uint64
	rnd        *mrand.Rand
	originSent int64
	interRack  int64

	schedCPU   time.Duration
	schedCalls int64
	timingCost time.Duration
	tickCPU    time.Duration // of which in Tick
	ticks      int64
	nEvents    int64
	joined     int
	killed     int
	pending    int // peers neither done, failed nor gone
	// originWhy counts the origin fetches of peers (not the seed peer) by
	// the core's reason.
	originWhy map[string]int
	err       error
}

type event struct {
	at  float64
	seq uint64
	fn  func()
}

type eventHeap []event

func (h eventHeap) Len() int { return len(h) }
func (h eventHeap) Less(i, j int) bool {
	if h[i].at != h[j].at {
		return h[i].at < h[j].at
	}
	return h[i].seq < h[j].seq
}
func (h eventHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)   { *h = append(*h, x.(event)) }
func (h *eventHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

func (s *Sim) at(t float64, fn func()) {
	s.seq++
	heap.Push(&s.events, event{at: t, seq: s.seq, fn: fn})
}

func (s *Sim) now() float64 { return s.net.Now() }

func vtime(t float64) time.Time { return epoch.Add(time.Duration(t * float64(time.Second))) }

// New builds a simulation of cfg with the given scheduler and cores.
func New(cfg Config, newSched NewSchedulerFunc, newCore NewCoreFunc) (*Sim, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	s := &Sim{cfg: cfg, net: NewNet(), newCore: newCore, byPeer: map[string]*node{}, originWhy: map[string]int{},
		rnd: mrand.New(mrand.NewPCG(cfg.Seed, cfg.Seed^0x51a))}
	url := "https://origin.sim/blob"
	s.spec = &schedulerv1.TaskSpec{Url: url, TaskId: core.TaskID(url, core.TaskOptions{})}
	s.pieces = core.PieceCount(cfg.Size, cfg.PieceSize)
	s.pieceLen = make([]int64, s.pieces)
	s.digests = make([][]byte, s.pieces)
	for i := range s.pieces {
		_, s.pieceLen[i] = core.PieceRange(i, cfg.Size, cfg.PieceSize)
		s.digests[i] = pieceDigest(i)
	}
	racks := cfg.racks()
	if cfg.Scenario == scenario.Racks {
		s.rackIn = make([]*Link, racks+1)
		for r := 1; r <= racks; r++ {
			s.rackIn[r] = s.net.NewLink(fmt.Sprintf("rack%d-in", r), float64(cfg.InterRackRate)/8*cfg.PayloadFrac)
		}
	}
	s.originUp = s.net.NewLink("origin-up", float64(cfg.OriginRate)/8*cfg.PayloadFrac)
	s.origin = &node{name: "origin", rack: 1, up: s.originUp}
	s.seedNode = s.newNode("seed", 1, float64(cfg.SeedRate), float64(cfg.DownRate))
	s.seedNode.seed = true
	s.seedNode.host.Seed = true
	if cfg.SeedOnOrigin {
		// One host, one uplink: the seed peer's uploads leave through the
		// origin's.
		s.seedNode.up = s.originUp
	}
	victims := cfg.ChurnVictims(cfg.Hosts)
	for i, h := range cfg.layout() {
		n := s.newNode(h.Name, h.Rack, h.Up, h.Down)
		n.victim = victims[i]
		s.nodes = append(s.nodes, n)
		s.pending++
	}
	if !cfg.Declare && !cfg.NoLinkTest {
		s.linkTests()
	}
	sched, err := newSched(SchedulerEnv{TriggerSeed: s.triggerSeed, SeedHost: s.seedNode.host, Seed: cfg.Seed, Config: cfg.Scheduler})
	if err != nil {
		return nil, fmt.Errorf("start scheduler: %w", err)
	}
	s.sched = sched
	return s, nil
}

func (s *Sim) newNode(name string, rack int, upBps, downBps float64) *node {
	idx := len(s.byPeer)
	n := &node{
		idx: idx, name: name, rack: rack, peerID: name + "-p",
		upBps: upBps, downBp: downBps,
		up:   s.net.NewLink(name+"-up", upBps/8*s.cfg.PayloadFrac),
		down: s.net.NewLink(name+"-down", downBps/8*s.cfg.PayloadFrac),
		have: make([]bool, s.pieces), avail: make([]bool, s.pieces),
		recv: map[uint32][]*transfer{}, out: map[*transfer]struct{}{},
		subs: map[*node]struct{}{}, synced: map[*node]struct{}{},
		timerAt: math.Inf(1), timerEv: math.Inf(1),
	}
	ip := fmt.Sprintf("10.%d.%d.%d", 77+rack, (idx/250)%250, 10+idx%250)
	n.host = &schedulerv1.Host{Id: name, Hostname: name, Ip: ip, PeerPort: 65000, UploadPort: 65002,
		Idc: fmt.Sprintf("rack%d", rack), Location: fmt.Sprintf("sim|rack%d|%s", rack, name)}
	if s.cfg.Declare {
		n.host.UploadBps, n.host.DownloadBps = int64(upBps/8), int64(downBps/8)
	}
	s.byPeer[n.peerID] = n
	return n
}

// linkTests gives every host but the seed what the daemon's link tests
// would report had it started before the run (as a DaemonSet's daemons do):
// each host sends to two others and receives from two (the scheduler pairs
// a host with the free one that received the fewest), on idle links. A
// test measures the payload rate of the slower of the sender's uplink and
// the partner's downlink; the host reports the best of its two as its
// uplink, and the best it received as its downlink. The seed peer tests
// too (a 10 Gbit/s seed among 1 Gbit/s hosts then reports 1 Gbit/s, and
// its children still probe it in a large task).
func (s *Sim) linkTests() {
	nodes := append([]*node{s.seedNode}, s.nodes...)
	n := len(nodes)
	if n < 2 {
		return
	}
	r := mrand.New(mrand.NewPCG(s.cfg.Seed, 0x11c7))
	perm := r.Perm(n)
	up := make([]float64, n)
	down := make([]float64, n)
	for k := 1; k <= min(2, n-1); k++ {
		for i := range perm {
			a, b := nodes[perm[i]], nodes[perm[(i+k)%n]]
			rate := min(a.upBps, b.downBp) / 8 * s.cfg.PayloadFrac
			up[perm[i]] = max(up[perm[i]], rate)
			down[perm[(i+k)%n]] = max(down[perm[(i+k)%n]], rate)
		}
	}
	for i, nd := range nodes {
		nd.host.LinkUploadBps, nd.host.LinkDownloadBps = int64(up[i]), int64(down[i])
	}
}

// lat is the one-way latency between two hosts: one hop within a rack, two
// through the router.
func (s *Sim) lat(a, b *node) float64 {
	h := s.cfg.HopLatency.Seconds()
	if s.cfg.Scenario == scenario.Racks && a != nil && b != nil && a.rack != b.rack {
		return 2 * h
	}
	return h
}

// schedLat is the one-way latency to the scheduler host.
func (s *Sim) schedLat() float64 { return s.cfg.HopLatency.Seconds() }

func (s *Sim) linksFor(from, to *node) []*Link {
	ls := []*Link{from.up, to.down}
	if s.rackIn != nil && from.rack != to.rack {
		ls = append(ls, s.rackIn[to.rack])
	}
	return ls
}

// Run simulates until every surviving host is done or the deadline passes.
func (s *Sim) Run() (*Result, error) {
	runtime.LockOSThread() // threadCPU measures this thread
	defer runtime.UnlockOSThread()
	s.timingCost = timingOverhead()
	wall := time.Now()
	lb := LowerBound(s.cfg, s.mustFinish())
	order := s.nodes
	if s.cfg.ShuffleJoins {
		order = slices.Clone(s.nodes)
		s.rnd.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	}
	for i, n := range order {
		s.at(float64(i)*s.cfg.JoinSpacing.Seconds(), func() { s.startNode(n, false) })
	}
	churnAt := s.cfg.ChurnAt.Seconds()
	if churnAt == 0 {
		churnAt = lb.TStar / 2
	}
	for _, n := range s.nodes {
		if n.victim {
			s.at(churnAt, func() { s.kill(n) })
		}
	}
	if s.cfg.LeaveRate > 0 {
		s.at(s.rnd.ExpFloat64()/s.cfg.LeaveRate, s.randomLeave)
	}
	if s.cfg.JoinRate > 0 {
		s.at(s.rnd.ExpFloat64()/s.cfg.JoinRate, func() { s.randomJoin(lb) })
	}
	s.at(s.cfg.TickEvery.Seconds(), s.tick)
	deadline := s.cfg.Deadline.Seconds()
	for s.err == nil {
		s.net.Settle()
		tf := s.net.NextFinish()
		te := math.Inf(1)
		if len(s.events) > 0 {
			te = s.events[0].at
		}
		t := math.Min(tf, te)
		if math.IsInf(t, 1) || t > deadline {
			break
		}
		s.net.AdvanceTo(t)
		for len(s.events) > 0 && s.events[0].at <= t {
			e := heap.Pop(&s.events).(event)
			s.nEvents++
			e.fn()
		}
		if s.allDone() {
			break
		}
	}
	if s.err != nil {
		return nil, s.err
	}
	return s.result(lb, time.Since(wall)), nil
}

func (s *Sim) mustFinish() []HostSpec {
	var hs []HostSpec
	for _, n := range s.nodes {
		if !n.victim {
			hs = append(hs, HostSpec{Name: n.name, Rack: n.rack, Up: n.upBps, Down: n.downBp})
		}
	}
	return hs
}

func (s *Sim) allDone() bool { return s.pending == 0 }

// settle takes a peer that is done, failed or gone out of the count of
// those the run waits for.
func (s *Sim) settle(n *node) {
	if !n.settled && !n.seed {
		n.settled = true
		s.pending--
	}
}

// tick runs the scheduler's periodic work every TickEvery (the cores set
// their own timers).
func (s *Sim) tick() {
	now := s.now()
	before := s.schedCPU
	s.timeSched(func() { s.sched.Tick(vtime(now)) })
	s.tickCPU += s.schedCPU - before
	s.ticks++
	s.at(now+s.cfg.TickEvery.Seconds(), s.tick)
}

func (s *Sim) timeSched(fn func()) {
	t0 := threadCPU()
	fn()
	s.schedCPU += threadCPU() - t0
	s.schedCalls++
}

func (s *Sim) triggerSeed(spec *schedulerv1.TaskSpec) {
	n := s.seedNode
	if n.started || n.gone {
		return
	}
	s.at(s.now()+s.schedLat(), func() { s.startNode(n, true) })
}

func (s *Sim) startNode(n *node, seedRequest bool) {
	if n.started || n.gone {
		return
	}
	n.started = true
	n.joinAt = s.now()
	c, err := s.newCore(CoreParams{PeerID: n.peerID, Host: n.host, Spec: s.spec, SeedRequest: seedRequest,
		Relay: s.cfg.Relay, Seed: s.cfg.Seed*1_000_003 + uint64(n.idx), Length: s.cfg.Size, PieceSize: s.cfg.PieceSize,
		OriginOnHost: s.local(n)})
	if err != nil {
		s.err = fmt.Errorf("core of %s: %w", n.name, err)
		return
	}
	n.core = c
	var sess Session
	s.timeSched(func() {
		sess, err = s.sched.Open(vtime(s.now()), n.peerID, n.host, func(m *schedulerv1.SchedulerMessage) {
			if n.gone {
				return
			}
			s.at(s.now()+s.schedLat(), func() {
				if !n.gone {
					s.handle(n, Event{Kind: EvScheduler, Msg: m})
				}
			})
		})
	})
	if err != nil {
		s.err = fmt.Errorf("open announce session of %s: %w", n.name, err)
		return
	}
	n.sess = sess
	s.handle(n, Event{Kind: EvStart})
}

// handle gives an event to a node's core and carries out its actions.
func (s *Sim) handle(n *node, ev Event) {
	if n.gone || n.core == nil {
		return
	}
	acts := n.core.Handle(vtime(s.now()), ev)
	for _, a := range acts {
		s.act(n, a)
	}
}

func (s *Sim) act(n *node, a Action) {
	now := s.now()
	switch a.Kind {
	case ActSend:
		m := a.Msg
		s.at(now+s.schedLat(), func() {
			if n.gone {
				return
			}
			s.timeSched(func() {
				if err := n.sess.Send(vtime(s.now()), m); err != nil && !errors.Is(err, errSessionClosed) {
					s.err = fmt.Errorf("%s: send to scheduler: %w", n.name, err)
				}
			})
		})
	case ActSync:
		p := s.byPeer[a.Parent]
		if p == nil || p == n {
			s.handleLater(n, now+s.lat(n, p), Event{Kind: EvParentGone, Parent: a.Parent})
			return
		}
		n.synced[p] = struct{}{}
		s.at(now+s.lat(n, p), func() {
			if p.gone {
				s.handleLater(n, s.now()+s.lat(n, p), Event{Kind: EvParentGone, Parent: p.peerID})
				return
			}
			if _, ok := n.synced[p]; !ok {
				return
			}
			p.subs[n] = struct{}{}
			var have, relaying []uint32
			for i, ok := range p.avail {
				switch {
				case p.have[i]:
					have = append(have, uint32(i))
				case ok:
					relaying = append(relaying, uint32(i))
				}
			}
			s.handleLater(n, s.now()+s.lat(n, p), Event{Kind: EvParentPieces, Parent: p.peerID, Pieces: have, RelayingPieces: relaying})
		})
	case ActUnsync:
		if p := s.byPeer[a.Parent]; p != nil {
			delete(n.synced, p)
			delete(p.subs, n)
		}
	case ActRequest:
		s.request(n, a.Parent, a.Piece, a.Req)
	case ActCancel:
		for _, t := range n.recv[a.Piece] {
			if t.from != nil && t.from.peerID == a.Parent && (a.Req == 0 || a.Req == t.req) {
				s.abort(t, FailCancelled)
				break
			}
		}
	case ActOrigin:
		if !n.seed {
			r := a.Reason
			if r == "" {
				r = "unspecified"
			}
			s.originWhy[r]++
		}
		n.originQ = append(n.originQ, a.Pieces...)
		if !n.originBusy {
			n.originBusy = true
			// An HTTP request: one round trip before the first byte.
			s.at(now+2*s.lat(n, s.origin), func() { s.originNext(n) })
		}
	case ActTimer:
		n.timerAt = math.Inf(1)
		if !a.At.IsZero() {
			n.timerAt = math.Max(now, a.At.Sub(epoch).Seconds())
		}
		s.armTimer(n)
	case ActDone:
		if !n.done {
			n.done = true
			n.doneAt = now
			s.settle(n)
		}
	case ActFail:
		if n.failed == "" {
			n.failed = a.Reason
			if n.failed == "" {
				n.failed = "failed"
			}
			s.settle(n)
		}
	}
}

// armTimer queues the node's timer event when none is queued early enough.
func (s *Sim) armTimer(n *node) {
	if n.timerAt >= n.timerEv {
		return
	}
	at := n.timerAt
	n.timerEv = at
	s.at(at, func() {
		if n.timerEv == at {
			n.timerEv = math.Inf(1)
		}
		if n.gone {
			return
		}
		if n.timerAt <= s.now() {
			n.timerAt = math.Inf(1)
			s.handle(n, Event{Kind: EvTick})
		}
		s.armTimer(n)
	})
}

func (s *Sim) handleLater(n *node, t float64, ev Event) {
	s.at(t, func() { s.handle(n, ev) })
}

var errSessionClosed = errors.New("session closed")

// request: n asks parent for a piece; the request reaches it one latency
// later, and the piece's bytes then flow parent → n.
func (s *Sim) request(n *node, parentID string, piece uint32, req uint64) {
	now := s.now()
	p := s.byPeer[parentID]
	if p == nil || piece >= s.pieces {
		s.handleLater(n, now, Event{Kind: EvPieceFailed, Parent: parentID, Piece: piece, Req: req, Reason: FailConnLost})
		return
	}
	t := &transfer{from: p, to: n, piece: piece, req: req, size: s.pieceLen[piece], requested: now}
	n.recv[piece] = append(n.recv[piece], t)
	s.at(now+s.lat(n, p), func() {
		if t.over {
			return
		}
		if p.gone {
			s.fail(t, FailConnLost)
			return
		}
		switch {
		case p.have[piece]:
		case s.cfg.Relay && len(p.recv[piece]) > 0:
			t.gate = p.recv[piece][0]
			t.gate.waiters = append(t.gate.waiters, t)
		default:
			s.fail(t, FailNotFound)
			return
		}
		p.out[t] = struct{}{}
		s.announce(n, piece)
		t.flow = s.net.Start(float64(t.size), func(float64) { s.drained(t) }, s.linksFor(p, n)...)
	})
}

// originNext starts the next piece of n's origin stream.
func (s *Sim) originNext(n *node) {
	if n.gone {
		return
	}
	for len(n.originQ) > 0 && n.have[n.originQ[0]] {
		n.originQ = n.originQ[1:]
	}
	if len(n.originQ) == 0 {
		n.originBusy = false
		s.handle(n, Event{Kind: EvOriginDone})
		return
	}
	if !n.originMeta {
		n.originMeta = true
		s.handle(n, Event{Kind: EvOriginMeta, Length: s.cfg.Size})
		if n.gone || len(n.originQ) == 0 {
			return
		}
	}
	piece := n.originQ[0]
	n.originQ = n.originQ[1:]
	t := &transfer{to: n, piece: piece, size: s.pieceLen[piece], requested: s.now()}
	n.recv[piece] = append(n.recv[piece], t)
	s.announce(n, piece)
	var ls []*Link
	if !s.local(n) {
		ls = append(ls, s.originUp, n.down)
		if s.rackIn != nil && n.rack != 1 {
			ls = append(ls, s.rackIn[n.rack])
		}
	}
	t.flow = s.net.Start(float64(t.size), func(float64) { s.drained(t) }, ls...)
}

// local: n is the seed peer on the origin's own host (its origin fetch
// crosses no link).
func (s *Sim) local(n *node) bool { return n.seed && s.cfg.SeedOnOrigin }

// announce tells n's children that n has (or is receiving) piece.
func (s *Sim) announce(n *node, piece uint32) {
	held := n.have[piece]
	if (n.avail[piece] && !held) || (!s.cfg.Relay && !held) {
		return
	}
	n.avail[piece] = true
	subs := make([]*node, 0, len(n.subs))
	for c := range n.subs {
		subs = append(subs, c)
	}
	sort.Slice(subs, func(i, j int) bool { return subs[i].idx < subs[j].idx })
	for _, c := range subs {
		s.handleLater(c, s.now()+s.lat(n, c), Event{Kind: EvParentHas, Parent: n.peerID, Piece: piece, Relaying: !held})
	}
}

func (s *Sim) drained(t *transfer) {
	t.flow = nil
	if t.gate != nil && !t.gate.over {
		t.drained = true
		return // waits for the parent's own copy (relay)
	}
	s.arrive(t)
}

// arrive: the last byte reaches the receiver one latency after it left.
func (s *Sim) arrive(t *transfer) {
	if t.from != nil {
		delete(t.from.out, t)
		t.from.uploaded += t.size
	} else if !s.local(t.to) {
		s.originSent += t.size
	}
	fromRack := 1
	if t.from != nil {
		fromRack = t.from.rack
	}
	if fromRack != t.to.rack {
		s.interRack += t.size
	}
	at := s.now() + s.lat(t.from, t.to)
	if t.from == nil {
		at = s.now() + s.lat(s.origin, t.to)
	}
	s.at(at, func() { s.complete(t) })
}

func (s *Sim) complete(t *transfer) {
	n := t.to
	if t.over || n.gone {
		return
	}
	t.over = true
	s.unrecv(t)
	first := !n.have[t.piece]
	if first {
		n.have[t.piece] = true
		n.haveN++
	}
	for _, w := range t.waiters {
		if w.drained && !w.over {
			s.arrive(w)
		}
	}
	t.waiters = nil
	if first {
		// Relays waiting on another copy of this piece (endgame) need
		// not wait for it any more.
		for _, o := range n.recv[t.piece] {
			for _, w := range o.waiters {
				w.gate = nil
				if w.drained && !w.over {
					s.arrive(w)
				}
			}
			o.waiters = nil
		}
	}
	parent := ""
	if t.from != nil {
		parent = t.from.peerID
	}
	if first {
		s.announce(n, t.piece)
	}
	s.handle(n, Event{Kind: EvPieceDone, Parent: parent, Piece: t.piece, Req: t.req, Bytes: t.size,
		Cost: time.Duration((s.now() - t.requested) * float64(time.Second)), Digest: s.digests[t.piece]})
	if t.from == nil {
		s.originNext(n)
	}
}

// unrecv takes t out of its receiver's transfers in flight.
func (s *Sim) unrecv(t *transfer) {
	ts := t.to.recv[t.piece]
	for i, x := range ts {
		if x == t {
			ts = append(ts[:i], ts[i+1:]...)
			break
		}
	}
	if len(ts) == 0 {
		delete(t.to.recv, t.piece)
	} else {
		t.to.recv[t.piece] = ts
	}
}

// abort ends a transfer without telling the receiver's core (it asked).
func (s *Sim) abort(t *transfer, reason string) {
	if t.over {
		return
	}
	t.over = true
	if t.flow != nil {
		s.net.Cancel(t.flow)
		t.flow = nil
	}
	if t.from != nil {
		delete(t.from.out, t)
	}
	s.unrecv(t)
	if len(t.to.recv[t.piece]) == 0 && !t.to.have[t.piece] {
		t.to.avail[t.piece] = false
	}
	for _, w := range t.waiters {
		s.fail(w, FailRelay)
	}
	t.waiters = nil
	if reason != "" {
		parent := ""
		if t.from != nil {
			parent = t.from.peerID
		}
		n := t.to
		s.handleLater(n, s.now()+s.lat(t.from, n), Event{Kind: EvPieceFailed, Parent: parent, Piece: t.piece, Req: t.req, Reason: reason})
	}
}

func (s *Sim) fail(t *transfer, reason string) { s.abort(t, reason) }

// kill: the host dies (SIGKILL): its transfers break, its syncs end, its
// announce stream closes.
func (s *Sim) kill(n *node) {
	if n.gone {
		return
	}
	n.gone = true
	s.killed++
	s.settle(n)
	now := s.now()
	out := make([]*transfer, 0, len(n.out))
	for t := range n.out {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].to.idx < out[j].to.idx || (out[i].to.idx == out[j].to.idx && out[i].piece < out[j].piece)
	})
	for _, t := range out {
		s.fail(t, FailConnLost)
	}
	var in []*transfer
	for _, ts := range n.recv {
		in = append(in, ts...)
	}
	sort.Slice(in, func(i, j int) bool {
		return in[i].piece < in[j].piece || (in[i].piece == in[j].piece && in[i].req < in[j].req)
	})
	for _, t := range in {
		s.abort(t, "")
	}
	subs := make([]*node, 0, len(n.subs))
	for c := range n.subs {
		subs = append(subs, c)
	}
	sort.Slice(subs, func(i, j int) bool { return subs[i].idx < subs[j].idx })
	for _, c := range subs {
		delete(c.synced, n)
		s.handleLater(c, now+s.lat(n, c), Event{Kind: EvParentGone, Parent: n.peerID})
	}
	n.subs = map[*node]struct{}{}
	for p := range n.synced {
		delete(p.subs, n)
	}
	if n.sess != nil {
		s.timeSched(func() { n.sess.Close(vtime(now)) })
	}
}

func (s *Sim) randomLeave() {
	var alive []*node
	for _, n := range s.nodes {
		if !n.gone && n.started {
			alive = append(alive, n)
		}
	}
	if len(alive) > 0 {
		n := alive[s.rnd.IntN(len(alive))]
		n.victim = true
		s.kill(n)
	}
	if !s.allDone() {
		s.at(s.now()+s.rnd.ExpFloat64()/s.cfg.LeaveRate, s.randomLeave)
	}
}

func (s *Sim) randomJoin(lb Bound) {
	until := s.cfg.JoinUntil.Seconds()
	if until == 0 {
		until = lb.TStar
	}
	if s.now() > until {
		return
	}
	s.joined++
	i := len(s.nodes)
	rack := 1 + (i % s.cfg.racks())
	n := s.newNode(fmt.Sprintf("j%d", s.joined), rack, float64(s.cfg.Rate), float64(s.cfg.DownRate))
	s.nodes = append(s.nodes, n)
	s.pending++
	s.startNode(n, false)
	s.at(s.now()+s.rnd.ExpFloat64()/s.cfg.JoinRate, func() { s.randomJoin(lb) })
}
