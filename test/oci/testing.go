package oci

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// ShortDir is a temp dir with a short path, removed at cleanup: unix sockets
// (containerd's, the daemon's) allow about 100 bytes, and t.TempDir's paths
// hold the test's name.
func ShortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "dft-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// StartT starts argv in network namespace ns ("" for the current one) with
// its log in a short temp dir, and stops it by PID at cleanup, printing the
// log's tail when the test failed.
func StartT(t testing.TB, ns, name string, argv ...string) *Proc {
	t.Helper()
	p, err := Start(ns, name, filepath.Join(ShortDir(t), name+".log"), argv...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(5 * time.Second)
		if t.Failed() {
			t.Logf("---- %s log (tail) ----\n%s", name, p.LogTail(8000))
		}
	})
	return p
}

// WaitUntil polls check every 100 ms for up to timeout; p's exit (when p is
// not nil) fails the test at once, with p's log.
func WaitUntil(t testing.TB, p *Proc, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if last = check(); last == nil {
			return
		}
		if p != nil {
			if exited, err := p.Exited(); exited {
				t.Fatalf("%s: %s exited (%v) before it was ready; last check: %v\n%s", what, p.Name, err, last, p.LogTail(4000))
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, last)
}
