// Package store is the daemon's on-disk cache: one directory per task with a
// data file written at piece offsets and a small metadata record. It owns
// durability and the rule that a piece is readable only once verified; it
// does not talk to the network.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/damselfly-io/damselfly/core"
)

const (
	dataFile = "data"
	metaFile = "meta.json"
)

// Meta is the persisted record of a task. Credentials are never part of it.
type Meta struct {
	TaskID      string `json:"task_id"`
	URL         string `json:"url"`
	Tag         string `json:"tag,omitempty"`
	Application string `json:"application,omitempty"`
	// FilteredQuery: query parameters left out of the task ID, so the task
	// spec (and its ID) can be rebuilt after a restart.
	FilteredQuery []string `json:"filtered_query,omitempty"`
	Digest        string   `json:"digest,omitempty"`
	ContentLength int64    `json:"content_length"` // -1 unknown
	PieceSize     uint32   `json:"piece_size"`
	PieceDigests  [][]byte `json:"piece_digests,omitempty"`
	Pieces        []uint32 `json:"pieces,omitempty"` // verified pieces held
	Complete      bool     `json:"complete"`
	// Synced: the data file was fsynced after Complete. A complete task that
	// was not synced when the daemon stopped is verified piece by piece on reload.
	Synced bool `json:"synced,omitempty"`
	// DataMtime is the data file's modification time (Unix ns) when it was
	// last known good; a different one means something wrote to it (e.g. a
	// hard-linked dfget output edited in place) and the pieces are re-verified.
	DataMtime int64 `json:"data_mtime,omitempty"`
	// DataStamp is the data file's identity and change times when it was
	// last known good (complete tasks). Any difference — including the
	// inode change time, which utimes cannot set back — means the file may
	// have changed, and its pieces are verified again before one is served.
	DataStamp  *Stamp    `json:"data_stamp,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	AccessedAt time.Time `json:"accessed_at"`
	// TTL, when set, replaces the cache's TTL for this task (e.g. a dfcache
	// entry imported with --ttl).
	TTL time.Duration `json:"ttl,omitempty"`
	// Private: fetched with credentials. The upload port serves its pieces
	// only to peers with a token the scheduler issued for it, and a local
	// request without credentials is not answered from the cache.
	Private bool `json:"private,omitempty"`
	// Version is the object version the task ID names (an s3:// object's
	// ETag, sent as the spec's If-Match header: core.SpecVersion), so the
	// spec can be rebuilt after a restart; empty for other URLs.
	Version string `json:"version,omitempty"`
}

// Stamp identifies a data file's state: device, inode, size, and the
// modification and inode change times (Unix ns).
type Stamp struct {
	Dev   uint64 `json:"dev"`
	Ino   uint64 `json:"ino"`
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime"`
	Ctime int64  `json:"ctime"`
}

func stampOf(st *unix.Stat_t) *Stamp {
	return &Stamp{Dev: st.Dev, Ino: st.Ino, Size: st.Size,
		Mtime: st.Mtim.Sec*1e9 + st.Mtim.Nsec, Ctime: st.Ctim.Sec*1e9 + st.Ctim.Nsec}
}

// statFile returns the stamp of f's file.
func statFile(f *os.File) (*Stamp, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return stampOf(&st), nil
}

// statPath returns the stamp of the file at path.
func statPath(path string) (*Stamp, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	return stampOf(&st), nil
}

// Modes of the cache: only the daemon's user reads or writes it (cached
// content may be private; local users get it through the local API, with
// their own rights).
const (
	dirMode  = 0o700
	fileMode = 0o600
)

// Store is a directory of tasks.
type Store struct {
	dir string
	log *slog.Logger

	mu    sync.Mutex
	tasks map[string]*Task

	// budget is how many bytes may still be written before a GC watermark
	// is crossed (see GC); a write that takes it to zero or below kicks GC.
	budget atomic.Int64
	kick   chan struct{}
	// now and statfs are the clock and the file system query, for tests.
	now    func() time.Time
	statfs func(dir string) (total, used int64, err error)
}

