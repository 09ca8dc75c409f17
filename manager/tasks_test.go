package manager

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/damselfly-io/damselfly/api/managerv1"
	"github.com/damselfly-io/damselfly/api/peerv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon"
	"github.com/damselfly-io/damselfly/internal/config"
	"github.com/damselfly-io/damselfly/internal/pki"
	"github.com/damselfly-io/damselfly/scheduler"
)

// startScheduler runs a real scheduler on loopback and registers it with
// the manager (as the scheduler binary does); it returns the address.
func startScheduler(t *testing.T, e *env) string {
	t.Helper()
	cfg := scheduler.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	s, err := scheduler.New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Serve(ctx, lis, pki.ServerOptions(nil)...); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	port := lis.Addr().(*net.TCPAddr).Port
	if _, err := e.grpc.Register(context.Background(), &managerv1.RegisterRequest{Type: managerv1.ComponentType_COMPONENT_TYPE_SCHEDULER,
		Hostname: "sched", Ip: "127.0.0.1", Port: int32(port), Config: "listen: 127.0.0.1:0\n"}); err != nil {
		t.Fatal(err)
	}
	return lis.Addr().String()
}

// startDaemon runs a real daemon on loopback using the scheduler at sched.
func startDaemon(t *testing.T, name, sched string) *daemon.Daemon {
	t.Helper()
	dir := t.TempDir()
	cfg := daemon.DefaultConfig()
	cfg.Scheduler, cfg.Hostname = sched, name
	cfg.DataDir, cfg.Sock = filepath.Join(dir, "cache"), filepath.Join(dir, "d.sock")
	cfg.ListenIP, cfg.AdvertiseIP = "127.0.0.1", "127.0.0.1"
	cfg.TLS.Insecure = true
	cfg.PeerPort, cfg.UploadPort, cfg.ProxyPort, cfg.MetricsPort = 0, 0, -1, -1
	d, err := daemon.New(cfg, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatalf("daemon %s did not start: %v", name, err)
	}
	return d
}

func peerAddr(d *daemon.Daemon) string {
	h := d.Host()
	return net.JoinHostPort(h.GetIp(), strconv.Itoa(int(h.GetPeerPort())))
}

