package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon/fetch"
	"github.com/damselfly-io/damselfly/daemon/piece"
)

// A transfer's error reaches the download core as the kind its rules act
// on: a stall is a stalled parent, a digest mismatch a lying one, a full
// disk nobody's fault but ours.
func TestFailureKind(t *testing.T) {
	for err, want := range map[error]fetch.Kind{
		fmt.Errorf("fetch piece 1 from x: no progress for 3s: %w", piece.ErrStalled): fetch.KindTimeout,
		fmt.Errorf("piece 1 from x: %w", piece.ErrCorrupt):                           fetch.KindCorrupt,
		fmt.Errorf("fetch piece 1 from x: %w", core.ErrNotFound):                     fetch.KindNotFound,
		fmt.Errorf("write piece: %w", core.ErrNoSpace):                               fetch.KindNoSpace,
		fmt.Errorf("fetch piece 1 from x: %w", context.Canceled):                     fetch.KindError,
		errors.New("status 500"):                                                     fetch.KindError,
		fmt.Errorf("after 100 bytes: %w", io.ErrUnexpectedEOF):                       fetch.KindConnLost,
		fmt.Errorf("dial: %w", syscall.ECONNREFUSED):                                 fetch.KindConnLost,
	} {
		if got := failureKind(err); got != want {
			t.Errorf("%v: %v, want %v", err, got, want)
		}
	}
}

// The end of a parent stream that was dropped is not the parent's. Told A,
// then B, then A again in one burst of parent sets, a conductor reconnects
// to A while the first stream's end (context canceled) is on its way; taken
// as the new stream's, it reported a live parent gone and the scheduler
// decided the peer again (on the harness, below a host that already fed a
// pipeline, for the rest of the download).
func TestStaleParentStreamEndIgnored(t *testing.T) {
	ctx := context.Background()
	c := &conductor{
		parents: map[string]*parentConn{},
		infos:   map[string]*schedulerv1.PeerInfo{},
		fetches: map[uint64]context.CancelFunc{},
		log:     slog.New(slog.DiscardHandler),
		fc:      fetch.New(fetch.Config{ConcurrentPieces: 4, PerParentRequests: 2, SwarmTimeout: time.Hour, MaxStall: time.Second}),
		timer:   time.NewTimer(time.Hour),
	}
	t.Cleanup(func() { c.timer.Stop() })
	now := time.Now()
	c.fc.Step(now, fetch.EvStart{Length: 1 << 20, PieceSize: 1 << 18})
	connected := false
	for _, a := range c.fc.Step(now, fetch.EvParents{Parents: []fetch.Parent{{ID: "A", Host: "host-a"}, {ID: "B", Host: "host-b"}}}) {
		if a, ok := a.(fetch.ActConnect); ok && a.Parent.ID == "A" {
			connected = true
		}
	}
	if !connected {
		t.Fatal("the download core did not connect to A")
	}
	old := &parentConn{cancel: func() {}}
	cur := &parentConn{cancel: func() {}}
	c.parents["A"], c.parents["B"] = cur, &parentConn{cancel: func() {}}
	c.handle(ctx, evParent{id: "A", pc: old, err: context.Canceled})
	if c.parents["A"] != cur {
		t.Fatal("the dropped stream's end was taken for A's: A is no longer a parent")
	}
	// The current stream's end is A's.
	c.handle(ctx, evParent{id: "A", pc: cur, err: errors.New("connection reset")})
	if _, ok := c.parents["A"]; ok {
		t.Fatal("the current stream's end did not drop A")
	}
}