// Open opens (creating) the store at dir and reloads the tasks found there.
// Pieces of incomplete tasks are re-verified against their digests; anything
// that does not check out is dropped, never served.
func Open(ctx context.Context, dir string, log *slog.Logger) (*Store, error) {
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, fmt.Errorf("create store dir %s: %w", dir, err)
	}
	if err := tighten(dir, log); err != nil {
		return nil, err
	}
	s := &Store{dir: dir, log: log, tasks: map[string]*Task{}, kick: make(chan struct{}, 1), now: time.Now, statfs: statfs}
	s.budget.Store(math.MaxInt64)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read store dir %s: %w", dir, err)
	}
	for _, e := range ents {
		if !e.IsDir() || ctx.Err() != nil {
			continue
		}
		if strings.Contains(e.Name(), ".deleted-") {
			// deleted while held when the daemon stopped
			_ = os.RemoveAll(filepath.Join(dir, e.Name()))
			continue
		}
		t, err := s.load(e.Name())
		if err != nil {
			log.Warn("dropping unreadable cached task", "task_id", e.Name(), "err", err)
			_ = os.RemoveAll(filepath.Join(dir, e.Name()))
			continue
		}
		s.tasks[t.meta.TaskID] = t
	}
	return s, nil
}

// tighten makes a cache created by an older version private: the store
// directory and task directories 0700, their files 0600.
func tighten(dir string, log *slog.Logger) error {
	if err := os.Chmod(dir, dirMode); err != nil {
		return fmt.Errorf("restrict store dir %s: %w", dir, err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read store dir %s: %w", dir, err)
	}
	n := 0
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		tdir := filepath.Join(dir, e.Name())
		if fi, err := e.Info(); err == nil && fi.Mode().Perm() != dirMode {
			_ = os.Chmod(tdir, dirMode)
			n++
		}
		files, err := os.ReadDir(tdir)
		if err != nil {
			continue
		}
		for _, f := range files {
			if fi, err := f.Info(); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm() != fileMode {
				_ = os.Chmod(filepath.Join(tdir, f.Name()), fileMode)
			}
		}
	}
	if n > 0 {
		log.Info("cache made private (directories 0700, files 0600)", "dir", dir, "tasks", n)
	}
	return nil
}

func (s *Store) load(id string) (*Task, error) {
	tdir := filepath.Join(s.dir, id)
	b, err := os.ReadFile(filepath.Join(tdir, metaFile))
	if err != nil {
		return nil, fmt.Errorf("read meta: %w", err)
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("parse meta: %w", err)
	}
	if m.TaskID != id {
		return nil, fmt.Errorf("meta names task %q in dir %q", m.TaskID, id)
	}
	f, err := os.OpenFile(filepath.Join(tdir, dataFile), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open data: %w", err)
	}
	replayed := !m.Complete && replayJournal(tdir, &m)
	t := newTask(s, tdir, f, m)
	if err := t.verifyOnLoad(); err != nil {
		f.Close()
		return nil, err
	}
	t.dirty = t.dirty || replayed
	t.journal = openJournal(tdir, false)
	return t, nil
}

// Get returns the task if the store holds it.
func (s *Store) Get(id string) (*Task, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	return t, ok
}

