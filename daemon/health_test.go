package daemon

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/damselfly-io/damselfly/internal/obs"
	"github.com/damselfly-io/damselfly/scheduler"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runScheduler serves a real scheduler on addr ("127.0.0.1:0" for any port)
// until the returned stop is called.
func runScheduler(t *testing.T, addr string) (string, func()) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s, err := scheduler.New(scheduler.DefaultConfig(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Serve(ctx, lis); close(done) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return lis.Addr().String(), stop
}

func startHealthDaemon(t *testing.T, sched string, log io.Writer, mutate ...func(*Config)) (*Daemon, *prometheus.Registry) {
	t.Helper()
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.TLS.Insecure = true
	cfg.Scheduler = sched
	cfg.DataDir = filepath.Join(dir, "cache")
	cfg.Sock = filepath.Join(dir, "d.sock")
	cfg.ListenIP, cfg.AdvertiseIP = "127.0.0.1", "127.0.0.1"
	cfg.PeerPort, cfg.UploadPort, cfg.ProxyPort, cfg.MetricsPort = 0, 0, -1, -1
	for _, m := range mutate {
		m(&cfg)
	}
	reg := obs.NewRegistry()
	d, err := New(cfg, slog.New(slog.NewTextHandler(log, nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon run: %v", err)
		}
	})
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatalf("daemon did not start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("daemon not ready after 10s")
	}
	return d, reg
}

// waitHealth waits (bounded) until the daemon reports status and the gauge
// reads up.
func waitHealth(t *testing.T, d *Daemon, status string, up float64) obs.Health {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		h := d.Health()
		g := testutil.ToFloat64(d.metrics.schedulerUp)
		if h.Status == status && g == up {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("health %+v, scheduler_up %v; want %s and %v", h, g, status, up)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestHealthDegradedWhileTheSchedulerIsDown(t *testing.T) {
	addr, stop := runScheduler(t, "127.0.0.1:0")
	var log syncBuf
	d, _ := startHealthDaemon(t, addr, &log)
	waitHealth(t, d, obs.StatusOK, 1)

	stop()
	h := waitHealth(t, d, obs.StatusDegraded, 0)
	if len(h.Reasons) != 1 || !strings.Contains(h.Reasons[0], addr) || !strings.Contains(h.Reasons[0], "origin") {
		t.Errorf("degraded without saying why: %+v", h)
	}
	if n := strings.Count(log.String(), "no scheduler reachable"); n != 1 {
		t.Errorf("%d log lines about the lost scheduler, want 1:\n%s", n, log.String())
	}

	// The scheduler comes back on the same address.
	runScheduler(t, addr)
	waitHealth(t, d, obs.StatusOK, 1)
	if !strings.Contains(log.String(), "scheduler reachable again") {
		t.Errorf("recovery not logged:\n%s", log.String())
	}
}

func TestHealthSaysAtStartThatNoSchedulerAnswers(t *testing.T) {
	// A port that was free a moment ago: nothing answers there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	var log syncBuf
	d, _ := startHealthDaemon(t, addr, &log)
	waitHealth(t, d, obs.StatusDegraded, 0)
	lines := 0
	for _, l := range strings.Split(log.String(), "\n") {
		if strings.Contains(l, "no scheduler reachable") {
			lines++
			if !strings.Contains(l, "level=WARN") || !strings.Contains(l, addr) {
				t.Errorf("start line does not warn or name the scheduler: %s", l)
			}
		}
	}
	if lines != 1 {
		t.Errorf("%d start lines about the scheduler, want 1:\n%s", lines, log.String())
	}
}

func TestHealthWithoutSchedulerIsOK(t *testing.T) {
	d, reg := startHealthDaemon(t, "", io.Discard)
	if h := d.Health(); h.Status != obs.StatusOK {
		t.Errorf("a daemon configured without P2P is %+v", h)
	}
	if n, err := testutil.GatherAndCount(reg, "damselfly_daemon_scheduler_up"); err != nil || n != 0 {
		t.Errorf("scheduler_up exported without a scheduler configured: %d %v", n, err)
	}
}

// The host's declared capacity goes to the scheduler in every Register
// (Host.upload_bps/download_bps): upload_bps/download_bps when set, else
// the host-wide rate limits, else nothing (the scheduler measures).
func TestHostDeclaresCapacity(t *testing.T) {
	sched, _ := runScheduler(t, "127.0.0.1:0")
	for _, c := range []struct {
		name     string
		mutate   func(*Config)
		up, down int64
	}{
		{"declared", func(c *Config) { c.UploadBps, c.DownloadBps = 12_500_000, 125_000_000 }, 12_500_000, 125_000_000},
		{"rate limits", func(c *Config) { c.Upload.RateLimit, c.Download.RateLimit = 5_000_000, 7_000_000 }, 5_000_000, 7_000_000},
		{"declared beats the limit", func(c *Config) { c.UploadBps, c.Upload.RateLimit = 9_000_000, 5_000_000 }, 9_000_000, 0},
		{"nothing", func(*Config) {}, 0, 0},
	} {
		d, _ := startHealthDaemon(t, sched, io.Discard, c.mutate)
		if h := d.Host(); h.GetUploadBps() != c.up || h.GetDownloadBps() != c.down {
			t.Errorf("%s: host declares up %d down %d, want %d and %d", c.name, h.GetUploadBps(), h.GetDownloadBps(), c.up, c.down)
		}
	}
}
