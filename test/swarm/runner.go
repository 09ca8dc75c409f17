package swarm

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/damselfly-io/damselfly/test/oci"
)

func getJSON(ctx context.Context, c *http.Client, url string, v any) error {
	body, err := httpGet(ctx, c, url)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decode %s: %w", url, err)
	}
	return nil
}

// cpuTimes reads the machine-wide busy and total jiffies from /proc/stat.
func cpuTimes() (busy, total int64, err error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("read /proc/stat: %w", err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("parse /proc/stat: %q", line)
	}
	// user nice system idle iowait irq softirq steal (guest is inside user)
	for i, s := range f[1:min(len(f), 9)] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("parse /proc/stat: %w", err)
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total, nil
}

// churnVictims are the peers killed mid-run in the churn scenario, spread
// over the index range; the same hosts in every system.
func (c *Config) churnVictims(peers []*Host) map[string]bool {
	v := map[string]bool{}
	for i := range c.ChurnVictims(len(peers)) {
		v[peers[i].Name] = true
	}
	return v
}

// churnAt is when churn kills its victims: ChurnAt, or T*/2.
func (c *Config) churnAt(lb Bound) time.Duration {
	if c.ChurnAt > 0 {
		return c.ChurnAt
	}
	return time.Duration(lb.TStar / 2 * float64(time.Second))
}

// runSystem runs one system on the network and measures it. Failures are
// recorded in the result, not returned: the other systems still run.
func runSystem(ctx context.Context, log *slog.Logger, cfg Config, netw *Network, sys, work, blob, digest string, im *oci.Image, lb Bound) (r SystemResult) {
	r = SystemResult{Name: sys}
	started := time.Now()
	defer func() { r.WallS = time.Since(started).Seconds() }()
	e := &sysEnv{
		cfg:    cfg,
		netw:   netw,
		ps:     &procSet{},
		dir:    filepath.Join(work, sys),
		logDir: filepath.Join(cfg.OutDir, "logs", sys),
		blob:   blob,
		image:  im,
		log:    log,
	}
	e.stats = e.originStats
	for _, d := range []string{e.dir, e.logDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			r.Error = err.Error()
			return r
		}
	}
	defer os.RemoveAll(e.dir)
	defer e.ps.killAll(killGrace)

	sctx, cancel := context.WithTimeout(ctx, cfg.Deadline)
	defer cancel()
	var setup func(context.Context, *sysEnv) ([]*download, error)
	switch sys {
	case SystemDirect:
		setup = setupDirect
	case SystemBitTorrent:
		setup = setupBitTorrent
	case SystemDamselfly:
		setup = setupDamselfly
	case SystemImageDamselfly:
		setup = setupImageDamselfly
	case SystemImageDirect:
		setup = setupImageDirect
	}
	log.Info("setting up")
	dls, err := setup(sctx, e)
	if err != nil {
		r.Error = fmt.Sprintf("setup: %v", err)
		return r
	}

	// Counters before the start.
	tx0, err := netw.originTx(ctx)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	ir0, _ := netw.interRackBytes(ctx)
	busy0, total0, _ := cpuTimes()
	trace := newLinkTrace(netw)
	drops0, err := trace.drops(ctx)
	if err != nil {
		log.Warn("no tbf drop counts", "err", err)
	}

	victims := cfg.churnVictims(netw.Peers())
	churnAt := cfg.churnAt(lb)
	log.Info("start", "downloads", len(dls))
	t0 := time.Now()
	tctx, stopTrace := context.WithCancel(ctx)
	traced := make(chan struct{})
	go func() { defer close(traced); trace.run(tctx, t0) }()
	defer func() { stopTrace(); <-traced }()
	for _, d := range dls {
		if err := d.proc.Release(); err != nil {
			d.failed, d.err = true, err.Error()
		}
	}
	churned := len(victims) == 0
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
loop:
	for {
		pending := 0
		for _, d := range dls {
			if d.done || d.failed || d.killed {
				continue
			}
			d.poll()
			if !d.done && !d.failed {
				pending++
			}
		}
		if !churned && time.Since(t0) >= churnAt {
			churned = true
			for _, d := range dls {
				if victims[d.host.Name] && !d.done && !d.failed {
					log.Info("churn: killing host", "host", d.host.Name)
					for _, p := range append([]*Proc{d.proc}, d.extra...) {
						p.Kill(0)
					}
					d.killed = true
					pending--
				}
			}
		}
		if pending <= 0 {
			break
		}
		select {
		case <-sctx.Done():
			for _, d := range dls {
				if !d.done && !d.failed && !d.killed {
					d.failed, d.err = true, "deadline: "+sctx.Err().Error()
				}
			}
			break loop
		case <-tick.C:
		}
	}
	end := time.Now()
	stopTrace()
	<-traced
	tx1, err := netw.originTx(ctx)
	if err != nil {
		r.Error = err.Error()
	}
	ir1, _ := netw.interRackBytes(ctx)
	busy1, total1, _ := cpuTimes()
	drops1, err := trace.drops(ctx)
	if err != nil {
		log.Warn("no tbf drop counts", "err", err)
	}
	if st, err := e.stats(ctx); err == nil {
		r.OriginServerBytes, r.OriginServerRequests = st.BodyBytes, st.Requests
	}
	if sys == SystemDamselfly || sys == SystemImageDamselfly {
		r.UploadedBytes = saveMetrics(ctx, e)
	}
	procCPU := e.ps.killAll(killGrace)

	r.ProcsCPUS = procCPU.Seconds()
	if r.MeasuredS = end.Sub(t0).Seconds(); r.MeasuredS > 0 {
		r.ProcsCPUShare = r.ProcsCPUS / (r.MeasuredS * float64(runtime.NumCPU()))
	}
	r.OriginTxBytes = tx1 - tx0
	r.OriginOverF = float64(r.OriginTxBytes) / float64(cfg.Size)
	r.InterRackBytes = ir1 - ir0
	r.InterRackOverF = float64(r.InterRackBytes) / float64(cfg.Size)
	if total1 > total0 {
		r.CPUBusy = float64(busy1-busy0) / float64(total1-total0)
	}
	verify(dls, digest)
	var times []float64
	for _, d := range dls {
		hr := HostResult{Name: d.host.Name, IP: d.host.IP.String(), Rack: d.host.Rack, UplinkBps: int64(d.host.Up), DoneS: -1, Killed: d.killed, Error: d.err}
		if d.failed {
			if l := d.proc.lastLine(); l != "" {
				hr.Error += fmt.Sprintf(" (%s: %s)", filepath.Base(d.proc.Log), l)
			}
		}
		switch {
		case d.killed:
			r.Killed++
		case d.done:
			hr.DoneS = d.at.Sub(t0).Seconds()
			hr.OK = true
			r.Completed++
			times = append(times, hr.DoneS)
		default:
			r.Failed++
		}
		r.Hosts = append(r.Hosts, hr)
	}
	slices.Sort(times)
	survivors := r.Completed + r.Failed
	if len(times) > 0 {
		if r.Failed == 0 {
			r.TLast = times[len(times)-1]
			r.EffLast = lb.TStar / r.TLast
		}
		if mid := (survivors - 1) / 2; mid < len(times) {
			r.TMedian = times[mid]
			r.EffMedian = lb.TStar / r.TMedian
		}
	}
	r.Links = trace.stats(r.TMedian, drops0, drops1)
	if err := trace.write(filepath.Join(cfg.OutDir, "links-"+sys+".tsv")); err != nil {
		log.Warn("write link trace", "err", err)
	}
	if trace.err != nil {
		log.Warn("link trace incomplete", "err", trace.err)
	}
	return r
}

