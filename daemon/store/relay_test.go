package store

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/core"
)

// Relays are announced once, refused for held pieces, hold back the last
// byte until verified, and leave the task when finished.
func TestRelayLifecycle(t *testing.T) {
	s, err := Open(context.Background(), t.TempDir(), testLog())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data := content(4 * 1024)
	task := fill(t, s, "r", data, 1024, []uint32{0})
	if task.StartRelay(0, make([]byte, 1024), nil) != nil {
		t.Fatal("relay of a held piece accepted")
	}
	ch := task.Changed()
	bufs := map[uint32][]byte{}
	relays := map[uint32]*Relay{}
	for _, n := range []uint32{3, 1} {
		bufs[n] = make([]byte, 1024)
		if relays[n] = task.StartRelay(n, bufs[n], nil); relays[n] == nil {
			t.Fatalf("relay of piece %d refused", n)
		}
	}
	select {
	case <-ch:
	default:
		t.Fatal("starting a relay did not wake the task's followers")
	}
	seen := map[uint32]*Relay{}
	if got := task.NewRelays(seen); !slices.Equal(got, []uint32{1, 3}) {
		t.Fatalf("relays %v, want [1 3]", got)
	}
	if got := task.NewRelays(seen); len(got) != 0 {
		t.Fatalf("relays announced twice: %v", got)
	}

	rr, ok := task.OpenRelay(1)
	if !ok {
		t.Fatal("open relay 1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if b, err := rr.Next(ctx, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("nothing arrived yet: got %d bytes, %v", len(b), err)
	}
	copy(bufs[1], data[1024:2048])
	relays[1].Progress(1024)
	b, err := rr.Next(context.Background(), 0)
	if err != nil || len(b) != 1023 {
		t.Fatalf("before verification: %d bytes, %v; want all but the last", len(b), err)
	}
	relays[1].Verified()
	if b, err = rr.Next(context.Background(), 1023); err != nil || len(b) != 1 {
		t.Fatalf("after verification: %d bytes, %v; want the last one", len(b), err)
	}
	if b, err = rr.Next(context.Background(), 1024); err != nil || b != nil {
		t.Fatalf("past the end: %v, %v", b, err)
	}
	if err := task.WritePiece(1, bufs[1], core.PieceDigest(data[1024:2048])); err != nil {
		t.Fatal(err)
	}
	relays[1].Finish()
	rr.Close()
	if _, ok := task.OpenRelay(1); ok {
		t.Fatal("a finished relay still opens")
	}

	// a failed relay: open readers get ErrRelayFailed
	rr3, ok := task.OpenRelay(3)
	if !ok {
		t.Fatal("open relay 3")
	}
	relays[3].Progress(512)
	relays[3].Finish()
	if _, err := rr3.Next(context.Background(), 0); !errors.Is(err, ErrRelayFailed) {
		t.Fatalf("reader of a failed relay: %v", err)
	}
	rr3.Close()
	if task.StartRelay(3, make([]byte, 1024), nil) == nil {
		t.Fatal("a failed piece cannot be relayed again")
	}
	// relayed again after failing: announced again
	if got := task.NewRelays(seen); !slices.Equal(got, []uint32{3}) {
		t.Fatalf("after a failed relay restarted: announced %v, want [3]", got)
	}
}

// A relay whose own transfer ends short while another transfer stored the
// piece (an endgame duplicate) finishes from the stored piece: its readers
// get the whole piece instead of an abort. When the bytes already given
// differ from the stored piece's, the readers abort as before.
func TestRelayCompletedFromStoredPiece(t *testing.T) {
	s, err := Open(context.Background(), t.TempDir(), testLog())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data := content(4 * 1024)
	task := fill(t, s, "r", data, 1024, nil)
	for _, tc := range []struct {
		n     uint32
		lie   bool
		whole bool
	}{{1, false, true}, {2, true, false}} {
		buf := make([]byte, 1024)
		relay := task.StartRelay(tc.n, buf, nil)
		rr, ok := task.OpenRelay(tc.n)
		if relay == nil || !ok {
			t.Fatalf("piece %d: relay not started", tc.n)
		}
		piece := data[int(tc.n)*1024 : int(tc.n+1)*1024]
		copy(buf, piece[:300])
		if tc.lie {
			buf[7] ^= 1
		}
		relay.Progress(300)
		if b, err := rr.Next(context.Background(), 0); err != nil || len(b) != 300 {
			t.Fatalf("piece %d: %d bytes, %v", tc.n, len(b), err)
		}
		// the duplicate from another parent is stored; this transfer is cancelled
		if err := task.WritePiece(tc.n, piece, core.PieceDigest(piece)); err != nil {
			t.Fatal(err)
		}
		relay.Finish()
		b, err := rr.Next(context.Background(), 300)
		if tc.whole {
			if err != nil || string(b) != string(piece[300:]) {
				t.Fatalf("piece %d: rest %d bytes, %v; want the stored piece's", tc.n, len(b), err)
			}
		} else if !errors.Is(err, ErrRelayFailed) {
			t.Fatalf("piece %d (other bytes given): %v, want ErrRelayFailed", tc.n, err)
		}
		rr.Close()
	}
}
