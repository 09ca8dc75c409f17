package e2e

import (
	"testing"
)

// A peer with two parents, one of them ten times slower (its host's upload
// limit), splits its requests by their measured rates: the slow parent
// serves about a tenth of the content, never a large share, and the copy
// is exact.
func TestPiecesSplitAcrossParentsByRate(t *testing.T) {
	o := newOrigin(t)
	const size = 16 << 20
	url, sum := o.add("split", size, 12)
	sched := startScheduler(t, "--max-parents", "2", "--max-children", "4")
	fast := startDaemon(t, daemonOpts{name: "fast", scheduler: sched.addr, extra: []string{"--upload-rate-limit", "16M"}})
	slow := startDaemon(t, daemonOpts{name: "slow", scheduler: sched.addr, extra: []string{"--upload-rate-limit", "1600K"}})
	child := startDaemon(t, daemonOpts{name: "child", scheduler: sched.addr})
	// fast fetches from the origin, slow from fast (or the origin): both
	// then hold the whole content.
	fetchAll(t, []*daemonProc{fast}, url, sum)
	fetchAll(t, []*daemonProc{slow}, url, sum)
	if t.Failed() {
		return
	}
	fastBefore := metric(t, fast.metrics, "damselfly_daemon_upload_bytes_total", "")
	slowBefore := metric(t, slow.metrics, "damselfly_daemon_upload_bytes_total", "")
	originBefore := o.served.Load()
	fetchAll(t, []*daemonProc{child}, url, sum)
	fastUp := metric(t, fast.metrics, "damselfly_daemon_upload_bytes_total", "") - fastBefore
	slowUp := metric(t, slow.metrics, "damselfly_daemon_upload_bytes_total", "") - slowBefore
	t.Logf("child got %.0f bytes from fast, %.0f from slow, %d from the origin", fastUp, slowUp, o.served.Load()-originBefore)
	if got := o.served.Load() - originBefore; got != 0 {
		t.Errorf("the child took %d bytes from the origin", got)
	}
	if fastUp+slowUp < size {
		t.Errorf("parents served %.0f bytes of %d", fastUp+slowUp, size)
	}
	// About 1/11 expected; a parent served as much as the fast one would
	// deliver half.
	if slowUp > size*30/100 {
		t.Errorf("the 10x slower parent served %.0f of %d bytes", slowUp, size)
	}
}
