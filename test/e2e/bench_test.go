package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// vmHWM returns the peak resident set of a process in bytes.
func vmHWM(t testing.TB, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(v)
			kb, _ := strconv.ParseInt(f[0], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// warmNeighbour starts a scheduler and a daemon that already holds url.
func warmNeighbour(b *testing.B, url, sum string) (*schedulerProc, *daemonProc) {
	s := startScheduler(b)
	warm := startDaemon(b, daemonOpts{name: "warm", scheduler: s.addr})
	out := filepath.Join(b.TempDir(), "warm.out")
	if code, msg := dfget(context.Background(), url, "-O", out, "--sock", warm.sock, "--no-progress"); code != 0 {
		b.Fatalf("warm-up dfget exited %d: %s", code, msg)
	}
	if got := fileSHA(b, out); got != sum {
		b.Fatalf("warm copy sha256 %s, want %s", got, sum)
	}
	os.Remove(out)
	return s, warm
}

// BenchmarkWarmNeighbour measures dfget of a 1 GiB file that a neighbour
// daemon on loopback already holds: a fresh daemon each iteration, so every
// byte crosses the peer path (fetch, verify, store, copy to the output).
func BenchmarkWarmNeighbour(b *testing.B) {
	const size = 1 << 30
	o := newOrigin(b)
	url, sum := o.addGen("big", size, 1)
	s, _ := warmNeighbour(b, url, sum)
	servedBefore := o.served.Load()
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		d := startDaemon(b, daemonOpts{name: fmt.Sprintf("cold%d", i), scheduler: s.addr})
		out := filepath.Join(b.TempDir(), "out")
		b.StartTimer()
		t0 := time.Now()
		code, msg := dfget(context.Background(), url, "-O", out, "--sock", d.sock, "--no-progress")
		b.StopTimer()
		b.Logf("iteration %d: %.0f MB/s", i, size/time.Since(t0).Seconds()/1e6)
		if code != 0 {
			b.Fatalf("dfget exited %d: %s", code, msg)
		}
		if got := fileSHA(b, out); got != sum {
			b.Fatalf("copy sha256 %s, want %s", got, sum)
		}
		b.ReportMetric(float64(vmHWM(b, d.cmd.Process.Pid))/(1<<20), "daemon-peak-RSS-MiB")
		os.Remove(out)
		d.stop(15)
		// Free the copy's pages now, so every iteration writes into recycled
		// page cache rather than memory the VM has never touched.
		os.RemoveAll(d.dataDir)
		b.StartTimer()
	}
	b.StopTimer()
	if extra := o.served.Load() - servedBefore; extra > 0 {
		b.Fatalf("origin served %d bytes after warm-up: the neighbour was not used", extra)
	}
}

// BenchmarkSmallFileOverhead measures a 4 KiB download through a daemon
// (a new task each time: register, go back to source, verify, copy out)
// against dfget --direct from the same origin. The difference is the P2P
// path's overhead.
func BenchmarkSmallFileOverhead(b *testing.B) {
	o := newOrigin(b)
	s := startScheduler(b)
	d := startDaemon(b, daemonOpts{name: "d", scheduler: s.addr})
	// a second cluster with a seed peer: the scheduler triggers the seed,
	// which fetches from the origin, and the daemon fetches from the seed
	s2 := startScheduler(b)
	startDaemon(b, daemonOpts{name: "seed", scheduler: s2.addr, seed: true})
	d2 := startDaemon(b, daemonOpts{name: "d2", scheduler: s2.addr})
	dir := b.TempDir()
	for _, mode := range []string{"direct", "daemon", "daemon+seed"} {
		b.Run(mode, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				url, sum := o.add(fmt.Sprintf("small-%s-%d", mode, i), 4096, uint64(i))
				out := filepath.Join(dir, fmt.Sprintf("%s-%d", mode, i))
				args := []string{url, "-O", out, "--no-progress"}
				switch mode {
				case "direct":
					args = append(args, "--direct")
				case "daemon":
					args = append(args, "--sock", d.sock)
				default:
					args = append(args, "--sock", d2.sock)
				}
				b.StartTimer()
				code, msg := dfget(context.Background(), args...)
				b.StopTimer()
				if code != 0 {
					b.Fatalf("dfget exited %d: %s", code, msg)
				}
				if got := fileSHA(b, out); got != sum {
					b.Fatalf("sha256 %s, want %s", got, sum)
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkDaemonRSS10G moves 10 GiB through two daemons (origin → first,
// first → second) and reports each daemon's peak RSS.
func BenchmarkDaemonRSS10G(b *testing.B) {
	if os.Getenv("DAMSELFLY_BENCH_10G") == "" {
		b.Skip("set DAMSELFLY_BENCH_10G=1: needs ~30 GiB of free disk")
	}
	const size = 10 << 30
	o := newOrigin(b)
	url, sum := o.addGen("huge", size, 3)
	s := startScheduler(b)
	b.SetBytes(size)
	for i := 0; i < b.N; i++ {
		first := startDaemon(b, daemonOpts{name: "first", scheduler: s.addr})
		second := startDaemon(b, daemonOpts{name: "second", scheduler: s.addr})
		for _, d := range []*daemonProc{first, second} {
			out := filepath.Join(b.TempDir(), "out")
			start := time.Now()
			code, msg := dfget(context.Background(), url, "-O", out, "--sock", d.sock, "--no-progress")
			if code != 0 {
				b.Fatalf("dfget on %s exited %d: %s", d.name, code, msg)
			}
			el := time.Since(start)
			if got := fileSHA(b, out); got != sum {
				b.Fatalf("sha256 %s, want %s", got, sum)
			}
			os.Remove(out)
			rss := vmHWM(b, d.cmd.Process.Pid)
			b.Logf("%s: 10 GiB in %s (%.0f MB/s), peak RSS %d MiB", d.name, el.Round(time.Millisecond), float64(size)/el.Seconds()/1e6, rss>>20)
			b.ReportMetric(float64(rss)/(1<<20), d.name+"-peak-RSS-MiB")
		}
		first.stop(15)
		second.stop(15)
	}
}
