package swarm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLinkTraceSums: a host's uplink use is the bytes it sent from the
// first sample to the last one at or before T_median, over its capacity
// in that time; the drops are the counters' growth over the run; the
// table holds every sample of every host, from zero.
func TestLinkTraceSums(t *testing.T) {
	lt := &linkTrace{hosts: []*Host{{Name: "h1", Up: 8e6}, {Name: "h2", Up: 0}}}
	// h1 sends 0.5 MB/s (half of its 1 MB/s) for 2 s, then nothing.
	lt.samples = []linkSample{
		{T: 0, Up: []int64{100, 0}, Down: []int64{7, 0}},
		{T: 1, Up: []int64{500_100, 10}, Down: []int64{1007, 0}},
		{T: 2, Up: []int64{1_000_100, 20}, Down: []int64{2007, 0}},
		{T: 3, Up: []int64{1_000_100, 30}, Down: []int64{3007, 0}},
	}
	if got := lt.upUse(0, 2.5); got != 0.5 {
		t.Errorf("use to 2.5 s: %v, want 0.5 (the samples to 2 s)", got)
	}
	if got := lt.upUse(0, 10); got < 0.333 || got > 0.334 {
		t.Errorf("use to 10 s: %v, want 1/3 (the idle third second counts)", got)
	}
	for _, c := range []struct {
		host int
		t    float64
	}{{1, 2}, {0, 0}, {0, 0.5}} {
		if got := lt.upUse(c.host, c.t); got != -1 {
			t.Errorf("host %d to %v s: %v, want -1 (unknown: no capacity, no time)", c.host, c.t, got)
		}
	}
	st := lt.stats(2, [][2]int64{{5, 1}, {0, 0}}, [][2]int64{{9, 4}, {2, 0}})
	if h1 := st["h1"]; h1.UpUse != 0.5 || h1.UpDrops != 4 || h1.DownDrops != 3 {
		t.Errorf("h1 %+v", h1)
	}
	if h2 := st["h2"]; h2.UpUse != -1 || h2.UpDrops != 2 {
		t.Errorf("h2 %+v", h2)
	}
	if st := lt.stats(2, nil, [][2]int64{{9, 4}, {2, 0}}); st["h1"].UpDrops != 0 {
		t.Errorf("no counts before the run: drops %+v", st["h1"])
	}

	path := filepath.Join(t.TempDir(), "links.tsv")
	if err := lt.write(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 1+4*2 || lines[0] != "t_s\thost\tup_bytes\tdown_bytes" {
		t.Fatalf("table:\n%s", data)
	}
	if lines[1] != "0.00\th1\t0\t0" || lines[5] != "2.00\th1\t1000000\t2000" || lines[8] != "3.00\th2\t30\t0" {
		t.Fatalf("rows not from zero:\n%s", data)
	}
}
