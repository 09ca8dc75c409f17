// Package fetch is the daemon's download core: the decisions of one
// download (which piece from which parent, how many requests each parent
// gets, when a parent is slow, stalled or dead, when to ask the scheduler for
// other parents, when to go to the origin, what a corrupt piece costs) as a
// deterministic state machine.
//
// A Core takes events with the current time and returns actions. It does no
// I/O, starts no goroutines, reads no clock and draws its randomness from the
// source in its Config: the same events at the same times give the same
// actions. The daemon's conductor executes the actions (scheduler stream,
// parent streams, piece transfers, origin fetches, metrics); a simulator can
// drive a Core with virtual time and no daemon at all:
//
//	c := fetch.New(fetch.Config{PeerID: "p1", Rand: rand.New(rand.NewPCG(1, 2))})
//	acts := c.Step(t0, fetch.EvStart{Length: size, PieceSize: ps, AllTrusted: true})
//	acts = c.Step(t1, fetch.EvParents{Parents: []fetch.Parent{{ID: "seed", Seed: true}}})
//	// ActConnect{seed}: open its piece stream, then
//	acts = c.Step(t2, fetch.EvParentPieces{Parent: "seed", Pieces: []uint32{0, 1, 2}})
//	// ActRequest{Parent: "seed", Piece: 0, ...}: transfer it, then
//	acts = c.Step(t3, fetch.EvPieceDone{Parent: "seed", Piece: 0, Bytes: ps, Start: t2, End: t3})
//	// and at c.NextDeadline() (or any later time): c.Step(t, fetch.EvTick{})
//
// The executor's side of the contract:
//
//   - For every ActRequest, exactly one EvPieceDone or EvPieceFailed, also
//     for a request the core cancelled (the core ignores what it no longer
//     waits for). Pass ActRequest.Req back in the event.
//   - The same piece may be requested from two parents at once (the
//     endgame): each request is a transfer of its own, answered on its own.
//     A second request must not abort the first: the first's parent would
//     be blamed for a failure that is not its own.
//   - ActRequest.Stall is the no-progress timeout the executor enforces on
//     the transfer (EvPieceFailed with KindTimeout).
//   - For every ActStartOrigin, one EvOriginDone, after an EvOriginPiece for
//     every piece of its Ranges not held yet, including pieces still in
//     flight from parents (their requests may yet fail): with Err nil the
//     core expects every piece held.
//   - Pieces are stored before EvPieceDone or EvOriginPiece is stepped.
package fetch

import (
	"math/rand/v2"
	"time"
)

// Config fixes a download's rules. Zero fields take the defaults of
// DefaultConfig (the daemon's download defaults).
type Config struct {
	// TaskID names the task in errors.
	TaskID string
	// PeerID is this peer: it is never its own parent.
	PeerID string
	// ConcurrentPieces bounds the requests in flight for the task.
	ConcurrentPieces int
	// PerParentRequests bounds the requests in flight at one parent (the
	// fastest parent's depth; slower ones get fewer, by their rates).
	PerParentRequests int
	// MinStall and MaxStall bound a request's no-progress timeout; in
	// between it follows the parent's measured rate.
	MinStall, MaxStall time.Duration
	// SwarmTimeout: no progress of the swarm for this long sends the
	// download to the origin (longer while the content's source is slow
	// to bring new pieces: swarmWait).
	SwarmTimeout time.Duration
	// ParentFailures failures in a row drop a parent.
	ParentFailures int
	// ParentGoneGrace is how long a peer left without parents by a broken
	// parent stream waits for the scheduler's own answer before asking.
	ParentGoneGrace time.Duration
	// NoParentsAsk: with no parents and no progress for this long, the peer
	// asks for parents (and again after as long).
	NoParentsAsk time.Duration
	// ReportDelay is how long a finished piece may wait before it is
	// reported (reports batch); ReportBatch pieces are reported at once.
	ReportDelay time.Duration
	ReportBatch int
	// Downlink is this host's downlink in bytes/s as the daemon knows it:
	// declared, else the best rate a link test or a download reached into
	// it (a lower bound); 0 when unknown. With the rates measured from the
	// parents, it bounds the bytes in flight (busy).
	Downlink float64

	// NoOrigin: the download may not go to the origin (dfget
	// --disable-back-source; a dfcache entry has none either way).
	NoOrigin bool
	// Cache: a dfcache entry; it has no origin, and a scheduler's
	// BackToSource or Fail means nobody holds it.
	Cache bool
	// Local: content read on this host (file://): it goes to its "origin"
	// even when back-to-source is disabled.
	Local bool
	// FailIsFinal: a scheduler's Fail ends the download (priorities LEVEL1
	// and LEVEL2 forbid the trip to the origin).
	FailIsFinal bool

	// Rand breaks ties. Nil: a fixed seed (deterministic).
	Rand *rand.Rand
}

// DefaultConfig returns the daemon's defaults.
func DefaultConfig() Config {
	return Config{
		ConcurrentPieces:  16,
		PerParentRequests: 4,
		MinStall:          3 * time.Second,
		MaxStall:          30 * time.Second,
		SwarmTimeout:      20 * time.Second,
		ParentFailures:    3,
		ParentGoneGrace:   time.Second,
		NoParentsAsk:      2 * time.Second,
		ReportDelay:       50 * time.Millisecond,
		ReportBatch:       32,
	}
}

