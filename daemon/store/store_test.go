package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/damselfly-io/damselfly/core"
)

func testLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func content(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

func fill(t *testing.T, s *Store, id string, data []byte, ps uint32, pieces []uint32) *Task {
	t.Helper()
	task, _, err := s.GetOrCreate(Meta{TaskID: id, URL: "http://o/" + id, ContentLength: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := task.SetShape(int64(len(data)), ps); err != nil {
		t.Fatal(err)
	}
	for _, n := range pieces {
		off, size := core.PieceRange(n, int64(len(data)), ps)
		b := data[off : off+size]
		if err := task.WritePiece(n, b, core.PieceDigest(b)); err != nil {
			t.Fatal(err)
		}
	}
	return task
}

func TestReloadKeepsVerifiedPieces(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(context.Background(), dir, testLog())
	if err != nil {
		t.Fatal(err)
	}
	data := content(10*1024 + 17)
	const ps = 1024
	// all digests known (as from the scheduler), only some pieces held
	task := fill(t, s, "a", data, ps, []uint32{0, 3, 10})
	ds := map[uint32][]byte{}
	for n := uint32(0); n < core.PieceCount(int64(len(data)), ps); n++ {
		off, size := core.PieceRange(n, int64(len(data)), ps)
		ds[n] = core.PieceDigest(data[off : off+size])
	}
	task.SetDigests(ds)
	full := fill(t, s, "b", data, ps, []uint32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10})
	if err := full.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := Open(context.Background(), dir, testLog())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	a, ok := s2.Get("a")
	if !ok {
		t.Fatal("task a lost on reload")
	}
	if got := a.Pieces(); len(got) != 3 || got[0] != 0 || got[1] != 3 || got[2] != 10 {
		t.Fatalf("reloaded pieces %v, want [0 3 10]", got)
	}
	if a.Complete() {
		t.Fatal("partial task reloaded as complete")
	}
	if _, ok := a.PieceDigest(5); !ok {
		t.Fatal("trusted digests of missing pieces lost")
	}
	b, ok := s2.Get("b")
	if !ok || !b.Complete() {
		t.Fatal("complete task not reloaded as complete")
	}
	got, err := os.ReadFile(b.DataPath())
	if err != nil || !bytes.Equal(got, data) {
		t.Fatal("complete task data differs after reload")
	}
}

func TestReloadDropsCorruptPieceAndTruncatedTask(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(context.Background(), dir, testLog())
	data := content(4096)
	fill(t, s, "a", data, 1024, []uint32{0, 1, 2})
	full := fill(t, s, "b", data, 1024, []uint32{0, 1, 2, 3})
	if err := full.Commit(); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// flip a byte of piece 1 of a, truncate b's data file (as a crash or a
	// disk error would)
	f, _ := os.OpenFile(filepath.Join(dir, "a", dataFile), os.O_RDWR, 0)
	f.WriteAt([]byte{0xff ^ data[1500]}, 1500)
	f.Close()
	os.Truncate(filepath.Join(dir, "b", dataFile), 1000)
	// and a task whose meta record is half written
	os.MkdirAll(filepath.Join(dir, "c"), 0o755)
	os.WriteFile(filepath.Join(dir, "c", metaFile), []byte(`{"task_id":"c","content_le`), 0o644)
	os.WriteFile(filepath.Join(dir, "c", dataFile), data, 0o644)

	s2, err := Open(context.Background(), dir, testLog())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	a, ok := s2.Get("a")
	if !ok {
		t.Fatal("task a dropped entirely")
	}
	if got := a.Pieces(); len(got) != 2 || got[0] != 0 || got[1] != 2 {
		t.Fatalf("pieces after corruption %v, want [0 2]", got)
	}
	if _, err := a.ReadPiece(1); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("corrupt piece readable: %v", err)
	}
	// the truncated task is re-verified: nothing of it survives (its first
	// piece is cut short too), and it is certainly not complete
	if b, ok := s2.Get("b"); ok && (b.Complete() || b.Count() != 0) {
		t.Fatalf("truncated complete task reloaded with %d pieces, complete=%v", b.Count(), b.Complete())
	}
	if _, ok := s2.Get("c"); ok {
		t.Fatal("task with half-written meta was reloaded")
	}
	if _, err := os.Stat(filepath.Join(dir, "c")); !os.IsNotExist(err) {
		t.Fatal("unusable task directory left behind")
	}
}

func TestWritePieceChecks(t *testing.T) {
	s, _ := Open(context.Background(), t.TempDir(), testLog())
	defer s.Close()
	task, _, _ := s.GetOrCreate(Meta{TaskID: "x", ContentLength: -1})
	if err := task.WritePiece(0, []byte("abc"), nil); err == nil {
		t.Fatal("piece accepted before the shape is known")
	}
	task.SetShape(10, 4)
	if err := task.WritePiece(2, []byte("abc"), nil); err == nil {
		t.Fatal("short piece accepted") // last piece is 2 bytes
	}
	if err := task.SetShape(11, 4); err == nil {
		t.Fatal("shape change accepted")
	}
	if err := task.Commit(); err == nil {
		t.Fatal("commit of an incomplete task accepted")
	}
	for n, b := range [][]byte{[]byte("0123"), []byte("4567"), []byte("89")} {
		if err := task.WritePiece(uint32(n), b, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := task.Commit(); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(task.DataPath())
	if string(got) != "0123456789" {
		t.Fatalf("data %q", got)
	}
}

func TestChangedNotifies(t *testing.T) {
	s, _ := Open(context.Background(), t.TempDir(), testLog())
	defer s.Close()
	task, _, _ := s.GetOrCreate(Meta{TaskID: "x", ContentLength: -1})
	ch := task.Changed()
	task.SetShape(4, 4)
	select {
	case <-ch:
	default:
		t.Fatal("shape change not notified")
	}
	ch = task.Changed()
	task.WritePiece(0, []byte("abcd"), nil)
	select {
	case <-ch:
	default:
		t.Fatal("piece not notified")
	}
}

func BenchmarkWritePiece(b *testing.B) {
	s, _ := Open(context.Background(), b.TempDir(), testLog())
	defer s.Close()
	const ps = 4 << 20
	data := content(ps)
	dg := core.PieceDigest(data)
	b.SetBytes(ps)
	b.ReportAllocs()
	task, _, _ := s.GetOrCreate(Meta{TaskID: "bench", ContentLength: -1})
	task.SetShape(int64(ps)*int64(b.N), ps)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := task.WritePiece(uint32(i), data, dg); err != nil {
			b.Fatal(err)
		}
	}
}

// A task committed but not yet fsynced when the daemon died is verified
// piece by piece on reload instead of being trusted by its size.
func TestReloadVerifiesUnsyncedCompleteTask(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(context.Background(), dir, testLog())
	data := content(4096)
	full := fill(t, s, "b", data, 1024, []uint32{0, 1, 2, 3})
	if err := full.Commit(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	mp := filepath.Join(dir, "b", metaFile)
	b, _ := os.ReadFile(mp)
	if !bytes.Contains(b, []byte(`"synced":true`)) {
		t.Fatalf("close did not record the sync: %s", b)
	}
	os.WriteFile(mp, bytes.Replace(b, []byte(`,"synced":true`), nil, 1), 0o644)
	f, _ := os.OpenFile(filepath.Join(dir, "b", dataFile), os.O_RDWR, 0)
	f.WriteAt([]byte{^data[3000]}, 3000)
	f.Close()

	s2, err := Open(context.Background(), dir, testLog())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	task, ok := s2.Get("b")
	if !ok {
		t.Fatal("task dropped")
	}
	if task.Complete() {
		t.Fatal("unsynced task with a corrupt piece reloaded as complete")
	}
	if got := task.Pieces(); len(got) != 3 || got[2] != 3 {
		t.Fatalf("pieces %v, want [0 1 3]", got)
	}
}

// Pieces stored since meta.json was last written survive a crash through the
// journal; a torn record and a piece whose bytes were lost are dropped.
func TestReloadAfterCrashKeepsJournaledPieces(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(context.Background(), dir, testLog())
	if err != nil {
		t.Fatal(err)
	}
	data := content(10*1024 + 17)
	// Written within the flush interval: meta.json knows the shape only.
	fill(t, s, "a", data, 1024, []uint32{0, 3, 4, 10})
	b, _ := os.ReadFile(filepath.Join(dir, "a", metaFile))
	if bytes.Contains(b, []byte(`"pieces"`)) {
		t.Skipf("meta.json already lists the pieces, nothing to replay: %s", b)
	}
	// A crash: no Close. The last record is torn, and piece 4's bytes never
	// reached the file.
	jf, _ := os.OpenFile(filepath.Join(dir, "a", journalFile), os.O_WRONLY|os.O_APPEND, 0)
	jf.Write([]byte{3, 0, 0})
	jf.Close()
	df, _ := os.OpenFile(filepath.Join(dir, "a", dataFile), os.O_RDWR, 0)
	df.WriteAt(make([]byte, 1024), 4*1024)
	df.Close()

	s2, err := Open(context.Background(), dir, testLog())
	if err != nil {
		t.Fatal(err)
	}
	a, ok := s2.Get("a")
	if !ok {
		t.Fatal("task lost")
	}
	if got := a.Pieces(); len(got) != 3 || got[0] != 0 || got[1] != 3 || got[2] != 10 {
		t.Fatalf("pieces after crash %v, want [0 3 10]", got)
	}
	if got, err := a.ReadPiece(10); err != nil || !bytes.Equal(got, data[10*1024:]) {
		t.Fatalf("piece 10 after crash: %v", err)
	}
	// Written to meta.json on close, the journal is emptied.
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(dir, "a", journalFile)); err != nil || st.Size() != 0 {
		t.Fatalf("journal after a clean close: %v, %v", st, err)
	}
	s3, _ := Open(context.Background(), dir, testLog())
	defer s3.Close()
	if a, _ := s3.Get("a"); a == nil || len(a.Pieces()) != 3 {
		t.Fatal("pieces lost after a clean close")
	}
}

// A complete task whose data file is modified in place (as a hard-linked
// output edited by a user would be) is caught before it is served again.
func TestCheckIntact(t *testing.T) {
	s, _ := Open(context.Background(), t.TempDir(), testLog())
	defer s.Close()
	data := content(4096)
	task := fill(t, s, "a", data, 1024, []uint32{0, 1, 2, 3})
	if err := task.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := task.CheckIntact(); err != nil {
		t.Fatalf("untouched task: %v", err)
	}
	time.Sleep(20 * time.Millisecond) // past the file system's timestamp granularity
	f, _ := os.OpenFile(task.DataPath(), os.O_RDWR, 0)
	f.WriteAt([]byte("XX"), 2048)
	f.Close()
	if err := task.CheckIntact(); !errors.Is(err, core.ErrDigestMismatch) {
		t.Fatalf("modified task: %v", err)
	}
	if task.Complete() || task.Has(2) || !task.Has(1) {
		t.Fatalf("after check: complete=%v pieces=%v", task.Complete(), task.Pieces())
	}
}

// waitCtimeTick returns once the file system's clock for inode change
// times has moved past path's ctime, so that a change made now shows.
func waitCtimeTick(t *testing.T, path string) {
	t.Helper()
	var ref unix.Stat_t
	if err := unix.Stat(path, &ref); err != nil {
		t.Fatal(err)
	}
	probe := filepath.Join(filepath.Dir(path), "probe")
	defer os.Remove(probe)
	for i := 0; i < 2000; i++ {
		if err := os.WriteFile(probe, []byte{byte(i)}, 0o600); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Stat(probe, &st); err != nil {
			t.Fatal(err)
		}
		if st.Ctim != ref.Ctim {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("the file system's ctime did not move")
}

// corruptKeepingMtime changes bytes of path in place and sets its
// modification time back, as a careless tool (or an attacker with utimes)
// would: size and mtime are unchanged, only the inode change time shows it.
func corruptKeepingMtime(t *testing.T, path string, off int64) {
	t.Helper()
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	waitCtimeTick(t, path)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 2)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0], b[1] = ^b[0], ^b[1]
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Chtimes(path, before.ModTime(), before.ModTime()); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(path)
	if !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() {
		t.Fatal("could not restore the mtime")
	}
}

// A piece corrupted on disk with the mtime restored is still caught: the
// inode change time differs from the one recorded at verification.
func TestCheckIntactMtimeRestored(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(context.Background(), dir, testLog())
	data := content(4096)
	task := fill(t, s, "a", data, 1024, []uint32{0, 1, 2, 3})
	if err := task.Commit(); err != nil {
		t.Fatal(err)
	}
	corruptKeepingMtime(t, task.DataPath(), 1024+10)
	if err := task.CheckIntact(); !errors.Is(err, core.ErrDigestMismatch) {
		t.Fatalf("corrupted task with its mtime restored: %v", err)
	}
	if task.Complete() || task.Has(1) || !task.Has(0) || !task.Has(2) {
		t.Fatalf("after check: complete=%v pieces=%v", task.Complete(), task.Pieces())
	}
	if _, err := task.ReadPiece(1); err == nil {
		t.Fatal("the corrupt piece is still readable")
	}
	// A clean re-verification records the new state: no second check.
	s.Close()

	// Reload: the same trick on a closed cache is caught when it opens.
	dir2 := t.TempDir()
	s2, _ := Open(context.Background(), dir2, testLog())
	task2 := fill(t, s2, "b", data, 1024, []uint32{0, 1, 2, 3})
	if err := task2.Commit(); err != nil {
		t.Fatal(err)
	}
	task2.syncData()
	s2.Close()
	corruptKeepingMtime(t, filepath.Join(dir2, "b", dataFile), 3*1024+1)
	s3, _ := Open(context.Background(), dir2, testLog())
	defer s3.Close()
	b, ok := s3.Get("b")
	if !ok {
		t.Fatal("task lost on reload")
	}
	if b.Complete() || b.Has(3) || !b.Has(0) {
		t.Fatalf("after reload: complete=%v pieces=%v", b.Complete(), b.Pieces())
	}
}

// The cache is private: directories 0700 and files 0600, and a cache left
// world-readable by an older version is tightened when it opens.
func TestCacheModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	s, _ := Open(context.Background(), dir, testLog())
	task := fill(t, s, "a", content(2048), 1024, []uint32{0, 1})
	if err := task.Commit(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	check := func() {
		t.Helper()
		err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			want := os.FileMode(0o600)
			if fi.IsDir() {
				want = 0o700
			}
			if fi.Mode().Perm() != want {
				t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	check()
	// As an older version left it.
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			mode := os.FileMode(0o644)
			if fi.IsDir() {
				mode = 0o755
			}
			_ = os.Chmod(p, mode)
		}
		return nil
	})
	s2, err := Open(context.Background(), dir, testLog())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	check()
	if a, ok := s2.Get("a"); !ok || !a.Complete() {
		t.Fatal("task lost when the cache was tightened")
	}
}

func TestNewPieces(t *testing.T) {
	s, _ := Open(context.Background(), t.TempDir(), testLog())
	defer s.Close()
	data := content(4096)
	task := fill(t, s, "a", data, 1024, []uint32{1, 3})
	var seen []bool
	if got := task.NewPieces(&seen); len(got) != 2 || got[0] != 1 || got[1] != 3 {
		t.Fatalf("first call %v, want [1 3]", got)
	}
	if got := task.NewPieces(&seen); len(got) != 0 {
		t.Fatalf("nothing new, got %v", got)
	}
	task.WritePiece(0, data[:1024], nil)
	if got := task.NewPieces(&seen); len(got) != 1 || got[0] != 0 {
		t.Fatalf("after piece 0: %v", got)
	}
}

// Every way a crash or a broken disk can damage a task's files ends in the
// damaged part being dropped at reload, never served.
func TestReloadDamagedFiles(t *testing.T) {
	data := content(8 * 1024)
	const ps = 1024
	cases := []struct {
		name   string
		damage func(t *testing.T, dir string)
		// want: pieces readable after reload; nil means the task is dropped
		want []uint32
	}{
		{"empty meta", func(t *testing.T, dir string) {
			os.Truncate(filepath.Join(dir, metaFile), 0)
		}, nil},
		{"garbage meta", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, metaFile), []byte("\x00\xff\x13garbage{"), 0o644)
		}, nil},
		{"meta of another task", func(t *testing.T, dir string) {
			b, _ := os.ReadFile(filepath.Join(dir, metaFile))
			os.WriteFile(filepath.Join(dir, metaFile), bytes.Replace(b, []byte(`"task_id":"a"`), []byte(`"task_id":"z"`), 1), 0o644)
		}, nil},
		{"data file missing", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, dataFile))
		}, nil},
		{"half-written new meta next to the old", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, metaFile+".tmp"), []byte(`{"task_id":"a","pieces":[0,1,2,3,4,5`), 0o644)
		}, []uint32{0, 1, 2, 5}},
		{"data truncated inside piece 2", func(t *testing.T, dir string) {
			os.Truncate(filepath.Join(dir, dataFile), 2*ps+100)
		}, []uint32{0, 1}},
		{"piece 5 zeroed", func(t *testing.T, dir string) {
			f, _ := os.OpenFile(filepath.Join(dir, dataFile), os.O_RDWR, 0)
			f.WriteAt(make([]byte, ps), 5*ps)
			f.Close()
		}, []uint32{0, 1, 2}},
		{"journal of garbage records", func(t *testing.T, dir string) {
			// piece numbers 1, 3 and 7 with made-up digests
			var b []byte
			for _, n := range []byte{1, 3, 7} {
				rec := make([]byte, journalRecord)
				rec[0] = n
				for i := 4; i < len(rec); i++ {
					rec[i] = byte(i) ^ n
				}
				b = append(b, rec...)
			}
			os.WriteFile(filepath.Join(dir, journalFile), b, 0o644)
		}, []uint32{0, 2, 5}},
		{"journal truncated mid-record", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, journalFile), []byte{3, 0, 0, 0, 1, 2}, 0o644)
		}, []uint32{0, 1, 2, 5}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(context.Background(), dir, testLog())
			if err != nil {
				t.Fatal(err)
			}
			fill(t, s, "a", data, ps, []uint32{0, 1, 2, 5})
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			tc.damage(t, filepath.Join(dir, "a"))
			s2, err := Open(context.Background(), dir, testLog())
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			a, ok := s2.Get("a")
			if tc.want == nil {
				if ok {
					t.Fatalf("damaged task reloaded with pieces %v", a.Pieces())
				}
				if _, err := os.Stat(filepath.Join(dir, "a")); !os.IsNotExist(err) {
					t.Fatal("damaged task's directory left behind")
				}
				return
			}
			if !ok {
				t.Fatal("task dropped entirely")
			}
			if got := a.Pieces(); !slices.Equal(got, tc.want) {
				t.Fatalf("pieces after reload %v, want %v", got, tc.want)
			}
			for n := uint32(0); n < 8; n++ {
				b, err := a.ReadPiece(n)
				if slices.Contains(tc.want, n) {
					if err != nil || !bytes.Equal(b, data[n*ps:(n+1)*ps]) {
						t.Fatalf("piece %d: %v", n, err)
					}
				} else if !errors.Is(err, core.ErrNotFound) {
					t.Fatalf("damaged or missing piece %d readable: %v", n, err)
				}
			}
		})
	}
}

