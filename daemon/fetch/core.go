package fetch

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/damselfly-io/damselfly/core"
)

// maxPiece bounds piece numbers a parent may announce (a lying parent must
// not make this peer allocate without limit).
const maxPiece = 1 << 26

// Core is one download's state machine. It is not safe for concurrent use:
// one goroutine steps it.
type Core struct {
	cfg Config
	rnd *rand.Rand

	mode    Mode
	started bool
	ended   bool // ActFailed or ActComplete given and not taken back

	length int64
	psize  uint32
	count  uint32
	held   []bool
	nheld  uint32
	trust  []bool
	allOK  bool
	// srcAt is when the trusted digests last grew (the content's source
	// stored new pieces), or the start; srcGap the longest wait for such
	// growth so far (0 while they have not grown).
	srcAt  time.Time
	srcGap time.Duration
	// srcBytes is the most bytes a parent said the content's source has
	// received from the origin (EvParentPieces.SourceBytes), srcBytesAt
	// when that last grew: the source is still receiving, even when no
	// new piece has come out of it yet (swarmWait).
	srcBytes   uint64
	srcBytesAt time.Time
	// stretched counts the times the swarm brought progress after more
	// than SwarmTimeout without: the stretched wait kept the download in
	// the swarm (StretchedWaits).
	stretched int

	need    []uint32 // missing pieces, for selection
	needPos []int32  // each piece's index in need, -1 when not there
	needOK  bool

	parents map[string]*parent
	order   []*parent // parents in arrival order: decisions never depend on map order
	// orphans: parents the scheduler replaced that still have requests in
	// flight (pick.go, rescue).
	orphans []*parent
	bad     map[string]bool
	reqs    map[uint32][]*request // requests in flight by piece
	nreq    int
	nbytes  int64 // the bytes of the nreq requests
	lastReq uint64

	streaming    bool
	measured     bool // some parent's rate is known (estimate)
	lastProgress time.Time
	gone         []string  // parents whose stream broke, not yet reported
	goneAt       time.Time // when the last of them broke
	lastResched  time.Time

	pending   []Report
	pendingAt time.Time

	originRunning bool
	originDone    bool // the last origin fetch ended without error
	shapeSent     bool
	retried       bool
	completing    bool
	peerBytes     int64
	originBytes   int64

	timer  time.Time // last ActSetTimer given
	stepAt time.Time // the time of the event being stepped
	out    []Action
}

type parent struct {
	Parent
	has      []bool
	hasAt    []uint32 // the update that last announced each piece
	updates  uint32   // piece-stream messages handled
	count    int
	inflight []*request
	failures int
	rate     core.Rate // delivered bytes over delivery time
	est      float64   // rate estimate for this round of decisions (estimate)
	roomy    bool      // may take another request (set by pick)
	lastDone time.Time // latest end of a piece from this parent
	nextAt   time.Time // paced (ShareBps > 0): no request before this
	relay    []bool    // pieces it announced while still receiving them
	// relayLosses counts relayed pieces lost in a row (no delivery since):
	// its upstream's failures, not its own, up to relayLossBudget.
	relayLosses int
	removed     bool
}

// relayLossBudget is how many relayed pieces in a row a parent may lose
// upstream before further losses count as its own failures. A peer that
// left aborts at most the pieces its children were relaying at once (a few
// per child); a parent losing more than this with nothing delivered
// between them announces pieces it does not deliver.
const relayLossBudget = 16

type request struct {
	id     uint64
	piece  uint32
	p      *parent
	size   int64
	start  time.Time
	ahead  int64  // bytes queued at the parent before this one when it went out
	asked  uint32 // the parent's updates when the request went out
	active bool   // false once cancelled or answered
}

