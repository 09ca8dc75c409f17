package source

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/core"
)

// testConfig keeps retries quick.
func testConfig() Config {
	c := DefaultConfig()
	c.RetryBackoff = time.Millisecond
	c.Timeout = 5 * time.Second
	return c
}

func newTestHTTP(t testing.TB, cfg Config) *HTTP {
	t.Helper()
	h, err := NewHTTP(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func content(n int) []byte {
	r := rand.New(rand.NewPCG(uint64(n), 42))
	b := make([]byte, n+7)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:n:n]
}

// counter wraps a handler and records what the origin saw and sent.
type counter struct {
	reqs   atomic.Int64
	bytes  atomic.Int64
	mu     sync.Mutex
	ranges []string
	hdrs   []http.Header
}

type countingWriter struct {
	http.ResponseWriter
	c *counter
}

func (w countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.c.bytes.Add(int64(n))
	return n, err
}

func (w countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (c *counter) wrap(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.reqs.Add(1)
		c.mu.Lock()
		c.ranges = append(c.ranges, r.Header.Get("Range"))
		c.hdrs = append(c.hdrs, r.Header.Clone())
		c.mu.Unlock()
		if _, ok := w.(http.Hijacker); ok && r.Header.Get("X-Hijack") != "" {
			h(w, r)
			return
		}
		h(countingWriter{w, c}, r)
	})
}

func (c *counter) seenRanges() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.ranges...)
}

// serveRanges answers like a static file server with ranges and an ETag.
func serveRanges(data []byte) http.HandlerFunc {
	mod := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "", mod, bytes.NewReader(data))
	}
}

// serveNoRanges ignores Range headers and sends the whole content.
func serveNoRanges(data []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		_, _ = w.Write(data)
	}
}

func newOrigin(t testing.TB, h http.HandlerFunc) (*httptest.Server, *counter) {
	t.Helper()
	c := &counter{}
	srv := httptest.NewServer(c.wrap(h))
	t.Cleanup(srv.Close)
	return srv, c
}

func fetchAll(t testing.TB, s Source, req Request) (*Response, []byte) {
	t.Helper()
	resp, err := s.Fetch(context.Background(), req)
	if err != nil {
		t.Fatalf("fetch %+v: %v", req, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %+v: %v", req, err)
	}
	return resp, b
}

func TestHTTPFetchWhole(t *testing.T) {
	data := content(1<<20 + 17)
	srv, c := newOrigin(t, serveRanges(data))
	h := newTestHTTP(t, testConfig())
	resp, got := fetchAll(t, h, Request{URL: srv.URL + "/blob?sig=1", Length: -1})
	if !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes, want %d equal bytes", len(got), len(data))
	}
	if resp.ContentLength != int64(len(data)) || !resp.RangeOK {
		t.Fatalf("ContentLength %d RangeOK %v", resp.ContentLength, resp.RangeOK)
	}
	if resp.Header.Get("ETag") != `"v1"` || resp.Header.Get("Content-Type") != "application/octet-stream" || resp.Header.Get("Last-Modified") == "" {
		t.Fatalf("kept headers: %v", resp.Header)
	}
	if resp.Header.Get("Accept-Ranges") != "" {
		t.Fatalf("kept a header not worth keeping: %v", resp.Header)
	}
	if c.reqs.Load() != 1 || c.bytes.Load() != int64(len(data)) {
		t.Fatalf("origin served %d requests, %d bytes", c.reqs.Load(), c.bytes.Load())
	}
	if r := c.seenRanges()[0]; r != "" {
		t.Fatalf("whole fetch sent Range %q", r)
	}
	if ua := c.hdrs[0].Get("User-Agent"); !strings.HasPrefix(ua, "damselfly/") {
		t.Fatalf("User-Agent %q", ua)
	}
	if ae := c.hdrs[0].Get("Accept-Encoding"); ae != "" {
		t.Fatalf("sent Accept-Encoding %q: bytes must arrive as stored", ae)
	}
}

