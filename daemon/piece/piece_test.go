package piece

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/time/rate"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon/store"
)

func newStore(t testing.TB) *store.Store {
	s, err := store.Open(context.Background(), t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// holding returns a store with a task of n pieces of size ps, holding the listed ones.
func holding(t testing.TB, ps int, n int, held ...uint32) (*store.Store, [][]byte) {
	s := newStore(t)
	task, _, err := s.GetOrCreate(store.Meta{TaskID: "t1", ContentLength: -1})
	if err != nil {
		t.Fatal(err)
	}
	task.SetShape(int64(ps*n), uint32(ps))
	pieces := make([][]byte, n)
	for i := range pieces {
		pieces[i] = []byte(strings.Repeat(string(rune('a'+i%26)), ps))
	}
	for _, h := range held {
		if err := task.WritePiece(h, pieces[h], nil); err != nil {
			t.Fatal(err)
		}
	}
	return s, pieces
}

func serve(t testing.TB, s *store.Store, limit *Limiter) (string, *Metrics) {
	m := NewMetrics(nil)
	srv := httptest.NewServer(NewServer(s, 8, limit, m, slog.New(slog.NewTextHandler(io.Discard, nil))).Handler())
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), m
}

func TestFetchVerifies(t *testing.T) {
	s, pieces := holding(t, 1024, 4, 0, 2)
	addr, _ := serve(t, s, nil)
	c := NewClient(NewMetrics(nil))
	ctx := context.Background()

	b, err := c.Fetch(ctx, Request{Addr: addr, TaskID: "t1", Number: 2, Size: 1024, Digest: core.PieceDigest(pieces[2])})
	if err != nil || string(b) != string(pieces[2]) {
		t.Fatalf("fetch held piece: %v", err)
	}
	c.Release(b)

	// a piece the server does not hold, and a task it does not know
	if _, err := c.Fetch(ctx, Request{Addr: addr, TaskID: "t1", Number: 1, Size: 1024, Digest: core.PieceDigest(pieces[1])}); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("missing piece: %v", err)
	}
	if _, err := c.Fetch(ctx, Request{Addr: addr, TaskID: "nope", Number: 0, Size: 1024, Digest: core.PieceDigest(pieces[0])}); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("unknown task: %v", err)
	}
	// bytes that do not match the trusted digest
	if _, err := c.Fetch(ctx, Request{Addr: addr, TaskID: "t1", Number: 0, Size: 1024, Digest: core.PieceDigest(pieces[1])}); !errors.Is(err, core.ErrDigestMismatch) {
		t.Fatalf("corrupt piece accepted: %v", err)
	}
	// a size the server disagrees with
	if _, err := c.Fetch(ctx, Request{Addr: addr, TaskID: "t1", Number: 0, Size: 1000, Digest: core.PieceDigest(pieces[0])}); !errors.Is(err, core.ErrDigestMismatch) {
		t.Fatalf("wrong size accepted: %v", err)
	}
}

func TestServerRejectsBadInput(t *testing.T) {
	s, _ := holding(t, 16, 1, 0)
	addr, _ := serve(t, s, nil)
	for path, want := range map[string]int{
		"/pieces/t1/x":   http.StatusBadRequest,
		"/pieces/t1/-1":  http.StatusBadRequest,
		"/pieces/t1/99":  http.StatusNotFound,
		"/pieces/../etc": http.StatusNotFound,
		"/other":         http.StatusNotFound,
	} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
}