// New returns a core for one download; Step it with EvStart first.
func New(cfg Config) *Core {
	def := DefaultConfig()
	setDef := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	setDefD := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	setDef(&cfg.ConcurrentPieces, def.ConcurrentPieces)
	setDef(&cfg.PerParentRequests, def.PerParentRequests)
	setDef(&cfg.ParentFailures, def.ParentFailures)
	setDef(&cfg.ReportBatch, def.ReportBatch)
	setDefD(&cfg.MinStall, def.MinStall)
	setDefD(&cfg.MaxStall, def.MaxStall)
	setDefD(&cfg.SwarmTimeout, def.SwarmTimeout)
	setDefD(&cfg.ParentGoneGrace, def.ParentGoneGrace)
	setDefD(&cfg.NoParentsAsk, def.NoParentsAsk)
	setDefD(&cfg.ReportDelay, def.ReportDelay)
	cfg.MaxStall = max(cfg.MaxStall, cfg.MinStall)
	rnd := cfg.Rand
	if rnd == nil {
		rnd = rand.New(rand.NewPCG(1, 2))
	}
	return &Core{
		cfg:     cfg,
		rnd:     rnd,
		length:  -1,
		parents: map[string]*parent{},
		bad:     map[string]bool{},
		reqs:    map[uint32][]*request{},
	}
}

// Mode returns where the download gets its pieces now.
func (c *Core) Mode() Mode { return c.mode }

// Shape returns the content length (-1 unknown) and piece size (0 unknown).
func (c *Core) Shape() (int64, uint32) { return c.length, c.psize }

// Held returns how many pieces are held, and of how many (0 while the
// length is unknown).
func (c *Core) Held() (held, count uint32) { return c.nheld, c.count }

// PeerBytes and OriginBytes are the bytes this download got from parents
// and from the origin.
func (c *Core) PeerBytes() int64   { return c.peerBytes }
func (c *Core) OriginBytes() int64 { return c.originBytes }

// ParentRate returns the delivery rate measured from a parent in bytes/s
// (0: unknown or no such parent).
func (c *Core) ParentRate(id string) float64 {
	if p, ok := c.parents[id]; ok {
		return p.rate.BytesPerSec()
	}
	return 0
}

// InFlight returns the pieces requested from a parent and not answered.
func (c *Core) InFlight(id string) []uint32 {
	p, ok := c.parents[id]
	if !ok {
		return nil
	}
	out := make([]uint32, 0, len(p.inflight))
	for _, r := range p.inflight {
		out = append(out, r.piece)
	}
	return out
}

// Step handles one event at time now and returns what to do.
func (c *Core) Step(now time.Time, ev Event) []Action {
	c.out = nil
	c.stepAt = now
	if c.ended {
		if e, ok := ev.(EvContentCorrupt); ok && c.completing {
			c.contentCorrupt(now, e.Err)
		}
		c.setTimer()
		return c.take()
	}
	if err := c.handle(now, ev); err != nil {
		c.fail(err)
	}
	if !c.ended {
		c.schedule(now)
		c.restOrigin()
		c.checkComplete()
	}
	c.setTimer()
	return c.take()
}

func (c *Core) take() []Action {
	out := c.out
	c.out = nil
	return out
}

func (c *Core) emit(a Action) { c.out = append(c.out, a) }

func (c *Core) fail(err error) {
	c.flush()
	c.ended = true
	c.emit(ActFailed{Err: err})
}

