package piece

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// burstFor is the bucket size for a rate: a tenth of a second's worth, and
// at least a few chunks, so that a limiter never starves one transfer.
func burstFor(bytesPerSec int64) int {
	return int(max(bytesPerSec/10, 4*chunk))
}

// NewHostLimiter returns a host-wide limiter for bytesPerSec that is never
// nil (0: unlimited), so SetRate can change it while transfers use it.
func NewHostLimiter(bytesPerSec int64) *rate.Limiter {
	l := rate.NewLimiter(rate.Inf, 4*chunk)
	SetRate(l, bytesPerSec)
	return l
}

// SetRate changes l to bytesPerSec (0: unlimited); waiters adjust at once.
func SetRate(l *rate.Limiter, bytesPerSec int64) {
	if bytesPerSec <= 0 {
		l.SetLimit(rate.Inf)
		return
	}
	// Burst first: a smaller burst must not strand a waiter that asked
	// for more than it (WaitN asks for at most one burst).
	l.SetBurst(burstFor(bytesPerSec))
	l.SetLimit(rate.Limit(bytesPerSec))
}

// Unlimited reports whether l lets everything through.
func Unlimited(l *rate.Limiter) bool { return l == nil || l.Limit() == rate.Inf }

// Slots is a counting semaphore whose size can change while in use (config
// reload): lowering it lets the transfers running finish and holds new ones
// back until they fit.
type Slots struct {
	mu   sync.Mutex
	max  int
	used int
	free chan struct{} // closed and replaced when a slot frees or max grows
}

// NewSlots returns n slots.
func NewSlots(n int) *Slots { return &Slots{max: n, free: make(chan struct{})} }

// Acquire takes a slot, waiting until one is free or ctx ends. It reports
// whether it had to wait.
func (s *Slots) Acquire(ctx context.Context) (waited bool, err error) {
	for {
		s.mu.Lock()
		if s.used < s.max {
			s.used++
			s.mu.Unlock()
			return waited, nil
		}
		ch := s.free
		s.mu.Unlock()
		waited = true
		select {
		case <-ch:
		case <-ctx.Done():
			return waited, ctx.Err()
		}
	}
}

// Release gives a slot back.
func (s *Slots) Release() {
	s.mu.Lock()
	s.used--
	close(s.free)
	s.free = make(chan struct{})
	s.mu.Unlock()
}

// SetMax changes the number of slots.
func (s *Slots) SetMax(n int) {
	s.mu.Lock()
	s.max = n
	close(s.free)
	s.free = make(chan struct{})
	s.mu.Unlock()
}

// Max returns the number of slots.
func (s *Slots) Max() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.max
}

// peerLimits hands out one upload limiter per requesting peer, all at the
// same rate, forgetting peers idle for a minute (the map stays bounded by
// the peers active within that time).
type peerLimits struct {
	mu    sync.Mutex
	bps   int64
	peers map[string]*peerBucket
	swept time.Time
}

type peerBucket struct {
	l    *rate.Limiter
	last time.Time
}

const peerIdle = time.Minute

// get returns the peer's limiter, nil while there is no per-peer limit.
func (p *peerLimits) get(peer string, now time.Time) *rate.Limiter {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bps <= 0 {
		return nil
	}
	if now.Sub(p.swept) > peerIdle {
		for k, b := range p.peers {
			if now.Sub(b.last) > peerIdle {
				delete(p.peers, k)
			}
		}
		p.swept = now
	}
	b := p.peers[peer]
	if b == nil {
		if p.peers == nil {
			p.peers = map[string]*peerBucket{}
		}
		b = &peerBucket{l: NewHostLimiter(p.bps)}
		p.peers[peer] = b
	}
	b.last = now
	return b.l
}

func (p *peerLimits) set(bps int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bps = bps
	for _, b := range p.peers {
		SetRate(b.l, bps)
	}
}

// wait pays n bytes to l and records in m how long it had to wait, under
// the limit's name (download, upload, peer_upload).
func (m *Metrics) wait(ctx context.Context, name string, l *rate.Limiter, n int) error {
	if Unlimited(l) {
		return nil
	}
	start := time.Now()
	err := WaitN(ctx, l, n)
	m.ObserveWait(name, time.Since(start))
	return err
}

// ObserveWait records d spent waiting for the named limit, if it was a wait
// at all (a bucket with tokens answers in microseconds).
func (m *Metrics) ObserveWait(name string, d time.Duration) {
	if m == nil || m.LimitWaits == nil || d < 100*time.Microsecond {
		return
	}
	m.LimitWaits.WithLabelValues(name).Inc()
	m.LimitWaitSeconds.WithLabelValues(name).Add(d.Seconds())
}
