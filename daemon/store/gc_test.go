package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/core"
)

// clock is a settable time source for LRU and TTL.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func (c *clock) add(d time.Duration) { c.t = c.t.Add(d) }

func openClocked(t *testing.T) (*Store, *clock, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(context.Background(), dir, testLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s.now = c.now
	return s, c, dir
}

// completeTask stores a complete task of n bytes, used at the clock's time.
func completeTask(t *testing.T, s *Store, id string, n int) *Task {
	t.Helper()
	data := content(n)
	task := fill(t, s, id, data, 16<<10, seq(core.PieceCount(int64(n), 16<<10)))
	if err := task.Commit(); err != nil {
		t.Fatal(err)
	}
	task.Touch()
	return task
}

func seq(n uint32) []uint32 {
	out := make([]uint32, n)
	for i := range out {
		out[i] = uint32(i)
	}
	return out
}

func ids(ev []Eviction) []string {
	var out []string
	for _, e := range ev {
		out = append(out, e.TaskID)
	}
	return out
}

func TestGCWatermarksEvictLeastRecentlyUsed(t *testing.T) {
	s, c, _ := openClocked(t)
	const size = 64 << 10
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		completeTask(t, s, id, size)
		c.add(time.Minute)
	}
	// b is read again: it becomes the most recently used
	s.tasks["b"].Touch()
	per := diskBytes(s.tasks["a"].DataPath())
	if per < size {
		t.Fatalf("data file takes %d bytes on disk, want ≥ %d", per, size)
	}

	// Below the high watermark nothing goes.
	res, err := s.GC(Policy{HighBytes: 5 * per, LowBytes: 2 * per}, nil)
	if err != nil || len(res.Evicted) != 0 {
		t.Fatalf("GC below the high watermark evicted %v (err %v)", ids(res.Evicted), err)
	}
	// Above it, LRU first down to the low watermark; d is busy (a download
	// in progress) and is skipped.
	busy := func(id string) bool { return id == "c" }
	res, err = s.GC(Policy{HighBytes: 4 * per, LowBytes: 2 * per}, busy)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(res.Evicted), []string{"a", "d", "e"}; !slices.Equal(got, want) {
		t.Fatalf("evicted %v, want %v (LRU order, busy c skipped)", got, want)
	}
	if res.Skipped != 1 || res.Tasks != 2 || res.Bytes != 2*per {
		t.Fatalf("after GC: %+v", res)
	}
	if got := SortedIDs(s.List()); !slices.Equal(got, []string{"b", "c"}) {
		t.Fatalf("left %v, want [b c]", got)
	}
	for _, id := range []string{"a", "d", "e"} {
		if _, err := os.Stat(filepath.Join(s.dir, id)); !os.IsNotExist(err) {
			t.Fatalf("evicted task %s left files: %v", id, err)
		}
	}
}

func TestGCNeverEvictsHeldTask(t *testing.T) {
	s, c, _ := openClocked(t)
	a := completeTask(t, s, "a", 64<<10)
	c.add(time.Minute)
	completeTask(t, s, "b", 64<<10)
	c.add(time.Minute)
	release := a.Hold() // a reader: a is also the most recent use now
	c.add(time.Minute)
	s.tasks["b"].Touch()

	res, err := s.GC(Policy{HighBytes: 1, LowBytes: 1, TTL: time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(res.Evicted); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("evicted %v, want only the unheld b", got)
	}
	if got, err := a.ReadPiece(0); err != nil || !bytes.Equal(got, content(64 << 10)[:16<<10]) {
		t.Fatalf("held task unreadable after GC: %v", err)
	}
	release()
	release() // idempotent
	res, _ = s.GC(Policy{HighBytes: 1, LowBytes: 1}, nil)
	if got := ids(res.Evicted); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("after release evicted %v, want [a]", got)
	}
}

