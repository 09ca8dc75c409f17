package e2e

import (
	"fmt"
	"testing"
)

// TestSwarmDownloads fetches files of awkward sizes on every daemon at once:
// each copy must be exact and the origin must serve about one copy.
func TestSwarmDownloads(t *testing.T) {
	o := newOrigin(t)
	c := startCluster(t, 5)
	const piece = 256 << 10 // the piece size for files this small
	sizes := []int{0, 1, piece - 1, piece, piece + 1, 200 << 20}
	if testing.Short() {
		sizes = sizes[:5]
	}
	for i, size := range sizes {
		t.Run(fmt.Sprintf("%dB", size), func(t *testing.T) {
			url, sum := o.add(fmt.Sprintf("file-%d", size), size, uint64(i+1))
			before := o.served.Load()
			fetchAll(t, c.daemons, url, sum)
			served := o.served.Load() - before
			if limit := int64(float64(size) * 1.05); served > limit && served > 0 && size > 0 {
				t.Errorf("origin served %d bytes for a %d-byte file to %d daemons; want ≤ %d", served, size, len(c.daemons), limit)
			}
			t.Logf("%d bytes: origin served %d bytes (%.2f×)", size, served, float64(served)/float64(max(size, 1)))
		})
	}
}
