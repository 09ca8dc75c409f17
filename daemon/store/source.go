package store

import "time"

// Source progress: how far the content's source has got with fetching it
// from the origin. A daemon downloading from peers tells its children so
// (peerv1.PieceState.source_bytes) even before the source has a piece to
// give: a child then waits for a slow source instead of going to the origin
// too. A daemon fetching from the origin counts its own bytes; one
// downloading from peers passes on the largest count its parents sent.

// sourceNotify is the least time between two wake-ups of the task's
// followers for source progress: origin bytes are counted per read, and
// children hear of them at most about once a second anyway.
const sourceNotify = 250 * time.Millisecond

// AddOriginBytes counts n bytes of the content received from the origin by
// this daemon.
func (t *Task) AddOriginBytes(n int64) {
	if n <= 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.srcOwn += uint64(n)
	t.noteSourceLocked(t.srcOwn)
}

// NoteSourceBytes records that a parent said the content's source had
// received v bytes from the origin.
func (t *Task) NoteSourceBytes(v uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.noteSourceLocked(v)
}

func (t *Task) noteSourceLocked(v uint64) {
	if v <= t.srcBytes {
		return
	}
	t.srcBytes = v
	if now := time.Now(); now.Sub(t.srcNotified) >= sourceNotify && !t.closed {
		t.srcNotified = now
		close(t.srcChanged)
		t.srcChanged = make(chan struct{})
	}
}

// SourceBytes returns the largest count of the content's bytes that this
// daemon or a source upstream of it is known to have received from the
// origin (0: none known).
func (t *Task) SourceBytes() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.srcBytes
}

// SourceChanged returns a channel closed when SourceBytes next grows (at
// most every sourceNotify; a growth within it is seen at the next).
func (t *Task) SourceChanged() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.srcChanged
}