// GetOrCreate returns the task, creating an empty one from m if absent.
func (s *Store) GetOrCreate(m Meta) (*Task, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tasks[m.TaskID]; ok {
		return t, false, nil
	}
	tdir := filepath.Join(s.dir, m.TaskID)
	if err := os.MkdirAll(tdir, dirMode); err != nil {
		return nil, false, s.noSpace(fmt.Errorf("create task dir: %w", err))
	}
	f, err := os.OpenFile(filepath.Join(tdir, dataFile), os.O_RDWR|os.O_CREATE|os.O_TRUNC, fileMode)
	if err != nil {
		_ = os.RemoveAll(tdir)
		return nil, false, s.noSpace(fmt.Errorf("create data file: %w", err))
	}
	now := s.now()
	m.CreatedAt, m.AccessedAt = now, now
	m.Pieces, m.Complete = nil, false
	if m.ContentLength == 0 && m.PieceSize == 0 {
		m.ContentLength = -1
	}
	t := newTask(s, tdir, f, m)
	t.journal = openJournal(tdir, true)
	if err := t.persist(); err != nil {
		t.close()
		_ = os.RemoveAll(tdir)
		return nil, false, s.noSpace(err)
	}
	s.tasks[m.TaskID] = t
	return t, true, nil
}

// Delete removes a task and its files. The task leaves the store at once (no
// new reader finds it); while it is held (see Task.Hold) its files move aside
// and are removed when the last hold is released, so a reader in progress
// finishes with the bytes it started with.
func (s *Store) Delete(id string) error {
	s.mu.Lock()
	t, ok := s.tasks[id]
	delete(s.tasks, id)
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("task %s: %w", id, core.ErrNotFound)
	}
	return t.remove()
}

// remove deletes the files of a task already out of the map, or defers that
// to the last release of a hold.
func (t *Task) remove() error {
	t.mu.Lock()
	if t.holds > 0 {
		if t.tomb == "" {
			t.tomb = fmt.Sprintf("%s.deleted-%d", t.dir, t.s.now().UnixNano())
			if err := os.Rename(t.dir, t.tomb); err != nil {
				t.tomb = ""
				t.mu.Unlock()
				return fmt.Errorf("task %s: move aside: %w", t.meta.TaskID, err)
			}
		}
		t.removed = true
		t.notifyLocked() // followers (piece streams) look again and find it gone
		t.mu.Unlock()
		return nil
	}
	t.removed = true
	t.mu.Unlock()
	t.close()
	return os.RemoveAll(t.dir)
}

// Hold pins the task while the caller reads or uploads it: garbage
// collection skips a held task, and Delete defers removing its files until
// the last hold is released. Call Hold right after Store.Get and call the
// returned release exactly once when done (it is safe to call it more often);
// hold only as long as the bytes are being read. Holding also counts as a use
// for least-recently-used eviction. A task deleted between Get and Hold
// fails later reads with an error; it never returns wrong bytes.
//
// Every path that streams a task's bytes holds it: the local API's download
// and export, the piece upload server, and the registry mirror.
func (t *Task) Hold() (release func()) {
	t.mu.Lock()
	t.holds++
	t.meta.AccessedAt = t.s.now()
	t.dirty = true
	t.mu.Unlock()
	var once sync.Once
	return func() { once.Do(t.release) }
}

func (t *Task) release() {
	t.mu.Lock()
	t.holds--
	// (a task removed while not held has no files left to remove, and its
	// directory may already belong to a new task of the same ID)
	last := t.holds == 0 && t.removed && t.tomb != ""
	tomb := t.tomb
	t.mu.Unlock()
	if !last {
		return
	}
	t.close()
	_ = os.RemoveAll(tomb)
}

// Held reports whether someone holds the task.
func (t *Task) Held() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.holds > 0
}

// List returns the IDs of all tasks.
func (s *Store) List() []*Task {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Task, 0, len(s.tasks))
	for _, t := range s.tasks {
		out = append(out, t)
	}
	return out
}

// Close flushes metadata and closes files.
func (s *Store) Close() error {
	var errs []error
	for _, t := range s.List() {
		if t.Complete() {
			t.syncData()
		}
		errs = append(errs, t.Flush())
		t.close()
	}
	return errors.Join(errs...)
}