func TestHTTPFetchRanges(t *testing.T) {
	data := content(100_000)
	empty := []byte{}
	cases := []struct {
		name           string
		data           []byte
		off, length    int64
		want           []byte
		wantRange      string
		wantRangeOK    bool
		wantOriginSent int64 // -1: don't check
	}{
		{"whole", data, 0, -1, data, "", true, int64(len(data))},
		{"prefix", data, 0, 10, data[:10], "bytes=0-9", true, 10},
		{"middle", data, 500, 1000, data[500:1500], "bytes=500-1499", true, 1000},
		{"tail", data, 99_000, -1, data[99_000:], "bytes=99000-", true, 1000},
		{"clipped past end", data, 99_990, 100, data[99_990:], "bytes=99990-100089", true, 10},
		{"last byte", data, 99_999, 1, data[99_999:], "bytes=99999-99999", true, 1},
		{"at end", data, 100_000, -1, empty, "bytes=100000-", true, -1},
		{"zero length", data, 5, 0, empty, "bytes=5-", true, -1},
		{"empty content", empty, 0, -1, empty, "", true, 0},
		// net/http answers 200 (not 416) to a range on an empty file.
		{"empty content range", empty, 0, 4096, empty, "bytes=0-4095", false, -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, c := newOrigin(t, serveRanges(tc.data))
			h := newTestHTTP(t, testConfig())
			resp, got := fetchAll(t, h, Request{URL: srv.URL, Offset: tc.off, Length: tc.length})
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("got %d bytes, want %d", len(got), len(tc.want))
			}
			if resp.ContentLength != int64(len(tc.data)) {
				t.Fatalf("ContentLength %d, want %d", resp.ContentLength, len(tc.data))
			}
			if resp.RangeOK != tc.wantRangeOK {
				t.Fatalf("RangeOK %v", resp.RangeOK)
			}
			if r := c.seenRanges()[0]; r != tc.wantRange {
				t.Fatalf("Range %q, want %q", r, tc.wantRange)
			}
			if tc.wantOriginSent >= 0 && c.bytes.Load() != tc.wantOriginSent {
				t.Fatalf("origin sent %d bytes, want %d", c.bytes.Load(), tc.wantOriginSent)
			}
		})
	}
}

func TestHTTPRangeIgnoredByOrigin(t *testing.T) {
	data := content(50_000)
	srv, _ := newOrigin(t, serveNoRanges(data))
	h := newTestHTTP(t, testConfig())
	for _, tc := range []struct{ off, length int64 }{{0, -1}, {0, 100}, {1234, -1}, {1234, 5000}, {49_999, 10}} {
		resp, got := fetchAll(t, h, Request{URL: srv.URL, Offset: tc.off, Length: tc.length})
		end := int64(len(data))
		if tc.length >= 0 {
			end = min(end, tc.off+tc.length)
		}
		if !bytes.Equal(got, data[tc.off:end]) {
			t.Fatalf("off %d len %d: got %d bytes, want %d", tc.off, tc.length, len(got), end-tc.off)
		}
		if resp.RangeOK || resp.ContentLength != int64(len(data)) {
			t.Fatalf("off %d: RangeOK %v ContentLength %d", tc.off, resp.RangeOK, resp.ContentLength)
		}
	}
	_, err := h.Fetch(context.Background(), Request{URL: srv.URL, Offset: 60_000, Length: -1})
	if !errors.Is(err, core.ErrInvalid) {
		t.Fatalf("offset past the end: %v", err)
	}
}

