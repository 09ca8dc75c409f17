package sim

import (
	"time"

	schedulerv1 "github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/scheduler"
)

// The simulator talks to the scheduler and to each node's download core
// through these small interfaces, in the real protocol's messages
// (schedulerv1). real.go adapts the real scheduler and the real core to
// them; double.go is a minimal stand-in used to bring the model up and to
// test the network and event loop on their own.

// Scheduler is the scheduler driven synchronously, in virtual time.
type Scheduler interface {
	// Open starts the announce session of one peer. Every message the
	// scheduler sends it, now or later, goes to deliver.
	Open(now time.Time, peerID string, host *schedulerv1.Host, deliver func(*schedulerv1.SchedulerMessage)) (Session, error)
	// Tick runs the scheduler's periodic work.
	Tick(now time.Time)
}

// Session is one peer's announce stream.
type Session interface {
	Send(now time.Time, m *schedulerv1.PeerMessage) error
	// Close ends the stream (the peer left or died).
	Close(now time.Time)
}

// SchedulerEnv is what the simulator offers a scheduler.
type SchedulerEnv struct {
	// TriggerSeed asks the seed peer host to download a task (the
	// scheduler's SeedTasks stream).
	TriggerSeed func(spec *schedulerv1.TaskSpec)
	// SeedHost is the seed peer's host (it keeps a SeedTasks session).
	SeedHost *schedulerv1.Host
	Seed     uint64
	// Config replaces the real scheduler's defaults when set.
	Config *scheduler.Config
}

// NewSchedulerFunc builds the scheduler of one simulation.
type NewSchedulerFunc func(env SchedulerEnv) (Scheduler, error)

// Core is one node's download decisions: it takes an event and the current
// time and returns what to do.
type Core interface {
	Handle(now time.Time, ev Event) []Action
}

// CoreParams is what a node's core is built with.
type CoreParams struct {
	PeerID string
	Host   *schedulerv1.Host
	Spec   *schedulerv1.TaskSpec
	// SeedRequest: the scheduler triggered this (seed peer) download.
	SeedRequest bool
	Relay       bool
	Seed        uint64
	// Length and PieceSize: the content's shape (what the origin would
	// answer; the real core learns it from the scheduler or the origin).
	Length    int64
	PieceSize uint32
	// OriginOnHost: the node runs on the origin's host (the seed peer of
	// Config.SeedOnOrigin), so its origin fetches answer from its own
	// address and its TaskMeta says origin_on_host, as a daemon's would.
	OriginOnHost bool
}

func (p CoreParams) pieces() uint32 { return core.PieceCount(p.Length, p.PieceSize) }

// NewCoreFunc builds a node's core.
type NewCoreFunc func(p CoreParams) (Core, error)

// EventKind names what happened to a node.
type EventKind int

// Events a core receives.
const (
	EvStart        EventKind = iota // the download was asked for
	EvScheduler                     // Msg from the scheduler
	EvParentPieces                  // Parent's piece set (first answer of a sync)
	EvParentHas                     // Parent has (or is relaying) Piece
	EvParentGone                    // the sync with Parent broke
	EvPieceDone                     // Piece arrived from Parent ("" = origin), Bytes in Cost
	EvPieceFailed                   // the transfer of Piece from Parent failed (Reason)
	EvTick                          // timer
	EvOriginMeta                    // the origin answered: Length is the content length
	EvOriginDone                    // the origin stream fetched every piece it was asked for
)

// Why a transfer failed (Event.Reason of EvPieceFailed).
const (
	FailNotFound  = "not_found"  // the parent holds no such piece
	FailConnLost  = "conn_lost"  // the parent died (connection refused or reset)
	FailCancelled = "cancelled"  // the core cancelled it (ActCancel)
	FailRelay     = "relay_lost" // the parent's own copy, being relayed, broke
)

// Event is one input of a core.
type Event struct {
	Kind   EventKind
	Msg    *schedulerv1.SchedulerMessage
	Parent string
	Piece  uint32
	Req    uint64 // EvPieceDone, EvPieceFailed: the request's number
	Pieces []uint32
	// Relaying: EvParentHas of a piece still arriving at the parent;
	// EvParentPieces: RelayingPieces are those, Pieces the ones held.
	Relaying       bool
	RelayingPieces []uint32
	Bytes          int64
	Cost           time.Duration
	Digest         []byte
	Length         int64
	Reason         string
}

// ActionKind names what a node does.
type ActionKind int

// Actions a core returns.
const (
	ActSend    ActionKind = iota // Msg to the scheduler
	ActSync                      // open a piece sync with Parent
	ActUnsync                    // close it
	ActRequest                   // request Piece from Parent
	ActCancel                    // give up the request of Piece from Parent
	ActOrigin                    // fetch Pieces from the origin, in order, one stream
	ActDone                      // the content is complete and verified
	ActFail                      // the download failed (Reason)
	ActTimer                     // deliver EvTick at At (replaces the previous timer; zero: none)
)

// Action is one output of a core.
type Action struct {
	Kind   ActionKind
	At     time.Time
	Req    uint64 // ActRequest, ActCancel: the core's request number (0: none)
	Msg    *schedulerv1.PeerMessage
	Parent string
	Piece  uint32
	Pieces []uint32
	Reason string
}
