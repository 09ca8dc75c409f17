package daemon

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/client"
)

// A download that went to the origin because P2P was unavailable says why
// in its progress (dfget turns it into a warning); a download the daemon
// could run P2P, or served from the cache, carries no reason.
func TestProgressSaysWhyOrigin(t *testing.T) {
	content := bytes.Repeat([]byte("damselfly"), 100_000)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "f", time.Unix(0, 0), bytes.NewReader(content))
	}))
	defer origin.Close()
	// A scheduler address nothing listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	for _, tc := range []struct{ scheduler, want string }{{"", "no_scheduler"}, {dead, "scheduler_unreachable"}} {
		dir, err := os.MkdirTemp("", "dfbs-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		cfg := DefaultConfig()
		cfg.Scheduler = tc.scheduler
		cfg.DataDir = filepath.Join(dir, "data")
		cfg.Sock = filepath.Join(dir, "d.sock")
		cfg.ListenIP, cfg.AdvertiseIP = "127.0.0.1", "127.0.0.1"
		cfg.PeerPort, cfg.UploadPort, cfg.ProxyPort, cfg.MetricsPort = 0, 0, -1, -1
		d, err := New(cfg, slog.New(slog.DiscardHandler), nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() { errc <- d.Run(ctx) }()
		select {
		case <-d.Ready():
		case err := <-errc:
			t.Fatal(err)
		}
		c, err := client.Dial(ctx, cfg.Sock)
		if err != nil {
			t.Fatal(err)
		}
		get := func(n string) *daemonv1.DownloadProgress {
			final, err := c.Download(ctx, &daemonv1.DownloadRequest{Url: origin.URL + "/f", Output: filepath.Join(dir, n), Uid: -1, Gid: -1}, nil)
			if err != nil {
				t.Fatalf("scheduler %q: %v", tc.scheduler, err)
			}
			return final
		}
		if p := get("a"); p.GetBackSourceReason() != tc.want || p.GetOriginBytes() == 0 {
			t.Errorf("scheduler %q: reason %q, origin bytes %d; want %q", tc.scheduler, p.GetBackSourceReason(), p.GetOriginBytes(), tc.want)
		}
		if p := get("b"); !p.GetFromCache() || p.GetBackSourceReason() != "" {
			t.Errorf("scheduler %q: cached copy: from cache %v, reason %q", tc.scheduler, p.GetFromCache(), p.GetBackSourceReason())
		}
		c.Close()
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("daemon: %v", err)
		}
	}
}
