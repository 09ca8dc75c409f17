package piece

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/config"
	"github.com/damselfly-io/damselfly/internal/obs"
)

// The upload port's write-stall cut does not cut a piece that takes many
// stall periods to send because the upload is rate-limited, nor the plain
// (sendfile) path: only a response that stops moving is cut.
func TestSlowPieceNotCutByWriteStall(t *testing.T) {
	const ps = 1 << 20
	s, pieces := holding(t, ps, 2, 0, 1)
	c := obs.DefaultConfig()
	c.WriteStallTimeout = config.Duration(250 * time.Millisecond)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	srv := NewServer(s, 8, NewLimiter(512<<10), NewMetrics(nil), slog.New(slog.NewTextHandler(io.Discard, nil))) // 512 KiB/s after a 256 KiB burst: ~1.5 s, six stall periods
	go func() { done <- c.Serve(ctx, lis, srv.Handler()) }()
	defer func() { cancel(); <-done }()
	cl := NewClient(NewMetrics(nil))
	b, err := cl.Fetch(context.Background(), Request{Addr: lis.Addr().String(), TaskID: "t1", Number: 0, Size: ps, Digest: core.PieceDigest(pieces[0])})
	if err != nil {
		t.Fatalf("rate-limited piece over a 250ms write-stall limit: %v", err)
	}
	cl.Release(b)
	srvUnlimited := NewServer(s, 8, nil, NewMetrics(nil), slog.New(slog.NewTextHandler(io.Discard, nil)))
	lis2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done2 := make(chan error, 1)
	go func() { done2 <- c.Serve(ctx, lis2, srvUnlimited.Handler()) }()
	defer func() { <-done2 }() // runs before the first deferred cancel; cancel first
	defer cancel()
	b, err = cl.Fetch(context.Background(), Request{Addr: lis2.Addr().String(), TaskID: "t1", Number: 1, Size: ps, Digest: core.PieceDigest(pieces[1])})
	if err != nil {
		t.Fatalf("unlimited piece through the stall guard: %v", err)
	}
	cl.Release(b)
}
