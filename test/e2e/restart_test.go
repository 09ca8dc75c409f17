package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/core"
)

// warmAfterRestart restarts the scheduler, waits until `holders` complete
// peers re-announced the cached content to the new process, then downloads
// url on d and requires: exact bytes, no byte from the origin, no fallback
// to the origin of any kind (back_to_source_total, which counts the swarm
// timeout as reason swarm_stalled) and no swarm timeout in d's log.
func warmAfterRestart(t *testing.T, c *cluster, o *origin, d *daemonProc, holders float64, url, sum string, size int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c.sched.restart(t)
	waitFor(t, 30*time.Second, "cached peers re-announcing to the restarted scheduler", func() bool {
		return metric(t, c.sched.metrics, "damselfly_scheduler_peers", `state="succeeded"`) >= holders
	})
	served := o.served.Load()
	peerBefore := metric(t, d.metrics, "damselfly_daemon_download_bytes_total", `source="peer"`)
	r := startFetch(ctx, t, d, url)
	r.check(t, sum)
	if got := o.served.Load() - served; got != 0 {
		t.Errorf("download after the scheduler restart took %d bytes from the origin, want 0", got)
	}
	if b2s := metric(t, d.metrics, "damselfly_daemon_back_to_source_total", ""); b2s != 0 {
		t.Errorf("daemon %s went back to source %v times after the restart (swarm timeout or scheduler's choice), want 0", d.name, b2s)
	}
	if got := metric(t, d.metrics, "damselfly_daemon_download_bytes_total", `source="peer"`) - peerBefore; got < float64(size) {
		t.Errorf("daemon %s got %v bytes from peers, want the whole %d", d.name, got, size)
	}
	log, err := os.ReadFile(d.log)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(log), "no progress from the swarm") {
		t.Errorf("daemon %s hit the swarm timeout after the restart", d.name)
	}
	if strings.Contains(r.msg, "downloading directly") {
		t.Errorf("dfget bypassed the daemon: %s", r.msg)
	}
}

// TestSchedulerRestartKeepsCacheWarm: content cached before a scheduler
// restart keeps flowing peer to peer after it. A URL task held by a seed
// peer is trusted from the seed's re-announced digests; one held by two
// ordinary peers on different hosts (no seed) from their agreeing digests.
func TestSchedulerRestartKeepsCacheWarm(t *testing.T) {
	o := newOrigin(t)
	c := startCluster(t, 3)
	a, a2, b := c.daemons[0], c.daemons[1], c.daemons[2]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Held by the seed peer and by A.
	const size = 8<<20 + 123
	url, sum := o.add("warm", size, 301)
	startFetch(ctx, t, a, url).check(t, sum)
	if t.Failed() {
		return
	}
	warmAfterRestart(t, c, o, b, 2, url, sum, size)

	// Without a seed peer: held by A and A2, two ordinary hosts.
	c.seed.stop(syscall.SIGTERM)
	const size2 = 5<<20 + 7
	url2, sum2 := o.add("warm-noseed", size2, 302)
	startFetch(ctx, t, a, url2).check(t, sum2)
	startFetch(ctx, t, a2, url2).check(t, sum2)
	if t.Failed() {
		return
	}
	// A, A2 hold url2, A and B hold url: 4 complete peers.
	warmAfterRestart(t, c, o, b, 4, url2, sum2, size2)
	// url2 had no seed: its digests came from A's and A2's agreeing claims.
	if n := metric(t, c.sched.metrics, "damselfly_scheduler_trust_restored_total", `rule="two_hosts"`); n < 1 {
		t.Errorf("trust_restored_total{rule=two_hosts} = %v after the second restart, want ≥ 1", n)
	}
}

// lastLogLine returns the last line of p's log containing every part.
func lastLogLine(p *proc, parts ...string) string {
	b, _ := os.ReadFile(p.log)
	last := ""
	for _, line := range strings.Split(string(b), "\n") {
		ok := true
		for _, s := range parts {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			last = line
		}
	}
	return last
}

// TestRingChangeReannounces: a task cached while its home scheduler (by
// the daemons' hash ring) was away is announced to the fallback; when the
// home comes back, the holders re-announce there, and a new download is
// served by peers: no origin bytes, no fallback to the origin.
func TestRingChangeReannounces(t *testing.T) {
	o := newOrigin(t)
	mgr := startManager(t, t.TempDir())
	a := startScheduler(t, "--manager", mgr.grpc, "--advertise-ip", "127.0.0.1")
	b := startScheduler(t, "--manager", mgr.grpc, "--advertise-ip", "127.0.0.1")
	waitFor(t, 20*time.Second, "schedulers registered", func() bool { return mgr.count(t, "/api/v1/schedulers?state=active") == 2 })
	seed := startDaemon(t, daemonOpts{name: "seed", seed: true, extra: []string{"--manager", mgr.grpc}})
	x := startDaemon(t, daemonOpts{name: "x", extra: []string{"--manager", mgr.grpc}})
	y := startDaemon(t, daemonOpts{name: "y", extra: []string{"--manager", mgr.grpc}})
	ds := []*daemonProc{seed, x, y}
	for _, d := range ds {
		waitFor(t, 20*time.Second, d.name+" to know both schedulers", func() bool {
			return logHas(d.proc, "msg=schedulers", a.addr, b.addr)
		})
	}
	// A file whose home is b.
	const size = 3<<20 + 5
	var url, sum string
	for i := range 64 {
		u, s := o.add(fmt.Sprintf("ring%d.bin", i), size, uint64(400+i))
		if home(core.TaskID(u, core.TaskOptions{}), []string{a.addr, b.addr}) == b.addr {
			url, sum = u, s
			break
		}
	}
	if url == "" {
		t.Fatal("no task hashes to the second scheduler")
	}
	// b goes away; the daemons drop it and x caches the file through a.
	b.stop(syscall.SIGTERM)
	for _, d := range ds {
		waitFor(t, 30*time.Second, d.name+" to drop the stopped scheduler", func() bool {
			l := lastLogLine(d.proc, "msg=schedulers")
			return strings.Contains(l, a.addr) && !strings.Contains(l, b.addr)
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	startFetch(ctx, t, x, url).check(t, sum)
	if t.Failed() {
		return
	}
	// b is back: the ring changes and the file's holders move to it.
	b.restart(t)
	waitFor(t, 30*time.Second, "holders re-announcing to the file's home scheduler", func() bool {
		return metric(t, b.metrics, "damselfly_scheduler_peers", `state="succeeded"`) >= 2
	})
	served := o.served.Load()
	r := startFetch(ctx, t, y, url)
	r.check(t, sum)
	if got := o.served.Load() - served; got != 0 {
		t.Errorf("download after the ring change took %d bytes from the origin, want 0", got)
	}
	if n := metric(t, y.metrics, "damselfly_daemon_back_to_source_total", ""); n != 0 {
		t.Errorf("y went back to source %v times, want 0", n)
	}
	if n := metric(t, b.metrics, "damselfly_scheduler_decisions_total", `decision="parents"`); n < 1 {
		t.Errorf("the file's home scheduler gave no parents (%v): y was not served through it", n)
	}
}