func (c *Core) handle(now time.Time, ev Event) error {
	switch e := ev.(type) {
	case EvStart:
		return c.start(now, e)
	case EvTaskInfo:
		c.setShape(e.Length, e.PieceSize)
		c.setTrusted(now, e.Trusted, e.AllTrusted)
	case EvParents:
		if c.mode == ModeSwarm {
			c.setParents(now, e.Parents)
		}
	case EvWait:
	case EvBackToSource:
		if c.mode != ModeSwarm {
			return nil
		}
		if c.cfg.Cache {
			return fmt.Errorf("dfcache task %s: no peer holds it: %w", c.cfg.TaskID, core.ErrNotFound)
		}
		c.mode = ModeBackToSource
		c.dropParents()
		c.startOrigin("scheduled", false)
	case EvFail:
		if c.cfg.Cache {
			return fmt.Errorf("dfcache task %s: %s: %w", c.cfg.TaskID, e.Reason, core.ErrNotFound)
		}
		if c.cfg.FailIsFinal {
			return fmt.Errorf("task %s: %s: %w", c.cfg.TaskID, e.Reason, core.ErrUnavailable)
		}
		return c.fallback("scheduler_failed")
	case EvSchedulerLost:
		if c.mode != ModeSwarm {
			return nil // keep fetching; nobody to report to
		}
		return c.fallback("scheduler_lost")
	case EvParentConnected:
	case EvParentPieces:
		c.parentPieces(now, e)
	case EvParentGone:
		c.parentGone(now, e)
	case EvPieceDone:
		c.pieceDone(now, e)
	case EvPieceFailed:
		return c.pieceFailed(now, e)
	case EvOriginShape:
		c.setShape(e.Length, e.PieceSize)
		c.sendShape()
	case EvOriginPiece:
		c.lastProgress = now
		c.originBytes += e.Bytes
		// Reported even when a parent's copy came first: a peer sent to
		// the origin is whom the scheduler takes the piece's digest from.
		if c.hold(e.Piece) || c.isHeld(e.Piece) {
			c.report(now, Report{Piece: e.Piece, Bytes: e.Bytes, Cost: e.Cost})
		}
	case EvOriginDone:
		c.originRunning = false
		c.originDone = e.Err == nil
		if e.Err != nil {
			return e.Err
		}
		c.flush()
		if c.mode == ModeBackToSource && !c.shapeSent {
			c.sendShape()
		}
		// A piece still missing may be on its way from a parent (a request
		// from before the switch to the origin, whose answer is still
		// queued): it is waited for. Any other is the origin's fault.
		if c.psize == 0 || c.length < 0 || c.missingUnrequested() {
			return fmt.Errorf("task %s: origin fetch ended with %d of %d pieces: %w", c.cfg.TaskID, c.nheld, c.count, core.ErrOrigin)
		}
	case EvContentCorrupt:
		// (handled in Step: only valid after ActComplete)
	case EvStreaming:
		c.streaming = e.On
	case EvTick:
		if !c.pendingAt.IsZero() && !now.Before(c.pendingAt.Add(c.cfg.ReportDelay)) {
			c.flush()
		}
		return c.checkStall(now)
	case EvFlush:
		c.flush()
	default:
		return fmt.Errorf("fetch: unknown event %T", ev)
	}
	return nil
}

func (c *Core) start(now time.Time, e EvStart) error {
	if c.started {
		return errors.New("fetch: started twice")
	}
	c.started = true
	c.lastProgress = now
	c.srcAt = now
	c.setShape(e.Length, e.PieceSize)
	for _, n := range e.Held {
		c.hold(n)
	}
	c.setTrusted(now, e.Trusted, e.AllTrusted)
	if e.Origin != "" {
		return c.fallback(e.Origin)
	}
	return nil
}

// setShape learns the shape; a known shape is never changed (the
// executor's store refuses a conflicting one).
func (c *Core) setShape(length int64, ps uint32) {
	if ps == 0 {
		return
	}
	if c.psize == 0 {
		c.psize = ps
	}
	if length >= 0 && c.length < 0 && ps == c.psize {
		c.length = length
		c.count = core.PieceCount(length, ps)
		c.held = growBools(c.held, int(c.count))[:c.count]
		c.nheld = 0
		for _, h := range c.held {
			if h {
				c.nheld++
			}
		}
		c.needOK = false
	}
}

func growBools(b []bool, n int) []bool {
	for len(b) < n {
		b = append(b, false)
	}
	return b
}

func (c *Core) setTrusted(now time.Time, ns []uint32, all bool) {
	if all {
		c.allOK = true
	}
	added := 0
	for _, n := range ns {
		if n < maxPiece {
			c.trust = growBools(c.trust, int(n)+1)
			if !c.trust[n] {
				c.trust[n] = true
				added++
			}
		}
	}
	if added > 0 && c.started {
		c.srcGap, c.srcAt = max(c.srcGap, now.Sub(c.srcAt)), now
	}
}

// sourcePatience and maxSourcePatience: a download whose content's source
// brings new pieces slowly waits sourcePatience times the longest the
// source took for one before it leaves the swarm for the origin, when that
// is longer than SwarmTimeout, and at most maxSourcePatience times
// SwarmTimeout. The longest, not the last: a source that shares its
// origin's uplink with other fetches speeds up and slows down as they
// start and end.
const (
	sourcePatience    = 3
	maxSourcePatience = 4
)

// maxNewsPatience bounds, in SwarmTimeouts after the last progress, the
// wait of a download whose parents keep saying that the content's source
// is still receiving it (swarmWait). It is longer than maxSourcePatience:
// news shows the source alive, and a peer that leaves it for an origin
// they share slows the source down for every other peer, which may then
// leave too. It is also the longest a parent that lies about the source
// can hold its child (200 s with the default SwarmTimeout).
const maxNewsPatience = 10

