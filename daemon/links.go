package daemon

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon/linktest"
)

// Link tests (docs/architecture.md, "Link tests"): a daemon that declares
// no uplink measures its links, so the scheduler can place it before it
// has sent anything in a task. linkTestKey names the scheduler that pairs
// the tests (the ring's home of this key): every daemon asks the same one,
// so they all meet in one pool.
const linkTestKey = "link-test"

const (
	// linkTestsPerRound: tests per round, each to another partner (the
	// best counts: one partner's slow downlink must not pass for this
	// host's slow uplink).
	linkTestsPerRound = 2
	// linkRoundSpan bounds a round's waiting for partners.
	linkRoundSpan = 2 * time.Minute
	// linkDownKeep: a downlink measured by another host's test counts this
	// long (the best within it).
	linkDownKeep = 3 * time.Hour
)

// links is what the daemon's link tests measured.
type links struct {
	mu     sync.Mutex
	up     int64     // the last round's best upload rate, bytes/s
	down   int64     // the best rate another host's test, or a download, reached into this one
	downAt time.Time // when down was measured
	// rxAt and rxBytes start the window over which sampleDownlink counts
	// what the downloads received (piece.Metrics.Received).
	rxAt     time.Time
	rxBytes  int64
	upGauge  prometheus.Gauge
	dnGauge  prometheus.Gauge
	tests    *prometheus.CounterVec
	receiver linktest.Receiver
}

func newLinks(reg prometheus.Registerer) *links {
	l := &links{
		upGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "damselfly_daemon_link_upload_bps",
			Help: "Upload rate in bytes/s that this host's last round of link tests reached (0: not measured)."}),
		dnGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "damselfly_daemon_link_download_bps",
			Help: "The best rate in bytes/s another host's link test, or this host's downloads over a few seconds, reached into this one (0: none yet)."}),
		tests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "damselfly_daemon_link_tests_total",
			Help: "Link tests by direction (sent, received) and result (ok, error; aborted: a transfer started on this host during a test it sent)."}, []string{"direction", "result"}),
	}
	if reg != nil {
		reg.MustRegister(l.upGauge, l.dnGauge, l.tests)
	}
	return l
}

// linkTesting reports whether this daemon runs link tests of its own: it
// uses schedulers and declares no uplink.
func (d *Daemon) linkTesting() bool {
	up, _ := d.cfg.DeclaredCapacity()
	return d.p2p() && d.cfg.LinkTest.Enabled && up == 0
}

// transferring reports whether anything downloads or uploads on this
// host now: its link tests wait, and it answers none.
func (d *Daemon) transferring() bool {
	if d.inflight.Load() > 0 {
		return true
	}
	d.limitsMu.Lock()
	up := d.up
	d.limitsMu.Unlock()
	return up != nil && up.Active() > 0
}

// received counts another host's test into this one.
func (d *Daemon) linkReceived(res linktest.Result) {
	l := d.links
	l.tests.WithLabelValues("received", "ok").Inc()
	l.mu.Lock()
	_, changed := l.noteDownLocked(int64(res.RateBps), time.Now())
	l.mu.Unlock()
	if changed {
		d.linksChanged()
	}
}

// noteDownLocked takes r bytes/s, measured into this host at now, as its
// downlink when it is the best so far or the best has lapsed
// (linkDownKeep); it returns the downlink before and whether it changed.
// l.mu is held.
func (l *links) noteDownLocked(r int64, now time.Time) (old int64, changed bool) {
	old = l.down
	if r > l.down || now.Sub(l.downAt) > linkDownKeep {
		l.down, l.downAt = r, now
		return old, true
	}
	return old, false
}

// downlink is this host's downlink in bytes/s as far as the daemon knows:
// declared (or its download rate limit), else the best rate a link test or
// a download reached into it; 0 when unknown.
func (d *Daemon) downlink() int64 {
	if _, down := d.cfg.DeclaredCapacity(); down > 0 {
		return down
	}
	if d.links == nil {
		return 0
	}
	d.links.mu.Lock()
	defer d.links.mu.Unlock()
	return d.links.down
}

