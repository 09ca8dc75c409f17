package daemon

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon/store"
)

// This file keeps the complete tasks of the cache announced: each one in
// the host's inventory, carried to the task's home scheduler (the hash
// ring) on one Inventory stream per scheduler, instead of one Announce
// stream per task. docs/architecture.md ("Inventory") explains the design.

// maxEntryDigestBytes bounds the piece digests of one inventory entry (a
// gRPC message is at most 4 MiB): a task with more pieces than that (about
// 60,000: 240 GB in 4 MiB pieces) is announced on its own stream.
const maxEntryDigestBytes = 2 << 20

// inventoryBatch is the most entries (added plus removed) one batch may
// carry (scheduler.MaxInventoryBatch).
const inventoryBatch = 256

// maxBatchBytes bounds the piece digests of one batch.
const maxBatchBytes = 2 << 20

// inventoryReconnect is the window a stream that lived a while (the
// scheduler restarted) reconnects in: between half of it and all of it
// (reconnectDelay). One stream carries a host's whole inventory, so the
// window is wider than a single task's announce (0.5 s): 10,000 hosts come
// back over 1–2 s instead of at once.
const inventoryReconnect = 2 * time.Second

// inventoryRecheck is how often the inventory looks again at the cache for
// tasks that left it without telling (any deletion the daemon does not
// report to it explicitly).
const inventoryRecheck = 30 * time.Second

// inventory is the complete public tasks this daemon holds, and the
// Inventory streams that carry them.
type inventory struct {
	d      *Daemon
	peerID string // the peer ID of every entry, in every task

	mu      sync.Mutex
	tasks   map[string]*invTask // by task ID
	changed chan struct{}       // closed and replaced at every change
	loops   map[string]context.CancelFunc
	wg      sync.WaitGroup
}

// invTask is one entry.
type invTask struct {
	task *store.Task
	// refused: a scheduler refused it; it is offered to none until the
	// task is held anew (a new download).
	refused bool
	// applied is closed when a scheduler acknowledged the entry (or
	// refused it, or it left the inventory).
	applied     chan struct{}
	appliedOnce sync.Once
}

func (e *invTask) markApplied() { e.appliedOnce.Do(func() { close(e.applied) }) }

func newInventory(d *Daemon, hostname string) *inventory {
	return &inventory{d: d, peerID: core.NewPeerID(hostname), tasks: map[string]*invTask{}, loops: map[string]context.CancelFunc{}}
}

// inventoried reports whether complete task t is announced through the
// inventory: a public task of a swarm URL (not a dfcache entry, not a
// private one: those keep their own Announce stream) whose digests fit in
// one entry.
func inventoried(t *store.Task) bool {
	m := t.Meta()
	if !m.Complete || m.Private || m.ContentLength < 0 || m.PieceSize == 0 {
		return false
	}
	if _, cache := core.ParseCacheURL(m.URL); cache || store.IsLocalURL(m.URL) || core.CheckSwarmURL(m.URL) != nil {
		return false
	}
	n := core.PieceCount(m.ContentLength, m.PieceSize)
	return uint32(len(m.PieceDigests)) == n && int64(n)*(core.DigestSize+2) <= maxEntryDigestBytes
}

// add puts complete task t in the inventory (replacing an entry of an
// older copy of the task) and returns a channel closed once a scheduler
// acknowledged it.
func (inv *inventory) add(t *store.Task) <-chan struct{} {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if e := inv.tasks[t.ID()]; e != nil && e.task == t {
		return e.applied
	}
	e := &invTask{task: t, applied: make(chan struct{})}
	inv.tasks[t.ID()] = e
	inv.kickLocked()
	return e.applied
}

