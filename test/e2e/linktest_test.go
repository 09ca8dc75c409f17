package e2e

import (
	"testing"
	"time"
)

// TestLinkTestsBetweenDaemons: two daemon processes with their link tests
// on, against a real scheduler (mutual TLS): the scheduler pairs them, each
// measures its uplink by a test to the other and its downlink by the
// other's test into it, and both rates show in its metrics.
func TestLinkTestsBetweenDaemons(t *testing.T) {
	sched := startScheduler(t)
	a := startDaemon(t, daemonOpts{name: "link-a", scheduler: sched.addr, linkTest: true})
	b := startDaemon(t, daemonOpts{name: "link-b", scheduler: sched.addr, linkTest: true})
	deadline := time.Now().Add(45 * time.Second)
	for {
		done := true
		for _, d := range []*daemonProc{a, b} {
			if metric(t, d.metrics, "damselfly_daemon_link_upload_bps", "") <= 0 || metric(t, d.metrics, "damselfly_daemon_link_download_bps", "") <= 0 {
				done = false
			}
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			for _, d := range []*daemonProc{a, b} {
				t.Logf("%s: up %v down %v, tests sent ok %v, errors %v", d.name,
					metric(t, d.metrics, "damselfly_daemon_link_upload_bps", ""), metric(t, d.metrics, "damselfly_daemon_link_download_bps", ""),
					metric(t, d.metrics, "damselfly_daemon_link_tests_total", `direction="sent",result="ok"`),
					metric(t, d.metrics, "damselfly_daemon_link_tests_total", `direction="sent",result="error"`))
			}
			t.Fatal("the daemons did not both measure their links within 45 s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := metric(t, sched.metrics, "damselfly_scheduler_link_tests_paired_total", ""); n < 2 {
		t.Fatalf("scheduler paired %v link tests, want at least 2 (one each way)", n)
	}
	for _, d := range []*daemonProc{a, b} {
		if n := metric(t, d.metrics, "damselfly_daemon_link_tests_total", `direction="received",result="ok"`); n < 1 {
			t.Fatalf("%s answered %v link tests, want at least 1", d.name, n)
		}
	}
}
