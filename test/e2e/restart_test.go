package e2e

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
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
