// Package linktest measures a host's links with another host: the sender
// posts junk bytes to the receiver's upload port for about a second, and
// the receiver answers the rate it read them at (docs/architecture.md,
// "Link tests"). The sender's rate is a lower bound of its uplink, the
// receiver's of its downlink: the other end may have been the limit.
package linktest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Path is where the upload port answers link tests (POST).
const Path = "/linktest"

// DurationHeader carries how long the receiver measures, in milliseconds
// from the first byte (MinDuration to MaxDuration; default
// DefaultDuration). The receiver then answers and closes the connection,
// so the bytes still queued in the sender's socket buffer (megabytes on a
// slow uplink) do not keep its uplink busy after the test.
const DurationHeader = "X-Damselfly-Link-Test-Ms"

const (
	DefaultDuration = time.Second
	MinDuration     = 100 * time.Millisecond
	// MaxDuration: the receiver reads a test for at most this long, from
	// the first byte (and for at most ReadLimit in all).
	MaxDuration = 2 * time.Second
	// ReadLimit bounds the whole request, a sender that never gets going
	// included.
	ReadLimit = MaxDuration + 2*time.Second
	// warmup: the first part of a test (TCP's slow start, a shaper's
	// burst) is left out of its rate.
	warmup = 0.2
	// minBytes: a test that delivered less says nothing.
	minBytes = 64 << 10
)

// ErrShort: the test delivered too little to measure.
var ErrShort = errors.New("link test too short to measure")

// ErrAborted: a transfer started on the sending host during the test,
// which was ended so as not to hold the transfer back.
var ErrAborted = errors.New("link test ended: a transfer started")

// busyPoll is how often a test in progress checks whether its host began
// to transfer: a test ends within this long of a transfer's start, and
// leaves the link to it.
const busyPoll = 50 * time.Millisecond

// whileIdle runs until stop is called, calling onBusy once (and then
// ending) if busy turns true first. stop reports whether it did. A nil
// busy is never true.
func whileIdle(busy func() bool, onBusy func()) (stop func() bool) {
	if busy == nil {
		return func() bool { return false }
	}
	var hit atomic.Bool
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(busyPoll)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				if busy() {
					hit.Store(true)
					onBusy()
					return
				}
			}
		}
	}()
	var once sync.Once
	return func() bool {
		once.Do(func() { close(quit) })
		<-done
		return hit.Load()
	}
}

// Result is what the receiver measured.
type Result struct {
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	// RateBps is in bytes/s, over the test less its warm-up.
	RateBps float64 `json:"rate_bps"`
}

// Measure reads body for d from the first byte (or until EOF or an error,
// such as a read deadline passing) and returns the rate over the window
// from about the first warmup share of that time to its end: the bytes
// read after the window began over the window's length, the window
// beginning and ending at reads. The window's length is
// wall time, stalls included: on a shaped link a loss stalls the stream,
// and the retransmission then releases its bytes at once; over the time
// from the first read after the stall, such a burst made a 1 Mbit/s uplink
// measure 5 Mbit/s. A test whose bytes arrived within less than half of d
// (a burst released at once, a sender that stopped early) is too short to
// say anything.
func Measure(body io.Reader, d time.Duration, now func() time.Time) (Result, error) {
	type sample struct {
		t time.Time
		n int64
	}
	buf := make([]byte, 256<<10)
	var (
		samples []sample
		total   int64
		first   time.Time
	)
	for {
		k, err := body.Read(buf)
		if k > 0 {
			t := now()
			if first.IsZero() {
				first = t
				samples = append(samples, sample{t, 0}) // the first read's bytes arrived by its time
			}
			total += int64(k)
			samples = append(samples, sample{t, total})
			if t.Sub(first) >= d {
				break
			}
		}
		if err != nil {
			break
		}
	}
	if total < minBytes || len(samples) < 3 {
		return Result{Bytes: total}, fmt.Errorf("%w: %d bytes", ErrShort, total)
	}
	end := samples[len(samples)-1].t
	span := end.Sub(first)
	if span < d/2 {
		return Result{Bytes: total}, fmt.Errorf("%w: %d bytes within %v", ErrShort, total, span)
	}
	// The window begins at the last read at or before the warm-up's end
	// and counts the bytes of the reads after it, up to the last. Bytes
	// arrive in lumps (a receiver coalesces segments: 64 KiB at a time,
	// one lump every 0.2 s on a 2.5 Mbit/s link), so a window from any
	// other instant counted a lump more or less than its time carried:
	// up to a quarter of a slow uplink's rate in a one-second test, which
	// then paced its uploads too little to leave its download's ACKs room.
	cut := first.Add(time.Duration(warmup * float64(span)))
	start := samples[0]
	for _, s := range samples {
		if s.t.After(cut) {
			break
		}
		start = s
	}
	res := Result{Bytes: total, Seconds: span.Seconds()}
	if !end.After(start.t) {
		return res, fmt.Errorf("%w: no read after the warm-up", ErrShort)
	}
	before := start.n
	res.RateBps = float64(total-before) / end.Sub(start.t).Seconds()
	if total-before < minBytes/2 {
		return res, fmt.Errorf("%w: %d bytes in the measured window", ErrShort, total-before)
	}
	return res, nil
}

// Receiver answers link tests, one at a time (another gets 429).
type Receiver struct {
	// OnResult is told every test measured (may be nil).
	OnResult func(Result)
	// Busy reports whether the host's links carry other traffic now (a
	// download, uploads): a test is then refused with 503, as it would
	// measure what is left of the downlink, and a test in progress when
	// it turns true is ended (503, not measured), leaving the link to the
	// transfer (may be nil).
	Busy func() bool
	busy atomic.Bool
}

