package scheduler

import (
	"context"
	"math/bits"
	"slices"
	"time"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
)

// maxPieces bounds piece numbers while a task's length is unknown, so a bad
// report cannot make a bitmap huge (2^20 pieces of 4 MiB is 4 TiB).
const maxPieces = 1 << 20

// maxBadPerPeer bounds the bad-parent set one peer can build.
const maxBadPerPeer = 4096

// badParentTTL is how long a parent a peer reported as failed, or that the
// scheduler found slow, is kept from that peer. Under load, rates and stalls
// come and go: a parent that was slow a minute ago may be the best one now.
// A slow parent also comes back before the TTL when the alternative is to
// wait (slow beats none). A parent that sent a corrupt piece never comes
// back.
const badParentTTL = 30 * time.Second

// badMark records why and when a parent was kept from a peer.
type badMark struct {
	kind badKind
	at   time.Time
}

type badKind uint8

const (
	badFailed  badKind = iota // the peer reported failures (Reschedule)
	badSlow                   // the scheduler replaced it as slow
	badCorrupt                // it sent a corrupt piece: for good
)

type peerState uint8

const (
	stateNone peerState = iota // not yet registered
	statePending
	stateWaiting
	stateBackToSource
	stateRunning
	stateSucceeded
	stateFailed // told Fail; may still hold pieces and serve them
	stateLeft   // removed from its task
	numStates
)

func (s peerState) String() string {
	switch s {
	case stateNone:
		return "none"
	case statePending:
		return "pending"
	case stateWaiting:
		return "waiting"
	case stateBackToSource:
		return "back_to_source"
	case stateRunning:
		return "running"
	case stateSucceeded:
		return "succeeded"
	case stateFailed:
		return "failed"
	case stateLeft:
		return "left"
	}
	return "unknown"
}

// conn is the outbound side of one announce session. send must not block:
// the scheduler calls it while holding its lock (the gRPC handler pushes on
// a buffered channel its goroutine drains); an error drops the peer at the
// next flush. cancel ends the session with a cause.
type conn struct {
	send   func(*schedulerv1.SchedulerMessage) error
	cancel context.CancelCauseFunc
	// inv: the inventory session whose holders share this conn (nil for
	// an Announce session's).
	inv *InventorySession
}

type peer struct {
	id       string
	task     *task
	host     *host
	state    peerState
	pieces   bitset
	parents  []link  // few: at most MaxParents
	children []*peer // see link for the index bookkeeping
	ord      uint64  // topological order within the task; see graph.go
	// depth: hops from a source along the peer's full-rate (unpaced)
	// parent when it was last linked to one; see sourceDepth. Not kept up
	// to date when an ancestor moves: a hint for choosing among parents
	// that give the same rate, not a property of the graph.
	depth             int32
	bad               map[string]badMark // parents this peer reported (see badMark)
	lastSeen          time.Time
	waitSince         time.Time
	disableBackSource bool
	seedRequest       bool
	// verified: the peer showed the origin grants it the content with its
	// own credentials (Register.origin_verified); only such peers take part
	// in a private task.
	verified bool
	// accessUntil is the expiry of the last piece token sent (private tasks).
	accessUntil time.Time
	conn        *conn
	poolIdx     int       // index in task.pool, -1 when not a candidate
	listIdx     int       // index in task.list
	waitIdx     int       // index in task.waitList, -1 when not waiting
	openIdx     int       // index in task.open, -1 when not in it
	mark        uint64    // visit epoch, see Scheduler.epoch
	parentsAt   time.Time // when the peer last got a parent
	// stalledAt: a child reported this peer stalled then (Reschedule naming
	// it); until it sends a message again it is nobody's candidate parent
	// (see stalled). Zero when not.
	stalledAt time.Time
	crowded   bool // in task.crowded
	// ownUplink: a seed host's peer whose origin fetch showed an uplink of
	// its own, not the origin's (TaskMeta.origin_on_host false; sharedSeed).
	ownUplink bool
	// pacedKids counts the children that take a paced share of this
	// peer's uplink (link.share > 0), booked the sum of those shares in
	// bytes/s (capacity.go, pacedLocked).
	pacedKids int
	booked    float64
	// topBooked: the part of the paced children's shares booked as
	// top-ups (topup.go), not in booked: any other booking takes it back.
	topBooked float64
	topTrimQ  bool // in Scheduler.topTrim
	// bookFluid: the task's fluid rate when a share was last booked on
	// this peer: its unpaced children were assumed to get that.
	bookFluid float64
	pacedTry  time.Time // when pacedRehomeLocked last tried to move it
	// gotBytes: the bytes of the pieces it reported (link.gotAt).
	gotBytes float64
	// budgetSent: the upload budget last sent to this peer's daemon
	// (meter.go, sendBudgetsLocked), bytes/s; 0 none.
	budgetSent float64
	dropping   bool // queued for removal after a send overflow
	// probe: what it reported from a seed parent whose uplink is probed
	// (probe.go).
	probe childProbe

	// priority is the download's Dragonfly level (dfget --priority).
	priority schedulerv1.Priority
	// claim: the shape and digests this peer, holding the task, re-announced
	// to a scheduler that had none (restore.go); nil otherwise.
	claim *claim
}

