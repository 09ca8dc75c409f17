package obs

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/damselfly-io/damselfly/internal/config"
)

func testConfig() Config {
	c := DefaultConfig()
	c.ReadHeaderTimeout = config.Duration(300 * time.Millisecond)
	c.IdleTimeout = config.Duration(300 * time.Millisecond)
	c.WriteStallTimeout = config.Duration(300 * time.Millisecond)
	return c
}

// serveTest runs h under c on a loopback port until the test ends.
func serveTest(t *testing.T, c Config, h http.Handler) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx, lis, h) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return lis.Addr().String()
}

// closedWithin reports whether the server closes conn (a read ends in EOF
// or a reset) before d; a read timeout means it left the connection open.
func closedWithin(t *testing.T, conn net.Conn, r io.Reader, d time.Duration) bool {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 512)
	for {
		_, err := r.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return false
		}
		return true
	}
}

func TestIdleKeepAliveClosed(t *testing.T) {
	addr := serveTest(t, testConfig(), Handler(prometheus.NewRegistry(), nil))
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /healthy HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok\n" || resp.Close {
		t.Fatalf("first request: %d %q close=%v", resp.StatusCode, body, resp.Close)
	}
	// Kept alive, then idle: the server must hang up.
	if !closedWithin(t, conn, br, 5*time.Second) {
		t.Fatal("an idle keep-alive connection was still open after 5s (idle_timeout 300ms)")
	}
}

func TestSlowlorisCut(t *testing.T) {
	addr := serveTest(t, testConfig(), Handler(prometheus.NewRegistry(), nil))
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Headers begun and never finished.
	if _, err := io.WriteString(conn, "GET /healthy HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n"); err != nil {
		t.Fatal(err)
	}
	if !closedWithin(t, conn, conn, 5*time.Second) {
		t.Fatal("a connection that never finished its headers was still open after 5s (read_header_timeout 300ms)")
	}
}

// A download that takes many stall periods but keeps moving is not cut.
func TestSlowMovingDownloadNotCut(t *testing.T) {
	const chunks, size = 25, 1024
	addr := serveTest(t, testConfig(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "25600")
		rc := http.NewResponseController(w)
		b := []byte(strings.Repeat("x", size))
		for range chunks {
			if _, err := w.Write(b); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			time.Sleep(60 * time.Millisecond) // 25 × 60 ms = 1.5 s, five stall periods
		}
	}))
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || n != chunks*size {
		t.Fatalf("got %d bytes, err %v; want %d", n, err, chunks*size)
	}
}

// A client that stops reading is cut: the handler's write fails instead of
// blocking forever.
func TestStalledReaderCut(t *testing.T) {
	werr := make(chan error, 1)
	addr := serveTest(t, testConfig(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := make([]byte, 1<<20)
		for i := 0; i < 1024; i++ { // at most 1 GiB: bounded even if never cut
			if _, err := w.Write(b); err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}))
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// Never read.
	select {
	case err := <-werr:
		if err == nil {
			t.Fatal("1 GiB written to a client that reads nothing")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a response to a client that stopped reading was not cut within 10s (write_stall_timeout 300ms)")
	}
}

// Files still go out whole through ReadFrom (the sendfile path), also
// behind an io.LimitedReader, in several chunks.
func TestStallGuardReadFrom(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	data := []byte(strings.Repeat("0123456789abcdef", 3*stallChunk/16+7))
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	addr := serveTest(t, testConfig(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(p)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		_, _ = f.Seek(5, io.SeekStart)
		if r.URL.Path == "/all" {
			_, _ = io.Copy(w, f)
			return
		}
		w.Header().Set("Content-Length", "700000")
		if n, err := io.CopyN(w, f, 700000); n != 700000 || err != nil {
			t.Errorf("CopyN: %d, %v", n, err)
		}
	}))
	for path, want := range map[string][]byte{"/all": data[5:], "/part": data[5 : 5+700000]} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(got) != string(want) {
			t.Fatalf("%s: got %d bytes (err %v), want %d", path, len(got), err, len(want))
		}
	}
}

func TestPprofOffByDefault(t *testing.T) {
	addr := serveTest(t, testConfig(), Handler(prometheus.NewRegistry(), nil))
	for _, p := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/cmdline"} {
		resp, err := http.Get("http://" + addr + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s on the metrics port: %d, want 404", p, resp.StatusCode)
		}
	}
	c := DefaultConfig()
	if c.Pprof {
		t.Fatal("pprof on by default")
	}
	lis, err := c.ListenPprof(context.Background())
	if lis != nil || err != nil {
		t.Fatalf("ListenPprof with pprof off: %v, %v", lis, err)
	}
	if h, _, _ := net.SplitHostPort(c.PprofListen); !net.ParseIP(h).IsLoopback() {
		t.Fatalf("default pprof_listen %q is not loopback", c.PprofListen)
	}
}

func TestPprofWhenEnabled(t *testing.T) {
	c := testConfig()
	c.Pprof, c.PprofListen = true, "127.0.0.1:0"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	lis, err := c.ListenPprof(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.ServePprof(ctx, lis) }()
	defer func() { cancel(); <-done }()
	resp, err := http.Get("http://" + lis.Addr().String() + "/debug/pprof/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(b) == 0 {
		t.Fatalf("pprof cmdline: %d %q", resp.StatusCode, b)
	}
	bad := c
	bad.PprofListen = "nonsense"
	if err := bad.Validate(); err == nil {
		t.Fatal("pprof_listen without a port accepted")
	}
	bad = c
	bad.IdleTimeout = 0
	if err := bad.Validate(); err == nil {
		t.Fatal("idle_timeout 0 accepted")
	}
}