func (rv *Receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "link tests are POSTed", http.StatusMethodNotAllowed)
		return
	}
	if rv.Busy != nil && rv.Busy() {
		w.Header().Set("Retry-After", "10")
		http.Error(w, "this host is transferring: no link test now", http.StatusServiceUnavailable)
		return
	}
	if !rv.busy.CompareAndSwap(false, true) {
		w.Header().Set("Retry-After", "2")
		http.Error(w, "a link test is in progress", http.StatusTooManyRequests)
		return
	}
	defer rv.busy.Store(false)
	d := DefaultDuration
	if v := r.Header.Get(DurationHeader); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || time.Duration(ms)*time.Millisecond < MinDuration || time.Duration(ms)*time.Millisecond > MaxDuration {
			http.Error(w, fmt.Sprintf("%s: want %d to %d", DurationHeader, MinDuration.Milliseconds(), MaxDuration.Milliseconds()), http.StatusBadRequest)
			return
		}
		d = time.Duration(ms) * time.Millisecond
	}
	// The test ends here, the rest of the body unread: the connection
	// closes.
	w.Header().Set("Connection", "close")
	// A sender that never gets going is cut off.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(ReadLimit))
	stop := whileIdle(rv.Busy, func() { _ = rc.SetReadDeadline(time.Now()) })
	res, err := Measure(r.Body, d, time.Now)
	if stop() {
		w.Header().Set("Retry-After", "10")
		http.Error(w, "this host began to transfer: link test ended", http.StatusServiceUnavailable)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if rv.OnResult != nil {
		rv.OnResult(res)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(res)
}

// junkBytes is the 1 MiB of pseudo-random bytes every test sends over and
// over, made once (read-only: the tests share it).
var junkBytes = sync.OnceValue(func() []byte {
	buf := make([]byte, 1<<20)
	r := rand.New(rand.NewChaCha8([32]byte{}))
	for i := 0; i+8 <= len(buf); i += 8 {
		v := r.Uint64()
		for k := range 8 {
			buf[i+k] = byte(v >> (8 * k))
		}
	}
	return buf
})

// junk yields pseudo-random bytes until its deadline, counting them.
type junk struct {
	buf      []byte
	off      int
	deadline time.Time
	n        atomic.Int64
}

func (j *junk) Read(p []byte) (int, error) {
	if !time.Now().Before(j.deadline) {
		return 0, io.EOF
	}
	k := copy(p, j.buf[j.off:])
	j.off = (j.off + k) % len(j.buf)
	j.n.Add(int64(k))
	return k, nil
}

// Send posts junk to the upload port at addr (host:port), the receiver
// measuring for d, and returns what it measured. An answer the bytes the
// sender wrote cannot account for is an error: a partner's word is not
// taken blindly. If busy (may be nil) turns true during the test, the
// test ends at once with ErrAborted. The client's connections should
// linger 0 (Dialer), so that closing one also drops what its socket still
// holds to send.
func Send(ctx context.Context, client *http.Client, addr string, d time.Duration, busy func() bool) (Result, error) {
	if d < MinDuration || d > MaxDuration {
		return Result{}, fmt.Errorf("link test duration %v, want %v to %v", d, MinDuration, MaxDuration)
	}
	start := time.Now()
	body := &junk{buf: junkBytes(), deadline: start.Add(ReadLimit)}
	ctx, cancel := context.WithTimeout(ctx, ReadLimit+5*time.Second)
	defer cancel()
	stop := whileIdle(busy, cancel)
	res, err := send(ctx, client, addr, d, body, start)
	if stop() {
		return Result{}, ErrAborted
	}
	return res, err
}

func send(ctx context.Context, client *http.Client, addr string, d time.Duration, body *junk, start time.Time) (Result, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+Path, body)
	if err != nil {
		return Result{}, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set(DurationHeader, strconv.FormatInt(d.Milliseconds(), 10))
	resp, err := client.Do(req)
	if err != nil {
		return Result{}, fmt.Errorf("link test to %s: %w", addr, err)
	}
	defer resp.Body.Close()
	elapsed := time.Since(start)
	msg, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return Result{}, fmt.Errorf("link test to %s: reading the answer: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		return Result{}, fmt.Errorf("link test to %s: %s: %s", addr, resp.Status, trim(msg))
	}
	var res Result
	if err := json.Unmarshal(msg, &res); err != nil {
		return Result{}, fmt.Errorf("link test to %s: bad answer: %w", addr, err)
	}
	// The rate is over the last 1-warmup of Seconds, so it accounts for
	// at most the bytes written over that long; Seconds is at least half
	// the test (Measure) and no longer than the whole call.
	written := body.n.Load()
	if res.RateBps <= 0 || res.Bytes > written || res.Seconds < d.Seconds()/2 || res.Seconds > elapsed.Seconds() ||
		res.RateBps > 1.05*float64(written)/((1-warmup)*res.Seconds) {
		return Result{}, fmt.Errorf("link test to %s: the partner claims %.0f bytes/s (%d bytes in %.3f s) for %d bytes sent in %v", addr, res.RateBps, res.Bytes, res.Seconds, written, elapsed.Round(time.Millisecond))
	}
	return res, nil
}

func trim(b []byte) string {
	if len(b) > 200 {
		b = b[:200]
	}
	return strconv.Quote(string(b))
}

// NewClient is an HTTP client for Send. Its connections are not kept
// alive, and they linger 0: closing one, as a test ended early does,
// drops what its socket still holds to send (megabytes on a slow uplink)
// instead of sending it on after the test.
func NewClient() *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			return c, err
		},
		DisableKeepAlives: true,
	}}
}