// host is a machine across all its peers and tasks.
type host struct {
	id   string
	info *schedulerv1.Host // latest registration as the scheduler uses it (effectiveHost); shared read-only with messages
	// linkOnly: its uplink in info is what its link tests measured, not
	// declared (linktest.go).
	linkOnly bool
	// linkDown: its downlink in info is what its link tests measured: a
	// lower bound (declaredDownlink).
	linkDown   bool
	slots      int
	used       int // children assigned to this host's peers, all tasks
	successes  uint64
	failures   uint64
	corrupt    uint32              // corrupt-piece reports against this host
	corruptBy  map[string]struct{} // hosts that reported them (bounded)
	throughput float64             // bytes/s as a parent, from tp
	slowUntil  time.Time           // replaced as a slow parent lately: a candidate of last resort until then
	// bannedUntil: its piece digests were proven wrong; until then it is no
	// parent and no fetcher, in any task.
	bannedUntil time.Time
	// falseReportUntil: it accused a source that a fresh fetch cleared; its
	// content-corrupt reports are ignored until then.
	falseReportUntil time.Time
	tp               core.Rate // pieces children got from this host
	peers            int
	seed             *seedConn
	// Verified piece bytes children got from this host, and that this
	// host got (from peers or the origin), for Stats.
	uploadBytes, downloadBytes int64
	idleSince                  time.Time
	// edges counts changes to the parents and children of this host's
	// peers: the link meter judges only windows in which none moved.
	edges uint64
	meter linkMeter // measured link rates (meter.go)
	probe seedProbe // a seed's uplink probe (probe.go)
	// handover: this host's peers that finished with children still
	// attached, until they leave; the holder that replaces such a peer
	// takes its children (inventory.go, handoverLocked).
	handover []*peer
}

// throughputAlpha is the EWMA weight of a new throughput sample.
const throughputAlpha = 0.2

// observeThroughput folds one piece a child got from this host into its
// throughput (see core.Rate: pieces that completed together weigh by the
// time they cover).
func (h *host) observeThroughput(length uint32, costNs int64) {
	h.tp.Observe(int64(length), costNs, throughputAlpha)
	h.throughput = h.tp.BytesPerSec()
}

type seedPhase uint8

const (
	seedIdle      seedPhase = iota
	seedTriggered           // SeedTask pushed, seed peer not registered yet
	seedRunning             // seed peer registered
	seedDone
	seedFailed // seed peer left unfinished, or its host went away first
)

// maxSeedAttempts bounds how often one task triggers a seed peer.
const maxSeedAttempts = 3

// onlyHolders reports whether t's peers are all inventory holders: done,
// never waiting, nobody downloading.
func (t *task) onlyHolders() bool { return t.holders > 0 && t.holders == len(t.list) }

