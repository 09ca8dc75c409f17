package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestInventoryOneStreamPerHost: a daemon with 50 cached tasks holds one
// Inventory stream to the scheduler and no Announce stream per task (the
// scheduler's gauges count them); after a scheduler restart the hosts'
// inventories come back and a cached task still flows peer to peer, with
// no byte from the origin and no swarm timeout.
func TestInventoryOneStreamPerHost(t *testing.T) {
	const tasks = 50
	o := newOrigin(t)
	c := startCluster(t, 2)
	a, b := c.daemons[0], c.daemons[1]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	urls, sums := make([]string, tasks), make([]string, tasks)
	for i := range tasks {
		urls[i], sums[i] = o.add(fmt.Sprintf("inv%d.bin", i), 64<<10+i, uint64(500+i))
	}
	// Ten at a time: the daemon and the seed (triggered for each first
	// download) end up holding all 50.
	for i := 0; i < tasks; i += 10 {
		var runs []*fetchRun
		for j := i; j < i+10; j++ {
			runs = append(runs, startFetch(ctx, t, a, urls[j]))
		}
		for k, r := range runs {
			r.check(t, sums[i+k])
		}
	}
	if t.Failed() {
		return
	}
	sched := c.sched.metrics
	settled := func() bool {
		return metric(t, sched, "damselfly_scheduler_inventory_holders", "") >= 2*tasks &&
			metric(t, sched, "damselfly_scheduler_announce_streams", "") == 0
	}
	waitFor(t, 30*time.Second, "both hosts' inventories in, no announce stream left", settled)
	if n := metric(t, sched, "damselfly_scheduler_inventory_streams", ""); n != 2 {
		t.Errorf("inventory_streams = %v with 2 hosts holding %d tasks each, want 2 (one per host)", n, tasks)
	}
	if n := metric(t, sched, "damselfly_scheduler_peers", `state="succeeded"`); n != 2*tasks {
		t.Errorf("succeeded peers = %v, want the %d inventory holders", n, 2*tasks)
	}

	// Restart: the inventories come back (one stream per host again) and
	// the cache stays warm.
	warmAfterRestart(t, c, o, b, 2*tasks, urls[tasks/2], sums[tasks/2], 64<<10+tasks/2)
	waitFor(t, 30*time.Second, "inventories back after the restart", settled)
	if n := metric(t, sched, "damselfly_scheduler_inventory_streams", ""); n != 3 {
		// b holds one task now: its own inventory stream.
		t.Errorf("inventory_streams = %v after the restart, want 3 (one per host)", n)
	}
}
