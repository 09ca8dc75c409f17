package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/client"
	"github.com/damselfly-io/damselfly/core"
)

// randomFile writes size pseudo-random bytes to a new file and returns its
// path and sha256.
func randomFile(t testing.TB, size int, seed uint64) (string, string) {
	t.Helper()
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, seed+1))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	p := filepath.Join(t.TempDir(), "in.bin")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return p, hex.EncodeToString(s[:])
}

// An entry imported on one daemon is exported on others through the swarm —
// there is no origin — and survives the importer going away once another
// daemon holds it. Unknown IDs fail with exit 3 on every command.
func TestDfcacheImportExportAcrossDaemons(t *testing.T) {
	sched := startScheduler(t)
	a := startDaemon(t, daemonOpts{name: "importer", scheduler: sched.addr})
	b := startDaemon(t, daemonOpts{name: "peer-b", scheduler: sched.addr})
	c := startDaemon(t, daemonOpts{name: "peer-c", scheduler: sched.addr})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	in, sum := randomFile(t, 24<<20+12345, 77)

	if code, _, msg := dfcache(ctx, "import", in, "--id", "dataset/train", "--tag", "v1", "--sock", a.sock); code != 0 {
		t.Fatalf("import: exit %d: %s", code, msg)
	}
	out := filepath.Join(t.TempDir(), "out.bin")
	code, _, msg := dfcache(ctx, "export", "--id", "dataset/train", "--tag", "v1", "-O", out, "--sock", b.sock)
	if code != 0 {
		t.Fatalf("export on another daemon: exit %d: %s", code, msg)
	}
	if got := fileSHA(t, out); got != sum {
		t.Fatalf("exported copy has sha256 %s, want %s", got, sum)
	}
	if !strings.Contains(msg, "from the swarm") {
		t.Errorf("export summary %q does not say it came from the swarm", msg)
	}
	if n := metric(t, b.metrics, "damselfly_daemon_download_bytes_total", `source="peer"`); n < 24<<20 {
		t.Errorf("exporter got %.0f bytes from peers, want the whole entry", n)
	}
	code, st, msg := dfcache(ctx, "stat", "--id", "dataset/train", "--tag", "v1", "--sock", b.sock)
	if code != 0 || !bytes.Contains(st, []byte("state: complete")) {
		t.Fatalf("stat on the exporter: exit %d: %s %s", code, st, msg)
	}

	// The importer leaves; the exporter is a source now.
	a.stop(syscall.SIGTERM)
	out2 := filepath.Join(t.TempDir(), "out.bin")
	if code, _, msg := dfcache(ctx, "export", "--id", "dataset/train", "--tag", "v1", "-O", out2, "--sock", c.sock); code != 0 {
		t.Fatalf("export with the importer gone: exit %d: %s", code, msg)
	} else if got := fileSHA(t, out2); got != sum {
		t.Fatalf("second export has sha256 %s, want %s", got, sum)
	}

	// Unknown IDs: a clear error and exit 3, and no file.
	missing := filepath.Join(t.TempDir(), "missing.bin")
	code, _, msg = dfcache(ctx, "export", "--id", "no-such-entry", "-O", missing, "--sock", c.sock)
	if code != 3 || !strings.Contains(msg, "no peer holds it") {
		t.Errorf("export of an unknown id: exit %d, %q; want 3 and 'no peer holds it'", code, msg)
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Error("failed export left a file")
	}
	for _, cmd := range []string{"stat", "delete"} {
		if code, _, msg := dfcache(ctx, cmd, "--id", "no-such-entry", "--sock", c.sock); code != 3 {
			t.Errorf("%s of an unknown id: exit %d, %q; want 3", cmd, code, msg)
		}
	}
	// the wrong tag is another entry
	if code, _, msg := dfcache(ctx, "export", "--id", "dataset/train", "--tag", "v2", "-O", missing, "--sock", c.sock); code != 3 {
		t.Errorf("export under another tag: exit %d, %q; want 3", code, msg)
	}
	// an empty file is an entry like any other
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, nil, 0o644)
	if code, _, msg := dfcache(ctx, "import", empty, "--id", "empty", "--sock", b.sock); code != 0 {
		t.Fatalf("import of an empty file: exit %d: %s", code, msg)
	}
	emptyOut := filepath.Join(t.TempDir(), "empty.out")
	if code, _, msg := dfcache(ctx, "export", "--id", "empty", "-O", emptyOut, "--sock", c.sock); code != 0 {
		t.Errorf("export of an empty entry: exit %d: %s", code, msg)
	} else if st, err := os.Stat(emptyOut); err != nil || st.Size() != 0 {
		t.Errorf("exported empty entry: %v", err)
	}
	if code, _, msg := dfcache(ctx, "delete", "--id", "dataset/train", "--tag", "v1", "--sock", c.sock); code != 0 {
		t.Errorf("delete: exit %d: %s", code, msg)
	}
	if code, _, _ := dfcache(ctx, "stat", "--id", "dataset/train", "--tag", "v1", "--sock", c.sock); code != 3 {
		t.Errorf("stat after delete: exit %d, want 3", code)
	}
}

