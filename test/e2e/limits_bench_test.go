package e2e

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Host-wide limits over a long transfer: the achieved rate divided by the
// configured limit, for the download limit (a daemon fetching from the
// origin) and for the upload limit (a daemon serving a neighbour). The
// content is sized for limitSeconds at the limit.
const (
	limitRate    = 20 << 20 // bytes/s
	limitSeconds = 30
)

// window is how long the rate is averaged over for the worst-case figures.
const window = 5 * time.Second

// timedFetch runs dfget on d and returns how long it took, and the lowest
// and highest rate (as a fraction of limitRate) over the whole windows of
// the transfer, read from the counter name{match} on the limited daemon.
func timedFetch(b *testing.B, d, limited *daemonProc, name, match, url, sum string) (time.Duration, float64, float64) {
	b.Helper()
	out := filepath.Join(b.TempDir(), "out")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	stop := make(chan struct{})
	samples := make(chan []float64, 1)
	go func() {
		var v []float64
		t := time.NewTicker(window)
		defer t.Stop()
		v = append(v, metric(b, limited.metrics, name, match))
		for {
			select {
			case <-stop:
				samples <- v
				return
			case <-t.C:
				v = append(v, metric(b, limited.metrics, name, match))
			}
		}
	}()
	code, msg := dfget(ctx, url, "-O", out, "--sock", d.sock, "--no-progress")
	el := time.Since(start)
	close(stop)
	v := <-samples
	if code != 0 {
		b.Fatalf("dfget on %s exited %d: %s", d.name, code, msg)
	}
	lo, hi := 0.0, 0.0
	for i := 1; i < len(v); i++ {
		r := (v[i] - v[i-1]) / window.Seconds() / limitRate
		if i == 1 || r < lo {
			lo = r
		}
		hi = max(hi, r)
	}
	if got := fileSHA(b, out); got != sum {
		b.Fatalf("copy has sha256 %s, want %s", got, sum)
	}
	os.Remove(out)
	return el, lo, hi
}

// BenchmarkHostLimits reports dl_ratio and ul_ratio (achieved / limit over
// the whole transfer; medians over the iterations) and the lowest and highest
// ratio over any whole 5-second window (dl_min5s ... ul_max5s).
//
//	go test -run '^$' -bench BenchmarkHostLimits -benchtime 1x -count 3 -timeout 30m ./test/e2e/
func BenchmarkHostLimits(b *testing.B) {
	const size = limitRate * limitSeconds
	limit := strconv.Itoa(limitRate)
	o := newOrigin(b)
	var dl, ul []float64
	dlLo, dlHi, ulLo, ulHi := 10.0, 0.0, 10.0, 0.0
	for i := 0; i < b.N; i++ {
		s := startScheduler(b)
		url, sum := o.addGen("limits"+strconv.Itoa(i), size, uint64(100+i))

		// Download limit: the only peer fetches from the origin.
		d := startDaemon(b, daemonOpts{name: "limited", scheduler: s.addr,
			extra: []string{"--download-rate-limit", limit, "--upload-rate-limit", limit}})
		el, lo, hi := timedFetch(b, d, d, "damselfly_daemon_download_bytes_total", `source="origin"`, url, sum)
		dl = append(dl, float64(size)/el.Seconds()/limitRate)
		dlLo, dlHi = min(dlLo, lo), max(dlHi, hi)

		// Upload limit: d now holds the content and serves an unlimited
		// neighbour, whose every byte must come from d.
		fetcher := startDaemon(b, daemonOpts{name: "fetcher", scheduler: s.addr})
		el, lo, hi = timedFetch(b, fetcher, d, "damselfly_daemon_upload_bytes_total", "", url, sum)
		ul = append(ul, float64(size)/el.Seconds()/limitRate)
		ulLo, ulHi = min(ulLo, lo), max(ulHi, hi)
		if n := metric(b, fetcher.metrics, "damselfly_daemon_download_bytes_total", `source="origin"`); n > 0 {
			b.Errorf("the fetcher took %.0f bytes from the origin; the upload measurement is void", n)
		}
		b.Logf("iteration %d: download %.3f× limit, upload %.3f× limit", i, dl[i], ul[i])
		for _, p := range []*proc{fetcher.proc, d.proc, s.proc} {
			p.stop(syscall.SIGTERM)
		}
	}
	b.ReportMetric(median(dl), "dl_ratio")
	b.ReportMetric(median(ul), "ul_ratio")
	// the worst 5-second windows
	b.ReportMetric(dlLo, "dl_min5s")
	b.ReportMetric(dlHi, "dl_max5s")
	b.ReportMetric(ulLo, "ul_min5s")
	b.ReportMetric(ulHi, "ul_max5s")
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
