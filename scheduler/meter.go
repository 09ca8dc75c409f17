package scheduler

import (
	"math"
	"math/bits"
	"slices"
	"time"

	schedulerv1 "github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
)

// Measured link capacity (docs/architecture.md, "Capacity"). A host that
// declares nothing still shows what its uplink gives: every piece a child
// reports names its parent, so the scheduler counts the bytes each host sent
// in each tick. Over two ticks that is a lower bound of the host's uplink
// (linkMeter.lb). It is the uplink itself when the host was the bottleneck:
// with its parents and children unchanged over both ticks, its children
// lacked pieces it held and could have taken clearly more than it sent (a
// relay's child takes what the relay receives; a finished parent's child
// takes the task's rate). The capacity seen in such windows (linkMeter.cap)
// then stands in for a declared one: the host gets children by it, a slow
// one sits at a leaf, and its spare uplink is shared out in paced parts. A
// window that shows the host sending more than its measured capacity raises
// it, so a label earned while a child's downlink was the real limit does not
// stick, and a capacity no window confirmed for meterForget is forgotten.

// linkMeter is one host's measured upload rate.
type linkMeter struct {
	at       time.Time // last sample; zero before the first
	up, down int64     // host.uploadBytes and downloadBytes at `at`
	edges    uint64    // host.edges at `at`
	// The previous window and the one being closed: bytes sent and
	// received, length in seconds, and whether the host's parents and
	// children stayed the same in it.
	prevUp, prevDown, prevDt float64
	curUp, curDown, curDt    float64
	prevStable, curStable    bool
	closing                  bool // a window is being closed this tick
	// upRate and downRate are over the last two windows, in bytes/s.
	upRate, downRate float64
	// demand is what the host's children could have taken over those
	// windows, in bytes/s; NaN when one of them has no reference or lacks
	// next to nothing the host holds (keepsUp).
	demand  float64
	keepsUp bool
	// childAtLimit: a child of the host sends at its own uplink's limit,
	// and may have taken less than it could (meterLocked).
	childAtLimit bool
	// parentFeed: the most that one of its full-rate parents holding
	// pieces it lacks could feed it (feedRate), this window; 0 none.
	parentFeed float64
	lb         float64 // the most it was seen to send, decaying slowly
	cap        float64 // its uplink as seen when it was the bottleneck; 0 unknown
	capAt      time.Time
	// bound: the window just judged found it the bottleneck, at boundUp
	// (meterJudgeLocked).
	bound   bool
	boundUp float64
	// judged: some window had stable children with a known demand, so
	// the meter speaks for this host (the per-piece slow-parent rule
	// then leaves it alone).
	judged bool
	// downMax is the most it was seen to receive, decaying like lb: what
	// its downlink gives at least.
	downMax float64
	// budget: the upload budget advised to a host that declared nothing
	// and whose measured uplink is much slower than its downlink
	// (uploadBudget); 0 none. Its shares are booked against it.
	budget float64
}

const (
	// meterBound: a host that sent less than this share of what its
	// children could take was the bottleneck.
	meterBound = 0.7
	// meterDecay is the factor a host's lower bound loses per tick when it
	// sends less, so a link that got slower shows within a minute or so.
	meterDecay = 0.98
	// meterMinWindow: shorter windows (a tick right after another) are
	// folded into the next.
	meterMinWindow = 500 * time.Millisecond
	// meterPacedSeen: a host advised an upload budget that sends at least
	// this share of it sends at the pace it was told, which says nothing
	// new of its link.
	meterPacedSeen = 0.8
	// budgetResend: an advised budget is sent again when it moved by more
	// than this fraction.
	budgetResend = 0.1
	// meterForget: a measured capacity no window confirmed for this long
	// is forgotten, so a host measured while something else held it back
	// (a busy CPU, a burst of other traffic) gets children again and is
	// measured anew.
	meterForget = 30 * time.Second
)