func TestHTTPStatusErrors(t *testing.T) {
	cases := []struct {
		code      int
		kind      error
		wantTries int64
	}{
		{http.StatusNotFound, core.ErrNotFound, 1},
		{http.StatusGone, core.ErrNotFound, 1},
		{http.StatusForbidden, core.ErrDenied, 1},
		{http.StatusUnauthorized, core.ErrDenied, 1},
		{http.StatusRequestTimeout, core.ErrOrigin, 4},
		{http.StatusTooManyRequests, core.ErrOrigin, 4},
		{http.StatusInternalServerError, core.ErrOrigin, 4},
		{http.StatusBadGateway, core.ErrOrigin, 4},
		{http.StatusServiceUnavailable, core.ErrOrigin, 4},
		{http.StatusNotImplemented, core.ErrOrigin, 1},
	}
	for _, tc := range cases {
		t.Run(strconv.Itoa(tc.code), func(t *testing.T) {
			srv, c := newOrigin(t, func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, "nope", tc.code)
			})
			h := newTestHTTP(t, testConfig())
			_, err := h.Fetch(context.Background(), Request{URL: srv.URL + "/x?token=secret", Length: -1})
			if !errors.Is(err, tc.kind) {
				t.Fatalf("err %v, want kind %v", err, tc.kind)
			}
			var se *StatusError
			if !errors.As(err, &se) || se.Code != tc.code {
				t.Fatalf("err %v is not a StatusError with code %d", err, tc.code)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Fatalf("error leaks the query string: %v", err)
			}
			if got := c.reqs.Load(); got != tc.wantTries {
				t.Fatalf("%d requests, want %d", got, tc.wantTries)
			}
		})
	}
}

func TestHTTPFlakyThenOK(t *testing.T) {
	data := content(10_000)
	var n atomic.Int64
	srv, c := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) <= 2 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		serveRanges(data)(w, r)
	})
	h := newTestHTTP(t, testConfig())
	_, got := fetchAll(t, h, Request{URL: srv.URL, Length: -1})
	if !bytes.Equal(got, data) || c.reqs.Load() != 3 {
		t.Fatalf("got %d bytes after %d requests", len(got), c.reqs.Load())
	}
}

func TestHTTPConnectionRefusedIsRetriedThenFails(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	cfg := testConfig()
	cfg.Retries = 2
	h := newTestHTTP(t, cfg)
	_, err := h.Fetch(context.Background(), Request{URL: url, Length: -1})
	if err == nil || !strings.Contains(err.Error(), "gave up after 3 attempts") {
		t.Fatalf("err %v", err)
	}
}

// resetting answers the first `resets` requests with the response headers and
// `cut` bytes of the body, then closes the connection; later requests are
// served by next.
func resetting(data []byte, resets int64, cut int, advertiseRanges bool, next http.HandlerFunc) http.HandlerFunc {
	var n atomic.Int64
	return func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) > resets {
			next(w, r)
			return
		}
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err)
		}
		defer conn.Close()
		off := 0
		status := "200 OK"
		extra := ""
		if rg := r.Header.Get("Range"); rg != "" && advertiseRanges {
			cr, _ := strings.CutPrefix(rg, "bytes=")
			a, _, _ := strings.Cut(cr, "-")
			off, _ = strconv.Atoi(a)
			status = "206 Partial Content"
			extra = fmt.Sprintf("Content-Range: bytes %d-%d/%d\r\n", off, len(data)-1, len(data))
		}
		if advertiseRanges {
			extra += "Accept-Ranges: bytes\r\nETag: \"v1\"\r\n"
		}
		fmt.Fprintf(buf, "HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n", status, len(data)-off, extra)
		end := min(off+cut, len(data))
		_, _ = buf.Write(data[off:end])
		_ = buf.Flush()
	}
}

// hijackable marks requests so the counter does not wrap the writer (a
// wrapped writer cannot be hijacked).
func hijackable(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Set("X-Hijack", "1")
		h.ServeHTTP(w, r)
	})
}

func newHijackOrigin(t *testing.T, h http.HandlerFunc) (*httptest.Server, *counter) {
	c := &counter{}
	srv := httptest.NewServer(hijackable(c.wrap(h)))
	t.Cleanup(srv.Close)
	return srv, c
}

