package piece

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// recorder keeps the connections a listener accepted, in order.
type recorder struct {
	net.Listener
	mu    sync.Mutex
	conns []*net.TCPConn
}

func (l *recorder) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		l.mu.Lock()
		l.conns = append(l.conns, tc)
		l.mu.Unlock()
	}
	return c, err
}

func (l *recorder) conn(t *testing.T, i int) *net.TCPConn {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if i >= len(l.conns) {
		t.Fatalf("connection %d not accepted (%d)", i, len(l.conns))
	}
	return l.conns[i]
}

// A host whose uplink is much slower than its downlink paces its uploads
// (pace.go): each upload's connection gets the budget shared by the uploads
// in progress, as they start and as they end, and no pacing once the
// budget is 0 (nothing downloading).
func TestUploadsPacedToBudget(t *testing.T) {
	st, _ := holding(t, 1024, 4, 0)
	srv := NewServer(st, 8, nil, NewMetrics(nil), slog.New(slog.NewTextHandler(io.Discard, nil)))
	var budget atomic.Int64
	budget.Store(200_000)
	srv.SetPacing(func() int64 { return budget.Load() })
	hs := httptest.NewUnstartedServer(srv.Handler())
	rec := &recorder{Listener: hs.Listener}
	hs.Listener = rec
	hs.Config.ConnContext = srv.ConnContext
	hs.Start()
	t.Cleanup(hs.Close)

	get := func(path string) *http.Response {
		t.Helper()
		// A transport of its own: a connection of its own.
		tr := &http.Transport{}
		t.Cleanup(tr.CloseIdleConnections)
		resp, err := (&http.Client{Transport: tr}).Get(hs.URL + path)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %v %v", path, resp, err)
		}
		return resp
	}
	// settle waits until n uploads are in progress: a client can read a
	// whole response before its handler has returned, and a handler still
	// counted would change the next upload's share (a CI run under -race
	// saw it).
	settle := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for srv.active.Load() != n {
			if time.Now().After(deadline) {
				t.Fatalf("uploads in progress: %d, want %d", srv.active.Load(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	pacing := func(i int) uint64 {
		t.Helper()
		v, err := pacingOf(rec.conn(t, i))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	// One upload in progress: the whole budget.
	resp := get("/pieces/t1/0")
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	settle(0)
	if got := pacing(0); got != 200_000 {
		t.Fatalf("one upload paced at %d B/s, want 200000", got)
	}

	// inFlight starts an upload of piece n that stays in progress (the
	// piece is still arriving) until the returned function ends it.
	task, _ := st.Get("t1")
	inFlight := func(n uint32) (end func()) {
		t.Helper()
		relay := task.StartRelay(n, make([]byte, 1024), nil)
		var finish sync.Once
		// (Registered after hs.Close, so run before it: a relay left open
		// keeps its upload, and Close, waiting.)
		t.Cleanup(func() { finish.Do(relay.Finish) })
		relay.Progress(100)
		resp := get(fmt.Sprintf("/pieces/t1/%d", n))
		if _, err := io.ReadFull(resp.Body, make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		return func() {
			finish.Do(relay.Finish) // not verified: the relay's reader aborts
			resp.Body.Close()
		}
	}

	// Two at once (one waits on a piece still arriving): half each.
	end1 := inFlight(1)
	settle(1)
	resp = get("/pieces/t1/0")
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if got := pacing(2); got != 100_000 {
		t.Fatalf("second of two uploads paced at %d B/s, want 100000", got)
	}
	// The second ended: the first, still in progress, takes the whole
	// budget again.
	settle(1)
	if got := pacing(1); got != 200_000 {
		t.Fatalf("upload left alone paced at %d B/s, want the whole 200000", got)
	}
	// While a second stays in progress beside it, the first gives up half
	// its rate: the uploads together keep to the budget, not 1.5 times it.
	end2 := inFlight(2)
	settle(2)
	if a, b := pacing(1), pacing(3); a != 100_000 || b != 100_000 {
		t.Fatalf("two uploads in progress paced at %d and %d B/s, want 100000 each", a, b)
	}
	end2()
	settle(1)
	if got := pacing(1); got != 200_000 {
		t.Fatalf("upload left alone paced at %d B/s, want the whole 200000", got)
	}
	end1()
	settle(0)

	// Nothing downloading: the budget is 0 and a connection is unpaced
	// again (the kernel reads back its unlimited default, clipped to 32
	// bits).
	budget.Store(0)
	resp = get("/pieces/t1/0")
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if got := pacing(4); got != uint64(^uint32(0)) {
		t.Fatalf("with no budget paced at %d B/s, want unlimited", got)
	}
}

// pacingOf reads a connection's pacing rate (tests).
func pacingOf(tc *net.TCPConn) (uint64, error) {
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var v uint64
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		var n int
		n, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE)
		v = uint64(uint32(n))
	}); err != nil {
		return 0, err
	}
	return v, gerr
}
