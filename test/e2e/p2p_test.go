package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSwarmDownloads fetches files of awkward sizes on every daemon at once:
// each copy must be exact and the origin must serve about one copy.
func TestSwarmDownloads(t *testing.T) {
	o := newOrigin(t)
	c := startCluster(t, 5)
	const piece = 256 << 10 // the piece size for files this small
	sizes := []int{0, 1, piece - 1, piece, piece + 1, 200 << 20}
	if testing.Short() {
		sizes = sizes[:5]
	}
	for i, size := range sizes {
		t.Run(fmt.Sprintf("%dB", size), func(t *testing.T) {
			url, sum := o.add(fmt.Sprintf("file-%d", size), size, uint64(i+1))
			before := o.served.Load()
			fetchAll(t, c.daemons, url, sum)
			served := o.served.Load() - before
			if limit := int64(float64(size) * 1.05); served > limit && served > 0 && size > 0 {
				t.Errorf("origin served %d bytes for a %d-byte file to %d daemons; want ≤ %d", served, size, len(c.daemons), limit)
			}
			t.Logf("%d bytes: origin served %d bytes (%.2f×)", size, served, float64(served)/float64(max(size, 1)))
		})
	}
	// the metrics say what happened
	if v := metric(t, c.sched.metrics, "damselfly_scheduler_decisions_total", `decision="parents"`); v < float64(len(c.daemons)) {
		t.Errorf("scheduler parent decisions %v, want ≥ %d", v, len(c.daemons))
	}
	var fromPeers float64
	for _, d := range c.daemons {
		fromPeers += metric(t, d.metrics, "damselfly_daemon_download_bytes_total", `source="peer"`)
	}
	if fromPeers == 0 {
		t.Error("no daemon reports bytes from peers")
	}
	if v := metric(t, c.seed.metrics, "damselfly_daemon_upload_bytes_total", ""); v == 0 {
		t.Error("seed peer reports no upload bytes")
	}
}

