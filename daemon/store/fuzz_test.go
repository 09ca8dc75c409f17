package store

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/damselfly-io/damselfly/core"
)

// FuzzReplayJournal: a journal of any bytes (torn, damaged, hostile) adds
// only pieces inside the task, each once, each with a full digest equal to
// the last record for it, and never makes tables beyond the task's pieces.
func FuzzReplayJournal(f *testing.F) {
	rec := func(n uint32, fill byte) []byte {
		b := make([]byte, journalRecord)
		binary.LittleEndian.PutUint32(b, n)
		for i := 4; i < len(b); i++ {
			b[i] = fill
		}
		return b
	}
	two := append(rec(0, 1), rec(1, 2)...)
	f.Add(two, int64(2*core.MinPieceSize), uint32(core.MinPieceSize))
	f.Add(append(two, rec(0, 3)[:10]...), int64(-1), uint32(core.MaxPieceSize))            // torn tail
	f.Add(append(rec(0xffffffff, 9), rec(7, 9)...), int64(100), uint32(core.MinPieceSize)) // beyond the task
	f.Add(append(rec(journalMaxPiece, 1), rec(journalMaxPiece-1, 1)...), int64(-1), uint32(core.MaxPieceSize))
	f.Add([]byte{}, int64(0), uint32(core.MinPieceSize))
	f.Add(append(rec(3, 1), rec(3, 2)...), int64(1<<30), uint32(core.MaxPieceSize)) // repeated piece: last wins
	f.Fuzz(func(t *testing.T, journal []byte, length int64, pieceSize uint32) {
		if length < -1 || length > 1<<34 {
			length = length%(1<<34+2) - 1
			if length < -1 {
				length = -length - 2
			}
		}
		pieceSize = max(core.MinPieceSize, min(pieceSize, core.MaxPieceSize))
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, journalFile), journal, 0o600); err != nil {
			t.Fatal(err)
		}
		m := &Meta{ContentLength: length, PieceSize: pieceSize}
		added := replayJournal(dir, m)
		limit := uint32(journalMaxPiece)
		if length >= 0 {
			limit = core.PieceCount(length, pieceSize)
		}
		if added != (len(m.Pieces) > 0) {
			t.Fatalf("added=%v with %d pieces", added, len(m.Pieces))
		}
		if len(m.PieceDigests) > int(limit) {
			t.Fatalf("%d digests for a task of %d pieces", len(m.PieceDigests), limit)
		}
		last := map[uint32][]byte{}
		for b := journal; len(b) >= journalRecord; b = b[journalRecord:] {
			last[binary.LittleEndian.Uint32(b)] = b[4:journalRecord]
		}
		seen := map[uint32]bool{}
		for _, n := range m.Pieces {
			if n >= limit || seen[n] {
				t.Fatalf("piece %d (limit %d, seen %v)", n, limit, seen[n])
			}
			seen[n] = true
			if d := m.PieceDigests[n]; len(d) != core.DigestSize || !bytes.Equal(d, last[n]) {
				t.Fatalf("piece %d digest %x, want the last record's %x", n, d, last[n])
			}
		}
	})
}
