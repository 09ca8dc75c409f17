package sim

import (
	"container/heap"
	"math"
)

// Link is one direction of a capacity: a host's uplink or downlink, or the
// router link from one rack into another. Its flows share it max-min fairly.
type Link struct {
	Name string
	Cap  float64 // bytes per second

	flows []*Flow // the flows crossing it (unordered; a flow knows its index)

	// scratch of a recompute
	mark     uint64
	residual float64
	unfrozen int
	ver      int
}

// Flow is a transfer in progress over up to three links (sender's uplink,
// an inter-rack link, receiver's downlink).
type Flow struct {
	links [3]*Link
	idx   [3]int // position in each link's flows
	nl    int

	Rate      float64 // bytes per second, set by the last recompute
	remaining float64 // bytes left as of last
	last      float64 // virtual time of remaining
	done      func(now float64)

	hidx   int     // position in the net's finish heap; -1 when not in it
	finish float64 // when it drains at the current rate
	seq    uint64  // creation order: ties break by it (determinism)
	frozen bool
	mark   uint64
}

// Remaining is what the flow still has to send at virtual time now.
func (f *Flow) Remaining(now float64) float64 {
	return math.Max(0, f.remaining-f.Rate*(now-f.last))
}

// Net is the flow-level network: links, the flows in progress, and their
// max-min fair rates. Rates are recomputed only for the part of the network
// a change touches (the connected component of links and flows around the
// links marked dirty), and only once per instant (Settle).
type Net struct {
	now    float64
	seq    uint64
	mark   uint64
	dirty  []*Link
	finish finishHeap
	// Recomputes counts component recomputes, RecomputedFlows the flows
	// they covered: what the model cost.
	Recomputes      int64
	RecomputedFlows int64
}

// NewNet returns an empty network at virtual time 0.
func NewNet() *Net { return &Net{} }

// NewLink makes a link of the given capacity in bytes per second.
func (n *Net) NewLink(name string, capBps float64) *Link {
	return &Link{Name: name, Cap: capBps}
}

// Now is the network's virtual time.
func (n *Net) Now() float64 { return n.now }

// Start begins a flow of size bytes over links (nil links are skipped);
// done runs when the last byte has been sent. Rates are assigned at the next
// Settle.
func (n *Net) Start(size float64, done func(now float64), links ...*Link) *Flow {
	n.seq++
	f := &Flow{remaining: size, last: n.now, done: done, hidx: -1, seq: n.seq, finish: math.Inf(1)}
	for _, l := range links {
		if l == nil {
			continue
		}
		f.links[f.nl] = l
		f.idx[f.nl] = len(l.flows)
		l.flows = append(l.flows, f)
		n.dirty = append(n.dirty, l)
		f.nl++
	}
	if f.nl == 0 {
		// No constrained link: instant.
		f.Rate = math.Inf(1)
		f.finish = n.now
		heap.Push(&n.finish, f)
	}
	return f
}

// Cancel removes a flow without running its done func.
func (n *Net) Cancel(f *Flow) {
	if f == nil {
		return
	}
	n.detach(f)
	if f.hidx >= 0 {
		heap.Remove(&n.finish, f.hidx)
	}
	f.done = nil
}

func (n *Net) detach(f *Flow) {
	for i := 0; i < f.nl; i++ {
		l := f.links[i]
		last := len(l.flows) - 1
		j := f.idx[i]
		if j > last || l.flows[j] != f {
			continue
		}
		moved := l.flows[last]
		l.flows[j] = moved
		for k := 0; k < moved.nl; k++ {
			if moved.links[k] == l {
				moved.idx[k] = j
				break
			}
		}
		l.flows = l.flows[:last]
		n.dirty = append(n.dirty, l)
	}
	f.nl = 0
}

// NextFinish is when the next flow drains (+Inf when none). Call Settle
// first.
func (n *Net) NextFinish() float64 {
	if len(n.finish) == 0 {
		return math.Inf(1)
	}
	return n.finish[0].finish
}