// remove takes task id out of the inventory (deleted or evicted).
func (inv *inventory) remove(id string) {
	if inv == nil {
		return
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if e := inv.tasks[id]; e != nil {
		delete(inv.tasks, id)
		e.markApplied()
		inv.kickLocked()
	}
}

// kick wakes the streams: something they carry may have changed (the
// scheduler list, a scheduler's reachability).
func (inv *inventory) kick() {
	if inv == nil {
		return
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.kickLocked()
}

func (inv *inventory) kickLocked() {
	if inv.changed != nil {
		close(inv.changed)
		inv.changed = nil
	}
}

func (inv *inventory) changedCh() <-chan struct{} {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if inv.changed == nil {
		inv.changed = make(chan struct{})
	}
	return inv.changed
}

// ring is a snapshot of the schedulers: their addresses and which are
// known to be unreachable.
type ring struct {
	addrs []string
	down  map[string]bool
}

func (d *Daemon) ringSnapshot() ring {
	s := &d.scheds
	s.mu.Lock()
	defer s.mu.Unlock()
	r := ring{addrs: slices.Clone(s.addrs), down: map[string]bool{}}
	for a, up := range s.up {
		if !up {
			r.down[a] = true
		}
	}
	return r
}

// home is the scheduler that carries task id: the first in hash order
// (schedulersFor) not known to be unreachable, as an Announce would fall
// back; "" when there is none.
func (r ring) home(id string) string {
	best, bestScore, fallback, fallbackScore := "", uint64(0), "", uint64(0)
	for _, a := range r.addrs {
		sc := ringScore(id, a)
		if r.down[a] {
			if fallback == "" || sc > fallbackScore {
				fallback, fallbackScore = a, sc
			}
			continue
		}
		if best == "" || sc > bestScore {
			best, bestScore = a, sc
		}
	}
	if best == "" {
		return fallback // all down: wait at the home
	}
	return best
}

// want returns the entries addr carries now, dropping those whose task
// left the cache.
func (inv *inventory) want(addr string) map[string]*invTask {
	r := inv.d.ringSnapshot()
	inv.mu.Lock()
	defer inv.mu.Unlock()
	out := map[string]*invTask{}
	for id, e := range inv.tasks {
		if cur, ok := inv.d.store.Get(id); !ok || cur != e.task {
			delete(inv.tasks, id)
			e.markApplied()
			continue
		}
		if !e.refused && e.task.Complete() && r.home(id) == addr {
			out[id] = e
		}
	}
	return out
}

// run keeps one stream loop per scheduler in the list, until ctx ends.
func (inv *inventory) run(ctx context.Context) {
	defer inv.wg.Wait()
	tick := time.NewTicker(inventoryRecheck)
	defer tick.Stop()
	first := true
	for {
		ringCh := inv.d.ringChanged()
		addrs := inv.d.ringSnapshot().addrs
		inv.mu.Lock()
		for a, cancel := range inv.loops {
			if !slices.Contains(addrs, a) {
				cancel()
				delete(inv.loops, a)
			}
		}
		for _, a := range addrs {
			if inv.loops[a] != nil {
				continue
			}
			lctx, cancel := context.WithCancel(ctx)
			inv.loops[a] = cancel
			// A scheduler that joins later is opened after a jittered
			// delay, like a ring change moved the tasks there.
			var delay time.Duration
			if !first {
				delay = time.Second
			}
			inv.wg.Add(1)
			go func() {
				defer inv.wg.Done()
				inv.loop(lctx, a, delay)
			}()
		}
		inv.kickLocked() // the streams look at the ring again
		inv.mu.Unlock()
		first = false
		select {
		case <-ctx.Done():
			inv.mu.Lock()
			for a, cancel := range inv.loops {
				cancel()
				delete(inv.loops, a)
			}
			inv.mu.Unlock()
			return
		case <-ringCh:
		case <-tick.C:
		}
	}
}

// errIdle ends a stream that has nothing left to carry.
var errIdle = errors.New("inventory empty for this scheduler")

// loop holds the Inventory stream to addr while addr is home to any entry.
// Every (re)connect sends the whole inventory for addr after a random
// delay (reconnectDelay): after a scheduler restart the hosts of a cluster
// come back spread over 1–2 s (inventoryReconnect), not in step. A stream
// that ends at once (refused, say) backs off from 0.5 s, doubling each
// time up to 30 s.
func (inv *inventory) loop(ctx context.Context, addr string, delay time.Duration) {
	rnd := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	log := inv.d.log.With("scheduler", addr)
	backoff := 500 * time.Millisecond
	wait := reconnectDelay(rnd, delay)
	for ctx.Err() == nil {
		ch := inv.changedCh()
		if len(inv.want(addr)) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-ch:
			}
			continue
		}
		if wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		opened := time.Now()
		err := inv.stream(ctx, addr)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, errIdle):
			wait = 0
			continue
		}
		if time.Since(opened) < time.Second {
			wait = reconnectDelay(rnd, backoff)
			log.Debug("inventory stream ended at once; backing off", "err", err, "backoff", backoff)
			backoff = min(2*backoff, 30*time.Second)
		} else {
			backoff = 500 * time.Millisecond
			wait = reconnectDelay(rnd, inventoryReconnect)
			log.Info("inventory stream ended; reconnecting", "err", err, "after", wait)
		}
	}
}