// Mode is where the download gets its pieces.
type Mode int

const (
	// ModeSwarm: from parents the scheduler gives.
	ModeSwarm Mode = iota
	// ModeBackToSource: the scheduler sent this peer to the origin; its
	// pieces' digests become the task's.
	ModeBackToSource
	// ModeOrigin: the swarm failed (or was never reachable) and the peer
	// fetches the rest from the origin by itself.
	ModeOrigin
)

func (m Mode) String() string {
	switch m {
	case ModeSwarm:
		return "swarm"
	case ModeBackToSource:
		return "back_to_source"
	default:
		return "origin"
	}
}

// Parent is a peer the scheduler offers as a parent.
type Parent struct {
	ID   string
	Host string
	// Seed: a seed peer (its uplink is as scarce as anyone's: a non-seed
	// holder of a piece is asked first).
	Seed bool
	// UploadBps is the parent host's declared or scheduler-measured upload
	// capacity in bytes/s (0: unknown); the estimate until this peer has
	// measured the parent itself.
	UploadBps float64
	// ShareBps is the part of the parent's uplink the scheduler booked for
	// this peer, in bytes/s: the parent is paced to it (at most one request
	// in flight, the next one not before the last one's bytes at ShareBps
	// have elapsed), so that taking the parent's spare capacity does not
	// halve what its other children get from it. 0: unpaced.
	ShareBps float64
}

// Kind says why a piece request failed.
type Kind int

const (
	// KindError: any other failure (a refused request, a protocol error).
	KindError Kind = iota
	// KindNotFound: the parent does not hold the piece (yet).
	KindNotFound
	// KindTimeout: the transfer made no progress for its Stall: the parent
	// is stalled.
	KindTimeout
	// KindCorrupt: the bytes failed the piece's trusted digest.
	KindCorrupt
	// KindConnLost: the connection broke mid-transfer.
	KindConnLost
	// KindNoSpace: this host's disk is full: the download fails.
	KindNoSpace
)

func (k Kind) String() string {
	switch k {
	case KindNotFound:
		return "not_found"
	case KindTimeout:
		return "timeout"
	case KindCorrupt:
		return "corrupt"
	case KindConnLost:
		return "conn_lost"
	case KindNoSpace:
		return "no_space"
	default:
		return "error"
	}
}

// Event is something that happened; see the Ev types.
type Event interface{ event() }

// EvStart begins the download: the task's shape as the cache knows it
// (Length -1 and PieceSize 0 when unknown), the pieces already held (after a
// restart), the pieces whose digests are trusted, and Origin: "" when the
// scheduler session is open, else why the download goes to the origin at
// once (local_file, local_only, no_scheduler, scheduler_unreachable).
type EvStart struct {
	Length     int64
	PieceSize  uint32
	Held       []uint32
	Trusted    []uint32
	AllTrusted bool
	Origin     string
}

// EvTaskInfo: the scheduler's TaskInfo: the shape (PieceSize 0: not
// known yet) and pieces whose trusted digests are now known (added to
// those known).
type EvTaskInfo struct {
	Length     int64
	PieceSize  uint32
	Trusted    []uint32
	AllTrusted bool
}

// EvParents: the scheduler's parent set (replaces the current one).
type EvParents struct{ Parents []Parent }

// EvWait: the scheduler says wait.
type EvWait struct{ Reason string }

// EvBackToSource: the scheduler sends this peer to the origin.
type EvBackToSource struct{ Reason string }

// EvFail: the scheduler gives up on the task.
type EvFail struct{ Reason string }

// EvSchedulerLost: the scheduler session broke.
type EvSchedulerLost struct{ Err error }

// EvParentConnected: a parent's piece stream is open.
type EvParentConnected struct{ Parent string }

// EvParentPieces: a parent announced pieces it holds, pieces it relays
// (still arriving there), or that it holds everything (Done); and
// SourceBytes, when not 0: how many bytes of the content the source
// upstream of it has received from the origin (news that the source is
// still receiving, see swarmWait).
type EvParentPieces struct {
	Parent      string
	Pieces      []uint32
	Relaying    []uint32
	Done        bool
	SourceBytes uint64
}

// EvParentGone: a parent's piece stream broke (it died or left).
type EvParentGone struct {
	Parent string
	Err    error
}

// EvPieceDone: a requested piece arrived, verified and stored. Req is the
// request's number from ActRequest (0: the oldest request for Piece at
// Parent).
type EvPieceDone struct {
	Parent     string
	Piece      uint32
	Bytes      int64
	Start, End time.Time
	Req        uint64
}

// EvPieceFailed: a requested piece did not arrive (Req as in EvPieceDone).
type EvPieceFailed struct {
	Parent string
	Piece  uint32
	Kind   Kind
	Err    error
	Req    uint64
}

// EvOriginShape: the origin fetch learned the shape.
type EvOriginShape struct {
	Length    int64
	PieceSize uint32
}

