package oci

import (
	"strings"
	"testing"
)

func TestSumMetric(t *testing.T) {
	body := `# HELP x_total things
# TYPE x_total counter
x_total{route="p2p"} 3
x_total{route="direct"} 2
x_total_other 100
x 7
`
	for match, want := range map[string]float64{"": 5, `route="p2p"`: 3, `route="none"`: 0} {
		got, err := SumMetric(strings.NewReader(body), "x_total", match)
		if err != nil || got != want {
			t.Errorf("SumMetric(x_total, %q) = %v, %v; want %v", match, got, err, want)
		}
	}
}
