package daemon

import (
	"math"
	"testing"
	"time"
)

// A parent serving four requests one after the other at d each delivers at
// size/d, though each request's own start-to-end time is up to 4d; after an
// idle gap the next piece costs its own transfer time only.
func TestParentRateCountsDeliveryNotQueueing(t *testing.T) {
	const size = 256 << 10
	d := 40 * time.Millisecond
	t0 := time.Unix(1000, 0)
	p := &parentState{}
	for i := 1; i <= 4; i++ {
		cost := p.deliveryCost(t0, t0.Add(time.Duration(i)*d))
		if cost != d {
			t.Fatalf("piece %d: cost %v, want %v", i, cost, d)
		}
		p.observeRate(size, cost)
	}
	want := float64(size) / d.Seconds()
	if math.Abs(p.rate-want)/want > 1e-9 {
		t.Fatalf("rate %.0f B/s, want %.0f", p.rate, want)
	}
	// idle, then one piece alone
	start := t0.Add(10 * d)
	if cost := p.deliveryCost(start, start.Add(2*d)); cost != 2*d {
		t.Fatalf("after idling: cost %v, want %v", cost, 2*d)
	}
	// a piece reported out of order (it ended before the latest one) costs
	// its own duration
	if cost := p.deliveryCost(t0.Add(9*d), t0.Add(11*d)); cost != 2*d {
		t.Fatalf("out of order: cost %v, want %v", cost, 2*d)
	}
}

// Pieces that complete together — one long sample and three nearly free
// ones — average to the rate the parent really gave, not to the short
// samples' huge rates.
func TestParentRateWeighsSamplesByTime(t *testing.T) {
	const size = 256 << 10
	d := 40 * time.Millisecond
	p := &parentState{}
	for range 20 {
		p.observeRate(size, 4*d)
		for range 3 {
			p.observeRate(size, time.Microsecond)
		}
	}
	want := float64(size) / d.Seconds()
	if p.rate < want/2 || p.rate > want*2 {
		t.Fatalf("rate %.0f B/s, want about %.0f", p.rate, want)
	}
}