// Task is one cached content. Safe for concurrent use.
type Task struct {
	s    *Store
	dir  string
	data *os.File

	mu        sync.Mutex
	meta      Meta
	have      []bool
	haveCount uint32
	changed   chan struct{} // closed and replaced on every change
	dirty     bool
	lastSave  time.Time
	closed    bool
	syncOnce  sync.Once
	journal   *os.File          // pieces stored since meta.json was written; see journal.go
	holds     int               // see Hold
	removed   bool              // out of the store; files go with the last hold
	tomb      string            // where the files moved while held after removal
	relays    map[uint32]*Relay // pieces arriving, readable by uploads (relay.go)
	private   atomic.Bool       // meta.Private, readable without the lock (uploads)
	resets    atomic.Uint64     // Reset calls: a reader of pieces starts over
	// source progress (source.go)
	srcOwn      uint64
	srcBytes    uint64
	srcNotified time.Time
	srcChanged  chan struct{}
}

func newTask(s *Store, dir string, f *os.File, m Meta) *Task {
	t := &Task{s: s, dir: dir, data: f, meta: m, changed: make(chan struct{}), srcChanged: make(chan struct{})}
	t.private.Store(m.Private)
	return t
}

// verifyOnLoad rebuilds the bitmap: complete tasks are checked by size,
// incomplete ones piece by piece against the trusted digests.
func (t *Task) verifyOnLoad() error {
	m := &t.meta
	st, err := t.data.Stat()
	if err != nil {
		return err
	}
	if m.Complete && t.changedLocked() {
		m.Synced = false // modified since verified (or no record of it): verify like an unsynced task
	}
	if m.Complete && !m.Synced {
		// Committed but perhaps not on disk: check every piece.
		if t.reverifyAllLocked() {
			m.Synced = true
		}
		t.dirty = true
		return nil
	}
	if m.Complete {
		if m.ContentLength < 0 || st.Size() != m.ContentLength {
			return fmt.Errorf("complete task has %d bytes, meta says %d", st.Size(), m.ContentLength)
		}
		n := core.PieceCount(m.ContentLength, m.PieceSize)
		t.have = make([]bool, n)
		for i := range t.have {
			t.have[i] = true
		}
		t.haveCount = n
		return nil
	}
	t.verifyPieces()
	return nil
}

// changedLocked reports whether the data file may have changed since it
// was last verified: its stamp differs from the recorded one, or there is
// no record (a cache written by an older version), or it cannot be read.
func (t *Task) changedLocked() bool {
	cur, err := statFile(t.data)
	if err != nil || t.meta.DataStamp == nil {
		return true
	}
	return *cur != *t.meta.DataStamp
}

// stampLocked records the data file's current state as known good.
func (t *Task) stampLocked() {
	if st, err := statFile(t.data); err == nil {
		t.meta.DataStamp = st
		t.meta.DataMtime = st.Mtime
	}
}

// reverifyAllLocked checks every piece of a committed task against its
// digest and keeps the good ones. The task stays complete only if all pass;
// the data file's state is then recorded as known good.
func (t *Task) reverifyAllLocked() bool {
	m := &t.meta
	n := core.PieceCount(m.ContentLength, m.PieceSize)
	m.Complete = false
	m.Pieces = m.Pieces[:0]
	for i := uint32(0); i < n; i++ {
		m.Pieces = append(m.Pieces, i)
	}
	t.have, t.haveCount = make([]bool, n), 0
	t.verifyPieces()
	if m.ContentLength < 0 || t.haveCount != n {
		return false
	}
	m.Complete = true
	t.stampLocked()
	return true
}