// A parent that sends headers and then nothing is abandoned after the stall
// timeout, not after a whole-piece deadline.
func TestFetchStall(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1024")
		w.WriteHeader(200)
		w.Write(make([]byte, 100))
		w.(http.Flusher).Flush()
		<-release
	}))
	defer srv.Close()
	defer close(release)
	c := NewClient(NewMetrics(nil))
	start := time.Now()
	_, err := c.Fetch(context.Background(), Request{Addr: strings.TrimPrefix(srv.URL, "http://"), TaskID: "t", Number: 0,
		Size: 1024, Digest: make([]byte, 32), Stall: 200 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "no progress") || !errors.Is(err, ErrStalled) {
		t.Fatalf("stalled fetch: %v", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("stall not detected for %s", el)
	}
}

// Waiting for this host's own download limit is not a stall of the parent:
// a piece that takes many stall periods because of the limit arrives.
func TestOwnLimitIsNoStall(t *testing.T) {
	const ps = 512 << 10
	s, pieces := holding(t, ps, 1, 0)
	addr, _ := serve(t, s, nil)
	c := NewClient(NewMetrics(nil))
	// 256 KiB/s after a 256 KiB burst: about 1 s of waits, 100 ms stall
	b, err := c.Fetch(context.Background(), Request{Addr: addr, TaskID: "t1", Number: 0, Size: ps,
		Digest: core.PieceDigest(pieces[0]), Stall: 100 * time.Millisecond, Limits: []*rate.Limiter{NewLimiter(256 << 10)}})
	if err != nil {
		t.Fatalf("limited fetch: %v", err)
	}
	c.Release(b)
}

func TestUploadLimit(t *testing.T) {
	const ps = 256 << 10
	s, pieces := holding(t, ps, 4, 0, 1, 2, 3)
	addr, m := serve(t, s, NewLimiter(2<<20)) // 2 MiB/s
	c := NewClient(NewMetrics(nil))
	start := time.Now()
	for n := uint32(0); n < 4; n++ {
		b, err := c.Fetch(context.Background(), Request{Addr: addr, TaskID: "t1", Number: n, Size: ps, Digest: core.PieceDigest(pieces[n])})
		if err != nil {
			t.Fatal(err)
		}
		c.Release(b)
	}
	// 1 MiB at 2 MiB/s with a 256 KiB burst takes ≥ ~0.37 s; a limiter
	// that does nothing takes milliseconds.
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Fatalf("1 MiB through a 2 MiB/s limit took %s", el)
	}
	// the server counts after its copy returns, which may be just after the
	// client has the last byte
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(m.UploadBytes) != 4*ps && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := testutil.ToFloat64(m.UploadBytes); got != 4*ps {
		t.Fatalf("upload bytes metric %v, want %d", got, 4*ps)
	}
}

func BenchmarkFetch4MiB(b *testing.B) {
	const ps = 4 << 20
	s, pieces := holding(b, ps, 2, 0)
	addr, _ := serve(b, s, nil)
	c := NewClient(NewMetrics(nil))
	dg := core.PieceDigest(pieces[0])
	b.SetBytes(ps)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		buf, err := c.Fetch(context.Background(), Request{Addr: addr, TaskID: "t1", Number: 0, Size: ps, Digest: dg})
		if err != nil {
			b.Fatal(err)
		}
		c.Release(buf)
	}
}