// fetch has the daemon fetch url into its cache (Peer.Preheat, as a
// preheat job does).
func fetch(t *testing.T, d *daemon.Daemon, url string) {
	t.Helper()
	conn, err := grpc.NewClient(peerAddr(d), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := peerv1.NewPeerClient(conn).Preheat(ctx, &peerv1.PreheatRequest{Task: &schedulerv1.TaskSpec{TaskId: core.TaskID(url, core.TaskOptions{}), Url: url}}); err != nil {
		t.Fatalf("fetch %s: %v", url, err)
	}
}

// TestTaskAPI: two real daemons fetch a file through a real scheduler; the
// task API lists it (with filters and paging), shows both peers and how
// much each holds, get_task lists them too, and DELETE evicts it from both
// daemons (a delete_task job with a result per peer) after which the
// scheduler forgets it. A scheduler that does not answer is reported, not
// fatal; a guest cannot evict.
func TestTaskAPI(t *testing.T) {
	forEachDB(t, func(t *testing.T, cfg Config) {
		cfg.Console.SampleInterval = config.Duration(100 * time.Millisecond)
		e := newEnv(t, cfg)
		blob := make([]byte, 700<<10)
		_, _ = rand.Read(blob)
		origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.ServeContent(w, r, "", time.Time{}, strings.NewReader(string(blob)))
		}))
		defer origin.Close()
		sched := startScheduler(t, e)
		d1, d2 := startDaemon(t, "d1", sched), startDaemon(t, "d2", sched)
		url := origin.URL + "/models/m.bin?sig=secret-signature"
		id := core.TaskID(url, core.TaskOptions{})
		fetch(t, d1, url)
		fetch(t, d2, url)

		// Each daemon's "done" reaches the scheduler just after its dfget
		// returns: ask until both are in (bounded).
		var (
			tasks []TaskInfo
			code  int
			h     http.Header
		)
		for range 100 {
			tasks = nil
			code, h = e.do("GET", "/api/v1/tasks", e.admin, nil, &tasks)
			if code != http.StatusOK || len(tasks) != 1 || tasks[0].DonePeers == 2 {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if code != http.StatusOK || len(tasks) != 1 || h.Get("X-Total-Count") != "1" {
			t.Fatalf("tasks: %d %+v", code, tasks)
		}
		ti := tasks[0]
		if ti.TaskID != id || ti.Peers != 2 || ti.DonePeers != 2 || ti.ContentLength != int64(len(blob)) || strings.Contains(ti.URL, "secret-signature") || !strings.HasSuffix(ti.URL, "/models/m.bin") {
			t.Fatalf("task %+v", ti)
		}
		for q, n := range map[string]int{"?url=models/m": 1, "?url=other": 0, "?task_id=" + id: 1, "?application=app": 0, "?per_page=1&page=2": 0} {
			var l []TaskInfo
			e.must(http.StatusOK, "GET", "/api/v1/tasks"+q, e.admin, nil, &l)
			if len(l) != n {
				t.Errorf("tasks%s: %d, want %d", q, len(l), n)
			}
		}
		// A peer's last piece report may reach the scheduler just after its
		// "done": ask until both peers' reports are in (bounded).
		var d TaskDetail
		for range 100 {
			d = TaskDetail{}
			e.must(http.StatusOK, "GET", "/api/v1/tasks/"+id, e.admin, nil, &d)
			complete := len(d.PeerList) == 2
			for _, p := range d.PeerList {
				complete = complete && p.Pieces == p.PieceCount
			}
			if complete {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if len(d.PeerList) != 2 {
			t.Fatalf("task peers %+v", d.PeerList)
		}
		for _, p := range d.PeerList {
			if !p.Done || p.Bytes != int64(len(blob)) || p.Pieces != p.PieceCount || p.IP != "127.0.0.1" || (p.Hostname != "d1" && p.Hostname != "d2") {
				t.Fatalf("peer %+v", p)
			}
		}
		e.must(http.StatusBadRequest, "GET", "/api/v1/tasks/not-an-id", e.admin, nil, nil)
		e.must(http.StatusNotFound, "GET", "/api/v1/tasks/"+strings.Repeat("0", 64), e.admin, nil, nil)

		// the overview samples the scheduler: all bytes came from the
		// origin or from the other peer
		// (piece reports may still be on their way: ask until they are in,
		// bounded)
		var ov Overview
		for range 100 {
			ov = Overview{}
			e.must(http.StatusOK, "GET", "/api/v1/overview?refresh=1", e.admin, nil, &ov)
			if ov.Current.PeerBytes+ov.Current.OriginBytes >= 2*int64(len(blob)) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if c := ov.Current; c.PeerBytes+c.OriginBytes != 2*int64(len(blob)) || c.OriginBytes < int64(len(blob)) || c.ActivePeers != 2 || c.Tasks != 1 || c.Schedulers != 1 || len(ov.Series) == 0 {
			t.Fatalf("overview %+v", ov.Current)
		}

		// get_task, by URL as dfget names it
		var j Job
		e.must(http.StatusCreated, "POST", "/api/v1/jobs", e.admin, map[string]any{"type": "get_task", "args": map[string]any{"url": url}}, &j)
		j = e.waitJob(j.ID)
		if j.State != StateSuccess || j.Result == nil || len(j.Result.Tasks) != 1 || j.Result.Tasks[0].TaskID != id || len(j.Result.Tasks[0].Peers) != 2 {
			t.Fatalf("get_task job: %+v %+v", j, j.Result)
		}
		for _, bad := range []map[string]any{
			{"type": "get_task"},
			{"type": "get_task", "args": map[string]any{}},
			{"type": "get_task", "args": map[string]any{"task_id": id, "url": url}},
			{"type": "delete_task", "args": map[string]any{"task_id": "xyz"}},
			{"type": "delete_task", "args": map[string]any{"task_id": id, "scope": "all"}},
			{"type": "evict", "args": map[string]any{"task_id": id}},
		} {
			e.must(http.StatusBadRequest, "POST", "/api/v1/jobs", e.admin, bad, nil)
		}

		// a registered scheduler that does not answer is reported
		dead, _ := net.Listen("tcp", "127.0.0.1:0")
		deadPort := dead.Addr().(*net.TCPAddr).Port
		dead.Close()
		if _, err := e.grpc.Register(context.Background(), &managerv1.RegisterRequest{Type: managerv1.ComponentType_COMPONENT_TYPE_SCHEDULER, Hostname: "dead", Ip: "127.0.0.1", Port: int32(deadPort)}); err != nil {
			t.Fatal(err)
		}
		code, h = e.do("GET", "/api/v1/tasks", e.admin, nil, &tasks)
		if code != http.StatusOK || len(tasks) != 1 || !strings.Contains(h.Get("X-Unreachable-Schedulers"), strconv.Itoa(deadPort)) {
			t.Fatalf("with a dead scheduler: %d %+v %q", code, tasks, h.Get("X-Unreachable-Schedulers"))
		}

		// a guest may look but not evict
		e.must(http.StatusCreated, "POST", "/api/v1/users", e.admin, map[string]string{"name": "viewer", "password": "viewer-pass-1"}, nil)
		gtok := e.signIn("viewer", "viewer-pass-1")
		e.must(http.StatusOK, "GET", "/api/v1/tasks/"+id, gtok, nil, nil)
		e.must(http.StatusForbidden, "DELETE", "/api/v1/tasks/"+id, gtok, nil, nil)
		e.must(http.StatusUnauthorized, "DELETE", "/api/v1/tasks/"+id, "", nil, nil)

		e.must(http.StatusAccepted, "DELETE", "/api/v1/tasks/"+id, e.admin, nil, &j)
		if j.Type != JobDeleteTask {
			t.Fatalf("delete made a %q job", j.Type)
		}
		j = e.waitJob(j.ID)
		if j.State != StateSuccess || len(j.Result.Tasks) != 1 {
			t.Fatalf("delete_task job: %s %q %+v", j.State, j.Error, j.Result)
		}
		got := map[string]bool{}
		for _, p := range j.Result.Tasks[0].Peers {
			if p.State != StateSuccess || !p.Deleted {
				t.Fatalf("peer result %+v", p)
			}
			got[p.Addr] = true
		}
		if !got[peerAddr(d1)] || !got[peerAddr(d2)] || len(got) != 2 {
			t.Fatalf("evicted on %v, want %s and %s", got, peerAddr(d1), peerAddr(d2))
		}
		for _, dd := range []*daemon.Daemon{d1, d2} {
			if _, ok := dd.Store().Get(id); ok {
				t.Fatalf("%s still holds the task", dd.Host().GetHostname())
			}
		}
		// the scheduler forgot both peers in the task
		e.must(http.StatusNotFound, "GET", "/api/v1/tasks/"+id, e.admin, nil, nil)
		var after []TaskInfo
		e.must(http.StatusOK, "GET", "/api/v1/tasks", e.admin, nil, &after)
		if len(after) != 0 {
			t.Fatalf("tasks after eviction: %+v", after)
		}
		// evicting what nobody holds fails with the reason
		e.must(http.StatusAccepted, "DELETE", "/api/v1/tasks/"+id, e.admin, nil, &j)
		if j = e.waitJob(j.ID); j.State != StateFailure || !strings.Contains(j.Error, "not found") {
			t.Fatalf("second eviction: %s %q", j.State, j.Error)
		}
		var jobs []Job
		e.must(http.StatusOK, "GET", "/api/v1/jobs?type=delete_task&sort=-id", e.admin, nil, &jobs)
		if len(jobs) != 2 || jobs[0].ID < jobs[1].ID {
			t.Fatalf("delete_task jobs newest first: %+v", jobs)
		}
	})
}

// TestOverviewCounters: the overview adds up what each scheduler's counters
// grew by, across a scheduler restart (its counters start again from zero),
// keeps a bounded series per cluster, and turns host totals into rates.
func TestOverviewCounters(t *testing.T) {
	o := newOverview(3)
	refs := []schedRef{{ID: 1, ClusterID: 1}, {ID: 2, ClusterID: 2}}
	at := time.Unix(1000, 0)
	started := int64(1)
	st := func(peer, origin int64, up int64) *schedulerv1.StatsResponse {
		return &schedulerv1.StatsResponse{PeerBytes: peer, OriginBytes: origin, BackToSource: 1, Registrations: 2, ActivePeers: 1,
			StartedAtMs: started, HostTraffic: []*schedulerv1.HostTraffic{{HostId: "h1", UploadBytes: up}}}
	}
	o.add(at, refs, []*schedulerv1.StatsResponse{st(100, 50, 0), st(10, 0, 0)})
	o.add(at.Add(10*time.Second), refs, []*schedulerv1.StatsResponse{st(300, 50, 1000), st(20, 5, 0)})
	// scheduler 1 restarted: its counters start again (back_to_source is
	// 1 again, which only the start time tells apart from no change)
	started = 2
	o.add(at.Add(20*time.Second), refs[:1], []*schedulerv1.StatsResponse{st(40, 10, 3000)})
	o.add(at.Add(30*time.Second), refs[:1], []*schedulerv1.StatsResponse{st(40, 10, 3000)})
	snap := o.snapshot(10 * time.Second)
	if len(snap.Clusters) != 2 {
		t.Fatalf("clusters %+v", snap.Clusters)
	}
	c1 := snap.Clusters[0]
	if len(c1.Series) != 3 {
		t.Fatalf("cluster 1 keeps %d samples, want the last 3", len(c1.Series))
	}
	if c1.Current.PeerBytes != 300+40 || c1.Current.OriginBytes != 50+10 || c1.Current.BackToSource != 2 {
		t.Fatalf("cluster 1 totals %+v", c1.Current)
	}
	if c2 := snap.Clusters[1].Current; c2.PeerBytes != 20 || c2.OriginBytes != 5 {
		t.Fatalf("cluster 2 totals %+v", c2)
	}
	if snap.Current.At != at.Add(30*time.Second).UnixMilli() || snap.Current.PeerBytes != 340 {
		t.Fatalf("sum %+v", snap.Current)
	}
	h, ok := o.host("h1")
	if !ok || h.UploadBytes != 3000 || h.UploadRate != 0 {
		t.Fatalf("host h1 %+v", h)
	}
	// the rate between two reports 10 s apart
	o.add(at.Add(40*time.Second), refs[:1], []*schedulerv1.StatsResponse{st(40, 10, 8000)})
	if c := o.snapshot(time.Second).Clusters[0].Current; c.PeerBytes != 340 || c.BackToSource != 2 {
		t.Fatalf("no growth counted as growth: %+v", c)
	}
	if h, _ := o.host("h1"); h.UploadRate != 500 {
		t.Fatalf("upload rate %v, want 500 B/s", h.UploadRate)
	}
	// a host nobody reports is forgotten after a while
	o.add(at.Add(40*time.Second+hostForget+time.Second), refs[:1], []*schedulerv1.StatsResponse{{StartedAtMs: started}})
	if _, ok := o.host("h1"); ok {
		t.Fatal("a host unreported for long is still kept")
	}
}

// TestOverviewSameMillisecond: the ticker's sample and a ?refresh=1 that
// land in one millisecond are one point of the series, not a cluster
// counted twice in the sum.
func TestOverviewSameMillisecond(t *testing.T) {
	o := newOverview(10)
	refs := []schedRef{{ID: 1, ClusterID: 1}}
	at := time.Unix(1000, 0)
	st := func(peer int64) *schedulerv1.StatsResponse {
		return &schedulerv1.StatsResponse{PeerBytes: peer, ActivePeers: 2, Tasks: 1, StartedAtMs: 1}
	}
	o.add(at, refs, []*schedulerv1.StatsResponse{st(100)})
	o.add(at, refs, []*schedulerv1.StatsResponse{st(150)})
	// and one that was asked earlier but arrives later
	o.add(at.Add(-time.Millisecond), refs, []*schedulerv1.StatsResponse{st(150)})
	snap := o.snapshot(time.Second)
	if c := snap.Current; len(snap.Series) != 1 || c.Schedulers != 1 || c.Tasks != 1 || c.ActivePeers != 2 || c.PeerBytes != 150 || c.At != at.UnixMilli() {
		t.Fatalf("series %+v", snap.Series)
	}
}

// TestTaskAPISchedulersDown: with no scheduler answering, the task API says
// so (503) instead of claiming the swarm is empty, and a get_task job fails
// with the reason.
func TestTaskAPISchedulersDown(t *testing.T) {
	forEachDB(t, func(t *testing.T, cfg Config) {
		cfg.Console.SchedulerTimeout = config.Duration(2 * time.Second)
		e := newEnv(t, cfg)
		var tasks []TaskInfo
		if code, _ := e.do("GET", "/api/v1/tasks", e.admin, nil, &tasks); code != http.StatusOK || len(tasks) != 0 {
			t.Fatalf("no scheduler at all: %d %v", code, tasks)
		}
		dead, _ := net.Listen("tcp", "127.0.0.1:0")
		port := dead.Addr().(*net.TCPAddr).Port
		dead.Close()
		if _, err := e.grpc.Register(context.Background(), &managerv1.RegisterRequest{Type: managerv1.ComponentType_COMPONENT_TYPE_SCHEDULER, Hostname: "dead", Ip: "127.0.0.1", Port: int32(port)}); err != nil {
			t.Fatal(err)
		}
		id := strings.Repeat("ab", 32)
		e.must(http.StatusServiceUnavailable, "GET", "/api/v1/tasks", e.admin, nil, nil)
		e.must(http.StatusServiceUnavailable, "GET", "/api/v1/tasks/"+id, e.admin, nil, nil)
		var j Job
		e.must(http.StatusCreated, "POST", "/api/v1/jobs", e.admin, map[string]any{"type": "get_task", "args": map[string]any{"task_id": id}}, &j)
		if j = e.waitJob(j.ID); j.State != StateFailure || !strings.Contains(j.Error, "no scheduler answered") {
			t.Fatalf("get_task with no scheduler: %s %q", j.State, j.Error)
		}
	})
}

func TestTaskArgsIDs(t *testing.T) {
	a := TaskArgs{URL: "dfcache://models/llama", Tag: "v2"}
	if err := a.validate(); err != nil || a.TaskID != core.CacheTaskID("models/llama", "v2") {
		t.Fatalf("dfcache entry: %v %s", err, a.TaskID)
	}
	b := TaskArgs{URL: "https://o.example/f?x=1&sig=2", FilterQuery: []string{"sig"}, Application: "app"}
	if err := b.validate(); err != nil || b.TaskID != core.TaskID(b.URL, core.TaskOptions{FilteredQuery: []string{"sig"}, Application: "app"}) {
		t.Fatalf("url: %v %s", err, b.TaskID)
	}
	for _, bad := range []TaskArgs{{}, {TaskID: "x"}, {URL: "not a url"}, {TaskID: strings.Repeat("a", 64), URL: "https://o/f"}, {TaskID: strings.Repeat("a", 64), ClusterIDs: []int64{0}}} {
		if err := bad.validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
