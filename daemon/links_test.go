package daemon

import (
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon/linktest"
	"github.com/damselfly-io/damselfly/daemon/piece"
	"github.com/damselfly-io/damselfly/internal/config"
)

// TestLinkRatesReachHostAndPacing: measured rates go into a new host
// record (the old one may be in use by a registration), and a link much
// slower up than down paces the uploads while anything downloads, as a
// declared one does.
func TestLinkRatesReachHostAndPacing(t *testing.T) {
	old := &schedulerv1.Host{Id: "h"}
	d := &Daemon{links: newLinks(nil), host: old}
	budget, _ := d.uploadBudget(0, 0)
	d.inflight.Store(1)
	d.links.up = 1e6
	d.linkReceived(linktest.Result{RateBps: 30e6})
	h := d.Host()
	if h.GetLinkUploadBps() != 1e6 || h.GetLinkDownloadBps() != 30e6 {
		t.Fatalf("host record %v", h)
	}
	if old.GetLinkUploadBps() != 0 {
		t.Fatal("the old host record was changed in place")
	}
	if got, want := budget(), core.UsableUplink(1e6, 30e6); got != want || want >= 1e6 {
		t.Fatalf("upload budget %d, want %d (below the uplink)", got, want)
	}
	if !d.transferring() {
		t.Fatal("a download in progress: not transferring (its link tests would measure what the download leaves)")
	}
	d.inflight.Store(0)
	if got := budget(); got != 0 {
		t.Fatalf("nothing downloading: budget %d, want 0", got)
	}
	if d.transferring() {
		t.Fatal("nothing in progress: transferring")
	}
	// A slower measured downlink (a lower bound) paces nothing.
	d2 := &Daemon{links: newLinks(nil), host: &schedulerv1.Host{Id: "h2"}}
	budget2, _ := d2.uploadBudget(0, 0)
	d2.inflight.Store(1)
	d2.links.up = 10e6
	d2.linkReceived(linktest.Result{RateBps: 2e6})
	if got := budget2(); got != 0 {
		t.Fatalf("measured down below up: budget %d, want 0", got)
	}
	// A better test into the host raises its downlink; a worse one
	// within linkDownKeep does not lower it.
	d2.linkReceived(linktest.Result{RateBps: 1e6})
	if got := d2.Host().GetLinkDownloadBps(); got != 2e6 {
		t.Fatalf("downlink %d after a slower test, want 2e6 kept", got)
	}
}

// TestDownloadsCountAsDownlink: a host 2.5 Mbit/s up whose only link test
// in came from a partner as slow up measured its downlink at about its
// uplink, so its uploads went unpaced. What its downloads receive over
// downSampleSpan counts as a downlink measurement: the host record carries
// it, and the uploads are paced to leave the download's ACKs their share.
// Idle time, short windows and slower windows change nothing.
func TestDownloadsCountAsDownlink(t *testing.T) {
	d := &Daemon{links: newLinks(nil), host: &schedulerv1.Host{Id: "h"}, pm: piece.NewMetrics(nil)}
	budget, _ := d.uploadBudget(0, 0)
	d.links.up = 294e3
	d.linkReceived(linktest.Result{RateBps: 290e3})
	d.inflight.Store(1)
	if got := budget(); got != 0 {
		t.Fatalf("downlink measured at the uplink: budget %d, want 0 (unpaced)", got)
	}
	t0 := time.Unix(1000, 0)
	d.sampleDownlink(t0) // the window starts
	d.pm.Received.Add(3e6)
	d.sampleDownlink(t0.Add(time.Second)) // too short a window
	if got := d.Host().GetLinkDownloadBps(); got != 290e3 {
		t.Fatalf("after 1 s: downlink %d, want 290e3 (the window is %v)", got, downSampleSpan)
	}
	d.pm.Received.Add(2e6)
	d.sampleDownlink(t0.Add(2 * time.Second)) // 5e6 bytes in 2 s
	if got := d.Host().GetLinkDownloadBps(); got != 2.5e6 {
		t.Fatalf("downlink %d after receiving 2.5e6 bytes/s, want 2.5e6", got)
	}
	want := core.UsableUplink(294e3, 2.5e6)
	if got := budget(); got != want || want >= 294e3 {
		t.Fatalf("upload budget %d, want %d (below the uplink)", got, want)
	}
	// A slower window does not lower it.
	d.pm.Received.Add(1e6)
	d.sampleDownlink(t0.Add(4 * time.Second))
	if got := d.Host().GetLinkDownloadBps(); got != 2.5e6 {
		t.Fatalf("downlink %d after a slower window, want 2.5e6 kept", got)
	}
	// Idle: the bytes of a download that ended do not count over the
	// idle time, and the next window starts when the host is busy again.
	d2 := &Daemon{links: newLinks(nil), host: &schedulerv1.Host{Id: "h2"}, pm: piece.NewMetrics(nil)}
	d2.links.up = 294e3
	d2.sampleDownlink(t0)
	d2.pm.Received.Add(50e6)
	d2.sampleDownlink(t0.Add(10 * time.Second)) // nothing downloading
	d2.inflight.Store(1)
	d2.sampleDownlink(t0.Add(12 * time.Second))
	if got := d2.Host().GetLinkDownloadBps(); got != 0 {
		t.Fatalf("idle host: downlink %d, want 0 (the bytes came while idle)", got)
	}
}

// TestLinkTestingOnlyWhereNeeded: a host that declares its uplink (or an
// upload rate limit), one without schedulers, and one with the tests
// turned off run none; a seed peer runs them.
func TestLinkTestingOnlyWhereNeeded(t *testing.T) {
	for _, c := range []struct {
		name   string
		mutate func(*Config)
		want   bool
	}{
		{"default", func(*Config) {}, true},
		{"seed", func(c *Config) { c.Seed = true }, true},
		{"declared", func(c *Config) { c.UploadBps = config.ByteSize(1e6) }, false},
		{"rate limit", func(c *Config) { c.Upload.RateLimit = config.ByteSize(1e6) }, false},
		{"no scheduler", func(c *Config) { c.Scheduler = "" }, false},
		{"off", func(c *Config) { c.LinkTest.Enabled = false }, false},
	} {
		cfg := DefaultConfig()
		c.mutate(&cfg)
		d := &Daemon{cfg: cfg}
		if got := d.linkTesting(); got != c.want {
			t.Errorf("%s: linkTesting %v, want %v", c.name, got, c.want)
		}
	}
}