// meterLocked closes a measuring window on every host: what it sent and
// received, what its children could take (from the current graph), and from
// both its measured capacity. Called once a Tick, before the tasks' rates.
func (s *Scheduler) meterLocked(now time.Time) {
	ups := s.rateScratch[:0]
	for _, h := range s.hosts {
		s.meterRatesLocked(h, now)
		if h.info.GetUploadBps() > 0 {
			ups = append(ups, declaredUplink(h))
		}
	}
	s.declaredMedian = 0
	if len(ups) > 0 {
		slices.Sort(ups)
		s.declaredMedian = ups[len(ups)/2]
	}
	s.rateScratch = ups[:0]
	for _, t := range s.taskList {
		if t.onlyHolders() {
			continue // only holders: nobody downloads
		}
		for _, c := range t.list {
			if c.state != stateRunning || len(c.parents) == 0 {
				continue
			}
			// What c takes over paced edges it does not ask of its
			// full-rate parents.
			unpaced, paced := 0, 0.0
			for _, l := range c.parents {
				if l.share == 0 {
					unpaced++
				} else {
					paced += l.share
				}
			}
			for _, l := range c.parents {
				m := &l.peer.host.meter
				switch {
				case !backlog(l.peer, c):
					// c lacks next to nothing of what its parent holds:
					// it keeps up (or came from higher up the pipeline
					// holding much already), so the parent is not what
					// holds it back, and what it took says nothing of
					// the parent's uplink.
					m.demand, m.keepsUp = math.NaN(), true
				case l.share > 0:
					m.demand += l.share
				default:
					f := feedRate(l.peer)
					if f > c.host.meter.parentFeed { // (NaN > x is false)
						c.host.meter.parentFeed = f
					}
					m.demand += max(0, f-paced) / float64(unpaced)
				}
			}
		}
	}
	// A child whose own uplink is at its limit may take less than it
	// could: on a real link the acknowledgements of its downloads queue
	// behind its uploads (on the netns harness, a slow-uplink host
	// relaying at its full rate got its pieces at a sixth of its
	// downlink, and its fast parent was called slow). Its parents are not
	// judged through it.
	for _, t := range s.taskList {
		if t.onlyHolders() {
			continue
		}
		for _, c := range t.list {
			if c.state != stateRunning || len(c.parents) == 0 || !c.host.meter.atLimit() || pacedHost(c.host) {
				continue // (paced: its acknowledgements pass)
			}
			for _, l := range c.parents {
				l.peer.host.meter.childAtLimit = true
			}
		}
	}
	for _, h := range s.hosts {
		s.meterJudgeLocked(h, now)
	}
	s.sendBudgetsLocked()
}

// uploadBudget is what h's uploads together should take while it
// downloads, when the scheduler has to tell it: h declared nothing, and its
// measured uplink is so much slower than what it was seen to receive that
// the acknowledgements of its downloads need a share of it
// (core.UsableUplink). On the netns harness such a host relaying at its
// full 2.5 Mbit/s uplink received at a sixth of its 25 Mbit/s downlink, and
// its parents looked slow through it. 0 when no advice is due.
func uploadBudget(h *host) float64 {
	m := &h.meter
	if h.info.GetUploadBps() > 0 || m.cap <= 0 || m.downMax <= 0 {
		return 0
	}
	up := int64(m.cap)
	if u := core.UsableUplink(up, int64(m.downMax)); u < up {
		return float64(u)
	}
	return 0
}

// pacedHost reports whether h's daemon paces its uploads below its uplink
// so that its own downloads keep their acknowledgements: by its declared
// rates, or by the budget the scheduler advised.
func pacedHost(h *host) bool {
	if u := h.info.GetUploadBps(); u > 0 {
		return declaredUplink(h) < float64(u)
	}
	return h.meter.budget > 0
}

// sendBudgetsLocked tells every downloading peer whose host's advised
// upload budget changed (by more than budgetResend, or to or from none)
// the new one; the daemon paces all its uploads by the latest it got.
func (s *Scheduler) sendBudgetsLocked() {
	for _, t := range s.taskList {
		if t.onlyHolders() {
			continue
		}
		for _, c := range t.list {
			if c.state != stateRunning && c.state != stateBackToSource {
				continue
			}
			b, was := c.host.meter.budget, c.budgetSent
			if b == was || (b > 0 && was > 0 && math.Abs(b-was) <= budgetResend*was) {
				continue
			}
			c.budgetSent = b
			s.sendLocked(c, &schedulerv1.SchedulerMessage{Msg: &schedulerv1.SchedulerMessage_UploadBudget{
				UploadBudget: &schedulerv1.UploadBudget{Bps: int64(b)},
			}})
			if s.debug() {
				s.log.Debug("upload budget", "task_id", t.id, "peer_id", c.id, "host_id", c.host.id, "budget_bps", int64(b), "measured_up_bps", int64(c.host.meter.cap))
			}
		}
	}
}

// verdict reads the window just closed: whether it can be judged (the
// host's parents and children stayed the same over both windows), and
// whether the host sent less than meterBound of its demand (bound) or less
// than half that (clear).
func (m *linkMeter) verdict() (stable, bound, clear bool) {
	stable = m.closing && m.prevDt > 0 && m.curStable && m.prevStable
	if stable && !m.keepsUp && m.demand > 0 && m.upRate > 0 { // NaN > 0 is false
		bound = m.upRate < meterBound*m.demand
		clear = m.upRate < meterBound*m.demand/2
	}
	return stable, bound, clear
}

// atLimit reports whether the host sends at the limit of its uplink as far
// as the meter knows: found bound in this window, or sending near its
// measured capacity.
func (m *linkMeter) atLimit() bool {
	if _, bound, _ := m.verdict(); bound {
		return true
	}
	return m.cap > 0 && m.upRate >= meterBound*m.cap
}

