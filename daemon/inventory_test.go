package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/peerv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
)

// inventoryScheduler refuses every Announce (downloads go to the origin)
// and keeps each host's inventory as its batches say, acknowledging each.
type inventoryScheduler struct {
	schedulerv1.UnimplementedSchedulerServer
	announces atomic.Int64
	streams   atomic.Int64
	open      atomic.Int64

	mu       sync.Mutex
	held     map[string]bool // task IDs in the open stream's inventory
	versions []uint64
	bad      string // a protocol error the daemon made
}

func (f *inventoryScheduler) Announce(grpc.BidiStreamingServer[schedulerv1.PeerMessage, schedulerv1.SchedulerMessage]) error {
	f.announces.Add(1)
	return status.Error(codes.Unavailable, "no swarm here")
}

func (f *inventoryScheduler) Inventory(stream grpc.BidiStreamingServer[schedulerv1.InventoryMessage, schedulerv1.InventoryReply]) error {
	f.streams.Add(1)
	f.open.Add(1)
	defer func() {
		f.mu.Lock()
		f.held = nil // the stream's end: the host's holders leave
		f.mu.Unlock()
		f.open.Add(-1)
	}()
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	f.mu.Lock()
	if m.GetHello().GetPeerId() == "" || m.GetHello().GetHost().GetId() == "" {
		f.bad = "hello without a peer ID or host"
	}
	f.held = map[string]bool{}
	f.versions = nil
	f.mu.Unlock()
	for {
		m, err := stream.Recv()
		if err != nil {
			return nil
		}
		b := m.GetBatch()
		f.mu.Lock()
		if n := len(f.versions); n > 0 && b.GetVersion() <= f.versions[n-1] {
			f.bad = fmt.Sprintf("version %d after %d", b.GetVersion(), f.versions[n-1])
		}
		if len(b.GetAdded())+len(b.GetRemoved()) > inventoryBatch {
			f.bad = "batch too large"
		}
		f.versions = append(f.versions, b.GetVersion())
		for _, id := range b.GetRemoved() {
			delete(f.held, id)
		}
		for _, e := range b.GetAdded() {
			n := core.PieceCount(e.GetContentLength(), e.GetPieceSize())
			if uint32(len(e.GetPieceDigests())) != n || len(e.GetTask().GetHeaders()) > 0 || core.CheckSpec(e.GetTask().GetTaskId(), e.GetTask().GetUrl(), "", "", "", nil, nil) != nil {
				f.bad = "entry not complete or with headers: " + e.String()
			}
			f.held[e.GetTask().GetTaskId()] = true
		}
		f.mu.Unlock()
		if err := stream.Send(&schedulerv1.InventoryReply{Applied: b.GetVersion()}); err != nil {
			return nil
		}
	}
}

func (f *inventoryScheduler) heldIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.held))
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A daemon's complete tasks go into one inventory stream, not one Announce
// each; deleting a task removes it from the inventory; a daemon restarted
// on the same cache offers what the cache holds again, on one stream.
func TestInventoryCarriesTheCache(t *testing.T) {
	const n = 12
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("content of " + r.URL.Path))
	}))
	t.Cleanup(origin.Close)
	fake := &inventoryScheduler{}
	schedAddr, _ := serveScheduler(t, fake)
	dir := t.TempDir()
	cfgFor := func(c *Config) {
		c.Scheduler = schedAddr
		c.DataDir = filepath.Join(dir, "cache")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, done := startDaemonCtx(t, ctx, cfgFor)
	var want []string
	for i := range n {
		url := fmt.Sprintf("%s/f%d", origin.URL, i)
		id := core.TaskID(url, core.TaskOptions{})
		want = append(want, id)
		c, _, release, err := d.openTask(taskRequest{spec: &schedulerv1.TaskSpec{TaskId: id, Url: url}})
		if err != nil {
			t.Fatal(err)
		}
		<-c.done
		release()
		if c.err != nil {
			t.Fatal(c.err)
		}
	}
	slices.Sort(want)
	waitUntil(t, "every cached task in the inventory", func() bool { return slices.Equal(fake.heldIDs(), want) })
	if s := fake.streams.Load(); s != 1 {
		t.Errorf("%d inventory streams for one host and one scheduler, want 1", s)
	}
	if a := fake.announces.Load(); a != n {
		t.Errorf("%d announces, want the %d downloads' only", a, n)
	}
	// The conductors ended after their downloads.
	waitUntil(t, "conductors gone", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return len(d.conductors) == 0
	})

	h := d.Host()
	conn, err := grpc.NewClient(net.JoinHostPort(h.GetIp(), strconv.Itoa(int(h.GetPeerPort()))), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := peerv1.NewPeerClient(conn).DeleteTask(context.Background(), &peerv1.DeleteTaskRequest{TaskId: want[0]}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the deleted task out of the inventory", func() bool { return slices.Equal(fake.heldIDs(), want[1:]) })

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("daemon run: %v", err)
	}
	waitUntil(t, "the stream closed with the daemon", func() bool { return fake.open.Load() == 0 })
	// Restarted on the same cache: the complete tasks are offered again,
	// on one new stream, with no Announce.
	announces := fake.announces.Load()
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	startDaemonCtx(t, ctx2, cfgFor)
	waitUntil(t, "the cache offered again after a restart", func() bool { return slices.Equal(fake.heldIDs(), want[1:]) })
	if s := fake.streams.Load(); s != 2 {
		t.Errorf("%d inventory streams over two daemon runs, want 2", s)
	}
	if a := fake.announces.Load(); a != announces {
		t.Errorf("%d announces at start for cached tasks, want none", a-announces)
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if fake.bad != "" {
		t.Fatal(fake.bad)
	}
}

// startDaemonCtx starts a daemon like startProxyDaemon, run until ctx ends;
// done yields Run's error.
func startDaemonCtx(t *testing.T, ctx context.Context, mutate func(*Config)) (*Daemon, <-chan error) {
	t.Helper()
	base := t.TempDir()
	cfg := DefaultConfig()
	cfg.DataDir = filepath.Join(base, "cache")
	cfg.Sock = filepath.Join(base, "d.sock")
	cfg.ListenIP, cfg.AdvertiseIP = "127.0.0.1", "127.0.0.1"
	cfg.PeerPort, cfg.UploadPort, cfg.ProxyPort, cfg.MetricsPort = 0, 0, 0, -1
	cfg.LogLevel = "error"
	cfg.TLS.Insecure = true
	mutate(&cfg)
	d, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		done <- d.Run(ctx)
		close(finished)
	}()
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatal("daemon not ready")
	}
	t.Cleanup(func() {
		select {
		case <-finished:
		case <-time.After(10 * time.Second):
			t.Error("daemon did not stop")
		}
	})
	return d, done
}