// swarmProgress records progress of the swarm at now.
func (c *Core) swarmProgress(now time.Time) {
	if c.mode == ModeSwarm && now.Sub(c.lastProgress) >= c.cfg.SwarmTimeout && c.swarmWait() > c.cfg.SwarmTimeout {
		c.stretched++
	}
	c.lastProgress = now
}

// StretchedWaits is how many times this download went on in the swarm
// after waiting longer than SwarmTimeout for it, because the content's
// source was slow (swarmWait): with a fixed timeout it would have gone to
// the origin each time. The daemon logs each.
func (c *Core) StretchedWaits() int { return c.stretched }

// swarmWait is how long after its last progress the swarm may bring this
// download nothing before it goes to the origin. SwarmTimeout, or longer
// while the content is still arriving at its source (the seed peer
// fetching it from the origin):
//
//   - The source has been slow to bring new pieces: sourcePatience times
//     the longest it took for one, at most maxSourcePatience times
//     SwarmTimeout. The swarm then has nothing newer to give, and leaving
//     for the origin only adds to a load the source already waits on. On
//     the harness, skopeo pulling an image of eight 128 MiB layers through
//     eight daemons' mirrors, the seed's six parallel fetches from the
//     registry split its 50 Mbit/s unevenly; one layer's 4 MiB pieces took
//     over 20 s each, its eight peers left the swarm for the registry after
//     their first piece, and the registry sent 2.86 × F (the pull at 0.34
//     of the bound).
//   - A parent says the source is still receiving it from the origin (its
//     SourceBytes grew): until SwarmTimeout after the last such news, at
//     most maxNewsPatience times SwarmTimeout. Pieces cannot show a
//     source's pace before the first: a seed whose first piece took longer
//     than SwarmTimeout (an origin on a slow link, or one link split among
//     many fetches) sent every peer of the content to that same origin.
//     News of a source that stopped receiving stops too: its peers then
//     wait only SwarmTimeout after the last. A parent that lies about the
//     source keeps its child no longer than the bound.
//
// Digests known from the start (cached content) say nothing of a source:
// SwarmTimeout holds.
func (c *Core) swarmWait() time.Duration {
	w := c.cfg.SwarmTimeout
	if c.allOK {
		return w
	}
	wait := min(max(w, sourcePatience*c.srcGap), maxSourcePatience*w)
	if !c.srcBytesAt.IsZero() {
		wait = max(wait, min(c.srcBytesAt.Add(w).Sub(c.lastProgress), maxNewsPatience*w))
	}
	return wait
}

func (c *Core) trusted(n uint32) bool {
	return c.allOK || int(n) < len(c.trust) && c.trust[n]
}

// hold records piece n as held; false when it already was (or is out of
// range).
func (c *Core) hold(n uint32) bool {
	if c.length < 0 {
		// Shape not known yet (origin fetch of unknown length): grow.
		if n >= maxPiece {
			return false
		}
		c.held = growBools(c.held, int(n)+1)
	}
	if int(n) >= len(c.held) || c.held[n] {
		return false
	}
	c.held[n] = true
	c.nheld++
	c.removeNeed(n)
	return true
}

func (c *Core) isHeld(n uint32) bool { return int(n) < len(c.held) && c.held[n] }

func (c *Core) report(now time.Time, r Report) {
	if len(c.pending) == 0 {
		c.pendingAt = now
	}
	c.pending = append(c.pending, r)
	if len(c.pending) >= c.cfg.ReportBatch {
		c.flush()
	}
}

func (c *Core) flush() {
	if len(c.pending) == 0 {
		return
	}
	c.emit(ActReport{Pieces: c.pending})
	c.pending, c.pendingAt = nil, time.Time{}
}

func (c *Core) sendShape() {
	if c.mode != ModeBackToSource || c.psize == 0 {
		return
	}
	if c.length >= 0 {
		c.shapeSent = true
	}
	c.emit(ActSendMeta{Length: c.length, PieceSize: c.psize})
}