// Reset forgets every piece and digest (a content that failed its digest is
// fetched again), and a reload does not bring them back; Private survives a
// reload and is readable without the lock.
func TestResetAndPrivate(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(context.Background(), dir, testLog())
	if err != nil {
		t.Fatal(err)
	}
	data := content(4*1024 + 5)
	task := fill(t, s, "a", data, 1024, []uint32{0, 1, 2, 3, 4})
	if task.Private() {
		t.Fatal("new task private")
	}
	if err := task.SetPrivate(); err != nil {
		t.Fatal(err)
	}
	ch := task.Changed()
	if err := task.Reset(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	default:
		t.Fatal("Reset did not notify")
	}
	if task.Count() != 0 || task.Has(0) || task.Resets() != 1 {
		t.Fatalf("after Reset: count %d, resets %d", task.Count(), task.Resets())
	}
	if _, ok := task.PieceDigest(0); ok {
		t.Fatal("digest kept after Reset")
	}
	if l, ps := task.Shape(); l != int64(len(data)) || ps != 1024 {
		t.Fatalf("shape changed by Reset: %d %d", l, ps)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(context.Background(), dir, testLog())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	a, ok := s2.Get("a")
	if !ok {
		t.Fatal("task lost on reload")
	}
	if a.Count() != 0 || !a.Private() {
		t.Fatalf("reloaded: %d pieces (want 0), private %v (want true)", a.Count(), a.Private())
	}
}