// startInventoryScheduler serves a fresh inventoryScheduler on 127.0.0.1:0.
func startInventoryScheduler(t *testing.T) (*inventoryScheduler, string, *grpc.Server) {
	t.Helper()
	fake := &inventoryScheduler{}
	addr, gs := serveScheduler(t, fake)
	return fake, addr, gs
}

// With two schedulers each task's entry goes to its home (the hash ring):
// one stream each. When one scheduler becomes unreachable its entries move
// to the other, as an Announce falls back.
func TestInventoryFollowsTheRing(t *testing.T) {
	const n = 16
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("content of " + r.URL.Path))
	}))
	t.Cleanup(origin.Close)
	fa, addrA, gsA := startInventoryScheduler(t)
	fb, addrB, _ := startInventoryScheduler(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, _ := startDaemonCtx(t, ctx, func(c *Config) { c.Scheduler = addrA })
	if err := d.setSchedulers(ctx, []string{addrA, addrB}); err != nil {
		t.Fatal(err)
	}
	var all, onA, onB []string
	for i := range n {
		url := fmt.Sprintf("%s/r%d", origin.URL, i)
		id := core.TaskID(url, core.TaskOptions{})
		all = append(all, id)
		if ringScore(id, addrA) > ringScore(id, addrB) {
			onA = append(onA, id)
		} else {
			onB = append(onB, id)
		}
		c, _, release, err := d.openTask(taskRequest{spec: &schedulerv1.TaskSpec{TaskId: id, Url: url}})
		if err != nil {
			t.Fatal(err)
		}
		<-c.done
		release()
		if c.err != nil {
			t.Fatal(c.err)
		}
	}
	if len(onA) == 0 || len(onB) == 0 {
		t.Fatalf("hash split %d/%d: the test needs tasks on both", len(onA), len(onB))
	}
	slices.Sort(all)
	slices.Sort(onA)
	slices.Sort(onB)
	waitUntil(t, "each task at its home", func() bool {
		return slices.Equal(fa.heldIDs(), onA) && slices.Equal(fb.heldIDs(), onB)
	})
	gsA.Stop()
	waitUntil(t, "A's tasks moved to B while A is unreachable", func() bool { return slices.Equal(fb.heldIDs(), all) })
	fb.mu.Lock()
	defer fb.mu.Unlock()
	if fb.bad != "" {
		t.Fatal(fb.bad)
	}
}

// inventory: false (schedulers older than the Inventory RPC) keeps one
// Announce stream per cached task and opens no inventory stream.
func TestInventoryOff(t *testing.T) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("content"))
	}))
	t.Cleanup(origin.Close)
	fake, addr, _ := startInventoryScheduler(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, _ := startDaemonCtx(t, ctx, func(c *Config) { c.Scheduler, c.Inventory = addr, false })
	url := origin.URL + "/f"
	c, _, release, err := d.openTask(taskRequest{spec: &schedulerv1.TaskSpec{TaskId: core.TaskID(url, core.TaskOptions{}), Url: url}})
	if err != nil {
		t.Fatal(err)
	}
	<-c.done
	release()
	// The download's announce, then the complete task's own.
	waitUntil(t, "the complete task announced on its own stream", func() bool { return fake.announces.Load() >= 2 })
	if n := fake.streams.Load(); n != 0 {
		t.Fatalf("%d inventory streams with inventory: false", n)
	}
}