// meterRatesLocked closes h's window when one is due: its rates over the
// last two windows.
func (s *Scheduler) meterRatesLocked(h *host, now time.Time) {
	m := &h.meter
	m.demand, m.keepsUp, m.childAtLimit, m.closing, m.parentFeed = 0, false, false, false, 0
	if m.at.IsZero() {
		m.at, m.up, m.down, m.edges = now, h.uploadBytes, h.downloadBytes, h.edges
		return
	}
	d := now.Sub(m.at)
	if d < meterMinWindow {
		return
	}
	m.closing = true
	m.curDt = d.Seconds()
	m.curUp, m.curDown = float64(h.uploadBytes-m.up), float64(h.downloadBytes-m.down)
	m.curStable = h.edges == m.edges
	m.upRate = (m.curUp + m.prevUp) / (m.curDt + m.prevDt)
	m.downRate = (m.curDown + m.prevDown) / (m.curDt + m.prevDt)
	m.at, m.up, m.down, m.edges = now, h.uploadBytes, h.downloadBytes, h.edges
}

// meterBacklog is how many pieces a parent must hold that its child lacks
// for the child to be waiting on the parent's uplink rather than on its
// input: a relay that keeps up is a piece or two ahead of its child.
const meterBacklog = 2

// backlog reports whether par holds at least meterBacklog pieces c lacks.
func backlog(par, c *peer) bool {
	n := 0
	for i, w := range par.pieces.words {
		if i < len(c.pieces.words) {
			w &^= c.pieces.words[i]
		}
		if n += bits.OnesCount64(w); n >= meterBacklog {
			return true
		}
	}
	return false
}

// feedRate is how fast a child of par could take pieces from it: what par
// received when it relays, the task's rate when it holds the content; NaN
// when unknown.
func feedRate(par *peer) float64 {
	switch par.state {
	case stateRunning, stateBackToSource:
		if r := par.host.meter.downRate; r > 0 {
			return r
		}
	default:
		if r := par.task.rate; r > 0 {
			return r
		}
	}
	return math.NaN()
}

// meterJudgeLocked updates h's lower bound and measured capacity from the
// window just closed.
func (s *Scheduler) meterJudgeLocked(h *host, now time.Time) {
	m := &h.meter
	if !m.closing {
		return
	}
	if m.prevDt > 0 {
		m.lb = max(m.upRate, m.lb*meterDecay)
		m.downMax = max(m.downRate, m.downMax*meterDecay)
		stable, bound, clear := m.verdict()
		if bound && !clear && m.upRate < meterBound/2*m.parentFeed {
			// Its children wait on it, and it also receives far less than
			// a parent of its holds for it: its uplink holds back both
			// (the acknowledgements of its download queue behind its
			// uploads) or its downlink is slow too. Either way it is
			// the bottleneck, and its demand, counted from what it
			// receives, understates by how much. Judged at once.
			clear = true
		}
		if m.childAtLimit {
			bound, clear = false, false // a child held back at its own end
		} else if stable && (m.keepsUp || m.demand > 0) {
			m.judged = true // (keepsUp: a child keeps up with it, so it is no bottleneck)
		}
		paced := m.budget > 0 && bound && m.upRate >= meterPacedSeen*m.budget
		switch {
		case paced && now.Sub(m.capAt) > meterForget:
			m.cap = 0 // lapsed, as below: measured anew, unpaced
		case paced:
			// Held to the budget it was advised: the window says
			// nothing of its link. Taking its rate would lower the
			// capacity, then the budget, at every window; counting it
			// as a confirmation would keep a fast host that was once
			// measured slow (a parent held back by its child) paced
			// and slow for good. Left alone, the capacity lapses after
			// meterForget, the budget with it, and the host is measured
			// anew unpaced.
		case clear || (bound && m.bound):
			// Far below, or twice in a row: one window can catch a
			// transient (a new child's connection, a busy CPU), which
			// would cost a fast host its children.
			c := m.upRate
			if m.bound {
				c = max(c, m.boundUp)
			}
			// Never below what it was seen to send lately (lb): a child
			// held back at its own end (its downlink busy with other
			// parents, its acknowledgements queued behind its own
			// uploads) makes a fast parent look bound. Not held at an
			// older, higher capacity: an uplink that got slower shows as
			// lb decays.
			m.cap, m.capAt = max(c, m.lb), now
		case m.cap > 0 && m.upRate > m.cap:
			m.cap = m.upRate // it sent that much: its uplink is no less
		case m.cap > 0 && now.Sub(m.capAt) > meterForget:
			m.cap = 0
		}
		m.bound, m.boundUp = bound, m.upRate
		m.budget = uploadBudget(h)
	}
	m.prevUp, m.prevDown, m.prevDt, m.prevStable = m.curUp, m.curDown, m.curDt, m.curStable
}

// knownUp is h's uplink in bytes/s when known: declared, or measured while
// it was the bottleneck; 0 otherwise.
func knownUp(h *host) float64 {
	if h.info.GetUploadBps() > 0 {
		return declaredUplink(h)
	}
	if h.meter.budget > 0 {
		return h.meter.budget
	}
	return h.meter.cap
}