func TestGCTTL(t *testing.T) {
	s, c, _ := openClocked(t)
	completeTask(t, s, "old", 16<<10)
	c.add(2 * time.Hour)
	completeTask(t, s, "new", 16<<10)
	c.add(30 * time.Minute)
	res, err := s.GC(Policy{TTL: time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Evicted) != 1 || res.Evicted[0].TaskID != "old" || res.Evicted[0].Reason != "ttl" {
		t.Fatalf("TTL evicted %+v, want old", res.Evicted)
	}
	// Access survives a restart: the record carries it.
	if err := s.tasks["new"].Flush(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(context.Background(), s.dir, testLog())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	n, ok := s2.Get("new")
	if !ok {
		t.Fatal("task lost across reload")
	}
	a2, _ := n.accessed(0)
	a1, _ := s.tasks["new"].accessed(0)
	if !a2.Equal(a1) {
		t.Fatal("last access lost across reload")
	}
}

// A task's own TTL (a dfcache entry imported with --ttl) wins over the
// cache's, both ways, and survives a reload.
func TestGCTaskTTL(t *testing.T) {
	s, c, dir := openClocked(t)
	short := completeTask(t, s, "short", 16<<10)
	long := completeTask(t, s, "long", 16<<10)
	completeTask(t, s, "default", 16<<10)
	if err := short.SetTTL(10 * time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := long.SetTTL(48 * time.Hour); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(context.Background(), dir, testLog())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if m := s2.tasks["long"].Meta(); m.TTL != 48*time.Hour {
		t.Fatalf("own TTL after reload: %v", m.TTL)
	}
	c.add(20 * time.Minute)
	res, _ := s.GC(Policy{TTL: time.Hour}, nil)
	if got := ids(res.Evicted); !slices.Equal(got, []string{"short"}) {
		t.Fatalf("after 20 min evicted %v, want [short]", got)
	}
	c.add(2 * time.Hour)
	res, _ = s.GC(Policy{TTL: time.Hour}, nil)
	if got := ids(res.Evicted); !slices.Equal(got, []string{"default"}) {
		t.Fatalf("after 2 h evicted %v, want [default] (long has 48 h)", got)
	}
}

func TestGCFileSystemPercent(t *testing.T) {
	s, c, _ := openClocked(t)
	for _, id := range []string{"a", "b", "c"} {
		completeTask(t, s, id, 64<<10)
		c.add(time.Minute)
	}
	per := diskBytes(s.tasks["a"].DataPath())
	// A file system of 10 units, 9 used (3 of them ours): 90 %.
	s.statfs = func(string) (int64, int64, error) { return 10 * per, 9 * per, nil }
	res, err := s.GC(Policy{HighPercent: 85, LowPercent: 75}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(res.Evicted); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("evicted %v, want [a b] (90%% → 70%%)", got)
	}
	// Writes may now take it to 85 %: 1.5 units, at least the floor (1 MiB
	// for so small a file system).
	if b := s.budget.Load(); b != max(int64(8.5*float64(per))-7*per, 1<<20) {
		t.Fatalf("write budget %d", b)
	}
	s.statfs = func(string) (int64, int64, error) { return 0, 0, errors.New("statfs broke") }
	if _, err := s.GC(Policy{HighPercent: 85, LowPercent: 75}, nil); err == nil {
		t.Fatal("statfs failure not reported")
	}
}

func TestWriteCrossingHighWatermarkKicksGC(t *testing.T) {
	s, _, _ := openClocked(t)
	select {
	case <-s.GCKicks():
		t.Fatal("kick before any write")
	default:
	}
	s.budget.Store(20 << 10)
	fill(t, s, "a", content(16<<10), 16<<10, []uint32{0})
	select {
	case <-s.GCKicks():
		t.Fatal("kick while below the watermark")
	default:
	}
	fill(t, s, "b", content(16<<10), 16<<10, []uint32{0})
	select {
	case <-s.GCKicks():
	default:
		t.Fatal("write across the high watermark did not kick GC")
	}
}

func TestDeleteHeldTaskDefersRemoval(t *testing.T) {
	s, _, dir := openClocked(t)
	data := content(64 << 10)
	a := completeTask(t, s, "a", len(data))
	release := a.Hold()
	if err := s.Delete("a"); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Get("a"); ok {
		t.Fatal("deleted task still listed")
	}
	if _, err := os.Stat(filepath.Join(dir, "a")); !os.IsNotExist(err) {
		t.Fatal("deleted task's directory still under its name")
	}
	// The reader goes on with the bytes it started with, even when the
	// task is fetched again under the same ID meanwhile.
	again := completeTask(t, s, "a", 32<<10)
	b := make([]byte, len(data))
	if _, err := a.Data().ReadAt(b, 0); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("held reader after delete: %v", err)
	}
	release()
	if ents, _ := filepath.Glob(filepath.Join(dir, "a.deleted-*")); len(ents) != 0 {
		t.Fatalf("files of the deleted task left after release: %v", ents)
	}
	if got, err := again.ReadPiece(1); err != nil || !bytes.Equal(got, content(32 << 10)[16<<10:]) {
		t.Fatalf("new task of the same ID damaged by the old one's release: %v", err)
	}
	if err := s.Delete("nope"); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("delete of unknown task: %v", err)
	}
}

// A daemon that stopped while a deleted task was still held leaves its files
// aside; they go at the next start.
func TestOpenRemovesLeftoverDeletedTasks(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "x.deleted-1"), 0o755)
	os.WriteFile(filepath.Join(dir, "x.deleted-1", dataFile), []byte("x"), 0o644)
	s, err := Open(context.Background(), dir, testLog())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(filepath.Join(dir, "x.deleted-1")); !os.IsNotExist(err) {
		t.Fatal("leftover of a deleted task kept")
	}
}