func TestHTTPResumesAfterResetMidBody(t *testing.T) {
	data := content(300_000)
	srv, c := newHijackOrigin(t, resetting(data, 2, 70_000, true, serveRanges(data)))
	h := newTestHTTP(t, testConfig())
	resp, got := fetchAll(t, h, Request{URL: srv.URL, Length: -1})
	if !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes, want %d equal bytes", len(got), len(data))
	}
	if !resp.RangeOK {
		t.Fatal("RangeOK false")
	}
	want := []string{"", "bytes=70000-299999", "bytes=140000-299999"}
	if got := c.seenRanges(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ranges %q, want %q", got, want)
	}
	c.mu.Lock()
	ifRange := c.hdrs[1].Get("If-Range")
	c.mu.Unlock()
	if ifRange != `"v1"` {
		t.Fatalf("resume sent If-Range %q", ifRange)
	}
}

func TestHTTPResumesARangeAfterReset(t *testing.T) {
	data := content(300_000)
	srv, c := newHijackOrigin(t, resetting(data, 1, 1000, true, serveRanges(data)))
	h := newTestHTTP(t, testConfig())
	_, got := fetchAll(t, h, Request{URL: srv.URL, Offset: 5000, Length: 100_000})
	if !bytes.Equal(got, data[5000:105_000]) {
		t.Fatalf("got %d bytes, want 100000 equal bytes", len(got))
	}
	want := []string{"bytes=5000-104999", "bytes=6000-104999"}
	if got := c.seenRanges(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ranges %q, want %q", got, want)
	}
}

func TestHTTPResetWithoutRangesSurfaces(t *testing.T) {
	data := content(100_000)
	srv, c := newHijackOrigin(t, resetting(data, 1, 1000, false, serveNoRanges(data)))
	h := newTestHTTP(t, testConfig())
	resp, err := h.Fetch(context.Background(), Request{URL: srv.URL, Length: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.RangeOK {
		t.Fatal("RangeOK true for an origin without ranges")
	}
	got, err := io.ReadAll(resp.Body)
	if !errors.Is(err, io.ErrUnexpectedEOF) || len(got) != 1000 {
		t.Fatalf("read %d bytes, err %v; want 1000 and unexpected EOF", len(got), err)
	}
	if c.reqs.Load() != 1 {
		t.Fatalf("%d requests: must not re-request without range support", c.reqs.Load())
	}
}

func TestHTTPResumeGivesUpWithoutProgress(t *testing.T) {
	data := content(100_000)
	// Every response breaks before its first byte.
	srv, c := newHijackOrigin(t, resetting(data, 1000, 0, true, nil))
	cfg := testConfig()
	cfg.Retries = 2
	h := newTestHTTP(t, cfg)
	resp, err := h.Fetch(context.Background(), Request{URL: srv.URL, Length: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, err = io.ReadAll(resp.Body)
	if err == nil {
		t.Fatal("read succeeded")
	}
	// 1 first request + 2 resumptions.
	if c.reqs.Load() != 3 {
		t.Fatalf("%d requests, want 3 (err %v)", c.reqs.Load(), err)
	}
}

func TestHTTPResumeRefusesChangedContent(t *testing.T) {
	data := content(100_000)
	other := content(100_001)
	srv, _ := newHijackOrigin(t, resetting(data, 1, 1000, true, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v2"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(other))
	}))
	h := newTestHTTP(t, testConfig())
	resp, err := h.Fetch(context.Background(), Request{URL: srv.URL, Length: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, err = io.ReadAll(resp.Body)
	if !errors.Is(err, errRangeIgnored) && !errors.Is(err, errChanged) {
		t.Fatalf("err %v, want a refusal to splice another version", err)
	}
}

func TestHTTPStalledBodyResumes(t *testing.T) {
	data := content(200_000)
	var n atomic.Int64
	srv, c := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			w.Header().Set("Accept-Ranges", "bytes")
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			_, _ = w.Write(data[:5000])
			w.(http.Flusher).Flush()
			<-r.Context().Done() // stall until the client gives up
			return
		}
		serveRanges(data)(w, r)
	})
	cfg := testConfig()
	cfg.Timeout = 300 * time.Millisecond
	h := newTestHTTP(t, cfg)
	_, got := fetchAll(t, h, Request{URL: srv.URL, Length: -1})
	if !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes", len(got))
	}
	if r := c.seenRanges(); len(r) != 2 || r[1] != "bytes=5000-199999" {
		t.Fatalf("ranges %q", r)
	}
}

func TestHTTPHeaderTimeout(t *testing.T) {
	var n atomic.Int64
	srv, c := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	cfg := testConfig()
	cfg.Timeout = 300 * time.Millisecond
	h := newTestHTTP(t, cfg)
	_, got := fetchAll(t, h, Request{URL: srv.URL, Length: -1})
	if string(got) != "ok" || c.reqs.Load() != 2 {
		t.Fatalf("got %q after %d requests", got, c.reqs.Load())
	}
}

func TestHTTPCancelMidBody(t *testing.T) {
	srv, _ := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000000")
		_, _ = w.Write(make([]byte, 1000))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	h := newTestHTTP(t, testConfig())
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := h.Fetch(ctx, Request{URL: srv.URL, Length: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 1000)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err = io.ReadAll(resp.Body)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
}

func TestHTTPCancelDuringBackoff(t *testing.T) {
	srv, _ := newOrigin(t, func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "busy", http.StatusServiceUnavailable)
	})
	cfg := testConfig()
	cfg.RetryBackoff = time.Hour
	h := newTestHTTP(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := h.Fetch(ctx, Request{URL: srv.URL, Length: -1})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v", err)
	}
}