// stream runs one Inventory stream to addr: the hello, the whole inventory
// for addr, then every change, until the stream breaks (its error),
// nothing is left to carry (errIdle) or ctx ends.
func (inv *inventory) stream(ctx context.Context, addr string) error {
	var client schedulerv1.SchedulerClient
	for _, t := range inv.d.schedulersFor("") {
		if t.addr == addr {
			client = t.client
		}
	}
	if client == nil {
		return fmt.Errorf("inventory to %s: not a scheduler of this daemon any more", addr)
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Inventory(sctx)
	if err != nil {
		return fmt.Errorf("inventory to %s: %w", addr, err)
	}
	if err := stream.Send(&schedulerv1.InventoryMessage{Msg: &schedulerv1.InventoryMessage_Hello{
		Hello: &schedulerv1.InventoryHello{Host: inv.d.Host(), PeerId: inv.peerID}}}); err != nil {
		return fmt.Errorf("inventory hello to %s: %w", addr, err)
	}
	replies := make(chan *schedulerv1.InventoryReply, 16)
	recvErr := make(chan error, 1)
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case replies <- r:
			case <-sctx.Done():
				return
			}
		}
	}()
	sent := map[string]*invTask{}
	pending := map[uint64][]*invTask{} // entries of each unacknowledged batch
	var version uint64
	sync := func() error {
		want := inv.want(addr)
		var removed []string
		for id, e := range sent {
			if want[id] != e {
				removed = append(removed, id)
				delete(sent, id)
			}
		}
		var added []*invTask
		for id, e := range want {
			if sent[id] == nil {
				added = append(added, e)
				sent[id] = e
			}
		}
		slices.Sort(removed)
		slices.SortFunc(added, func(a, b *invTask) int { return compareID(a.task.ID(), b.task.ID()) })
		for len(removed) > 0 || len(added) > 0 {
			b := &schedulerv1.InventoryBatch{}
			var es []*invTask
			n := min(len(removed), inventoryBatch)
			b.Removed, removed = removed[:n], removed[n:]
			size := 0
			for len(added) > 0 && len(b.Removed)+len(b.Added) < inventoryBatch {
				ent := entryOf(added[0].task)
				if sz := len(ent.GetPieceDigests()) * (core.DigestSize + 2); len(b.Added) > 0 && size+sz > maxBatchBytes {
					break
				}
				size += len(ent.GetPieceDigests()) * (core.DigestSize + 2)
				b.Added = append(b.Added, ent)
				es = append(es, added[0])
				added = added[1:]
			}
			version++
			b.Version = version
			pending[version] = es
			if err := stream.Send(&schedulerv1.InventoryMessage{Msg: &schedulerv1.InventoryMessage_Batch{Batch: b}}); err != nil {
				return fmt.Errorf("inventory batch to %s: %w", addr, err)
			}
		}
		if len(want) == 0 {
			return errIdle
		}
		return nil
	}
	for {
		ch := inv.changedCh()
		if err := sync(); err != nil {
			if errors.Is(err, errIdle) {
				_ = stream.CloseSend()
			}
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		case err := <-recvErr:
			return fmt.Errorf("inventory stream to %s: %w", addr, err)
		case r := <-replies:
			for v, es := range pending {
				if v <= r.GetApplied() {
					for _, e := range es {
						e.markApplied()
					}
					delete(pending, v)
				}
			}
			inv.mu.Lock()
			for _, f := range r.GetRefused() {
				e := sent[f.GetTaskId()]
				if e == nil {
					continue
				}
				delete(sent, f.GetTaskId())
				e.refused = true
				e.markApplied()
				inv.d.log.Warn("scheduler refused a cached task; no longer announcing it", "task_id", f.GetTaskId(), "scheduler", addr, "reason", f.GetReason())
			}
			inv.mu.Unlock()
		}
	}
}

// cachedSpec is the spec of a task as the cache keeps it: no headers but
// an s3 object's version (part of its task ID).
func cachedSpec(m store.Meta) *schedulerv1.TaskSpec {
	return &schedulerv1.TaskSpec{TaskId: m.TaskID, Url: m.URL, Tag: m.Tag, Application: m.Application,
		FilteredQuery: m.FilteredQuery, Digest: m.Digest, Private: m.Private, Headers: versionHeaders(m.Version)}
}

// versionHeaders are the spec headers that name an object version (an s3
// object's ETag as If-Match: core.SpecVersion), nil for none.
func versionHeaders(version string) map[string]string {
	if version == "" {
		return nil
	}
	return map[string]string{"If-Match": version}
}

func compareID(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// entryOf is complete task t's inventory entry: its spec as the cache
// keeps it (cachedSpec), its shape and every piece's digest.
func entryOf(t *store.Task) *schedulerv1.InventoryEntry {
	m := t.Meta()
	return &schedulerv1.InventoryEntry{
		Task:          cachedSpec(m),
		ContentLength: m.ContentLength,
		PieceSize:     m.PieceSize,
		PieceDigests:  m.PieceDigests,
	}
}
