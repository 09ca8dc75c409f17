package fetch

import (
	"math/rand/v2"
	"sort"
	"testing"
	"time"
)

// t0 is the tests' virtual epoch.
var t0 = time.Unix(1_000_000, 0)

func testCore(cfg Config) *Core {
	if cfg.PeerID == "" {
		cfg.PeerID = "me"
	}
	if cfg.TaskID == "" {
		cfg.TaskID = "t"
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.New(rand.NewPCG(7, 7))
	}
	return New(cfg)
}

// pieces returns 0..n-1.
func pieces(n int) []uint32 {
	out := make([]uint32, n)
	for i := range out {
		out[i] = uint32(i)
	}
	return out
}

// find returns the actions of type A.
func find[A Action](acts []Action) []A {
	var out []A
	for _, a := range acts {
		if x, ok := a.(A); ok {
			out = append(out, x)
		}
	}
	return out
}

// run1 advances time to the next completion or core timer and steps it.
func (n *net) run1() {
	n.t.Helper()
	sort.SliceStable(n.pending, func(i, j int) bool { return n.pending[i].end.Before(n.pending[j].end) })
	dl := n.c.NextDeadline()
	if len(n.pending) > 0 && (dl.IsZero() || !dl.Before(n.pending[0].end)) {
		x := n.pending[0]
		n.pending = n.pending[1:]
		n.now = x.end
		if n.rates[x.parent] <= 0 {
			n.step(EvPieceFailed{Parent: x.parent, Piece: x.piece, Kind: KindTimeout, Req: x.req})
		} else {
			n.from[x.parent]++
			n.step(EvPieceDone{Parent: x.parent, Piece: x.piece, Bytes: x.size, Start: x.start, End: x.end, Req: x.req})
		}
		return
	}
	if dl.IsZero() {
		n.t.Fatalf("stuck at %v: nothing pending and no timer", n.now.Sub(t0))
	}
	n.now = dl
	n.step(EvTick{})
}

// net is a virtual network for a core: each parent serves its requests one
// after the other at its rate (bytes/s); a parent with rate 0 never
// answers (stalled). Time advances to the next completion or core timer.
type net struct {
	t     *testing.T
	c     *Core
	now   time.Time
	rates map[string]float64
	// flows: parents whose requests are each served at the parent's rate
	// at once, not one after the other: an uplink shared per connection
	// with other children's, where each connection gets the same part.
	flows   map[string]bool
	busy    map[string]time.Time // when each parent's queue drains
	pending []xfer
	from    map[string]int         // pieces delivered by each parent
	dups    int                    // requests cancelled after another copy won
	issued  map[string][]time.Time // when each parent's requests went out
	maxOut  map[string]int         // most requests in flight at each parent
	acts    []Action               // every action so far
	done    bool
	failed  error
}

type xfer struct {
	parent string
	piece  uint32
	size   int64
	start  time.Time
	end    time.Time
	stall  time.Duration
	req    uint64
}

func newNet(t *testing.T, c *Core, rates map[string]float64) *net {
	return &net{t: t, c: c, now: t0, rates: rates, busy: map[string]time.Time{}, from: map[string]int{},
		issued: map[string][]time.Time{}, maxOut: map[string]int{}}
}

func (n *net) step(ev Event) []Action {
	acts := n.c.Step(n.now, ev)
	n.acts = append(n.acts, acts...)
	for _, a := range acts {
		switch a := a.(type) {
		case ActRequest:
			r := n.rates[a.Parent]
			x := xfer{parent: a.Parent, piece: a.Piece, size: a.Size, start: n.now, stall: a.Stall, req: a.Req}
			if r <= 0 {
				x.end = n.now.Add(a.Stall) // a timeout
			} else {
				from := n.now
				if b := n.busy[a.Parent]; b.After(from) && !n.flows[a.Parent] {
					from = b
				}
				x.end = from.Add(secs(float64(a.Size) / r))
				n.busy[a.Parent] = x.end
			}
			n.pending = append(n.pending, x)
			n.issued[a.Parent] = append(n.issued[a.Parent], n.now)
			n.maxOut[a.Parent] = max(n.maxOut[a.Parent], len(n.c.InFlight(a.Parent)))
		case ActCancel:
			for i, x := range n.pending {
				if x.req == a.Req {
					n.pending = append(n.pending[:i], n.pending[i+1:]...)
					n.dups++
					break
				}
			}
		case ActComplete:
			n.done = true
		case ActFailed:
			n.failed = a.Err
		}
	}
	return acts
}

// run advances time until the download completes or fails, or limit steps.
func (n *net) run(limit int) {
	n.t.Helper()
	for i := 0; i < limit && !n.done && n.failed == nil; i++ {
		n.run1()
	}
	if !n.done && n.failed == nil {
		n.t.Fatalf("not done after %d steps", limit)
	}
}