// requireRoot skips tests that mount file systems.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs for the full-disk test")
	}
}

// smallTmpfs mounts a tmpfs of size bytes and unmounts it at cleanup.
func smallTmpfs(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	mnt := filepath.Join(dir, "fs")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+strconv.FormatInt(size, 10), "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (%v): %s", err, out)
	}
	t.Cleanup(func() {
		// processes using it are stopped by their own cleanups, which run
		// first (registered later)
		if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

// A full cache disk: the reader gets a clear error (or, by default, dfget
// goes to the origin itself), never a corrupt file; the daemon keeps
// running and works again once space is freed.
func TestDiskFull(t *testing.T) {
	requireRoot(t)
	fs := smallTmpfs(t, 24<<20)
	o := newOrigin(t)
	// the only peer: the scheduler sends it to the origin
	sched := startScheduler(t)
	d := startDaemon(t, daemonOpts{name: "full", scheduler: sched.addr, dataDir: fs})
	url, sum := o.add("big", 12<<20, 808)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Leave about 4 MiB free.
	ballast := filepath.Join(fs, "ballast")
	if err := os.WriteFile(ballast, make([]byte, 20<<20-128<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	outDir := t.TempDir()
	out := filepath.Join(outDir, "out")
	// Through the daemon alone (the client package: no fallback).
	cl, err := client.Dial(ctx, d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	_, err = cl.Download(ctx, &daemonv1.DownloadRequest{Url: url, Output: out, Uid: -1, Gid: -1}, nil)
	if !errors.Is(err, core.ErrNoSpace) || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("download into a full cache: %v; want a no-space error", err)
	}
	emptyDir(t, outDir)

	// dfcache import: exit 8, and no entry left behind.
	big, _ := randomFile(t, 8<<20, 79)
	code, _, msg := dfcache(ctx, "import", big, "--id", "too-big", "--sock", d.sock)
	if code != 8 || !strings.Contains(msg, "no space left") {
		t.Errorf("import into a full cache: exit %d, %q; want 8 and 'no space left'", code, msg)
	}
	if code, _, _ := dfcache(ctx, "stat", "--id", "too-big", "--sock", d.sock); code != 3 {
		t.Errorf("failed import left an entry (stat exit %d)", code)
	}

	// dfget, by default, then fetches from the origin itself.
	code, msg = dfget(ctx, url, "-O", out, "--sock", d.sock, "--no-progress")
	if code != 0 {
		t.Fatalf("dfget into a full cache: exit %d: %s", code, msg)
	}
	if !strings.Contains(msg, "no space left") || !strings.Contains(msg, "downloading directly") {
		t.Errorf("dfget does not say why it went to the origin: %s", msg)
	}
	if got := fileSHA(t, out); got != sum {
		t.Fatalf("fallback copy has sha256 %s, want %s", got, sum)
	}
	os.Remove(out)

	// The daemon is alive, and once space is freed it works again.
	waitHTTP(t, d.metrics+"/healthy", d.proc)
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Download(ctx, &daemonv1.DownloadRequest{Url: url, Output: out, Uid: -1, Gid: -1}, nil); err != nil {
		t.Fatalf("download after space was freed: %v", err)
	}
	if got := fileSHA(t, out); got != sum {
		t.Fatalf("copy after recovery has sha256 %s, want %s", got, sum)
	}
}

// SIGHUP re-reads the config file: limits change without a restart, and an
// invalid file changes nothing.
func TestConfigReloadOnSIGHUP(t *testing.T) {
	sched := startScheduler(t)
	cfgPath := filepath.Join(t.TempDir(), "daemon.yaml")
	write := func(s string) {
		if err := os.WriteFile(cfgPath, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("download:\n  rate_limit: 1M\nupload:\n  max_concurrent: 8\n")
	d := startDaemon(t, daemonOpts{name: "reload", scheduler: sched.addr, extra: []string{"--config", cfgPath}})
	limit := func(name string) float64 {
		return metric(t, d.metrics, "damselfly_daemon_limit", `limit="`+name+`"`)
	}
	if got := limit("download_rate"); got != 1<<20 {
		t.Fatalf("download limit %v at start, want %d", got, 1<<20)
	}
	write("download:\n  rate_limit: 2M\n  max_concurrent_origin: 3\nupload:\n  max_concurrent: 8\n  rate_limit: 5M\n  peer_rate_limit: 1M\n")
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the reloaded limits", func() bool {
		return limit("download_rate") == 2<<20 && limit("upload_rate") == 5<<20 &&
			limit("upload_peer_rate") == 1<<20 && limit("max_concurrent_origin") == 3
	})
	write("cache:\n  high_watermark: 1G\n  low_watermark: 2G\n")
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // a reload that should change nothing
	waitHTTP(t, d.metrics+"/healthy", d.proc)
	if got := limit("download_rate"); got != 2<<20 {
		t.Fatalf("an invalid config file changed the download limit to %v", got)
	}
	if b, _ := os.ReadFile(d.log); !bytes.Contains(b, []byte("low_watermark")) {
		t.Error("the rejected reload is not explained in the log")
	}
}

// A daemon with a small cache evicts the least recently used task when a
// download crosses the high watermark, and keeps the one in use.
func TestCacheWatermarkEviction(t *testing.T) {
	o := newOrigin(t)
	sched := startScheduler(t)
	d := startDaemon(t, daemonOpts{name: "small-cache", scheduler: sched.addr,
		extra: []string{"--cache-high-watermark", "10M", "--cache-low-watermark", "6M"}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var ids []string
	for i, name := range []string{"one", "two", "three"} {
		url, sum := o.add(name, 4<<20, uint64(900+i))
		startFetch(ctx, t, d, url).check(t, sum)
		ids = append(ids, core.TaskID(url, core.TaskOptions{}))
	}
	waitFor(t, 20*time.Second, "an eviction", func() bool {
		return metric(t, d.metrics, "damselfly_daemon_cache_evictions_total", `reason="watermark"`) >= 1
	})
	cl, err := client.Dial(ctx, d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.StatTask(ctx, ids[0]); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("least recently used task still cached: %v", err)
	}
	if st, err := cl.StatTask(ctx, ids[2]); err != nil || !st.GetComplete() {
		t.Errorf("most recent task not cached: %v", err)
	}
	if size := metric(t, d.metrics, "damselfly_daemon_cache_size_bytes", ""); size > 10<<20 {
		t.Errorf("cache holds %.0f bytes after GC, above the high watermark", size)
	}
}

// The importer stays the entry's source across its own restart and the
// scheduler's: it reloads the entry from its cache and teaches a fresh
// scheduler the entry's shape and digests again.
func TestDfcacheSurvivesRestarts(t *testing.T) {
	sched := startScheduler(t)
	a := startDaemon(t, daemonOpts{name: "importer", scheduler: sched.addr})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	in, sum := randomFile(t, 6<<20+7, 78)
	if code, _, msg := dfcache(ctx, "import", in, "--id", "restart-me", "--sock", a.sock); code != 0 {
		t.Fatalf("import: exit %d: %s", code, msg)
	}
	a.stop(syscall.SIGTERM)
	a.restart(t)
	sched.stop(syscall.SIGTERM)
	sched2 := start(t, "scheduler-restarted", sched.cmd.Args[1:]...)
	waitHTTP(t, sched.metrics+"/healthy", sched2)

	b := startDaemon(t, daemonOpts{name: "exporter", scheduler: sched.addr})
	out := filepath.Join(t.TempDir(), "out.bin")
	var code int
	var msg string
	// the importer re-registers with backoff once the scheduler is back
	waitFor(t, 30*time.Second, "an export from the restarted importer", func() bool {
		code, _, msg = dfcache(ctx, "export", "--id", "restart-me", "-O", out, "--sock", b.sock, "-q")
		return code == 0
	})
	if got := fileSHA(t, out); got != sum {
		t.Fatalf("export after restarts has sha256 %s, want %s (last: %d %s)", got, sum, code, msg)
	}
}