// TestAllInOne runs the README's first command (on free ports) and
// downloads through it with dfget.
func TestAllInOne(t *testing.T) {
	o := newOrigin(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "daemon.sock")
	mport := freePort(t)
	p := start(t, "all-in-one", "all-in-one", "--data-dir", dir, "--sock", sock,
		"--scheduler-listen", "127.0.0.1:"+strconv.Itoa(freePort(t)), "--metrics-port", strconv.Itoa(mport),
		"--peer-port", "0", "--upload-port", "0", "--seed-peer-port", "0", "--seed-upload-port", "0", "--proxy-port", "0")
	metrics := "http://127.0.0.1:" + strconv.Itoa(mport)
	waitHTTP(t, metrics+"/healthy", p)
	waitSock(t, sock, p)
	url, sum := o.add("aio", 3<<20, 42)
	for i := 0; i < 2; i++ { // second time from the local cache
		out := filepath.Join(dir, fmt.Sprintf("out%d", i))
		if code, msg := dfget(context.Background(), url, "-O", out, "--sock", sock, "--digest", "sha256:"+sum); code != 0 {
			t.Fatalf("dfget exited %d: %s", code, msg)
		}
		if got := fileSHA(t, out); got != sum {
			t.Fatalf("sha256 %s, want %s", got, sum)
		}
	}
	// The outputs are copies written through the caller's own file, never
	// links to the cache: editing one in place must not leak into later
	// downloads (which still come from the cache).
	f, err := os.OpenFile(filepath.Join(dir, "out0"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("tampered"), 1000)
	f.Close()
	out := filepath.Join(dir, "out-after-edit")
	if code, msg := dfget(context.Background(), url, "-O", out, "--sock", sock); code != 0 {
		t.Fatalf("dfget after edit exited %d: %s", code, msg)
	}
	if got := fileSHA(t, out); got != sum {
		t.Fatalf("after an in-place edit of an earlier output, a new download has sha256 %s, want %s", got, sum)
	}
	if o.served.Load() != 3<<20 {
		t.Errorf("origin served %d bytes, want one copy (%d)", o.served.Load(), 3<<20)
	}
	// the seed peer fetched it (scheduler triggered it), the daemon got it from the seed
	if v := metric(t, metrics, "damselfly_scheduler_seed_triggers_total", ""); v < 1 {
		t.Errorf("seed triggers %v, want ≥ 1", v)
	}
	if v := metric(t, metrics, "damselfly_daemon_downloads_total", `outcome="success",source="peer"`); v < 1 {
		t.Errorf("daemon downloads from peers %v, want ≥ 1", v)
	}
	if v := metric(t, metrics, "damselfly_daemon_cache_bytes_total", ""); v != 2*3<<20 {
		t.Errorf("bytes served from cache %v, want %d", v, 2*3<<20)
	}
}

// TestStreamToStdout: `dfget -O -` streams the content in order through the
// daemon (pieces fetched near-sequentially), from a peer and from the cache,
// and directly when asked; a wrong digest is reported after the bytes.
func TestStreamToStdout(t *testing.T) {
	o := newOrigin(t)
	c := startCluster(t, 2)
	url, sum := o.add("streamed", 5<<20+123, 77)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i, args := range [][]string{
		{url, "-O", "-", "--sock", c.daemons[0].sock},                              // seed → daemon 0
		{url, "-O", "-", "--sock", c.daemons[1].sock, "--digest", "sha256:" + sum}, // daemon 0 or seed → daemon 1
		{url, "-O", "-", "--sock", c.daemons[1].sock},                              // daemon 1's cache
		{url, "-O", "-", "--direct"},
	} {
		code, out, errs := dfgetStdout(ctx, args...)
		if code != 0 {
			t.Fatalf("run %d: dfget exited %d: %s", i, code, errs)
		}
		h := sha256.Sum256(out)
		if got := hex.EncodeToString(h[:]); got != sum {
			t.Fatalf("run %d: streamed %d bytes with sha256 %s, want %s", i, len(out), got, sum)
		}
	}
	if served := o.served.Load(); served != 2*(5<<20+123) {
		t.Errorf("origin served %d bytes: want one copy for the swarm and one for --direct", served)
	}
	bad := "sha256:" + strings.Repeat("0", 64)
	if code, _, errs := dfgetStdout(ctx, url, "-O", "-", "--direct", "--digest", bad); code != 4 {
		t.Fatalf("wrong digest, direct stream: exit %d (%s), want 4", code, errs)
	}
	// Through a daemon, a content that fails its digest is never streamed
	// whole: its last piece waits for the whole-content check.
	url2, _ := o.add("streamed-bad", 3<<20+9, 78)
	code, out, errs := dfgetStdout(ctx, url2, "-O", "-", "--sock", c.daemons[0].sock, "--digest", bad)
	if code == 0 || len(out) >= 3<<20+9 {
		t.Fatalf("wrong digest through the daemon: exit %d, %d bytes streamed (%s); want a failure before the last piece", code, len(out), errs)
	}
}

// TestOutputIsACopy: an output is written by the daemon through the file
// dfget created (a copy of the content, piece by piece), never a hard link
// to the cache (whose files only root may read, and which a user must not
// be able to change); the old --hardlink-output flag is accepted and
// ignored. The copy holds exactly the content.
func TestOutputIsACopy(t *testing.T) {
	o := newOrigin(t)
	s := startScheduler(t)
	url, sum := o.add("copied", 3<<20+5, 91)
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{"default", nil},
		{"old-flag", []string{"--hardlink-output=true"}},
	} {
		d := startDaemon(t, daemonOpts{name: tc.name, scheduler: s.addr, extra: tc.extra})
		out := filepath.Join(d.dataDir, "out")
		if code, msg := dfget(context.Background(), url, "-O", out, "--sock", d.sock); code != 0 {
			t.Fatalf("%s: dfget exited %d: %s", tc.name, code, msg)
		}
		if got := fileSHA(t, out); got != sum {
			t.Fatalf("%s: sha256 %s, want %s", tc.name, got, sum)
		}
		st, err := os.Stat(out)
		if err != nil {
			t.Fatal(err)
		}
		if n := st.Sys().(*syscall.Stat_t).Nlink; n != 1 {
			t.Errorf("%s: output has %d links, want 1", tc.name, n)
		}
	}
}

// TestRelayedPipeline runs the default pipeline (seed → peer0 → peer1 → …)
// with every host's download held to 8 MB/s, so each parent is still
// receiving most pieces when its child asks for them: children must get
// them relayed (cut-through) and every copy must be exact. With relays off
// the same run must relay nothing.
func TestRelayedPipeline(t *testing.T) {
	o := newOrigin(t)
	const size = 12 << 20
	for _, relay := range []bool{true, false} {
		t.Run(fmt.Sprintf("relay=%v", relay), func(t *testing.T) {
			c := startCluster(t, 3, "--download-rate-limit", "8M", "--relay="+strconv.FormatBool(relay))
			url, sum := o.add(fmt.Sprintf("relayed-%v", relay), size, 77)
			before := o.served.Load()
			fetchAll(t, c.daemons, url, sum)
			if served := o.served.Load() - before; served > size*105/100 {
				t.Errorf("origin served %d bytes for %d", served, size)
			}
			all := append([]*daemonProc{c.seed}, c.daemons...)
			relayed := sumMetric(t, all, "damselfly_daemon_uploads_relayed_total", "")
			corrupt := sumMetric(t, all, "damselfly_daemon_piece_failures_total", `reason="corrupt"`)
			t.Logf("relay=%v: %v uploads relayed, %v corrupt pieces", relay, relayed, corrupt)
			if relay && relayed < 1 {
				t.Error("no piece was relayed: every hop waited for whole pieces")
			}
			if !relay && relayed != 0 {
				t.Errorf("%v pieces relayed with --relay=false", relayed)
			}
			if corrupt != 0 {
				t.Errorf("%v corrupt pieces counted", corrupt)
			}
		})
	}
}