// downSampleSpan is the shortest window over which what this host's
// downloads received counts as a downlink measurement (sampleDownlink):
// several pieces long, and a reading a second apart.
const downSampleSpan = 2 * time.Second

// sampleDownlink counts the rate this host's downloads reached as a
// measurement of its downlink, like a link test into it: what it received
// over the last downSampleSpan or more while anything downloaded. A link
// test's partner may be slower up than this host is down (two hosts with
// 2.5 Mbit/s uplinks paired), and its rate is only a lower bound. Taken
// as the downlink of a host 2.5 Mbit/s up and 25 down, it hid the
// asymmetry: the uploads went unpaced, filled the uplink, the download's
// ACKs queued behind them, and on the harness's mixed with the seed on
// the origin's host that host received at 13-15 Mbit/s while every other
// got 19 and finished 5 s after them (the last host at 0.71-0.76 of the
// bound). The download itself shows the downlink within seconds.
func (d *Daemon) sampleDownlink(now time.Time) {
	rx := d.pm.Received.Load()
	l := d.links
	l.mu.Lock()
	if l.rxAt.IsZero() || d.inflight.Load() == 0 {
		l.rxAt, l.rxBytes = now, rx // idle: the next window starts here
		l.mu.Unlock()
		return
	}
	dt := now.Sub(l.rxAt)
	if dt < downSampleSpan {
		l.mu.Unlock()
		return
	}
	r := int64(float64(rx-l.rxBytes) / dt.Seconds())
	l.rxAt, l.rxBytes = now, rx
	old, changed := l.noteDownLocked(r, now)
	l.mu.Unlock()
	if !changed {
		return
	}
	if r > old+old/4 && d.log != nil {
		d.log.Info("downlink measured by downloads", "download_bps", r, "was_bps", old)
	}
	d.linksChanged()
}

// downlinkWatch samples the downloads' rate (sampleDownlink) every second
// until ctx ends.
func (d *Daemon) downlinkWatch(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			d.sampleDownlink(now)
		}
	}
}

// linksChanged puts the measured rates in the host record that every
// registration carries, and in the upload pacing.
func (d *Daemon) linksChanged() {
	l := d.links
	l.mu.Lock()
	up, down := l.up, l.down
	l.mu.Unlock()
	l.upGauge.Set(float64(up))
	l.dnGauge.Set(float64(down))
	// Much slower up than down, uploads are paced to leave the download's
	// ACKs their share, as for declared links (uploadBudget); the
	// scheduler counts the same (scheduler.effectiveHost).
	usable := int64(0)
	if up > 0 && down > up {
		if u := core.UsableUplink(up, down); u < up {
			usable = u
		}
	}
	d.linkUsable.Store(usable)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.host == nil || (d.host.GetLinkUploadBps() == up && d.host.GetLinkDownloadBps() == down) {
		return
	}
	h := proto.Clone(d.host).(*schedulerv1.Host) // the old record may be in use
	h.LinkUploadBps, h.LinkDownloadBps = up, down
	d.host = h
}

