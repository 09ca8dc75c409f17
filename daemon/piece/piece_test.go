package piece

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

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
	if err == nil || !strings.Contains(err.Error(), "no progress") {
		t.Fatalf("stalled fetch: %v", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("stall not detected for %s", el)
	}
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