// EvOriginPiece: the origin fetch stored a piece; Cost runs from asking
// for it to holding it.
type EvOriginPiece struct {
	Piece uint32
	Bytes int64
	Cost  time.Duration
}

// EvOriginDone: the origin fetch ended (Err nil: every range it was asked
// for was read).
type EvOriginDone struct{ Err error }

// EvContentCorrupt: the complete content failed its whole-content digest
// (after ActComplete).
type EvContentCorrupt struct{ Err error }

// EvStreaming: a reader consumes the content in order (pieces are picked
// in order instead of rarest first), or no longer.
type EvStreaming struct{ On bool }

// EvTick: time passed; timers due at now fire. Call it at NextDeadline.
type EvTick struct{}

// EvFlush: report finished pieces now (the executor is idle).
type EvFlush struct{}

func (EvStart) event()           {}
func (EvTaskInfo) event()        {}
func (EvParents) event()         {}
func (EvWait) event()            {}
func (EvBackToSource) event()    {}
func (EvFail) event()            {}
func (EvSchedulerLost) event()   {}
func (EvParentConnected) event() {}
func (EvParentPieces) event()    {}
func (EvParentGone) event()      {}
func (EvPieceDone) event()       {}
func (EvPieceFailed) event()     {}
func (EvOriginShape) event()     {}
func (EvOriginPiece) event()     {}
func (EvOriginDone) event()      {}
func (EvContentCorrupt) event()  {}
func (EvStreaming) event()       {}
func (EvTick) event()            {}
func (EvFlush) event()           {}

// Action is something the executor must do; see the Act types.
type Action interface{ action() }

// ActConnect: open a piece stream to the parent.
type ActConnect struct{ Parent Parent }

// ActDisconnect: close the parent's piece stream (idempotent; also for a
// parent whose stream already broke).
type ActDisconnect struct{ Parent string }

// ActRequest: fetch Piece (Size bytes) from Parent, abandoning it after
// Stall without progress. Req numbers the request (from 1, never reused):
// a piece may be asked of a parent again while a cancelled request for it
// is still winding down.
type ActRequest struct {
	Parent string
	Piece  uint32
	Size   int64
	Stall  time.Duration
	Req    uint64
}

// ActCancel: abort the request for Piece at Parent (another parent
// delivered it, or the parent is stalled or gone). The executor still
// reports how the request ended; the core ignores it.
type ActCancel struct {
	Parent string
	Piece  uint32
	Req    uint64
}

// Report is one finished piece for the scheduler (Parent "" for one from
// the origin; its digest is the executor's to add).
type Report struct {
	Piece  uint32
	Parent string
	Bytes  int64
	Cost   time.Duration
}

// ActReport: send PiecesDone to the scheduler.
type ActReport struct{ Pieces []Report }

// ActPieceFailed: tell the scheduler a piece failed at a parent (Corrupt:
// the parent served bytes that fail the trusted digest).
type ActPieceFailed struct {
	Parent  string
	Piece   uint32
	Kind    Kind
	Reason  string
	Corrupt bool
}

// ActReschedule: ask the scheduler for other parents, naming bad ones.
type ActReschedule struct {
	Bad    []string
	Reason string
}

// ActSendMeta: tell the scheduler the task's shape (a peer sent to the
// origin).
type ActSendMeta struct {
	Length    int64
	PieceSize uint32
}

// ActContentCorrupt: tell the scheduler the content failed its digest.
type ActContentCorrupt struct{ Reason string }

// Range is a run of pieces, First to Last inclusive.
type Range struct{ First, Last uint32 }

// ActStartOrigin: fetch the missing pieces from the origin (Ranges nil:
// the whole content, its shape unknown). Reason names why (the
// back-to-source metric's label); Fallback: the swarm failed (not the
// scheduler's choice).
type ActStartOrigin struct {
	Ranges   []Range
	Reason   string
	Fallback bool
}

// ReasonRest is ActStartOrigin's reason for fetching, after an origin fetch
// ended, the pieces its requests to parents then failed to bring: the same
// trip to the origin, continued.
const ReasonRest = "rest"

// ActReset: forget every piece held (the content failed its digest and is
// fetched again from the origin).
type ActReset struct{}

// ActSetTimer: deliver EvTick at At (zero: no timer needed).
type ActSetTimer struct{ At time.Time }

// ActComplete: every piece is held: verify the whole content, commit it,
// tell the scheduler. A content failing its digest comes back as
// EvContentCorrupt.
type ActComplete struct{}

// ActFailed: the download failed with Err.
type ActFailed struct{ Err error }

func (ActConnect) action()        {}
func (ActDisconnect) action()     {}
func (ActRequest) action()        {}
func (ActCancel) action()         {}
func (ActReport) action()         {}
func (ActPieceFailed) action()    {}
func (ActReschedule) action()     {}
func (ActSendMeta) action()       {}
func (ActContentCorrupt) action() {}
func (ActStartOrigin) action()    {}
func (ActReset) action()          {}
func (ActSetTimer) action()       {}
func (ActComplete) action()       {}
func (ActFailed) action()         {}
