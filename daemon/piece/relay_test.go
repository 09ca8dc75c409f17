package piece

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon/store"
)

// relayChain sets up a parent holding task t1 with piece 1 arriving: a
// relay over a buffer that the test fills by hand.
func relayChain(t *testing.T, ps int) (addr string, task *store.Task, piece []byte, buf []byte, relay *store.Relay, released chan []byte, m *Metrics) {
	t.Helper()
	s, pieces := holding(t, ps, 3, 0)
	addr, m = serve(t, s, nil)
	task, _ = s.Get("t1")
	buf = make([]byte, ps)
	released = make(chan []byte, 1)
	relay = task.StartRelay(1, buf, func(b []byte) { released <- b })
	if relay == nil {
		t.Fatal("StartRelay refused a piece neither held nor relayed")
	}
	return addr, task, pieces[1], buf, relay, released, m
}

// A child gets a piece the parent is still receiving: all but the last byte
// as they arrive, the last once the parent verified it.
func TestRelayServesArrivingPiece(t *testing.T) {
	const ps = 256 << 10
	addr, task, want, buf, relay, released, m := relayChain(t, ps)
	if task.StartRelay(1, make([]byte, ps), nil) != nil {
		t.Fatal("a second relay of the same piece was accepted")
	}

	c := NewClient(NewMetrics(nil))
	var got []int
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := c.Fetch(context.Background(), Request{Addr: addr, TaskID: "t1", Number: 1, Size: ps,
			Digest: core.PieceDigest(want), Stall: 5 * time.Second,
			Buf: make([]byte, ps), Progress: func(n int) { got = append(got, n) }})
		done <- result{b, err}
	}()
	// The parent receives the piece in four steps, the last one complete.
	for i := 1; i <= 4; i++ {
		copy(buf[(i-1)*ps/4:i*ps/4], want[(i-1)*ps/4:i*ps/4])
		relay.Progress(i * ps / 4)
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case r := <-done:
		t.Fatalf("fetch ended before the parent verified the piece: %v", r.err)
	case <-time.After(100 * time.Millisecond):
	}
	relay.Verified()
	r := <-done
	if r.err != nil || !bytes.Equal(r.b, want) {
		t.Fatalf("relayed fetch: err %v, equal %v", r.err, bytes.Equal(r.b, want))
	}
	if len(got) < 2 || got[len(got)-2] >= ps {
		t.Errorf("progress %v: want the bytes before the last to arrive first", got)
	}
	// The buffer goes back only when the receiver is done too.
	select {
	case <-released:
		t.Fatal("buffer released while the receiver still owns it")
	default:
	}
	if err := task.WritePiece(1, buf, core.PieceDigest(want)); err != nil {
		t.Fatal(err)
	}
	relay.Finish()
	select {
	case b := <-released:
		if &b[0] != &buf[0] {
			t.Fatal("released another buffer")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("buffer never released")
	}
	if n := testutil.ToFloat64(m.UploadsRelayed); n != 1 {
		t.Fatalf("uploads relayed %v, want 1", n)
	}
	// Now held: served from the store, and no longer announced.
	b, err := c.Fetch(context.Background(), Request{Addr: addr, TaskID: "t1", Number: 1, Size: ps, Digest: core.PieceDigest(want)})
	if err != nil || !bytes.Equal(b, want) {
		t.Fatalf("fetch after store: %v", err)
	}
	if rs := task.NewRelays(map[uint32]*store.Relay{}); len(rs) != 0 {
		t.Fatalf("relays after finish: %v", rs)
	}
}

// When the parent's own fetch fails or its bytes do not verify, the child
// sees a broken transfer, never a complete piece it would call corrupt and
// blame the parent for; and with the corrupt bytes it never gets the last byte.
func TestRelayFailureAbortsChild(t *testing.T) {
	const ps = 64 << 10
	for _, corrupt := range []bool{false, true} {
		addr, _, want, buf, relay, released, _ := relayChain(t, ps)
		bad := bytes.Clone(want)
		if corrupt {
			bad[ps/2] ^= 0xff // what the parent got from its own parent
		}
		copy(buf, bad)
		relay.Progress(ps) // every byte arrived; the parent has yet to verify

		resp, err := http.Get("http://" + addr + "/pieces/t1/1")
		if err != nil {
			t.Fatal(err)
		}
		first := make([]byte, ps-1)
		if _, err := io.ReadFull(resp.Body, first); err != nil {
			t.Fatalf("corrupt=%v: reading the bytes before the last: %v", corrupt, err)
		}
		// The parent's verification fails: the relay ends unverified.
		relay.Finish()
		rest, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil || len(rest) != 0 {
			t.Fatalf("corrupt=%v: after the relay failed the child got %d more bytes, err %v; want an aborted body", corrupt, len(rest), err)
		}
		<-released

		// Through the client: an error that is not ErrDigestMismatch.
		addr2, _, _, buf2, relay2, _, _ := relayChain(t, ps)
		copy(buf2, bad)
		relay2.Progress(ps)
		c := NewClient(NewMetrics(nil))
		go func() { time.Sleep(50 * time.Millisecond); relay2.Finish() }()
		_, err = c.Fetch(context.Background(), Request{Addr: addr2, TaskID: "t1", Number: 1, Size: ps, Digest: core.PieceDigest(want), Stall: 5 * time.Second})
		if err == nil || errors.Is(err, core.ErrDigestMismatch) {
			t.Fatalf("corrupt=%v: fetch of a failed relay: %v, want a transfer error that blames nobody for corruption", corrupt, err)
		}
	}
}