// AdvanceTo moves virtual time to t (≤ NextFinish) and completes every flow
// that drains by then, running their done funcs in finish order (ties by
// creation order). It does not recompute rates: call Settle after.
func (n *Net) AdvanceTo(t float64) {
	if t > n.now {
		n.now = t
	}
	for len(n.finish) > 0 && n.finish[0].finish <= n.now+1e-12 {
		f := heap.Pop(&n.finish).(*Flow)
		n.detach(f)
		f.remaining, f.last, f.Rate = 0, n.now, 0
		if f.done != nil {
			d := f.done
			f.done = nil
			d(n.now)
		}
	}
}

// Settle recomputes the max-min fair rates of every component touched since
// the last Settle and reschedules their flows' finish times.
func (n *Net) Settle() {
	for len(n.dirty) > 0 {
		l := n.dirty[len(n.dirty)-1]
		n.dirty = n.dirty[:len(n.dirty)-1]
		if l.mark == n.mark+1 {
			continue // already recomputed in this Settle
		}
		n.recompute(l)
	}
	n.mark++
}

// recompute runs progressive filling on the component around start:
// every flow's rate is raised together until a link saturates; that link's
// flows are frozen at its fair share and the filling goes on with the rest.
func (n *Net) recompute(start *Link) {
	m := n.mark + 1
	var links []*Link
	var flows []*Flow
	start.mark = m
	links = append(links, start)
	for i := 0; i < len(links); i++ {
		for _, f := range links[i].flows {
			if f.mark == m {
				continue
			}
			f.mark = m
			flows = append(flows, f)
			for k := 0; k < f.nl; k++ {
				if o := f.links[k]; o.mark != m {
					o.mark = m
					links = append(links, o)
				}
			}
		}
	}
	n.Recomputes++
	n.RecomputedFlows += int64(len(flows))
	now := n.now
	for _, f := range flows {
		f.remaining = f.Remaining(now)
		f.last = now
		f.frozen = false
	}
	h := make(shareHeap, 0, len(links))
	for _, l := range links {
		l.residual = l.Cap
		l.unfrozen = len(l.flows)
		l.ver++
		if l.unfrozen > 0 {
			h = append(h, shareEntry{share: l.residual / float64(l.unfrozen), link: l, ver: l.ver})
		}
	}
	heap.Init(&h)
	for h.Len() > 0 {
		e := heap.Pop(&h).(shareEntry)
		l := e.link
		if e.ver != l.ver || l.unfrozen == 0 {
			continue
		}
		share := math.Max(0, l.residual/float64(l.unfrozen))
		for _, f := range l.flows {
			if f.frozen {
				continue
			}
			f.frozen = true
			f.Rate = share
			for k := 0; k < f.nl; k++ {
				o := f.links[k]
				o.residual -= share
				o.unfrozen--
				if o != l && o.unfrozen > 0 {
					o.ver++
					heap.Push(&h, shareEntry{share: math.Max(0, o.residual) / float64(o.unfrozen), link: o, ver: o.ver})
				}
			}
		}
	}
	for _, f := range flows {
		if f.Rate > 0 {
			f.finish = now + f.remaining/f.Rate
		} else {
			f.finish = math.Inf(1)
		}
		if f.hidx >= 0 {
			heap.Fix(&n.finish, f.hidx)
		} else {
			heap.Push(&n.finish, f)
		}
	}
}

type shareEntry struct {
	share float64
	link  *Link
	ver   int
}

type shareHeap []shareEntry

func (h shareHeap) Len() int { return len(h) }
func (h shareHeap) Less(i, j int) bool {
	if h[i].share != h[j].share {
		return h[i].share < h[j].share
	}
	return h[i].link.Name < h[j].link.Name
}
func (h shareHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *shareHeap) Push(x any)   { *h = append(*h, x.(shareEntry)) }
func (h *shareHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

type finishHeap []*Flow

func (h finishHeap) Len() int { return len(h) }
func (h finishHeap) Less(i, j int) bool {
	if h[i].finish != h[j].finish {
		return h[i].finish < h[j].finish
	}
	return h[i].seq < h[j].seq
}
func (h finishHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hidx = i
	h[j].hidx = j
}
func (h *finishHeap) Push(x any) {
	f := x.(*Flow)
	f.hidx = len(*h)
	*h = append(*h, f)
}
func (h *finishHeap) Pop() any {
	old := *h
	f := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	f.hidx = -1
	return f
}
