package store

import (
	"errors"
	"fmt"
	"math"
	"os"
	"sort"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/damselfly-io/damselfly/core"
)

// Policy says how much the cache may keep. Zero fields are off.
type Policy struct {
	// TTL evicts tasks not used for this long (a task's own TTL, see
	// Task.SetTTL, takes precedence).
	TTL time.Duration
	// HighBytes and LowBytes bound the bytes the cache's tasks occupy on
	// disk: above HighBytes, least recently used tasks are evicted until
	// at most LowBytes remain.
	HighBytes, LowBytes int64
	// HighPercent and LowPercent do the same for the use of the whole file
	// system the cache lives on (other files count too), in percent.
	HighPercent, LowPercent float64
}

// Eviction is one task removed by GC.
type Eviction struct {
	TaskID string
	Reason string // "ttl" or "watermark"
	Bytes  int64
}

// GCResult says what a GC run did and what is left.
type GCResult struct {
	Evicted []Eviction
	// Skipped counts tasks that should have gone but were held or busy.
	Skipped int
	// Bytes and Tasks are what the cache holds afterwards.
	Bytes int64
	Tasks int
}

// KickGC asks for a GC run soon (see GCKicks); it never blocks.
func (s *Store) KickGC() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// GCKicks receives when a write crossed a high watermark or hit a full disk:
// the owner of the GC loop should run GC now rather than at its next tick.
func (s *Store) GCKicks() <-chan struct{} { return s.kick }

// GC applies p: tasks past their TTL go first, then, while the cache or its
// file system is above a high watermark, the least recently used tasks until
// it is below the low one. Held tasks and those busy reports (e.g. being
// downloaded) are never evicted. Afterwards writes may take the cache up to
// the nearest high watermark before they kick GC again.
func (s *Store) GC(p Policy, busy func(id string) bool) (GCResult, error) {
	type entry struct {
		t      *Task
		bytes  int64
		access time.Time
		ttl    time.Duration
	}
	var res GCResult
	now := s.now()
	var es []entry
	var total int64
	for _, t := range s.List() {
		e := entry{t: t, bytes: diskBytes(t.DataPath()), ttl: p.TTL}
		e.access, e.ttl = t.accessed(p.TTL)
		es = append(es, e)
		total += e.bytes
	}
	evict := func(e entry, reason string) bool {
		if busy != nil && busy(e.t.ID()) {
			res.Skipped++
			return false
		}
		if !s.evict(e.t) {
			res.Skipped++
			return false
		}
		res.Evicted = append(res.Evicted, Eviction{TaskID: e.t.ID(), Reason: reason, Bytes: e.bytes})
		total -= e.bytes
		s.log.Info("evicted cached task", "task_id", e.t.ID(), "reason", reason, "bytes", e.bytes)
		return true
	}
	var fsTotal, fsUsed int64
	var fsErr error
	if p.HighPercent > 0 {
		fsTotal, fsUsed, fsErr = s.statfs(s.dir)
		if fsErr != nil {
			fsErr = fmt.Errorf("gc: file system use of %s: %w", s.dir, fsErr)
		}
	}
	sort.Slice(es, func(i, j int) bool { return es[i].access.Before(es[j].access) })
	kept := es[:0]
	for _, e := range es {
		if e.ttl > 0 && now.Sub(e.access) > e.ttl && evict(e, "ttl") {
			fsUsed -= e.bytes
			continue
		}
		kept = append(kept, e)
	}
	percent := func() float64 {
		if fsTotal <= 0 {
			return 0
		}
		return 100 * float64(fsUsed) / float64(fsTotal)
	}
	over := (p.HighBytes > 0 && total > p.HighBytes) || (p.HighPercent > 0 && fsErr == nil && percent() > p.HighPercent)
	if over {
		for _, e := range kept {
			if (p.LowBytes <= 0 || total <= p.LowBytes) && (p.HighPercent <= 0 || fsErr != nil || percent() <= p.LowPercent) {
				break
			}
			if evict(e, "watermark") {
				fsUsed -= e.bytes
			}
		}
	}
	budget := int64(math.MaxInt64)
	if p.HighBytes > 0 {
		budget = min(budget, p.HighBytes-total)
	}
	if p.HighPercent > 0 && fsErr == nil {
		budget = min(budget, int64(p.HighPercent/100*float64(fsTotal))-fsUsed)
	}
	// Kick again only after a meaningful amount (a sixteenth of the
	// watermark, 1 to 64 MiB): a cache stuck above its watermark
	// (everything held) must not run GC on every write.
	floor := int64(64 << 20)
	if p.HighBytes > 0 {
		floor = min(floor, max(p.HighBytes/16, 1<<20))
	}
	if p.HighPercent > 0 && fsErr == nil {
		floor = min(floor, max(int64(p.HighPercent/100*float64(fsTotal))/16, 1<<20))
	}
	s.budget.Store(max(budget, floor))
	res.Bytes, res.Tasks = total, len(s.List())
	return res, fsErr
}

// evict removes t unless it is held; the check and the removal from the map
// happen under both locks, so a Hold taken after Get cannot slip in between.
func (s *Store) evict(t *Task) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tasks[t.ID()] != t {
		return false
	}
	t.mu.Lock()
	held := t.holds > 0
	if !held {
		t.removed = true
	}
	t.mu.Unlock()
	if held {
		return false
	}
	delete(s.tasks, t.ID())
	t.close()
	if err := os.RemoveAll(t.dir); err != nil {
		s.log.Warn("remove evicted task", "task_id", t.ID(), "err", err)
	}
	return true
}

// accessed returns the last use and the TTL that applies (its own, else def).
func (t *Task) accessed(def time.Duration) (time.Time, time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.meta.TTL > 0 {
		def = t.meta.TTL
	}
	return t.meta.AccessedAt, def
}

// diskBytes is the space a file takes on disk (sparse parts not counted).
func diskBytes(path string) int64 {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}

func statfs(dir string) (total, used int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	bs := int64(st.Bsize)
	return int64(st.Blocks) * bs, int64(st.Blocks-st.Bfree) * bs, nil
}

// noSpace marks a full file system as core.ErrNoSpace (keeping the OS error
// in the chain) and asks for a GC run.
func (s *Store) noSpace(err error) error {
	if err == nil || !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, syscall.EDQUOT) {
		return err
	}
	s.KickGC()
	return fmt.Errorf("%w: %w", core.ErrNoSpace, err)
}

// Usage returns the bytes the cached tasks take on disk and their count,
// now (one stat per task).
func (s *Store) Usage() (bytes int64, tasks int) {
	ts := s.List()
	for _, t := range ts {
		bytes += diskBytes(t.DataPath())
	}
	return bytes, len(ts)
}