func TestHTTPHeadersAndRedirects(t *testing.T) {
	data := content(4096)
	final, fc := newOrigin(t, serveRanges(data))
	// A redirect that leaves the host (127.0.0.1 -> localhost) and one that stays.
	finalOtherHost := strings.Replace(final.URL, "127.0.0.1", "localhost", 1)
	var redirSrv *httptest.Server
	redirSrv, rc := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/away":
			http.Redirect(w, r, finalOtherHost+"/blob", http.StatusFound)
		case "/same":
			http.Redirect(w, r, "/here", http.StatusTemporaryRedirect)
		case "/here":
			serveRanges(data)(w, r)
		case "/loop":
			http.Redirect(w, r, "/loop", http.StatusFound)
		}
	})
	_ = redirSrv
	h := newTestHTTP(t, testConfig())
	hdr := http.Header{}
	hdr.Set("Authorization", "Bearer t0ken")
	hdr.Set("X-Custom", "yes")
	hdr.Set("User-Agent", "mine/1")
	hdr.Set("Range", "bytes=0-0") // ignored: the source owns ranges

	_, got := fetchAll(t, h, Request{URL: redirSrv.URL + "/away", Header: hdr, Offset: 10, Length: 20})
	if !bytes.Equal(got, data[10:30]) {
		t.Fatalf("cross-host redirect: got %d bytes", len(got))
	}
	fc.mu.Lock()
	seen := fc.hdrs[0]
	fc.mu.Unlock()
	if seen.Get("Authorization") != "" {
		t.Fatal("Authorization reached another host after a redirect")
	}
	if seen.Get("X-Custom") != "yes" || seen.Get("User-Agent") != "mine/1" || seen.Get("Range") != "bytes=10-29" {
		t.Fatalf("redirected request headers: %v", seen)
	}

	_, got = fetchAll(t, h, Request{URL: redirSrv.URL + "/same", Header: hdr, Length: -1})
	if !bytes.Equal(got, data) {
		t.Fatalf("same-host redirect: got %d bytes", len(got))
	}
	rc.mu.Lock()
	last := rc.hdrs[len(rc.hdrs)-1]
	rc.mu.Unlock()
	if last.Get("Authorization") != "Bearer t0ken" || last.Get("X-Custom") != "yes" {
		t.Fatalf("same-host redirect lost headers: %v", last)
	}

	_, err := h.Fetch(context.Background(), Request{URL: redirSrv.URL + "/loop", Length: -1})
	if !errors.Is(err, errTooManyRedirects) {
		t.Fatalf("redirect loop: %v", err)
	}
}

func TestHTTPHostHeader(t *testing.T) {
	srv, c := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Host)
	})
	h := newTestHTTP(t, testConfig())
	hdr := http.Header{"host": {"example.org"}} // not canonical on purpose
	_, got := fetchAll(t, h, Request{URL: srv.URL, Header: hdr, Length: -1})
	if string(got) != "example.org" || c.reqs.Load() != 1 {
		t.Fatalf("Host %q", got)
	}
}