// verifyPieces keeps the pieces of m.Pieces whose bytes match their digests.
func (t *Task) verifyPieces() {
	m := &t.meta
	kept := m.Pieces[:0]
	if m.ContentLength >= 0 && m.PieceSize > 0 {
		t.have = make([]bool, core.PieceCount(m.ContentLength, m.PieceSize))
	}
	var buf []byte
	for _, n := range m.Pieces {
		if m.PieceSize == 0 || int(n) >= len(m.PieceDigests) || len(m.PieceDigests[n]) == 0 {
			continue
		}
		off, size := t.rangeOf(n)
		if size <= 0 {
			continue
		}
		if cap(buf) < int(size) {
			buf = make([]byte, size)
		}
		b := buf[:size]
		if _, err := t.data.ReadAt(b, off); err != nil {
			continue
		}
		if !core.EqualDigest(core.PieceDigest(b), m.PieceDigests[n]) {
			t.s.log.Warn("dropping piece that fails verification after restart", "task_id", m.TaskID, "piece", n)
			continue
		}
		kept = append(kept, n)
		t.setHave(n)
	}
	m.Pieces = kept
}

func (t *Task) rangeOf(n uint32) (int64, int64) {
	if t.meta.ContentLength < 0 {
		return int64(n) * int64(t.meta.PieceSize), int64(t.meta.PieceSize)
	}
	return core.PieceRange(n, t.meta.ContentLength, t.meta.PieceSize)
}

func (t *Task) setHave(n uint32) {
	for int(n) >= len(t.have) {
		t.have = append(t.have, false)
	}
	if !t.have[n] {
		t.have[n] = true
		t.haveCount++
	}
}

// IsLocalURL reports whether url names a file on this host (file://).
func IsLocalURL(url string) bool {
	return len(url) >= 5 && strings.EqualFold(url[:5], "file:")
}

// Local reports whether the task is a file of this host (a file:// URL): its
// pieces are for local clients only, never for peers.
func (t *Task) Local() bool { return IsLocalURL(t.meta.URL) }

// ID returns the task ID.
func (t *Task) ID() string { return t.meta.TaskID }

// Meta returns a copy of the metadata.
func (t *Task) Meta() Meta {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.meta
	m.Pieces = t.piecesLocked()
	m.PieceDigests = append([][]byte(nil), t.meta.PieceDigests...)
	return m
}

// Shape returns content length (-1 unknown) and piece size (0 unknown).
func (t *Task) Shape() (int64, uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.meta.ContentLength, t.meta.PieceSize
}

// SetShape fixes the content length and piece size. Changing a known shape is
// refused: it would reinterpret pieces already held.
func (t *Task) SetShape(length int64, pieceSize uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := &t.meta
	if pieceSize == 0 {
		return fmt.Errorf("task %s: piece size 0: %w", m.TaskID, core.ErrInvalid)
	}
	if m.PieceSize != 0 && m.PieceSize != pieceSize {
		return fmt.Errorf("task %s: piece size %d conflicts with %d: %w", m.TaskID, pieceSize, m.PieceSize, core.ErrInvalid)
	}
	if m.ContentLength >= 0 && length >= 0 && m.ContentLength != length {
		return fmt.Errorf("task %s: length %d conflicts with %d: %w", m.TaskID, length, m.ContentLength, core.ErrInvalid)
	}
	changed := m.PieceSize != pieceSize || (length >= 0 && m.ContentLength != length)
	m.PieceSize = pieceSize
	if length >= 0 && m.ContentLength != length {
		m.ContentLength = length
		if err := t.data.Truncate(length); err != nil {
			return fmt.Errorf("task %s: size data file: %w", m.TaskID, err)
		}
		n := int(core.PieceCount(length, pieceSize))
		if len(t.have) > n {
			t.have = t.have[:n]
		}
		for len(t.have) < n {
			t.have = append(t.have, false)
		}
	}
	if changed {
		t.dirty = true
		t.notifyLocked()
		// Journaled pieces mean nothing after a crash without the shape.
		return t.persistLocked()
	}
	return nil
}

// SetDigests records trusted piece digests (from the scheduler or computed
// while fetching from the origin).
func (t *Task) SetDigests(ds map[uint32][]byte) {
	if len(ds) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for n, d := range ds {
		for int(n) >= len(t.meta.PieceDigests) {
			t.meta.PieceDigests = append(t.meta.PieceDigests, nil)
		}
		t.meta.PieceDigests[n] = d
	}
	t.dirty = true
	t.notifyLocked()
}

