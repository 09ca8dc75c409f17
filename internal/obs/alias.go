package obs

import (
	"fmt"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Registry is where a component registers its metrics and what its
// /metrics serves (a *prometheus.Registry).
type Registry interface {
	prometheus.Registerer
	prometheus.Gatherer
}

// MetricsConfig is the metrics section every component's config shares.
type MetricsConfig struct {
	// DragonflyCompat also exposes the metric names Dragonfly uses (for
	// dashboards built for it), computed from Damselfly's own metrics.
	DragonflyCompat bool `yaml:"dragonfly_compat"`
}

// Alias re-exports the series of one collector under another name and label
// set, computed at scrape time: no second counter to keep in step. Map
// returns the new labels of a source series (false drops it); series that
// map to the same labels are summed. Counters, gauges and histograms (of
// equal buckets) are supported; the type is kept.
type Alias struct {
	Name, Help string
	// Labels are the label names of the alias, in order.
	Labels []string
	Src    prometheus.Collector
	Map    func(src map[string]string) (map[string]string, bool)
}

// Describe sends the alias's one descriptor.
func (a *Alias) Describe(ch chan<- *prometheus.Desc) { ch <- a.desc() }

func (a *Alias) desc() *prometheus.Desc { return prometheus.NewDesc(a.Name, a.Help, a.Labels, nil) }

type aliasSum struct {
	values  []string
	kind    prometheus.ValueType
	hist    bool
	v       float64
	count   uint64
	sum     float64
	buckets map[float64]uint64
}

// Collect reads the source's series and sends the alias's.
func (a *Alias) Collect(ch chan<- prometheus.Metric) {
	src := make(chan prometheus.Metric)
	go func() { a.Src.Collect(src); close(src) }()
	sums := map[string]*aliasSum{}
	for m := range src {
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			continue
		}
		in := make(map[string]string, len(pb.GetLabel()))
		for _, l := range pb.GetLabel() {
			in[l.GetName()] = l.GetValue()
		}
		out, ok := in, true
		if a.Map != nil {
			out, ok = a.Map(in)
		}
		if !ok {
			continue
		}
		vals := make([]string, len(a.Labels))
		for i, n := range a.Labels {
			vals[i] = out[n]
		}
		key := strings.Join(vals, "\xff")
		s := sums[key]
		if s == nil {
			s = &aliasSum{values: vals, buckets: map[float64]uint64{}}
			sums[key] = s
		}
		switch {
		case pb.Counter != nil:
			s.kind, s.v = prometheus.CounterValue, s.v+pb.GetCounter().GetValue()
		case pb.Gauge != nil:
			s.kind, s.v = prometheus.GaugeValue, s.v+pb.GetGauge().GetValue()
		case pb.Untyped != nil:
			s.kind, s.v = prometheus.UntypedValue, s.v+pb.GetUntyped().GetValue()
		case pb.Histogram != nil:
			h := pb.GetHistogram()
			s.hist = true
			s.count += h.GetSampleCount()
			s.sum += h.GetSampleSum()
			for _, b := range h.GetBucket() {
				s.buckets[b.GetUpperBound()] += b.GetCumulativeCount()
			}
		}
	}
	desc := a.desc()
	keys := make([]string, 0, len(sums))
	for k := range sums {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s := sums[k]
		var (
			m   prometheus.Metric
			err error
		)
		if s.hist {
			m, err = prometheus.NewConstHistogram(desc, s.count, s.sum, s.buckets, s.values...)
		} else {
			m, err = prometheus.NewConstMetric(desc, s.kind, s.v, s.values...)
		}
		if err != nil {
			m = prometheus.NewInvalidMetric(desc, fmt.Errorf("alias %s: %w", a.Name, err))
		}
		ch <- m
	}
}
