package sim

import (
	"math"
	"testing"
)

func near(t *testing.T, what string, got, want float64) {
	t.Helper()
	if math.Abs(got-want) > 1e-9*math.Max(1, math.Abs(want)) {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

func TestNetSingleFlow(t *testing.T) {
	n := NewNet()
	l := n.NewLink("l", 100)
	var doneAt float64
	f := n.Start(250, func(now float64) { doneAt = now }, l)
	n.Settle()
	near(t, "rate", f.Rate, 100)
	near(t, "next finish", n.NextFinish(), 2.5)
	n.AdvanceTo(n.NextFinish())
	near(t, "done at", doneAt, 2.5)
	if len(l.flows) != 0 {
		t.Errorf("link still holds %d flows", len(l.flows))
	}
}

// Three flows, two links: A (10) carries f1 and f2, B (4) carries f2 and
// f3. B is the bottleneck (4/2 = 2 < 10/2): f2 = f3 = 2, then f1 takes
// what A has left, 8.
func TestNetMaxMinTwoLinks(t *testing.T) {
	n := NewNet()
	a, b := n.NewLink("a", 10), n.NewLink("b", 4)
	f1 := n.Start(1e9, nil, a)
	f2 := n.Start(1e9, nil, a, b)
	f3 := n.Start(1e9, nil, b)
	n.Settle()
	near(t, "f1", f1.Rate, 8)
	near(t, "f2", f2.Rate, 2)
	near(t, "f3", f3.Rate, 2)
}

// One uplink of 12 feeding three downlinks of 2, 20 and 20: the first child
// is held to 2 by its downlink, the other two share the remaining 10.
func TestNetMaxMinFanOut(t *testing.T) {
	n := NewNet()
	up := n.NewLink("up", 12)
	d1, d2, d3 := n.NewLink("d1", 2), n.NewLink("d2", 20), n.NewLink("d3", 20)
	f1 := n.Start(1e9, nil, up, d1)
	f2 := n.Start(1e9, nil, up, d2)
	f3 := n.Start(1e9, nil, up, d3)
	n.Settle()
	near(t, "f1", f1.Rate, 2)
	near(t, "f2", f2.Rate, 5)
	near(t, "f3", f3.Rate, 5)
	// A fourth flow on d2 alone: d2 (20) is not the bottleneck of f2, so
	// nothing else changes and it gets 15.
	f4 := n.Start(1e9, nil, d2)
	n.Settle()
	near(t, "f2 after f4", f2.Rate, 5)
	near(t, "f4", f4.Rate, 15)
}

// Two flows of 100 and 300 bytes on a 100 B/s link share it at 50 each; the
// first ends at t=2, and the second, 200 bytes left, then runs at 100 and
// ends at t=4.
func TestNetRecomputeOnFinish(t *testing.T) {
	n := NewNet()
	l := n.NewLink("l", 100)
	var ends []float64
	n.Start(100, func(now float64) { ends = append(ends, now) }, l)
	f2 := n.Start(300, func(now float64) { ends = append(ends, now) }, l)
	other := n.NewLink("other", 7)
	f3 := n.Start(1e9, nil, other)
	for range 2 {
		n.Settle()
		n.AdvanceTo(n.NextFinish())
	}
	if len(ends) != 2 {
		t.Fatalf("%d flows ended, want 2", len(ends))
	}
	near(t, "first end", ends[0], 2)
	near(t, "second end", ends[1], 4)
	near(t, "f2 rate after the first ended", f2.Rate, 0) // finished
	near(t, "unrelated flow", f3.Rate, 7)
	near(t, "unrelated flow's progress at t=4", f3.Remaining(4), 1e9-28)
}

func TestNetCancel(t *testing.T) {
	n := NewNet()
	l := n.NewLink("l", 10)
	called := false
	f1 := n.Start(100, func(float64) { called = true }, l)
	f2 := n.Start(100, nil, l)
	n.Settle()
	near(t, "shared", f2.Rate, 5)
	n.AdvanceTo(4) // 20 bytes each
	n.Cancel(f1)
	n.Settle()
	near(t, "alone", f2.Rate, 10)
	near(t, "finish", n.NextFinish(), 4+80.0/10)
	n.AdvanceTo(n.NextFinish())
	if called {
		t.Error("a cancelled flow's done func ran")
	}
}