// fallback switches to fetching the missing pieces from the origin.
func (c *Core) fallback(reason string) error {
	if c.mode != ModeSwarm {
		return nil
	}
	if c.cfg.Cache {
		return fmt.Errorf("dfcache task %s: the swarm cannot serve it (%s), and it has no origin: %w", c.cfg.TaskID, reason, core.ErrUnavailable)
	}
	if c.cfg.NoOrigin && !c.cfg.Local {
		return fmt.Errorf("task %s: P2P failed (%s) and back-to-source is disabled: %w", c.cfg.TaskID, reason, core.ErrUnavailable)
	}
	c.mode = ModeOrigin
	c.dropParents()
	c.startOrigin(reason, true)
	return nil
}

func (c *Core) startOrigin(reason string, fallback bool) {
	if c.originRunning {
		return
	}
	rest := c.originDone // after a fetch: only what no request brings
	c.originRunning, c.originDone = true, false
	var rs []Range
	if c.length >= 0 && c.psize > 0 {
		rs = []Range{}
		for n := uint32(0); n < c.count; n++ {
			if c.held[n] || rest && len(c.reqs[n]) > 0 {
				continue
			}
			if k := len(rs); k > 0 && rs[k-1].Last == n-1 {
				rs[k-1].Last = n
			} else {
				rs = append(rs, Range{First: n, Last: n})
			}
		}
	}
	c.emit(ActStartOrigin{Ranges: rs, Reason: reason, Fallback: fallback})
}

// missingUnrequested reports whether a piece is neither held nor
// requested from a parent.
func (c *Core) missingUnrequested() bool {
	for n := uint32(0); n < c.count; n++ {
		if !c.held[n] && len(c.reqs[n]) == 0 {
			return true
		}
	}
	return false
}

// restOrigin fetches from the origin what a finished origin fetch left to
// requests from parents that then failed.
func (c *Core) restOrigin() {
	if c.mode == ModeSwarm || c.originRunning || !c.originDone || c.length < 0 || c.nheld == c.count || !c.missingUnrequested() {
		return
	}
	c.startOrigin(ReasonRest, false)
}

func (c *Core) checkStall(now time.Time) error {
	if c.mode != ModeSwarm {
		return nil
	}
	if len(c.gone) > 0 {
		switch {
		case len(c.parents) > 0:
			c.gone = nil
		case now.Sub(c.goneAt) >= c.cfg.ParentGoneGrace:
			c.reschedule(now, c.gone, "parent gone")
			c.gone = nil
		}
	}
	idle := now.Sub(c.lastProgress)
	if idle >= c.swarmWait() {
		return c.fallback("swarm_stalled")
	}
	if len(c.parents) == 0 && idle > c.cfg.NoParentsAsk && now.Sub(c.lastResched) > c.cfg.NoParentsAsk {
		c.reschedule(now, nil, "no parents")
	}
	return nil
}

// NextDeadline returns when the core next needs an EvTick (zero: never,
// until another event).
func (c *Core) NextDeadline() time.Time {
	if c.ended || !c.started {
		return time.Time{}
	}
	var at time.Time
	earliest := func(t time.Time) {
		if at.IsZero() || t.Before(at) {
			at = t
		}
	}
	if !c.pendingAt.IsZero() {
		earliest(c.pendingAt.Add(c.cfg.ReportDelay))
	}
	if c.mode == ModeSwarm {
		earliest(c.lastProgress.Add(c.swarmWait()))
		if len(c.need) > 0 {
			// A paced parent becomes free to ask again.
			for _, p := range c.order {
				if p.ShareBps > 0 && len(p.inflight) < c.pacedDepth() && p.count > 0 && p.nextAt.After(c.stepAt.Add(paceSlack)) {
					earliest(p.nextAt)
				}
			}
		}
		if len(c.parents) == 0 {
			if len(c.gone) > 0 {
				earliest(c.goneAt.Add(c.cfg.ParentGoneGrace))
			}
			// strictly after both marks
			t := c.lastProgress
			if c.lastResched.After(t) {
				t = c.lastResched
			}
			earliest(t.Add(c.cfg.NoParentsAsk + time.Nanosecond))
		}
	}
	return at
}

func (c *Core) setTimer() {
	at := c.NextDeadline()
	if !at.Equal(c.timer) {
		c.timer = at
		c.emit(ActSetTimer{At: at})
	}
}

func (c *Core) reschedule(now time.Time, bad []string, reason string) {
	c.lastResched = now
	c.emit(ActReschedule{Bad: bad, Reason: reason})
}

