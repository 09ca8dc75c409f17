package store

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/damselfly-io/damselfly/core"
)

// A Relay is a piece this daemon is receiving from a parent, readable by
// uploads to its own children while it arrives (cut-through). In a pipeline
// every hop would otherwise wait for a whole piece before passing any of it
// on, which costs one piece time per hop; with relays a hop costs about the
// time of the first bytes.
//
// A relay never lets a child see a complete piece that this daemon has not
// verified: readers get everything but the last byte while the piece
// arrives, the last byte once the piece matched its digest, and an error
// (the upload aborts) if it did not or the transfer failed. A child's own
// digest check then never blames this daemon for its parent's bad bytes.
type Relay struct {
	t *Task
	n uint32

	mu      sync.Mutex
	buf     []byte
	filled  int
	state   relayState
	wake    chan struct{} // closed and replaced on every change
	refs    int           // the receiver's plus one per reader
	release func([]byte)  // returns buf to its pool when the last ref goes
}

type relayState uint8

const (
	relayReceiving relayState = iota
	relayVerified
	relayFailed
)

// ErrRelayFailed ends a reader of a relay whose piece failed to arrive or
// did not match its digest.
var ErrRelayFailed = fmt.Errorf("relayed piece failed upstream: %w", core.ErrUnavailable)

// StartRelay announces that piece n is arriving into buf, which the caller
// fills and reports with Progress and then ends with Finish. release (may be
// nil) gets buf back once the caller and every reader are done with it. It
// returns nil when the piece is already held or being relayed.
func (t *Task) StartRelay(n uint32, buf []byte, release func([]byte)) *Relay {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || (int(n) < len(t.have) && t.have[n]) {
		return nil
	}
	if _, busy := t.relays[n]; busy {
		return nil
	}
	if t.relays == nil {
		t.relays = map[uint32]*Relay{}
	}
	r := &Relay{t: t, n: n, buf: buf, wake: make(chan struct{}), refs: 1, release: release}
	t.relays[n] = r
	t.notifyLocked()
	return r
}

// Progress reports that buf[:filled] has arrived.
func (r *Relay) Progress(filled int) {
	r.mu.Lock()
	if filled > r.filled && r.state == relayReceiving {
		r.filled = min(filled, len(r.buf))
		r.wakeLocked()
	}
	r.mu.Unlock()
}

// Verified reports that the whole piece arrived and matched its digest:
// readers may send its last byte. Call it before storing the piece, and
// Finish after.
func (r *Relay) Verified() {
	r.mu.Lock()
	if r.state == relayReceiving {
		r.filled, r.state = len(r.buf), relayVerified
		r.wakeLocked()
	}
	r.mu.Unlock()
}

// Finish ends the receiver's part: the relay leaves the task (the piece is
// held by now, or it failed) and buf goes back once no reader uses it. A
// relay not Verified before Finish failed: its readers abort.
func (r *Relay) Finish() {
	r.completeFromStore()
	r.t.mu.Lock()
	if r.t.relays[r.n] == r {
		delete(r.t.relays, r.n)
		r.t.notifyLocked()
	}
	r.t.mu.Unlock()
	r.mu.Lock()
	if r.state == relayReceiving {
		r.state = relayFailed
		r.wakeLocked()
	}
	r.mu.Unlock()
	r.unref()
}

// completeFromStore finishes a relay whose own transfer ended short when
// another transfer stored the piece meanwhile (an endgame duplicate from a
// faster parent): its readers get the rest from the stored, verified piece
// instead of an abort — provided every byte they were given already is the
// stored piece's. Only the receiver calls it, once its transfer ended, so
// nothing writes buf meanwhile; readers only read below filled.
func (r *Relay) completeFromStore() {
	r.mu.Lock()
	st, filled, buf := r.state, r.filled, r.buf
	r.mu.Unlock()
	if st != relayReceiving || buf == nil || !r.t.Has(r.n) {
		return
	}
	b, err := r.t.ReadPiece(r.n)
	if err != nil || len(b) != len(buf) || !bytes.Equal(b[:filled], buf[:filled]) {
		return
	}
	copy(buf[filled:], b[filled:])
	r.mu.Lock()
	if r.state == relayReceiving {
		r.filled, r.state = len(buf), relayVerified
		r.wakeLocked()
	}
	r.mu.Unlock()
}

// wakeLocked wakes every reader waiting in Next.
func (r *Relay) wakeLocked() {
	close(r.wake)
	r.wake = make(chan struct{})
}

func (r *Relay) unref() {
	r.mu.Lock()
	r.refs--
	last := r.refs == 0
	buf := r.buf
	if last {
		r.buf = nil
	}
	r.mu.Unlock()
	if last && r.release != nil {
		r.release(buf)
	}
}

// OpenRelay returns a reader of piece n while it is being relayed. Close
// the reader when done.
func (t *Task) OpenRelay(n uint32) (*RelayReader, bool) {
	t.mu.Lock()
	r, ok := t.relays[n]
	t.mu.Unlock()
	if !ok {
		return nil, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state == relayFailed || r.buf == nil {
		return nil, false
	}
	r.refs++
	return &RelayReader{r: r}, true
}

// RelayReader reads one relayed piece.
type RelayReader struct {
	r      *Relay
	closed bool
}

// Size is the piece's length in bytes.
func (rr *RelayReader) Size() int { return len(rr.r.buf) }

// Next waits until bytes beyond off may be sent and returns them (a view of
// the receive buffer, valid until Close). The last byte of the piece comes
// only once it was verified; a failed piece returns ErrRelayFailed.
func (rr *RelayReader) Next(ctx context.Context, off int) ([]byte, error) {
	r := rr.r
	for {
		r.mu.Lock()
		st, filled, wake, buf := r.state, r.filled, r.wake, r.buf
		r.mu.Unlock()
		switch {
		case st == relayFailed:
			return nil, ErrRelayFailed
		case off >= len(buf):
			return nil, nil
		}
		limit := filled
		if st != relayVerified {
			limit = min(filled, len(buf)-1)
		}
		if limit > off {
			return buf[off:limit], nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Close releases the reader's hold on the receive buffer.
func (rr *RelayReader) Close() {
	if !rr.closed {
		rr.closed = true
		rr.r.unref()
	}
}

// NewRelays returns, in order, the pieces being relayed that seen does not
// map to their current relay, and records them there. A piece whose relay
// failed and started again is returned again: a child that asked for it in
// between was told the piece is not here, and must learn it is coming.
func (t *Task) NewRelays(seen map[uint32]*Relay) []uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	for n, r := range seen {
		if t.relays[n] != r {
			delete(seen, n)
		}
	}
	var out []uint32
	for n, r := range t.relays {
		if seen[n] != r {
			seen[n] = r
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}
