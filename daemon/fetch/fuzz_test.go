package fetch

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"
	"time"
)

// FuzzCoreEvents drives a core with arbitrary event sequences — parents
// announcing any piece numbers (a lying parent), transfers ending in any
// order, scheduler messages, time jumps — and checks that it never panics
// and keeps its books: requests and their bytes counted once (with and
// without a downlink bounding them), never more pieces held than
// the task has, nothing but timers after the download ended.
func FuzzCoreEvents(f *testing.F) {
	f.Add([]byte{8, 0, 7, 1, 0, 0xff, 1, 1, 3, 0, 3, 1, 4, 2, 5, 9})
	f.Add([]byte{3, 0, 3, 1, 2, 1, 0, 0, 0, 0, 4, 0, 3, 5, 200, 7, 1})
	f.Add([]byte{40, 0, 3, 1, 0, 0x7f, 1, 1, 0x7f, 3, 0, 3, 0, 3, 0, 2, 1, 5, 255, 5, 255, 8, 3, 9})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 {
			return
		}
		n := int(b[0])%64 + 1
		// The first byte's top bits: the downlink known, none or 100-300 kB/s.
		down := float64(b[0]/64) * 1e5
		b = b[1:]
		c := New(Config{TaskID: "t", PeerID: "me", Rand: rand.New(rand.NewPCG(1, 1)), ParentFailures: 2, Downlink: down})
		now := t0
		ended, completed := false, false
		next := func() byte {
			if len(b) == 0 {
				return 0
			}
			v := b[0]
			b = b[1:]
			return v
		}
		ids := []string{"a", "b", "c", "me"}
		var reqs []ActRequest
		step := func(ev Event) {
			if _, ok := ev.(EvContentCorrupt); ok && completed {
				// After ActComplete the content may fail its digest: the
				// core fails or fetches it again.
				ended, completed = false, false
			}
			acts := c.Step(now, ev)
			for _, a := range acts {
				switch a := a.(type) {
				case ActRequest:
					reqs = append(reqs, a)
				case ActFailed, ActComplete:
					if ended {
						t.Fatalf("%T after the download ended", a)
					}
					ended = true
					_, completed = a.(ActComplete)
				case ActSetTimer, ActContentCorrupt, ActReset, ActStartOrigin:
				default:
					if ended {
						t.Fatalf("%T after the download ended", a)
					}
				}
			}
			total, bytes := 0, int64(0)
			for _, rs := range c.reqs {
				for _, r := range rs {
					if !r.active {
						t.Fatal("an ended request is still listed")
					}
					bytes += r.size
				}
				total += len(rs)
			}
			if total != c.nreq || bytes != c.nbytes {
				t.Fatalf("%d requests of %d bytes listed, %d of %d counted", total, bytes, c.nreq, c.nbytes)
			}
			if held, count := c.Held(); c.length >= 0 && held > count {
				t.Fatalf("%d of %d pieces held", held, count)
			}
		}
		step(EvStart{Length: int64(n) * ps, PieceSize: ps, AllTrusted: next()%2 == 0})
		for len(b) > 0 {
			now = now.Add(time.Duration(next()) * 10 * time.Millisecond)
			switch next() % 10 {
			case 0:
				var ps []Parent
				for i, id := range ids {
					if next()&(1<<i) != 0 {
						ps = append(ps, Parent{ID: id, Seed: i == 2, UploadBps: float64(next()) * 1e5, ShareBps: float64(next()%3) * 1e5})
					}
				}
				step(EvParents{Parents: ps})
			case 1:
				var pieces, relaying []uint32
				k := int(next() % 8)
				for range k {
					var v [4]byte
					v[0], v[1], v[2] = next(), next(), next()
					if next()%4 == 0 {
						v[3] = next()
					}
					pieces = append(pieces, binary.LittleEndian.Uint32(v[:]))
					relaying = append(relaying, uint32(next()))
				}
				step(EvParentPieces{Parent: ids[next()%4], Pieces: pieces, Relaying: relaying, Done: next()%5 == 0})
			case 2:
				step(EvParentGone{Parent: ids[next()%4], Err: errors.New("gone")})
			case 3, 4:
				if len(reqs) == 0 {
					continue
				}
				i := int(next()) % len(reqs)
				r := reqs[i]
				reqs = append(reqs[:i], reqs[i+1:]...)
				if next()%3 == 0 {
					step(EvPieceFailed{Parent: r.Parent, Piece: r.Piece, Kind: Kind(next() % 6), Err: errors.New("x"), Req: r.Req})
				} else {
					step(EvPieceDone{Parent: r.Parent, Piece: r.Piece, Bytes: r.Size, Start: now.Add(-time.Millisecond), End: now, Req: r.Req})
				}
			case 5:
				now = now.Add(time.Duration(next()) * 100 * time.Millisecond)
				step(EvTick{})
			case 6:
				step(EvTaskInfo{Length: int64(n) * ps, PieceSize: ps, Trusted: []uint32{uint32(next()), uint32(next())}})
			case 7:
				switch next() % 4 {
				case 0:
					step(EvSchedulerLost{})
				case 1:
					step(EvBackToSource{})
				case 2:
					step(EvFail{})
				default:
					step(EvStreaming{On: next()%2 == 0})
				}
			case 8:
				step(EvOriginPiece{Piece: uint32(next()), Bytes: ps})
			case 9:
				if next()%2 == 0 {
					step(EvOriginDone{})
				} else {
					step(EvContentCorrupt{Err: errors.New("digest")})
				}
			}
		}
	})
}
