package store

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"

	"github.com/damselfly-io/damselfly/core"
)

// The journal makes verified pieces survive a crash. meta.json is rewritten
// at most every 500 ms (it grows with the piece count, so rewriting it per
// piece would be costly), and a daemon killed in between would otherwise
// forget — and fetch again — every piece stored since. So each stored piece
// also appends one fixed-size record (piece number, digest) to the journal,
// which is emptied whenever meta.json is written. On reload the journal's
// pieces join those of meta.json and are verified against their digests like
// them; a torn last record is ignored. Nothing is fsynced: a process crash
// keeps the page cache, and after a power loss verification drops what the
// disk lost.

const (
	journalFile   = "pieces.journal"
	journalRecord = 4 + core.DigestSize
	// journalMaxPiece bounds piece numbers taken from a journal while the
	// content length is unknown, so a damaged file cannot make huge tables.
	journalMaxPiece = 1 << 20
)

// openJournal opens dir's journal for appending, emptying it when fresh.
// A task without a journal (nil) still works; it only loses more in a crash.
func openJournal(dir string, fresh bool) *os.File {
	flags := os.O_WRONLY | os.O_APPEND | os.O_CREATE
	if fresh {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(filepath.Join(dir, journalFile), flags, fileMode)
	if err != nil {
		return nil
	}
	return f
}

// appendJournalLocked records that piece n is stored with digest d.
func (t *Task) appendJournalLocked(n uint32, d []byte) {
	if t.journal == nil || len(d) != core.DigestSize {
		return
	}
	var rec [journalRecord]byte
	binary.LittleEndian.PutUint32(rec[:4], n)
	copy(rec[4:], d)
	if _, err := t.journal.Write(rec[:]); err != nil {
		t.s.log.Debug("append to piece journal", "task_id", t.meta.TaskID, "err", err)
	}
}

// resetJournalLocked empties the journal once meta.json holds its pieces.
func (t *Task) resetJournalLocked() {
	if t.journal != nil {
		_ = t.journal.Truncate(0)
	}
}

// replayJournal adds the pieces recorded in dir's journal to m (whose shape
// must be known) and reports whether it added any.
func replayJournal(dir string, m *Meta) bool {
	if m.PieceSize == 0 {
		return false
	}
	b, err := os.ReadFile(filepath.Join(dir, journalFile))
	if err != nil {
		return false
	}
	limit := uint32(journalMaxPiece)
	if m.ContentLength >= 0 {
		limit = core.PieceCount(m.ContentLength, m.PieceSize)
	}
	held := make(map[uint32]bool, len(m.Pieces))
	for _, n := range m.Pieces {
		held[n] = true
	}
	added := false
	for ; len(b) >= journalRecord; b = b[journalRecord:] {
		n := binary.LittleEndian.Uint32(b)
		if n >= limit {
			continue
		}
		for int(n) >= len(m.PieceDigests) {
			m.PieceDigests = append(m.PieceDigests, nil)
		}
		m.PieceDigests[n] = bytes.Clone(b[4:journalRecord])
		if !held[n] {
			held[n] = true
			m.Pieces = append(m.Pieces, n)
			added = true
		}
	}
	return added
}
