package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The all-in-one node's one metrics port shows the seed peer's metrics
// beside the daemon's, told apart by role, and the Dragonfly names when
// asked for.
func TestAllInOneExposesSeedMetrics(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"all-in-one", "--data-dir", dir, "--sock", filepath.Join(dir, "d.sock"),
			"--scheduler-listen", "127.0.0.1:0", "--peer-port", "0", "--upload-port", "0", "--proxy-port", "-1",
			"--seed-peer-port", "0", "--seed-upload-port", "0", "--metrics-port", strconv.Itoa(port),
			"--metrics-dragonfly-compat", "--log-level", "error"}, io.Discard, io.Discard)
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("all-in-one exited %d", code)
		}
	}()
	var body string
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			if strings.Contains(body, `role="seed"`) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no seed metrics after 20s (%v):\n%s", err, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, want := range []string{
		`damselfly_daemon_upload_bytes_total{role="seed"}`,
		`damselfly_daemon_upload_bytes_total{role="daemon"}`,
		`damselfly_scheduler_tasks `,
		`dragonfly_dfdaemon_upload_traffic_total{role="seed"}`,
		`dragonfly_scheduler_download_peer_total`,
		`damselfly_daemon_scheduler_up{role="seed"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
