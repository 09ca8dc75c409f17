package linktest

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clockReader yields chunks of size bytes, the fake clock advancing by
// the given step before each.
type clockReader struct {
	now   time.Time
	steps []time.Duration // per chunk
	size  int
	i     int
}

func (c *clockReader) Read(p []byte) (int, error) {
	if c.i >= len(c.steps) {
		return 0, io.EOF
	}
	c.now = c.now.Add(c.steps[c.i])
	c.i++
	return min(len(p), c.size), nil
}

// TestMeasureLeavesOutTheWarmup: a test whose first fifth ran at a burst
// (a shaper's bucket) and the rest at the link's rate measures the rate.
func TestMeasureLeavesOutTheWarmup(t *testing.T) {
	const chunk = 64 << 10
	var steps []time.Duration
	for range 20 { // a burst: 20 chunks in 20 µs
		steps = append(steps, time.Microsecond)
	}
	for range 100 { // then 64 KiB every 10 ms: 6.55 MB/s
		steps = append(steps, 10*time.Millisecond)
	}
	c := &clockReader{now: time.Unix(0, 0), steps: steps, size: chunk}
	res, err := Measure(c, time.Second, func() time.Time { return c.now })
	if err != nil {
		t.Fatal(err)
	}
	want := chunk / 0.01
	if res.RateBps < 0.97*want || res.RateBps > 1.03*want {
		t.Fatalf("rate %.0f, want about %.0f (the burst left out)", res.RateBps, want)
	}
	if res.Bytes != 120*chunk {
		t.Fatalf("bytes %d, want %d", res.Bytes, 120*chunk)
	}
}

func TestMeasureTooShort(t *testing.T) {
	c := &clockReader{now: time.Unix(0, 0), steps: []time.Duration{time.Millisecond, time.Millisecond}, size: 1024}
	if _, err := Measure(c, time.Second, func() time.Time { return c.now }); !errors.Is(err, ErrShort) {
		t.Fatalf("err %v, want ErrShort", err)
	}
}

// TestMeasureBurstIsNoRate: bytes that all arrive within a fraction of
// the test (a burst released at once after a loss, as seen on a shaped
// link) give no rate; counted, they gave 30 Gbit/s.
func TestMeasureBurstIsNoRate(t *testing.T) {
	steps := []time.Duration{time.Microsecond}
	for range 10 {
		steps = append(steps, 4*time.Microsecond)
	}
	c := &clockReader{now: time.Unix(0, 0), steps: steps, size: 64 << 10}
	if res, err := Measure(c, time.Second, func() time.Time { return c.now }); !errors.Is(err, ErrShort) {
		t.Fatalf("a 40 µs burst: %+v, %v; want ErrShort", res, err)
	}
}

// TestMeasureStallThenBurst: a stream that stalls (a loss on a shaped
// link) and then gets the delayed bytes at once measures its average rate
// over the window, stall included. Measured from the first read after the
// stall it gave five times the link's rate.
func TestMeasureStallThenBurst(t *testing.T) {
	const chunk = 16 << 10
	var steps []time.Duration
	for range 10 { // 0-100 ms: 16 KiB every 10 ms (1.6 MB/s)
		steps = append(steps, 10*time.Millisecond)
	}
	steps = append(steps, 800*time.Millisecond) // a stall to 0.9 s
	for range 8 {                               // the delayed bytes at once
		steps = append(steps, time.Microsecond)
	}
	for range 10 { // 0.9-1.0 s: 16 KiB every 10 ms
		steps = append(steps, 10*time.Millisecond)
	}
	c := &clockReader{now: time.Unix(0, 0), steps: steps, size: chunk}
	res, err := Measure(c, time.Second, func() time.Time { return c.now })
	if err != nil {
		t.Fatal(err)
	}
	// From the last read before 0.2 s (at 0.1 s) to 1.0 s: the stall,
	// the burst and the last 0.1 s, 18 chunks over 0.9 s.
	want := 18 * chunk / 0.9
	if res.RateBps < 0.9*want || res.RateBps > 1.1*want {
		t.Fatalf("rate %.0f, want about %.0f (the stall counted)", res.RateBps, want)
	}
}

// TestMeasureLumpyArrival: bytes that arrive in lumps (64 KiB every
// 0.2 s: a 2.5 Mbit/s link, the receiver coalescing segments) measure the
// lumps' rate. A window from the warm-up's end instant, between two lumps,
// counted one lump more than its time carried: 19 % high.
func TestMeasureLumpyArrival(t *testing.T) {
	const lump = 64 << 10
	c := &lumpReader{at: []time.Duration{0}, sizes: []int{8 << 10}}
	for k := range 6 {
		c.at = append(c.at, 50*time.Millisecond+time.Duration(k)*200*time.Millisecond)
		c.sizes = append(c.sizes, lump)
	}
	res, err := Measure(c, time.Second, c.now)
	if err != nil {
		t.Fatal(err)
	}
	want := lump / 0.2
	if res.RateBps < 0.99*want || res.RateBps > 1.01*want {
		t.Fatalf("rate %.0f, want %.0f", res.RateBps, want)
	}
}