func TestHTTPBadRequests(t *testing.T) {
	h := newTestHTTP(t, testConfig())
	for _, req := range []Request{
		{URL: "ftp://x/y", Length: -1},
		{URL: "http:///nohost", Length: -1},
		{URL: "http://x/%zz", Length: -1},
		{URL: "http://x/", Offset: -1, Length: -1},
		{URL: "http://x/", Length: -2},
	} {
		if _, err := h.Fetch(context.Background(), req); !errors.Is(err, core.ErrInvalid) {
			t.Errorf("%+v: err %v, want ErrInvalid", req, err)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	cases := []struct {
		in   string
		want contentRange
		ok   bool
	}{
		{"bytes 0-99/1000", contentRange{0, 99, 1000}, true},
		{"bytes 10-10/11", contentRange{10, 10, 11}, true},
		{"bytes 0-99/*", contentRange{0, 99, -1}, true},
		{"bytes */1000", contentRange{-1, -1, 1000}, true},
		{"bytes */0", contentRange{-1, -1, 0}, true},
		{"BYTES 1-2/3", contentRange{1, 2, 3}, true},
		{" bytes 1-2/3 ", contentRange{1, 2, 3}, true},
		{"bytes 9223372036854775806-9223372036854775806/9223372036854775807", contentRange{9223372036854775806, 9223372036854775806, 9223372036854775807}, true},
		{"", contentRange{}, false},
		{"bytes", contentRange{}, false},
		{"bytes 0-99", contentRange{}, false},
		{"bits 0-99/100", contentRange{}, false},
		{"bytes */*", contentRange{}, false},
		{"bytes 99-0/100", contentRange{}, false},
		{"bytes 0-100/100", contentRange{}, false},
		{"bytes -1-5/10", contentRange{}, false},
		{"bytes +1-5/10", contentRange{}, false},
		{"bytes 1-+5/10", contentRange{}, false},
		{"bytes 1-5/-10", contentRange{}, false},
		{"bytes 1 -5/10", contentRange{}, false},
		{"bytes a-b/c", contentRange{}, false},
		{"bytes 0-99/99999999999999999999", contentRange{}, false},
	}
	for _, tc := range cases {
		got, err := parseContentRange(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("parseContentRange(%q) = %+v, %v; want %+v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func BenchmarkHTTPFetch(b *testing.B) {
	const size = 64 << 20
	data := content(size)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		_, _ = w.Write(data)
	}))
	defer srv.Close()
	h := newTestHTTP(b, DefaultConfig())
	buf := make([]byte, copyBufferSize)
	sink := struct{ io.Writer }{io.Discard} // hide ReadFrom: read like a real consumer
	b.ReportAllocs()
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		resp, err := h.Fetch(context.Background(), Request{URL: srv.URL, Length: -1})
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(sink, resp.Body, buf)
		_ = resp.Body.Close()
		if err != nil || n != size {
			b.Fatalf("copied %d: %v", n, err)
		}
	}
}

func TestHTTPOriginSendsShorterRanges(t *testing.T) {
	data := content(10_000)
	// The origin caps every answer at 3000 bytes, as RFC 9110 allows.
	srv, c := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		off := 0
		if rg := r.Header.Get("Range"); rg != "" {
			a, _, _ := strings.Cut(strings.TrimPrefix(rg, "bytes="), "-")
			off, _ = strconv.Atoi(a)
		}
		end := min(off+3000, len(data))
		w.Header().Set("Accept-Ranges", "bytes")
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, end-1, len(data)))
		w.Header().Set("Content-Length", strconv.Itoa(end-off))
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write(data[off:end])
	})
	h := newTestHTTP(t, testConfig())
	_, got := fetchAll(t, h, Request{URL: srv.URL, Offset: 100, Length: 9000})
	if !bytes.Equal(got, data[100:9100]) {
		t.Fatalf("got %d bytes", len(got))
	}
	want := []string{"bytes=100-9099", "bytes=3100-9099", "bytes=6100-9099"}
	if r := c.seenRanges(); fmt.Sprint(r) != fmt.Sprint(want) {
		t.Fatalf("ranges %q, want %q", r, want)
	}
}