func (c *Core) checkComplete() {
	if c.originRunning || c.completing || c.psize == 0 || c.length < 0 || c.nheld != c.count {
		return
	}
	c.flush()
	if c.mode == ModeBackToSource && !c.shapeSent {
		c.sendShape()
	}
	c.completing, c.ended = true, true
	c.emit(ActComplete{})
}

// contentCorrupt handles a content whose every piece matched the trusted
// digests but whose whole does not match the task's digest: those digests
// are wrong. The scheduler is told; once, every piece is fetched again
// from the origin. A content fetched from the origin itself that fails is
// the origin's (or the caller's digest's) fault, and the download fails.
func (c *Core) contentCorrupt(now time.Time, cause error) {
	fromPeers := c.mode != ModeBackToSource && c.peerBytes > 0
	if c.mode == ModeBackToSource || fromPeers {
		reason := ""
		if cause != nil {
			reason = cause.Error()
		}
		c.emit(ActContentCorrupt{Reason: reason})
	}
	c.completing = false
	if !fromPeers || c.retried || c.cfg.NoOrigin || c.cfg.Cache {
		c.emit(ActFailed{Err: fmt.Errorf("task %s: %w", c.cfg.TaskID, cause)})
		return
	}
	c.retried = true
	c.ended = false
	c.emit(ActReset{})
	for i := range c.held {
		c.held[i] = false
	}
	c.nheld = 0
	c.needOK = false
	c.lastProgress = now
	c.mode = ModeOrigin
	c.dropParents()
	c.startOrigin("content_corrupt", false)
}

// missing pieces, kept for selection

func (c *Core) removeNeed(n uint32) {
	if int(n) >= len(c.needPos) || c.needPos[n] < 0 {
		return
	}
	i := c.needPos[n]
	last := len(c.need) - 1
	c.need[i] = c.need[last]
	c.needPos[c.need[i]] = i
	c.need = c.need[:last]
	c.needPos[n] = -1
}

func (c *Core) ensureNeed() {
	if c.needOK {
		return
	}
	c.need = c.need[:0]
	c.needPos = slices.Grow(c.needPos[:0], int(c.count))[:c.count]
	for n := uint32(0); n < c.count; n++ {
		c.needPos[n] = -1
		if !c.held[n] {
			c.needPos[n] = int32(len(c.need))
			c.need = append(c.need, n)
		}
	}
	c.needOK = true
}

// parents

func (c *Core) setParents(now time.Time, ps []Parent) {
	want := map[string]Parent{}
	var ids []string
	for _, p := range ps {
		if p.ID == "" || p.ID == c.cfg.PeerID || c.bad[p.ID] {
			continue
		}
		if _, dup := want[p.ID]; !dup {
			ids = append(ids, p.ID)
		}
		want[p.ID] = p
	}
	for _, p := range slices.Clone(c.order) {
		if _, ok := want[p.ID]; !ok {
			// Replaced by the scheduler: its requests in flight may still
			// finish (they are not stalled).
			c.removeParent(p, false)
		}
	}
	for _, id := range ids {
		if p, ok := c.parents[id]; ok {
			if up := want[id].UploadBps; up > 0 {
				p.UploadBps = up
			}
			p.ShareBps = want[id].ShareBps
			continue
		}
		p := &parent{Parent: want[id]}
		c.parents[id] = p
		c.order = append(c.order, p)
		c.emit(ActConnect{Parent: p.Parent})
	}
	if t := now.Add(-c.cfg.SwarmTimeout / 2); t.After(c.lastProgress) {
		c.lastProgress = t
	}
}

// removeParent drops a parent; cancel: its requests in flight go to other
// parents now (it is stalled or gone) instead of being waited for.
func (c *Core) removeParent(p *parent, cancel bool) {
	if p.removed {
		return
	}
	p.removed = true
	delete(c.parents, p.ID)
	c.order = slices.DeleteFunc(c.order, func(q *parent) bool { return q == p })
	c.emit(ActDisconnect{Parent: p.ID})
	if cancel {
		for _, r := range slices.Clone(p.inflight) {
			c.emit(ActCancel{Parent: p.ID, Piece: r.piece, Req: r.id})
			c.endRequest(r)
		}
	} else if len(p.inflight) > 0 {
		c.orphans = append(c.orphans, p)
	}
}

func (c *Core) dropParents() {
	for _, p := range slices.Clone(c.order) {
		c.removeParent(p, false)
	}
}