// lumpReader yields sizes[i] bytes at time at[i].
type lumpReader struct {
	at    []time.Duration
	sizes []int
	i     int
	t     time.Duration
}

func (c *lumpReader) Read(p []byte) (int, error) {
	if c.i >= len(c.at) {
		return 0, io.EOF
	}
	c.t = c.at[c.i]
	n := min(len(p), c.sizes[c.i])
	c.i++
	return n, nil
}

func (c *lumpReader) now() time.Time { return time.Unix(0, 0).Add(c.t) }

// TestMeasureStopsAtDuration: a sender that goes on is measured for the
// test's duration only.
func TestMeasureStopsAtDuration(t *testing.T) {
	steps := make([]time.Duration, 1000)
	for i := range steps {
		steps[i] = 10 * time.Millisecond
	}
	c := &clockReader{now: time.Unix(0, 0), steps: steps, size: 1 << 16}
	res, err := Measure(c, time.Second, func() time.Time { return c.now })
	if err != nil {
		t.Fatal(err)
	}
	if c.i > 102 || res.Seconds < 1 || res.Seconds > 1.02 {
		t.Fatalf("read %d chunks over %.3f s; want the test to stop after 1 s", c.i, res.Seconds)
	}
}

// TestSendAndReceive: a test over loopback measures a rate, and the
// receiver reports it.
func TestSendAndReceive(t *testing.T) {
	var got []Result
	var mu sync.Mutex
	rv := &Receiver{OnResult: func(r Result) { mu.Lock(); got = append(got, r); mu.Unlock() }}
	srv := httptest.NewServer(rv)
	defer srv.Close()
	res, err := Send(context.Background(), srv.Client(), strings.TrimPrefix(srv.URL, "http://"), 200*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.RateBps <= 0 || res.Bytes < minBytes {
		t.Fatalf("result %+v", res)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0] != res {
		t.Fatalf("receiver reported %+v, sender got %+v", got, res)
	}
}

// TestLyingPartnerNotBelieved: a partner that answers a rate above what
// the sender could have delivered is an error, not a measurement (it would
// make the sender look fast and get it children it cannot feed).
func TestLyingPartnerNotBelieved(t *testing.T) {
	for _, c := range []struct {
		answer string
		ok     bool
	}{
		{`{"bytes":1000,"seconds":0.2,"rate_bps":1000}`, true}, // modest: believed
		{`{"bytes":1000,"seconds":0.2,"rate_bps":1e15}`, false},
		{`{"bytes":999999999999,"seconds":0.2,"rate_bps":1000}`, false},
		{`{"bytes":1000,"seconds":0.2,"rate_bps":-5}`, false},
		{`{"bytes":1000,"seconds":0.001,"rate_bps":1000}`, false},
		{`{"bytes":1000,"seconds":1000,"rate_bps":1000}`, false},
		{`not json`, false},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Read for 300 ms, as a receiver would, then lie.
			end := time.Now().Add(300 * time.Millisecond)
			buf := make([]byte, 64<<10)
			for time.Now().Before(end) {
				if _, err := r.Body.Read(buf); err != nil {
					break
				}
			}
			w.Header().Set("Connection", "close")
			_, _ = io.WriteString(w, c.answer)
		}))
		_, err := Send(context.Background(), srv.Client(), strings.TrimPrefix(srv.URL, "http://"), 200*time.Millisecond, nil)
		srv.Close()
		if (err == nil) != c.ok {
			t.Errorf("answer %s: err %v, want believed %v", c.answer, err, c.ok)
		}
	}
}

// TestReceiverOneAtATime: a second test while one runs gets 429, and a
// GET gets 405; neither is measured.
func TestReceiverOneAtATime(t *testing.T) {
	n := 0
	rv := &Receiver{OnResult: func(Result) { n++ }}
	rv.busy.Store(true)
	w := httptest.NewRecorder()
	rv.ServeHTTP(w, httptest.NewRequest(http.MethodPost, Path, strings.NewReader(strings.Repeat("x", 1<<20))))
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" {
		t.Fatalf("busy: %d %q", w.Code, w.Body.String())
	}
	rv.busy.Store(false)
	w = httptest.NewRecorder()
	rv.ServeHTTP(w, httptest.NewRequest(http.MethodGet, Path, nil))
	if w.Code != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %d", w.Code)
	}
	rv.Busy = func() bool { return true }
	w = httptest.NewRecorder()
	rv.ServeHTTP(w, httptest.NewRequest(http.MethodPost, Path, strings.NewReader(strings.Repeat("x", 1<<20))))
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("host busy transferring: %d", w.Code)
	}
	if n != 0 {
		t.Fatalf("%d tests measured", n)
	}
}