// poll checks whether a download has finished.
func (d *download) poll() {
	exited, at, err := d.proc.Exited()
	if d.doneFile != "" {
		if data, rerr := os.ReadFile(d.doneFile); rerr == nil {
			ns, perr := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
			if perr == nil {
				d.done, d.at = true, time.Unix(0, ns)
				return
			}
		}
		if exited {
			d.failed, d.err = true, fmt.Sprintf("%s exited before completing: %v", d.proc.Name, err)
		}
		return
	}
	if !exited {
		return
	}
	if err != nil {
		d.failed, d.err = true, fmt.Sprintf("%s: %v", d.proc.Name, err)
		return
	}
	d.done, d.at = true, at
}

// verify checks every finished copy's sha256; a wrong copy counts as failed.
func verify(dls []*download, digest string) {
	ch := make(chan *download)
	var wg sync.WaitGroup
	for range verifyWorkers {
		wg.Go(func() {
			for d := range ch {
				if d.check != nil {
					if err := d.check(); err != nil {
						d.done, d.failed, d.err = false, true, fmt.Sprintf("verify: %v", err)
					}
					continue
				}
				got, err := fileSHA256(d.out)
				switch {
				case err != nil:
					d.done, d.failed, d.err = false, true, fmt.Sprintf("verify: %v", err)
				case got != digest:
					d.done, d.failed, d.err = false, true, fmt.Sprintf("verify: sha256 %s, want %s", got, digest)
				}
			}
		})
	}
	for _, d := range dls {
		if d.done {
			ch <- d
		}
	}
	close(ch)
	wg.Wait()
}
