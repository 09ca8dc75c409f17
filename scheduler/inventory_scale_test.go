package scheduler

import (
	"context"
	"flag"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
)

// The scale of BenchmarkInventoryScale: hosts each holding tasks cached
// tasks out of universe distinct ones, of pieces pieces each. The default
// is the target: 10,000 hosts × 500 tasks = 5 M replicas.
var (
	invHosts    = flag.Int("inventory.hosts", 10000, "BenchmarkInventoryScale: hosts")
	invTasks    = flag.Int("inventory.tasks", 500, "BenchmarkInventoryScale: cached tasks per host")
	invUniverse = flag.Int("inventory.universe", 5000, "BenchmarkInventoryScale: distinct tasks")
	invPieces   = flag.Int("inventory.pieces", 125, "BenchmarkInventoryScale: pieces per task (125: 500 MiB of 4 MiB pieces)")
)

// inventoryLoad is what loadInventories measured.
type inventoryLoad struct {
	replicas   int
	heapBytes  int64 // live heap the replicas added (runtime.MemStats.HeapAlloc after a GC)
	perReplica float64
	elapsed    time.Duration
	tick       time.Duration // one Tick over every holder
}

// loadInventories opens one inventory session per host on s, in process
// (the session API, as the gRPC handler does), and sends each host's
// entries in batches of MaxInventoryBatch: host i holds tasks
// i·tasks … i·tasks+tasks-1 (mod universe). Every task's holders agree,
// so the second holder of each restores its trust (two_hosts) and the
// others are checked against its digests. It returns the heap the
// scheduler kept per replica; the sessions stay open.
func loadInventories(tb testing.TB, s *Scheduler, hosts, tasks, universe, pieces int) inventoryLoad {
	tb.Helper()
	const pieceSize = 4 << 20
	es := make([]*schedulerv1.InventoryEntry, universe)
	for k := range es {
		name := fmt.Sprintf("scale-%d", k)
		e := &schedulerv1.InventoryEntry{Task: spec(name), ContentLength: int64(pieces) * pieceSize, PieceSize: pieceSize}
		for n := range pieces {
			e.PieceDigests = append(e.PieceDigests, core.PieceDigest(fmt.Appendf(nil, "%s/%d", name, n)))
		}
		es[k] = e
	}
	ctx := InsecureContext(context.Background())
	now := time.Unix(1e9, 0)
	refused := 0
	send := func(r *schedulerv1.InventoryReply) error {
		refused += len(r.GetRefused())
		return nil
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	sessions := make([]*InventorySession, 0, hosts)
	batch := make([]*schedulerv1.InventoryEntry, 0, MaxInventoryBatch)
	for i := range hosts {
		h := &schedulerv1.Host{Id: fmt.Sprintf("host-%d", i), Hostname: fmt.Sprintf("h%d", i), Ip: "10.77.0.1", PeerPort: 65000, UploadPort: 65002}
		is, err := s.OpenInventory(ctx, &schedulerv1.InventoryHello{Host: h, PeerId: fmt.Sprintf("inv-%d", i)}, send, now)
		if err != nil {
			tb.Fatal(err)
		}
		sessions = append(sessions, is)
		v := uint64(0)
		for j := range tasks {
			batch = append(batch, es[(i*tasks+j)%universe])
			if len(batch) == MaxInventoryBatch || j == tasks-1 {
				v++
				if err := is.Handle(&schedulerv1.InventoryMessage{Msg: &schedulerv1.InventoryMessage_Batch{
					Batch: &schedulerv1.InventoryBatch{Version: v, Added: batch}}}, now); err != nil {
					tb.Fatal(err)
				}
				clear(batch)
				batch = batch[:0]
			}
		}
	}
	elapsed := time.Since(start)
	es = nil // the entries are the daemons' messages, not the scheduler's state
	runtime.GC()
	runtime.ReadMemStats(&after)
	if refused != 0 {
		tb.Fatalf("%d entries refused", refused)
	}
	replicas := 0
	s.mu.Lock()
	for _, t := range s.taskList {
		replicas += len(t.peers)
		if len(t.digests) == 0 && len(t.peers) > 1 {
			tb.Errorf("task %s: %d agreeing holders and no trusted digests", t.id, len(t.peers))
		}
	}
	s.mu.Unlock()
	if want := hosts * min(tasks, universe); replicas != want {
		tb.Fatalf("%d holder peers, want %d", replicas, want)
	}
	heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	runtime.KeepAlive(sessions)
	tickStart := time.Now()
	s.Tick(now.Add(time.Second))
	tick := time.Since(tickStart)
	return inventoryLoad{replicas: replicas, heapBytes: heap, perReplica: float64(heap) / float64(replicas), elapsed: elapsed, tick: tick}
}

// A CI-sized load (200 hosts × 50 of 100 tasks, 10,000 replicas): every
// entry becomes a holder, trust is restored for every task, and the heap
// per replica stays near the target (≈ 800 B per replica for 5 M replicas
// in 4 GiB; BenchmarkInventoryScale measures the full size). Closing the
// sessions takes every holder out.
func TestInventoryMemoryPerReplica(t *testing.T) {
	s := newTestScheduler(t, nil, nil)
	l := loadInventories(t, s, 200, 50, 100, 125)
	t.Logf("%d replicas: %d heap bytes, %.0f B per replica, loaded in %v, one tick %v", l.replicas, l.heapBytes, l.perReplica, l.elapsed, l.tick)
	if l.perReplica > 1200 {
		t.Errorf("%.0f heap bytes per replica, want under 1200 (target ≈ 800)", l.perReplica)
	}
	s.mu.Lock()
	var sessions []*InventorySession
	for _, is := range s.inventories {
		sessions = append(sessions, is)
	}
	s.mu.Unlock()
	now := time.Unix(1e9, 0)
	for _, is := range sessions {
		is.Close(now)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, tk := range s.taskList {
		if len(tk.peers) != 0 || len(tk.pool) != 0 {
			t.Fatalf("task %s: %d peers, %d in the pool after every inventory closed", tk.id, len(tk.peers), len(tk.pool))
		}
	}
	if err := checkInvariants(s); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkInventoryScale loads -inventory.hosts hosts × -inventory.tasks
// cached tasks (default 10,000 × 500 = 5 M replicas, about 4 GiB of heap
// and a few minutes on 2 cores) through the session API and reports the
// scheduler's heap per replica. Run it alone:
//
//	go test ./scheduler -run '^$' -bench InventoryScale -benchtime 1x -timeout 60m
//
// and a fraction with e.g. -inventory.hosts 1000.
func BenchmarkInventoryScale(b *testing.B) {
	for range b.N {
		s := newTestScheduler(b, nil, nil)
		l := loadInventories(b, s, *invHosts, *invTasks, *invUniverse, *invPieces)
		b.ReportMetric(l.perReplica, "B/replica")
		b.ReportMetric(float64(l.heapBytes)/(1<<30), "GiB")
		b.ReportMetric(float64(l.replicas), "replicas")
		b.ReportMetric(l.elapsed.Seconds(), "load_s")
		b.ReportMetric(l.tick.Seconds(), "tick_s")
	}
}