// linkTestLoop runs a round of link tests now and every
// link_test.interval, until ctx ends. A round that measured nothing (no
// other host asked for a partner yet) is tried again sooner: from 30 s,
// doubling up to the interval.
func (d *Daemon) linkTestLoop(ctx context.Context) {
	client := linktest.NewClient()
	defer client.CloseIdleConnections()
	every := d.cfg.LinkTest.Interval.D()
	backoff := linkRetryRound
	for {
		wait := every
		if !d.linkRound(ctx, client) {
			wait, backoff = min(backoff, every), backoff*2
		} else {
			backoff = linkRetryRound
		}
		// ±10 % so that daemons started together drift apart.
		wait += time.Duration(rand.Int64N(int64(wait/5)+1)) - wait/10
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// uploadAddr is host:port of h's upload port (pieces, link tests).
func uploadAddr(h *schedulerv1.Host) string {
	return net.JoinHostPort(h.GetIp(), strconv.Itoa(int(h.GetUploadPort())))
}

// linkRetryRound: a round that measured nothing is tried again after this
// long, then twice as long, up to link_test.interval.
const linkRetryRound = 30 * time.Second

// linkRound runs linkTestsPerRound tests to different partners; the best
// upload rate of the round replaces the last round's from its first test
// on. It reports whether any test succeeded.
func (d *Daemon) linkRound(ctx context.Context, client *http.Client) bool {
	var (
		exclude []string
		best    int64
		done    int
		alone   = true // no partner was ever named
	)
	end := time.Now().Add(linkRoundSpan)
	retry := func(after time.Duration) bool {
		// Jittered, so hosts told to wait together do not come back
		// together.
		after += time.Duration(rand.Int64N(int64(after/2) + 1))
		select {
		case <-ctx.Done():
			return false
		case <-time.After(after):
			return time.Now().Before(end)
		}
	}
	for done < linkTestsPerRound && ctx.Err() == nil && time.Now().Before(end) {
		if d.transferring() {
			// A test now would measure what the transfers leave.
			if !retry(5 * time.Second) {
				break
			}
			continue
		}
		ts := d.schedulersFor(linkTestKey)
		if len(ts) == 0 {
			if !retry(2 * time.Second) {
				break
			}
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := ts[0].client.LinkPartner(cctx, &schedulerv1.LinkPartnerRequest{Host: d.Host(), Exclude: exclude, BestBps: best})
		cancel()
		if status.Code(err) == codes.Unimplemented {
			// A scheduler older than link tests: try again next round
			// (the schedulers may be upgraded by then).
			d.log.Info("link test: the scheduler does not pair link tests (older than this daemon)", "scheduler", ts[0].addr)
			return false
		}
		if err != nil {
			d.log.Debug("link test: no partner from the scheduler", "scheduler", ts[0].addr, "err", err)
			if !retry(5 * time.Second) {
				break
			}
			continue
		}
		p := resp.GetPartner()
		if p == nil {
			if !retry(max(time.Duration(resp.GetRetryAfterMs())*time.Millisecond, 500*time.Millisecond)) {
				break
			}
			continue
		}
		alone = false
		exclude = append(exclude, p.GetId())
		addr := uploadAddr(p)
		dur := min(max(time.Duration(resp.GetDurationMs())*time.Millisecond, linktest.MinDuration), linktest.MaxDuration)
		// A transfer that starts during the test ends it: the test would
		// hold the transfer back and measure what the transfer leaves.
		res, err := linktest.Send(ctx, client, addr, dur, d.transferring)
		if errors.Is(err, linktest.ErrAborted) {
			d.links.tests.WithLabelValues("sent", "aborted").Inc()
			d.log.Debug("link test ended: a transfer started", "partner", p.GetId())
			exclude = exclude[:len(exclude)-1] // the partner may be asked again
			continue
		}
		if err != nil {
			d.links.tests.WithLabelValues("sent", "error").Inc()
			d.log.Info("link test failed", "partner", p.GetId(), "addr", addr, "err", err)
			continue
		}
		d.links.tests.WithLabelValues("sent", "ok").Inc()
		d.log.Debug("link test", "partner", p.GetId(), "upload_bps", int64(res.RateBps), "bytes", res.Bytes)
		best = max(best, int64(res.RateBps))
		done++
		d.links.mu.Lock()
		d.links.up = best
		d.links.mu.Unlock()
		d.linksChanged()
	}
	switch {
	case done > 0:
		d.log.Info("link test done", "upload_bps", best, "tests", done)
	case ctx.Err() != nil:
	case alone && d.transferring():
		d.log.Info("link test postponed: the host is transferring")
	case alone:
		d.log.Info("link test: no other host to test with yet; trying again later")
	default:
		d.log.Warn("link test: every partner failed; the scheduler measures this host from its transfers")
	}
	return done > 0
}