func (c *Core) parentPieces(now time.Time, e EvParentPieces) {
	p, ok := c.parents[e.Parent]
	if !ok {
		return
	}
	p.updates++
	// Beyond the task's pieces (or, while its length is unknown, beyond
	// maxPiece) a number is a lie that would only cost memory.
	limit := uint32(maxPiece)
	if c.length >= 0 && c.psize > 0 {
		limit = c.count
	}
	for i, ns := range [2][]uint32{e.Pieces, e.Relaying} {
		for _, n := range ns {
			if n < limit {
				p.mark(n)
				p.setRelay(n, i == 1)
			}
		}
	}
	// A parent that stored a new piece is progress of the swarm even when
	// it is not ours yet: a source shared by many tasks may trickle, and
	// leaving for the origin then only adds to its load.
	if len(e.Pieces) > 0 {
		c.swarmProgress(now)
	}
	if e.SourceBytes > c.srcBytes {
		c.srcBytes, c.srcBytesAt = e.SourceBytes, now
	}
	// A complete parent holds every piece, whatever a not-found answer (to
	// a request that raced its announcements) made us believe.
	if e.Done && c.length >= 0 && c.psize > 0 {
		for n := range c.count {
			p.mark(n)
		}
		p.relay = nil
	}
}

func (p *parent) mark(n uint32) {
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

func (p *parent) holds(n uint32) bool { return int(n) < len(p.has) && p.has[n] }

// offers reports whether n may be asked of p: a piece it holds, and for a
// paced parent one it holds whole. A relayed piece arrives at the rate of
// the parent's own input, so a paced request for it would hold a second
// connection on the parent's uplink, halving what its main child gets,
// for as long as the piece takes to arrive rather than for a short burst.
func (p *parent) offers(n uint32) bool {
	return p.holds(n) && (p.ShareBps <= 0 || int(n) >= len(p.relay) || !p.relay[n])
}

// relaying reports whether p announced n while still receiving it and has
// not announced it held since.
func (p *parent) relaying(n uint32) bool { return int(n) < len(p.relay) && p.relay[n] }

func (p *parent) setRelay(n uint32, on bool) {
	if !on && int(n) >= len(p.relay) {
		return
	}
	for int(n) >= len(p.relay) {
		p.relay = append(p.relay, false)
	}
	p.relay[n] = on
}

func (c *Core) parentGone(now time.Time, e EvParentGone) {
	p, ok := c.parents[e.Parent]
	if !ok {
		return
	}
	// Its requests cannot finish: they go to other parents at once.
	c.removeParent(p, true)
	if len(c.parents) == 0 {
		// A parent that died is seen by the scheduler on its own stream,
		// which then gives this peer the dead one's place (under its
		// parent, whose slot just freed). Asking at once races that and can
		// get a parent that already serves a child, splitting its uplink;
		// ask only if nothing came within ParentGoneGrace.
		c.gone = append(c.gone, e.Parent)
		c.goneAt = now
	}
}

// requests

func (c *Core) findRequest(parentID string, n uint32, id uint64) *request {
	for _, r := range c.reqs[n] {
		if r.p.ID == parentID && r.active && (id == 0 || r.id == id) {
			return r
		}
	}
	return nil
}

func (c *Core) endRequest(r *request) {
	if !r.active {
		return
	}
	r.active = false
	c.nreq--
	c.nbytes -= r.size
	c.reqs[r.piece] = slices.DeleteFunc(c.reqs[r.piece], func(q *request) bool { return q == r })
	if len(c.reqs[r.piece]) == 0 {
		delete(c.reqs, r.piece)
	}
	r.p.inflight = slices.DeleteFunc(r.p.inflight, func(q *request) bool { return q == r })
}

// deliveryCost is the time a parent spent delivering a piece fetched from
// start to end: from the later of start and the end of the parent's
// previous piece. With several requests in flight to one parent, a piece's
// own start-to-end time also counts the time it waited behind the others,
// which makes a backlogged parent look several times slower than its link;
// the time between completions is what the parent's uplink gave. Pieces
// that complete at the same instant cover the time once: the first is
// charged it, the others next to nothing.
func (p *parent) deliveryCost(start, end time.Time) time.Duration {
	from := start
	if p.lastDone.After(start) && !p.lastDone.After(end) {
		from = p.lastDone
	}
	if end.After(p.lastDone) {
		p.lastDone = end
	}
	return max(end.Sub(from), time.Microsecond)
}

func (c *Core) pieceDone(now time.Time, e EvPieceDone) {
	r := c.findRequest(e.Parent, e.Piece, e.Req)
	var p *parent
	if r != nil {
		p = r.p
		c.endRequest(r)
	} else if q, ok := c.parents[e.Parent]; ok {
		p = q // a request the core cancelled that finished anyway
	}
	var cost time.Duration
	if p != nil {
		cost = p.deliveryCost(e.Start, e.End)
		p.failures, p.relayLosses = 0, 0
		p.rate.Observe(e.Bytes, cost.Nanoseconds(), 0.3)
	} else {
		cost = max(e.End.Sub(e.Start), time.Microsecond)
	}
	c.swarmProgress(now)
	if !c.hold(e.Piece) {
		return // a duplicate (endgame) or a piece the origin brought
	}
	c.peerBytes += e.Bytes
	// Other requests for it (endgame duplicates) are no longer needed.
	for _, o := range slices.Clone(c.reqs[e.Piece]) {
		c.emit(ActCancel{Parent: o.p.ID, Piece: o.piece, Req: o.id})
		c.endRequest(o)
	}
	c.report(now, Report{Piece: e.Piece, Parent: e.Parent, Bytes: e.Bytes, Cost: cost})
}

func (c *Core) pieceFailed(now time.Time, e EvPieceFailed) error {
	r := c.findRequest(e.Parent, e.Piece, e.Req)
	if r == nil {
		return nil // cancelled: nobody waits for it
	}
	p := r.p
	c.endRequest(r)
	p.deliveryCost(r.start, now)
	if e.Kind == KindNoSpace {
		// Not the parent's fault, and no other parent helps.
		if e.Err != nil {
			return e.Err
		}
		return fmt.Errorf("task %s: piece %d: %w", c.cfg.TaskID, e.Piece, core.ErrNoSpace)
	}
	corrupt := e.Kind == KindCorrupt
	// A piece the parent announced while still receiving it failed
	// otherwise than by a stall or bad bytes: most likely the parent's own
	// parent broke off (left, or failed), which aborts the relay. That is
	// not the parent's failure: it fetches the piece again from whoever
	// the scheduler gives it and announces it anew. Counting it would drop
	// every healthy relay below a peer that left (each has several relayed
	// pieces in flight) and scatter a pipeline that the scheduler repairs
	// by itself. Only a run of such losses with no delivery between them
	// counts (a parent that announces pieces it never delivers).
	upstream := p.relaying(e.Piece) && !corrupt && e.Kind != KindTimeout
	if e.Kind == KindNotFound || upstream {
		// Forget the piece at this parent unless it was announced again
		// after the request went out: a relay that failed and started
		// over, or the piece now held, arrives on the piece stream, which
		// may overtake this answer.
		if p.holds(e.Piece) && p.hasAt[e.Piece] <= r.asked {
			p.has[e.Piece] = false
			p.count--
			p.setRelay(e.Piece, false)
		}
	}
	if p.removed && !corrupt {
		return nil // a parent already dropped; its failures are expected
	}
	reason := e.Kind.String()
	if e.Err != nil {
		reason = e.Err.Error()
	}
	c.emit(ActPieceFailed{Parent: p.ID, Piece: e.Piece, Kind: e.Kind, Reason: reason, Corrupt: corrupt})
	if upstream {
		if p.relayLosses++; p.relayLosses <= relayLossBudget {
			return nil
		}
	}
	p.failures++
	switch {
	case corrupt:
		c.bad[p.ID] = true
		c.removeParent(p, false)
	case e.Kind == KindTimeout && !p.removed:
		// Stalled: nothing moved for a stall timeout that follows its
		// measured rate. Its other requests go elsewhere now and the
		// scheduler is asked for a replacement now: capacity must not
		// idle while the peer waits for more timeouts.
		c.removeParent(p, true)
		c.reschedule(now, []string{p.ID}, "parent stalled")
	case p.failures >= c.cfg.ParentFailures && !p.removed:
		c.removeParent(p, false)
		c.reschedule(now, []string{p.ID}, "parent failed repeatedly")
	}
	return nil
}