// PieceDigest returns the trusted digest of piece n, if known.
func (t *Task) PieceDigest(n uint32) ([]byte, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if int(n) < len(t.meta.PieceDigests) && len(t.meta.PieceDigests[n]) > 0 {
		return t.meta.PieceDigests[n], true
	}
	return nil, false
}

// Has reports whether piece n is held and verified.
func (t *Task) Has(n uint32) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return int(n) < len(t.have) && t.have[n]
}

// Pieces returns the held pieces in order.
func (t *Task) Pieces() []uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.piecesLocked()
}

func (t *Task) piecesLocked() []uint32 {
	out := make([]uint32, 0, t.haveCount)
	for i, h := range t.have {
		if h {
			out = append(out, uint32(i))
		}
	}
	return out
}

// NewPieces returns, in order, the held pieces not yet marked in seen, and
// marks them: a follower of the task (a child's piece stream, an output
// being written) learns only what was added since it last asked.
func (t *Task) NewPieces(seen *[]bool) []uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []uint32
	for i, h := range t.have {
		if !h || (i < len(*seen) && (*seen)[i]) {
			continue
		}
		for i >= len(*seen) {
			*seen = append(*seen, false)
		}
		(*seen)[i] = true
		out = append(out, uint32(i))
	}
	return out
}

// Count returns how many pieces are held.
func (t *Task) Count() uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.haveCount
}

// Complete reports whether every piece is held and the task was committed.
func (t *Task) Complete() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.meta.Complete
}

// Changed returns a channel closed at the next change of pieces or shape.
// Once the task is closed (deleted) the channel is always closed.
func (t *Task) Changed() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		c := make(chan struct{})
		close(c)
		return c
	}
	return t.changed
}

func (t *Task) notifyLocked() {
	close(t.changed)
	t.changed = make(chan struct{})
}

// WritePiece stores the bytes of piece n after checking them against the
// expected digest (nil only when the caller computed it itself from origin
// bytes). The piece becomes visible to readers and uploads only afterwards.
func (t *Task) WritePiece(n uint32, b []byte, digest []byte) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return fmt.Errorf("task %s: closed: %w", t.meta.TaskID, core.ErrUnavailable)
	}
	if int(n) < len(t.have) && t.have[n] {
		t.mu.Unlock()
		return nil
	}
	if t.meta.PieceSize == 0 {
		t.mu.Unlock()
		return fmt.Errorf("task %s: piece %d before shape is known: %w", t.meta.TaskID, n, core.ErrInvalid)
	}
	off, size := t.rangeOf(n)
	known := t.meta.ContentLength >= 0
	t.mu.Unlock()
	if known && int64(len(b)) != size {
		return fmt.Errorf("task %s: piece %d has %d bytes, want %d: %w", t.meta.TaskID, n, len(b), size, core.ErrDigestMismatch)
	}
	if digest == nil {
		digest = core.PieceDigest(b)
	}
	if t.s.budget.Add(-int64(len(b))) <= 0 {
		t.s.KickGC()
	}
	if _, err := t.data.WriteAt(b, off); err != nil {
		return t.s.noSpace(fmt.Errorf("task %s: write piece %d: %w", t.meta.TaskID, n, err))
	}
	t.mu.Lock()
	for int(n) >= len(t.meta.PieceDigests) {
		t.meta.PieceDigests = append(t.meta.PieceDigests, nil)
	}
	t.meta.PieceDigests[n] = digest
	t.setHave(n)
	t.appendJournalLocked(n, digest)
	t.dirty = true
	t.notifyLocked()
	save := time.Since(t.lastSave) > 500*time.Millisecond
	t.mu.Unlock()
	if save {
		// The piece is stored and verified; a record that cannot be
		// written now (a full disk) is written by a later flush, and until
		// then the journal or re-verification covers a crash.
		if err := t.Flush(); err != nil {
			t.s.log.Warn("save task record", "task_id", t.meta.TaskID, "err", err)
			if errors.Is(err, core.ErrNoSpace) {
				t.s.KickGC()
			}
		}
	}
	return nil
}