// The pieces of a private task go only to a request with a token the
// scheduler issued for that task and that peer, still valid; public tasks
// are served as before.
func TestPrivateTaskNeedsToken(t *testing.T) {
	st, pieces := holding(t, 1<<16, 2, 0, 1)
	tk, _ := st.Get("t1")
	if err := tk.SetPrivate(); err != nil {
		t.Fatal(err)
	}
	key := []byte("0123456789abcdef0123456789abcdef")
	s := NewServer(st, 4, nil, NewMetrics(nil), slog.New(slog.DiscardHandler))
	s.SetKeys(func(id string) []byte {
		if id == "t1" {
			return key
		}
		return nil
	})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	now := time.Now()
	get := func(peer, token string) int {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/pieces/t1/0", nil)
		req.Header.Set(PeerHeader, peer)
		if token != "" {
			req.Header.Set(core.TokenHeader, token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && !bytes.Equal(b, pieces[0]) {
			t.Fatalf("served wrong bytes")
		}
		return resp.StatusCode
	}
	for name, c := range map[string]struct {
		peer, token string
		want        int
	}{
		"no token":      {"child", "", http.StatusUnauthorized},
		"forged token":  {"child", core.PieceToken([]byte("not the task's key, 32 bytes...."), "t1", "child", now.Add(time.Minute)), http.StatusForbidden},
		"expired token": {"child", core.PieceToken(key, "t1", "child", now.Add(-time.Second)), http.StatusForbidden},
		"other task":    {"child", core.PieceToken(key, "u", "child", now.Add(time.Minute)), http.StatusForbidden},
		"other peer's":  {"thief", core.PieceToken(key, "t1", "child", now.Add(time.Minute)), http.StatusForbidden},
		"garbage":       {"child", "garbage", http.StatusForbidden},
		"valid":         {"child", core.PieceToken(key, "t1", "child", now.Add(time.Minute)), http.StatusOK},
	} {
		if got := get(c.peer, c.token); got != c.want {
			t.Errorf("%s: status %d, want %d", name, got, c.want)
		}
	}
	// A daemon that has no key for the task (none arrived yet) refuses too.
	s.SetKeys(func(string) []byte { return nil })
	if got := get("child", core.PieceToken(key, "t1", "child", now.Add(time.Minute))); got != http.StatusForbidden {
		t.Errorf("no key: status %d, want 403", got)
	}
	// The client carries the token and reports a refusal as ErrDenied.
	c := NewClient(NewMetrics(nil))
	_, err := c.Fetch(context.Background(), Request{Addr: strings.TrimPrefix(srv.URL, "http://"), TaskID: "t1", Number: 0,
		Size: int64(len(pieces[0])), Digest: core.PieceDigest(pieces[0]), PeerID: "child"})
	if !errors.Is(err, ErrDenied) {
		t.Fatalf("fetch without token: %v, want ErrDenied", err)
	}
	s.SetKeys(func(string) []byte { return key })
	b, err := c.Fetch(context.Background(), Request{Addr: strings.TrimPrefix(srv.URL, "http://"), TaskID: "t1", Number: 0,
		Size: int64(len(pieces[0])), Digest: core.PieceDigest(pieces[0]), PeerID: "child",
		Token: core.PieceToken(key, "t1", "child", now.Add(time.Minute))})
	if err != nil || !bytes.Equal(b, pieces[0]) {
		t.Fatalf("fetch with token: %v", err)
	}
}

// TestReceivedCountsOnlyLinkBytes: the bytes of pieces fetched from a peer
// on another host count in Metrics.Received (the daemon's downlink
// estimate), corrupt ones too (the link carried them); those fetched over
// loopback do not (they never crossed the link).
func TestReceivedCountsOnlyLinkBytes(t *testing.T) {
	s, pieces := holding(t, 1024, 4, 0, 2)
	addr, _ := serve(t, s, nil)
	m := NewMetrics(nil)
	c := NewClient(m)
	ctx := context.Background()
	b, err := c.Fetch(ctx, Request{Addr: addr, TaskID: "t1", Number: 2, Size: 1024, Digest: core.PieceDigest(pieces[2])})
	if err != nil {
		t.Fatal(err)
	}
	c.Release(b)
	if got := m.Received.Load(); got != 0 {
		t.Fatalf("over loopback: received %d, want 0", got)
	}
	// Another host's address (in the harness's range), dialled to the
	// same server.
	c.hc.Transport = &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	b, err = c.Fetch(ctx, Request{Addr: "10.77.0.9:65002", TaskID: "t1", Number: 2, Size: 1024, Digest: core.PieceDigest(pieces[2])})
	if err != nil {
		t.Fatal(err)
	}
	c.Release(b)
	if _, err := c.Fetch(ctx, Request{Addr: "10.77.0.9:65002", TaskID: "t1", Number: 0, Size: 1024, Digest: core.PieceDigest(pieces[1])}); !errors.Is(err, core.ErrDigestMismatch) {
		t.Fatalf("corrupt piece: %v", err)
	}
	if got := m.Received.Load(); got != 2048 {
		t.Fatalf("from another host: received %d, want 2048", got)
	}
}
