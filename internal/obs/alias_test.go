package obs

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestAliasRenamesMapsAndSums(t *testing.T) {
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_bytes_total", Help: "h"}, []string{"source"})
	bytes.WithLabelValues("peer").Add(10)
	bytes.WithLabelValues("origin").Add(5)
	bytes.WithLabelValues("cache").Add(100) // dropped
	lat := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "x_seconds", Help: "h", Buckets: []float64{1, 2}}, []string{"source"})
	lat.WithLabelValues("peer").Observe(0.5)
	lat.WithLabelValues("origin").Observe(1.5)
	reg := prometheus.NewRegistry()
	reg.MustRegister(bytes, lat,
		&Alias{Name: "old_traffic_total", Help: "traffic", Labels: []string{"type"}, Src: bytes,
			Map: func(in map[string]string) (map[string]string, bool) {
				switch in["source"] {
				case "peer":
					return map[string]string{"type": "remote_peer"}, true
				case "origin":
					return map[string]string{"type": "back_to_source"}, true
				}
				return nil, false
			}},
		&Alias{Name: "old_cost_seconds", Help: "cost", Src: lat}, // every series summed into one
	)
	want := `# HELP old_traffic_total traffic
# TYPE old_traffic_total counter
old_traffic_total{type="back_to_source"} 5
old_traffic_total{type="remote_peer"} 10
# HELP old_cost_seconds cost
# TYPE old_cost_seconds histogram
old_cost_seconds_bucket{le="1"} 1
old_cost_seconds_bucket{le="2"} 2
old_cost_seconds_bucket{le="+Inf"} 2
old_cost_seconds_sum 2
old_cost_seconds_count 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "old_traffic_total", "old_cost_seconds"); err != nil {
		t.Fatal(err)
	}
	// The source moves on: the alias follows without a second counter.
	bytes.WithLabelValues("peer").Add(1)
	if n := testutil.ToFloat64(bytes.WithLabelValues("peer")); n != 11 {
		t.Fatal(n)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(strings.Replace(want, `{type="remote_peer"} 10`, `{type="remote_peer"} 11`, 1)), "old_traffic_total"); err != nil {
		t.Fatal(err)
	}
}