type task struct {
	id            string
	spec          *schedulerv1.TaskSpec // with headers: memory only, never logged
	contentLength int64                 // -1 while unknown
	pieceSize     uint32
	// seedSent: piece bytes that children got from peers on seed hosts
	// (childLimit: a seed of unknown capacity sends the content once).
	seedSent   int64
	digests    map[uint32][]byte // trusted: from peers fetching from the origin only
	digestHost map[uint32]string // the host each trusted digest came from
	// suspect: the digests a peer's whole-content check accused, under check
	// (see onContentCorruptLocked); nil when none is.
	suspect *suspicion
	// private: fetched with credentials (sticky); key signs its piece tokens.
	private bool
	key     []byte
	info    *schedulerv1.SchedulerMessage
	peers   map[string]*peer
	// list holds the peers of peers in a order that depends only on the
	// events (unlike a map's): walks over it decide alike in every run.
	list     []*peer
	listIdx  int     // index in Scheduler.taskList
	pool     []*peer // candidate parents: hold data, are done, or fetch from the origin
	waitList []*peer // waiting peers (peer.waitIdx)
	// open: pool members with a free child slot when last looked at
	// (touchOpenLocked); decisions in large tasks look here first.
	open []*peer
	// crowded: peers that took a parent without a free slot (sharing its
	// uplink) when they last got one; rehomed when capacity frees up.
	crowded      []*peer
	crowdScan    int // where pacedRehomeLocked goes on in crowded
	backToSource int
	seedPhase    seedPhase
	seedHost     string
	seedAt       time.Time
	seedAttempts int
	seedFailed   map[string]struct{} // hosts whose seed attempt failed
	seedPeer     *peer
	emptySince   time.Time
	dirty        bool
	// rate is the target rate R of every receiver in bytes/s (capacity.go),
	// 0 when no capacity is known.
	rate float64
	// fluid is the rate every receiver gets at the fluid bound, capped by
	// rate: the source's and receivers' uplinks over the receivers
	// (capacity.go); what a parent's unpaced children are assigned when
	// its spare capacity is reckoned. 0 when no capacity is known.
	fluid float64
	// joining: at the last rate update more hosts were in the task than at
	// the one before, and none had finished since; a rise of the fluid rate
	// then comes from hosts registering, and the shares booked on relays
	// before it yield to their unpaced children (trimPacedLocked). recvN and
	// doneN are the receivers and the finished receivers at that update.
	joining      bool
	recvN, doneN int
	// rateHi: while fewer than minRateSample receivers of known capacity
	// have registered, the fastest of their uplinks, else 0. A seed host's
	// children are counted at it too (childLimit).
	rateHi float64
	// paced counts the task's paced edges (link.share > 0).
	paced   int
	nextOrd uint64
	// full: every piece of the task, the bitset its inventory holders share.
	full bitset
	// holders counts the task's inventory holders (peers that came from
	// hosts' inventories: always succeeded, never waiting or downloading).
	holders int
	// cache: a dfcache entry. It has no origin: only its importers are
	// sources, seeds are never triggered, and a peer finding no holder fails.
	cache bool
}

func newTask(id string, now time.Time) *task {
	return &task{
		id:            id,
		contentLength: -1,
		digests:       make(map[uint32][]byte),
		digestHost:    make(map[uint32]string),
		peers:         make(map[string]*peer),
		emptySince:    now,
	}
}

// suspicion holds the digests accused by a content-corrupt report until a
// fresh fetch from the origin, by a host that is neither accused nor a
// reporter, confirms or clears them.
type suspicion struct {
	digests   map[uint32][]byte
	from      map[uint32]string   // host that gave each digest
	accused   map[string]struct{} // hosts that gave any of them
	reporters map[string]struct{} // hosts that reported the content corrupt
	agreed    int                 // digests the fresh fetch confirmed
}

// accused reports whether host h's digests for t are under suspicion.
func (t *task) accused(h *host) bool {
	if t.suspect == nil {
		return false
	}
	_, ok := t.suspect.accused[h.id]
	return ok
}

// reporter reports whether host h accused t's digests in the open suspicion.
func (t *task) reporter(h *host) bool {
	if t.suspect == nil {
		return false
	}
	_, ok := t.suspect.reporters[h.id]
	return ok
}

// pieceCount returns the number of pieces, 0 while the shape is unknown.
func (t *task) pieceCount() uint32 {
	if t.contentLength < 0 || t.pieceSize == 0 {
		return 0
	}
	return core.PieceCount(t.contentLength, t.pieceSize)
}

func (t *task) validPiece(n uint32) bool {
	if total := t.pieceCount(); total > 0 {
		return n < total
	}
	return n < maxPieces
}

func (t *task) shapeKnown() bool { return t.contentLength >= 0 || len(t.digests) > 0 }