// Commit marks the task complete once every piece is held; the caller has
// verified the whole-content digest if one is known.
func (t *Task) Commit() error {
	t.mu.Lock()
	m := &t.meta
	if m.ContentLength < 0 {
		t.mu.Unlock()
		return fmt.Errorf("task %s: commit with unknown length: %w", m.TaskID, core.ErrInvalid)
	}
	want := core.PieceCount(m.ContentLength, m.PieceSize)
	if t.haveCount != want {
		t.mu.Unlock()
		return fmt.Errorf("task %s: commit with %d of %d pieces: %w", m.TaskID, t.haveCount, want, core.ErrInvalid)
	}
	if err := t.data.Truncate(m.ContentLength); err != nil {
		t.mu.Unlock()
		return fmt.Errorf("task %s: truncate: %w", m.TaskID, err)
	}
	m.Complete = true
	m.Synced = false
	t.stampLocked()
	t.dirty = true
	t.notifyLocked()
	t.mu.Unlock()
	if err := t.Flush(); err != nil {
		return err
	}
	// fsync off the request path, and late: a client should not wait for
	// the disk, and by SyncDelay the kernel's own writeback has usually done
	// the work, so the fsync does not compete with the next download for the
	// disk and for page cache. Until it is done the record says so, and a
	// reload re-verifies the pieces.
	time.AfterFunc(SyncDelay, t.syncData)
	return nil
}

// SyncDelay is how long after Commit a task's data is fsynced.
var SyncDelay = 30 * time.Second

func (t *Task) syncData() { t.syncOnce.Do(t.doSync) }

func (t *Task) doSync() {
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return // deleted, or the store closed (which synced it first)
	}
	if err := t.data.Sync(); err != nil {
		t.s.log.Warn("sync task data", "task_id", t.meta.TaskID, "err", err)
		return
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.meta.Synced = true
	t.dirty = true
	t.mu.Unlock()
	if err := t.Flush(); err != nil {
		t.s.log.Warn("record task sync", "task_id", t.meta.TaskID, "err", err)
	}
}

// SetTTL gives the task a TTL of its own (0: the cache's) and records it.
func (t *Task) SetTTL(d time.Duration) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.meta.TTL = d
	return t.persistLocked()
}

// Touch records an access for LRU.
func (t *Task) Touch() {
	t.mu.Lock()
	t.meta.AccessedAt = t.s.now()
	t.dirty = true
	t.mu.Unlock()
}

// Flush persists the metadata if it changed.
func (t *Task) Flush() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.dirty || t.closed {
		return nil
	}
	return t.persistLocked()
}

func (t *Task) persist() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.persistLocked()
}

// persistLocked writes meta.json atomically (temp file + rename), so a crash
// leaves either the old or the new record, never half of one.
func (t *Task) persistLocked() error {
	m := t.meta
	m.Pieces = t.piecesLocked()
	b, err := json.Marshal(&m)
	if err != nil {
		return fmt.Errorf("task %s: encode meta: %w", m.TaskID, err)
	}
	tmp := filepath.Join(t.dir, metaFile+".tmp")
	if err := os.WriteFile(tmp, b, fileMode); err != nil {
		return t.s.noSpace(fmt.Errorf("task %s: write meta: %w", m.TaskID, err))
	}
	if err := os.Rename(tmp, filepath.Join(t.dir, metaFile)); err != nil {
		return fmt.Errorf("task %s: commit meta: %w", m.TaskID, err)
	}
	t.resetJournalLocked()
	t.dirty = false
	t.lastSave = time.Now()
	return nil
}

func (t *Task) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closed {
		t.closed = true
		t.data.Close()
		if t.journal != nil {
			t.journal.Close()
		}
		t.notifyLocked()
	}
}