func TestHTTPRangePastEnd(t *testing.T) {
	srv, _ := newOrigin(t, serveRanges(content(100)))
	h := newTestHTTP(t, testConfig())
	_, err := h.Fetch(context.Background(), Request{URL: srv.URL, Offset: 101, Length: -1})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("err %v, want a 416 StatusError", err)
	}
}

func TestHTTPBadContentRangeIsRefused(t *testing.T) {
	srv, _ := newOrigin(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Range", "bytes 0-9/100") // not the offset asked for
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write(make([]byte, 10))
	})
	h := newTestHTTP(t, testConfig())
	_, err := h.Fetch(context.Background(), Request{URL: srv.URL, Offset: 50, Length: 10})
	if !errors.Is(err, core.ErrOrigin) {
		t.Fatalf("err %v", err)
	}
}

// BenchmarkHTTPFetchBaseline is plain net/http on the same server, to show
// what the source's own layer costs.
func BenchmarkHTTPFetchBaseline(b *testing.B) {
	const size = 64 << 20
	data := content(size)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		_, _ = w.Write(data)
	}))
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	buf := make([]byte, copyBufferSize)
	sink := struct{ io.Writer }{io.Discard}
	b.ReportAllocs()
	b.SetBytes(size)
	for b.Loop() {
		resp, err := client.Get(srv.URL)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(sink, resp.Body, buf)
		_ = resp.Body.Close()
		if err != nil || n != size {
			b.Fatalf("copied %d: %v", n, err)
		}
	}
}

func TestHTTPCloseAbortsRead(t *testing.T) {
	srv, _ := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000000")
		w.Header().Set("Accept-Ranges", "bytes")
		_, _ = w.Write(make([]byte, 1000))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	h := newTestHTTP(t, testConfig())
	resp, err := h.Fetch(context.Background(), Request{URL: srv.URL, Length: -1})
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(50*time.Millisecond, func() { _ = resp.Body.Close() })
	done := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(resp.Body)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, errClosed) {
			t.Fatalf("err %v, want a closed-body error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not abort the read")
	}
	if _, err := resp.Body.Read(make([]byte, 1)); err == nil {
		t.Fatal("read after Close succeeded")
	}
}

// Remote is the address the final response came from: after a redirect the
// second server's, also through the registry; nil through a proxy, whose
// address says nothing about the origin's.
func TestHTTPRemote(t *testing.T) {
	target, _ := newOrigin(t, func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("abc"))
	})
	front, _ := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/moved", http.StatusFound)
	})
	h := newTestHTTP(t, testConfig())
	resp, got := fetchAll(t, NewRegistry(h), Request{URL: front.URL + "/x", Length: -1})
	tcp, ok := resp.Remote.(*net.TCPAddr)
	if string(got) != "abc" || !ok || !tcp.IP.IsLoopback() || tcp.String() != target.Listener.Addr().String() {
		t.Fatalf("got %q from %v, want abc from the redirect's target %s", got, resp.Remote, target.Listener.Addr())
	}

	var proxied atomic.Int64
	proxy, _ := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.IsAbs() {
			proxied.Add(1)
		}
		_, _ = w.Write([]byte("abc"))
	})
	pu, _ := url.Parse(proxy.URL)
	tr := h.client.Transport.(*http.Transport).Clone()
	tr.Proxy = http.ProxyURL(pu)
	h.client.Transport = tr
	resp, got = fetchAll(t, h, Request{URL: "http://origin.test/x", Length: -1})
	if string(got) != "abc" || proxied.Load() != 1 || resp.Remote != nil {
		t.Fatalf("through a proxy: got %q (proxy saw %d requests), Remote %v, want nil", got, proxied.Load(), resp.Remote)
	}
}
