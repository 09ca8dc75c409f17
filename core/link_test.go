package core

import "testing"

func TestUsableUplink(t *testing.T) {
	for _, c := range []struct{ up, down, want int64 }{
		{0, 100, 0},               // unknown uplink
		{100, 0, 100},             // unknown downlink
		{1000, 1000, 1000},        // symmetric: ACKs take 2 %, under a tenth
		{1000, 5000, 1000},        // at the threshold: a tenth
		{312500, 3125000, 250000}, // 2.5 / 25 Mbit/s: 62,500 B/s of ACKs
		{1000, 100000, 250},       // ACKs alone would fill it: a quarter kept
	} {
		if got := UsableUplink(c.up, c.down); got != c.want {
			t.Errorf("UsableUplink(%d, %d) = %d, want %d", c.up, c.down, got, c.want)
		}
	}
}