// infoMessage returns a TaskInfo with the shape and every known digest,
// cached until the shape or the digests change: 10,000 peers registering
// for one task share one message.
func (t *task) infoMessage() *schedulerv1.SchedulerMessage {
	if t.info != nil {
		return t.info
	}
	nums := make([]uint32, 0, len(t.digests))
	for n := range t.digests {
		nums = append(nums, n)
	}
	slices.Sort(nums)
	ds := make([]*schedulerv1.PieceDigest, len(nums))
	for i, n := range nums {
		ds[i] = &schedulerv1.PieceDigest{Number: n, Digest: t.digests[n]}
	}
	t.info = taskInfo(t, ds)
	return t.info
}

func taskInfo(t *task, ds []*schedulerv1.PieceDigest) *schedulerv1.SchedulerMessage {
	return &schedulerv1.SchedulerMessage{Msg: &schedulerv1.SchedulerMessage_TaskInfo{TaskInfo: &schedulerv1.TaskInfo{
		ContentLength: t.contentLength,
		PieceSize:     t.pieceSize,
		Digests:       ds,
	}}}
}

// bitset is a peer's set of held pieces.
type bitset struct {
	words []uint64
	count uint32
	// shared: words is the task's full bitset, shared by its inventory
	// holders (fillShared); copied before the first change.
	shared bool
}

// set adds piece n and reports whether it was new.
func (b *bitset) set(n uint32) bool {
	if b.shared {
		b.words, b.shared = slices.Clone(b.words), false
	}
	w := int(n / 64)
	if w >= len(b.words) {
		b.words = append(b.words, make([]uint64, w+1-len(b.words))...)
	}
	mask := uint64(1) << (n % 64)
	if b.words[w]&mask != 0 {
		return false
	}
	b.words[w] |= mask
	b.count++
	return true
}

// holdsNew reports whether b holds at least k pieces that o lacks: at once
// when b holds k more than o, else by counting.
func (b *bitset) holdsNew(o *bitset, k uint32) bool {
	if b.count >= o.count+k {
		return true
	}
	n := 0
	for i, w := range b.words {
		if i < len(o.words) {
			w &^= o.words[i]
		}
		if n += bits.OnesCount64(w); n >= int(k) {
			return true
		}
	}
	return false
}

// fillShared makes an empty bitset hold pieces 0..n-1, sharing the words
// of t's full bitset for n pieces (one per task, not one per holder).
func (b *bitset) fillShared(t *task, n uint32) {
	if t.full.count != n {
		t.full = bitset{words: make([]uint64, (n+63)/64), count: n}
		for i := range t.full.words {
			t.full.words[i] = ^uint64(0)
		}
		if r := n % 64; r != 0 {
			t.full.words[len(t.full.words)-1] = 1<<r - 1
		}
	}
	*b = bitset{words: t.full.words, count: n, shared: true}
}

// addPeer puts p in t's list and map.
func (t *task) addPeer(p *peer) {
	t.peers[p.id] = p
	p.listIdx = len(t.list)
	t.list = append(t.list, p)
}

// removePeer takes p out of t's list and map.
func (t *task) removePeer(p *peer) {
	if t.peers[p.id] == p {
		delete(t.peers, p.id)
	}
	i := p.listIdx
	if i < 0 || i >= len(t.list) || t.list[i] != p {
		return
	}
	last := t.list[len(t.list)-1]
	t.list[i], last.listIdx = last, i
	t.list[len(t.list)-1] = nil
	t.list = t.list[:len(t.list)-1]
	p.listIdx = -1
}

// addWaiting and removeWaiting keep t.waitList (order: by events only).
func (t *task) addWaiting(p *peer) {
	if p.waitIdx >= 0 {
		return
	}
	p.waitIdx = len(t.waitList)
	t.waitList = append(t.waitList, p)
}

func (t *task) removeWaiting(p *peer) {
	i := p.waitIdx
	if i < 0 {
		return
	}
	last := t.waitList[len(t.waitList)-1]
	t.waitList[i], last.waitIdx = last, i
	t.waitList[len(t.waitList)-1] = nil
	t.waitList = t.waitList[:len(t.waitList)-1]
	p.waitIdx = -1
}

// setOpen puts p in t.open or takes it out.
func (t *task) setOpen(p *peer, in bool) {
	switch {
	case in && p.openIdx < 0:
		p.openIdx = len(t.open)
		t.open = append(t.open, p)
	case !in && p.openIdx >= 0:
		i := p.openIdx
		last := t.open[len(t.open)-1]
		t.open[i], last.openIdx = last, i
		t.open[len(t.open)-1] = nil
		t.open = t.open[:len(t.open)-1]
		p.openIdx = -1
	}
}