// TestReceiverCutsOffRogueSenders: a sender that never stops is answered
// after the test's duration, one that sends nothing after its headers is
// cut off after ReadLimit, one that asks for a longer test is refused; the
// receiver is free again after each.
func TestReceiverCutsOffRogueSenders(t *testing.T) {
	rv := &Receiver{}
	srv := httptest.NewServer(rv)
	defer srv.Close()
	pr, pw := io.Pipe()
	defer pw.Close()
	for _, c := range []struct {
		name    string
		body    io.Reader
		header  string
		within  time.Duration
		wantErr bool
	}{
		{"endless", &junk{buf: make([]byte, 64<<10), deadline: time.Now().Add(time.Hour)}, "", DefaultDuration + 2*time.Second, false},
		{"silent", pr, "", ReadLimit + 2*time.Second, true},
		{"too long", &junk{buf: make([]byte, 64<<10), deadline: time.Now().Add(time.Hour)}, "60000", time.Second, true},
	} {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+Path, c.body)
		if c.header != "" {
			req.Header.Set(DurationHeader, c.header)
		}
		start := time.Now()
		// Without the cut-offs the client gives up first, and the
		// check fails.
		client := &http.Client{Timeout: ReadLimit + 8*time.Second}
		resp, err := client.Do(req)
		code := 0
		if err == nil {
			code = resp.StatusCode
			resp.Body.Close()
		}
		if el := time.Since(start); el > c.within {
			t.Fatalf("%s: held the receiver for %v (err %v)", c.name, el, err)
		}
		if (code != http.StatusOK) != c.wantErr {
			t.Fatalf("%s: status %d (err %v), want error %v", c.name, code, err, c.wantErr)
		}
		deadline := time.Now().Add(5 * time.Second)
		for rv.busy.Load() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: receiver still busy after the sender was cut off", c.name)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func TestSendRefusesBadDuration(t *testing.T) {
	if _, err := Send(context.Background(), http.DefaultClient, "127.0.0.1:1", time.Hour, nil); err == nil {
		t.Fatal("an hour-long test was sent")
	}
}

// TestTransferEndsSendersTest: a transfer that starts on the sending host
// during a test ends the test at once (ErrAborted), and the receiver
// measures nothing from it; a test during which none starts is measured.
func TestTransferEndsSendersTest(t *testing.T) {
	var measured atomic.Int64
	rv := &Receiver{OnResult: func(Result) { measured.Add(1) }}
	srv := httptest.NewServer(rv)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	var transferring atomic.Bool
	time.AfterFunc(300*time.Millisecond, func() { transferring.Store(true) })
	_, err := Send(context.Background(), NewClient(), addr, MaxDuration, transferring.Load)
	if !errors.Is(err, ErrAborted) {
		t.Fatalf("a transfer started during the test: err %v, want ErrAborted", err)
	}
	// The receiver is free again, and was told of no result.
	waitFree(t, rv)
	if n := measured.Load(); n != 0 {
		t.Fatalf("the ended test was measured %d times", n)
	}
	if _, err := Send(context.Background(), NewClient(), addr, 200*time.Millisecond, func() bool { return false }); err != nil {
		t.Fatalf("no transfer: %v", err)
	}
	if n := measured.Load(); n != 1 {
		t.Fatalf("%d tests measured, want 1", n)
	}
}

// TestTransferEndsReceiversTest: a transfer that starts on the receiving
// host during a test ends it with 503, unmeasured (it would count what the
// transfer leaves of the downlink, and hold the transfer back). The sender
// sees the 503 or, as the receiver closes with the body unread, a reset.
func TestTransferEndsReceiversTest(t *testing.T) {
	var measured atomic.Int64
	var transferring atomic.Bool
	rv := &Receiver{OnResult: func(Result) { measured.Add(1) }, Busy: transferring.Load}
	codes := make(chan int, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &codeWriter{ResponseWriter: w}
		rv.ServeHTTP(cw, r)
		codes <- cw.code
	}))
	defer srv.Close()
	time.AfterFunc(300*time.Millisecond, func() { transferring.Store(true) })
	if _, err := Send(context.Background(), NewClient(), strings.TrimPrefix(srv.URL, "http://"), MaxDuration, nil); err == nil {
		t.Fatal("the receiver began to transfer: the test succeeded")
	}
	if code := <-codes; code != http.StatusServiceUnavailable {
		t.Fatalf("receiver answered %d, want 503", code)
	}
	if n := measured.Load(); n != 0 {
		t.Fatalf("the ended test was measured %d times", n)
	}
}

// codeWriter records the status a handler wrote.
type codeWriter struct {
	http.ResponseWriter
	code int
}

func (c *codeWriter) WriteHeader(code int) {
	if c.code == 0 {
		c.code = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *codeWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// waitFree waits for rv to be done with its test (it answers before its
// handler returns).
func waitFree(t *testing.T, rv *Receiver) {
	t.Helper()
	for i := 0; rv.busy.Load(); i++ {
		if i > 500 {
			t.Fatal("receiver still busy")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
