package piece

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/time/rate"

	"github.com/damselfly-io/damselfly/daemon/store"
)

func TestSlotsResize(t *testing.T) {
	s := NewSlots(2)
	ctx := context.Background()
	for range 2 {
		if waited, err := s.Acquire(ctx); err != nil || waited {
			t.Fatalf("free slot: waited=%v err=%v", waited, err)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if waited, err := s.Acquire(cctx); err == nil || !waited {
		t.Fatalf("full slots: waited=%v err=%v, want a wait ended by the context", waited, err)
	}
	got := make(chan bool, 1)
	go func() {
		_, err := s.Acquire(ctx)
		got <- err == nil
	}()
	s.SetMax(3) // a reload raises the cap: the waiter goes on
	if !<-got {
		t.Fatal("waiter not admitted after the cap grew")
	}
	s.SetMax(1) // lowered below what runs: nothing new until it fits
	s.Release()
	s.Release()
	go func() {
		_, err := s.Acquire(ctx)
		got <- err == nil
	}()
	select {
	case <-got:
		t.Fatal("admitted above the lowered cap")
	case <-time.After(50 * time.Millisecond):
	}
	s.Release()
	if !<-got {
		t.Fatal("waiter not admitted after a release")
	}
	if s.Max() != 1 {
		t.Fatalf("max %d", s.Max())
	}
}

func TestPeerLimits(t *testing.T) {
	var p peerLimits
	now := time.Unix(1000, 0)
	if p.get("a", now) != nil {
		t.Fatal("per-peer limiter without a limit")
	}
	p.set(1 << 20)
	a, b := p.get("a", now), p.get("b", now)
	if a == nil || b == nil || a == b {
		t.Fatal("peers must get limiters of their own")
	}
	if p.get("a", now.Add(time.Second)) != a {
		t.Fatal("one peer's requests must share its limiter")
	}
	if a.Limit() != rate.Limit(1<<20) {
		t.Fatalf("rate %v", a.Limit())
	}
	p.set(2 << 20) // reload
	if a.Limit() != rate.Limit(2<<20) || b.Limit() != rate.Limit(2<<20) {
		t.Fatal("reload did not reach the existing peers")
	}
	// b idle for more than a minute is forgotten; a, still active, kept.
	p.get("a", now.Add(50*time.Second))
	p.get("a", now.Add(90*time.Second))
	if _, ok := p.peers["b"]; ok {
		t.Fatal("idle peer kept")
	}
	if p.get("a", now.Add(91*time.Second)) != a {
		t.Fatal("active peer's limiter replaced")
	}
	p.set(0)
	if p.get("a", now) != nil {
		t.Fatal("limit removed but limiter still handed out")
	}
}

func TestHostLimiterSetRate(t *testing.T) {
	l := NewHostLimiter(0)
	if !Unlimited(l) {
		t.Fatal("0 must be unlimited")
	}
	if err := WaitN(context.Background(), l, 1<<30); err != nil {
		t.Fatalf("unlimited wait: %v", err)
	}
	SetRate(l, 10<<20)
	if Unlimited(l) || l.Limit() != rate.Limit(10<<20) || l.Burst() != 1<<20 {
		t.Fatalf("after SetRate: limit %v burst %d", l.Limit(), l.Burst())
	}
	SetRate(l, 0)
	if !Unlimited(l) {
		t.Fatal("SetRate(0) must lift the limit")
	}
}

// An upload in progress holds its task: GC cannot evict it under the reader.
func TestUploadHoldsTask(t *testing.T) {
	s, _ := holding(t, 1<<20, 2, 0, 1)
	task, _ := s.Get("t1")
	// 64 KiB/s with a 256 KiB burst: the 1 MiB piece stays in flight.
	addr, m := serve(t, s, NewHostLimiter(64<<10))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/pieces/t1/0", nil)
	req.Header.Set(PeerHeader, "child-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	// past the 256 KiB burst: the server has waited for the limit
	if _, err := io.ReadFull(resp.Body, make([]byte, 320<<10)); err != nil {
		t.Fatal(err)
	}
	if !task.Held() {
		t.Fatal("task not held during its upload")
	}
	if res, _ := s.GC(store.Policy{HighBytes: 1, LowBytes: 1, TTL: time.Nanosecond}, nil); len(res.Evicted) != 0 {
		t.Fatalf("GC evicted %v during an upload", res.Evicted)
	}
	cancel()
	resp.Body.Close()
	for i := 0; task.Held(); i++ {
		if i > 500 {
			t.Fatal("task still held after the upload ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if testutil.ToFloat64(m.LimitWaits.WithLabelValues("upload")) == 0 {
		t.Error("the wait for the upload limit was not counted")
	}
}

// The per-peer limit holds back one peer's transfer even when the host has
// no limit.
func TestPerPeerUploadLimitApplies(t *testing.T) {
	s, _ := holding(t, 1<<20, 1, 0)
	m := NewMetrics(nil)
	srv := NewServer(s, 8, NewHostLimiter(0), m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv.SetLimits(8, 64<<10)
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, hs.URL+"/pieces/t1/0", nil)
	req.Header.Set(PeerHeader, "child-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// past the 256 KiB burst: the rest comes at 64 KiB/s
	if _, err := io.ReadFull(resp.Body, make([]byte, 320<<10)); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(m.LimitWaits.WithLabelValues("peer_upload")); n == 0 {
		t.Fatal("no wait for the per-peer limit")
	}
	if n := testutil.ToFloat64(m.LimitWaits.WithLabelValues("upload")); n != 0 {
		t.Fatalf("%v waits for a host limit that is off", n)
	}
}