// ReadPiece reads piece n into a new slice; only held pieces are readable.
func (t *Task) ReadPiece(n uint32) ([]byte, error) {
	off, size, err := t.PieceSection(n)
	if err != nil {
		return nil, err
	}
	b := make([]byte, size)
	if _, err := t.data.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("task %s: read piece %d: %w", t.meta.TaskID, n, err)
	}
	return b, nil
}

// PieceSection returns where piece n lies in the data file, if held.
func (t *Task) PieceSection(n uint32) (off, size int64, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if int(n) >= len(t.have) || !t.have[n] {
		return 0, 0, fmt.Errorf("task %s piece %d: %w", t.meta.TaskID, n, core.ErrNotFound)
	}
	off, size = t.rangeOf(n)
	return off, size, nil
}

// DataPath returns the data file's path; read it only while Complete or
// through PieceSection's ranges.
func (t *Task) DataPath() string { return filepath.Join(t.dir, dataFile) }

// Data returns the open data file for ReadAt.
func (t *Task) Data() io.ReaderAt { return t.data }

// Reset forgets every held piece and digest (the shape stays): the content
// assembled failed its whole-content digest and is fetched again. Readers
// waiting on the task see the change.
func (t *Task) Reset() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return fmt.Errorf("task %s: closed: %w", t.meta.TaskID, core.ErrUnavailable)
	}
	clear(t.have)
	t.haveCount = 0
	t.resets.Add(1)
	t.meta.PieceDigests = nil
	t.meta.Complete = false
	t.meta.Synced = false
	t.dirty = true
	t.notifyLocked()
	return t.persistLocked()
}

// Resets counts the calls to Reset: a reader that copied pieces before a
// reset must start over (or give up).
func (t *Task) Resets() uint64 { return t.resets.Load() }

// Private reports whether the task was fetched with credentials
// (Meta.Private). It takes no lock: uploads ask it for every piece.
func (t *Task) Private() bool { return t.private.Load() }

// SetPrivate marks the task private; a private task never becomes public.
func (t *Task) SetPrivate() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.meta.Private {
		return nil
	}
	t.meta.Private = true
	t.private.Store(true)
	return t.persistLocked()
}

// Missing returns the pieces not held, in order (nil while the shape is unknown).
func (t *Task) Missing() []uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []uint32
	for i, h := range t.have {
		if !h {
			out = append(out, uint32(i))
		}
	}
	return out
}

// SortedIDs is a helper for tests and listings.
func SortedIDs(ts []*Task) []string {
	ids := make([]string, len(ts))
	for i, t := range ts {
		ids[i] = t.ID()
	}
	sort.Strings(ids)
	return ids
}

// CheckIntact makes sure a complete task's data file was not modified since
// it was verified: a cheap stat normally (inode, size, modification and
// inode change time: restoring the mtime with utimes does not hide a
// change); when anything differs, every piece is checked again and the task
// loses the ones that fail (it is then no longer complete, and
// ErrDigestMismatch is returned). Every path that serves a complete task's
// bytes calls it first: the local API and the upload port.
func (t *Task) CheckIntact() error {
	cur, err := statPath(t.DataPath())
	if err != nil {
		return fmt.Errorf("task %s: %w", t.meta.TaskID, err)
	}
	t.mu.Lock()
	m := &t.meta
	if !m.Complete || (m.DataStamp != nil && *cur == *m.DataStamp) {
		t.mu.Unlock()
		return nil
	}
	t.s.log.Warn("cached data changed on disk; verifying it again", "task_id", m.TaskID)
	ok := t.reverifyAllLocked()
	t.dirty = true
	t.notifyLocked()
	t.mu.Unlock()
	_ = t.Flush()
	if !ok {
		return fmt.Errorf("task %s: cached data was modified: %w", m.TaskID, core.ErrDigestMismatch)
	}
	return nil
}
