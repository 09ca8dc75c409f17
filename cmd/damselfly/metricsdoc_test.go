package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/damselfly-io/damselfly/daemon"
	"github.com/damselfly-io/damselfly/manager"
	"github.com/damselfly-io/damselfly/scheduler"
)

// recorder is a registry that remembers every descriptor registered on it,
// so that metrics without a series yet (an empty vector) are listed too.
type recorder struct {
	*prometheus.Registry
	descs []*prometheus.Desc
}

func (r *recorder) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		r.descs = append(r.descs, d)
	}
	return r.Registry.Register(c)
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

var (
	descName   = regexp.MustCompile(`fqName: "([^"]+)"`)
	descLabels = regexp.MustCompile(`variableLabels: \{([^}]*)\}\}$`)
	// | `name` | type | `a`, `b` | meaning |
	docRow = regexp.MustCompile("^\\| `([a-z_:]+)` \\| (counter|gauge|histogram) \\| ([^|]*) \\|")
)

type metricDoc struct {
	typ    string
	labels []string
}

// registered builds every component with every optional metric on (proxy,
// schedulers, Dragonfly names) and returns their metrics by name.
func registered(t *testing.T) map[string]metricDoc {
	t.Helper()
	ctx := context.Background()
	rec := &recorder{Registry: prometheus.NewRegistry()}
	if _, err := scheduler.New(func() scheduler.Config {
		c := scheduler.DefaultConfig()
		c.Metrics.DragonflyCompat = true
		return c
	}(), nil, rec); err != nil {
		t.Fatal(err)
	}
	dc := daemon.DefaultConfig()
	dc.TLS.Insecure = true
	dc.DataDir = t.TempDir()
	dc.Scheduler = "127.0.0.1:1" // a daemon using schedulers has scheduler_up; never dialled (not run)
	dc.Metrics.DragonflyCompat = true
	if _, err := daemon.NewWithMetrics(dc, slog.New(slog.DiscardHandler), rec, rec); err != nil {
		t.Fatal(err)
	}
	mc := manager.DefaultConfig()
	mc.DataDir = filepath.Join(t.TempDir(), "m")
	mc.AdminPassword = "admin-secret-1"
	mc.Metrics.DragonflyCompat = true
	m, err := manager.New(ctx, mc, nil, rec)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	types := map[string]string{}
	mfs, err := rec.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		types[mf.GetName()] = strings.ToLower(mf.GetType().String())
	}
	out := map[string]metricDoc{}
	for _, d := range rec.descs {
		s := d.String()
		n := descName.FindStringSubmatch(s)
		if n == nil {
			t.Fatalf("cannot read descriptor %s", s)
		}
		if strings.HasPrefix(n[1], "go_") || strings.HasPrefix(n[1], "process_") {
			continue
		}
		var labels []string
		if l := descLabels.FindStringSubmatch(s); l != nil && l[1] != "" {
			labels = strings.Split(l[1], ",")
		}
		sort.Strings(labels)
		out[n[1]] = metricDoc{typ: types[n[1]], labels: labels}
	}
	if _, ok := dto.MetricType_value["COUNTER"]; !ok || len(out) < 30 {
		t.Fatalf("only %d metrics registered: the recorder misses some", len(out))
	}
	return out
}

// Every registered metric is in docs/metrics.md with its type and labels,
// and the page lists nothing that is not registered.
func TestMetricsDocumented(t *testing.T) {
	b, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := map[string]metricDoc{}
	for _, line := range strings.Split(string(b), "\n") {
		m := docRow.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		var labels []string
		for _, l := range strings.Split(m[3], ",") {
			if l = strings.Trim(strings.TrimSpace(l), "`"); l != "" && l != "—" {
				labels = append(labels, l)
			}
		}
		sort.Strings(labels)
		doc[m[1]] = metricDoc{typ: m[2], labels: labels}
	}
	reg := registered(t)
	var names []string
	for n := range reg {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		r := reg[n]
		d, ok := doc[n]
		switch {
		case !ok:
			t.Errorf("docs/metrics.md lacks | `%s` | %s | %s |", n, r.typ, strings.Join(r.labels, ", "))
		case !slices.Equal(d.labels, r.labels):
			t.Errorf("docs/metrics.md: %s has labels %v, registered with %v", n, d.labels, r.labels)
		case r.typ != "" && d.typ != r.typ:
			t.Errorf("docs/metrics.md: %s is a %s, registered as a %s", n, d.typ, r.typ)
		}
	}
	for n := range doc {
		if _, ok := reg[n]; !ok {
			t.Errorf("docs/metrics.md lists %s, which no component registers", n)
		}
	}
}

// Without metrics.dragonfly_compat no component exports a Dragonfly name;
// with it, each exports its own.
func TestDragonflyNamesOnlyWhenAsked(t *testing.T) {
	ctx := context.Background()
	for _, compat := range []bool{false, true} {
		names := map[string][]string{}
		record := func(component string, r *recorder) {
			for _, d := range r.descs {
				if n := descName.FindStringSubmatch(d.String()); n != nil && strings.HasPrefix(n[1], "dragonfly_") {
					names[component] = append(names[component], n[1])
				}
			}
		}
		sc := scheduler.DefaultConfig()
		sc.Metrics.DragonflyCompat = compat
		rs := &recorder{Registry: prometheus.NewRegistry()}
		if _, err := scheduler.New(sc, nil, rs); err != nil {
			t.Fatal(err)
		}
		record("scheduler", rs)
		dc := daemon.DefaultConfig()
		dc.TLS.Insecure = true
		dc.DataDir = t.TempDir()
		dc.Metrics.DragonflyCompat = compat
		rd := &recorder{Registry: prometheus.NewRegistry()}
		if _, err := daemon.NewWithMetrics(dc, slog.New(slog.DiscardHandler), rd, rd); err != nil {
			t.Fatal(err)
		}
		record("daemon", rd)
		mc := manager.DefaultConfig()
		mc.DataDir = filepath.Join(t.TempDir(), "m")
		mc.AdminPassword = "admin-secret-1"
		mc.Metrics.DragonflyCompat = compat
		rm := &recorder{Registry: prometheus.NewRegistry()}
		m, err := manager.New(ctx, mc, nil, rm)
		if err != nil {
			t.Fatal(err)
		}
		m.Close()
		record("manager", rm)
		want := map[string]int{"scheduler": 2, "daemon": 4, "manager": 1}
		for c, n := range want {
			if !compat {
				n = 0
			}
			if len(names[c]) != n {
				t.Errorf("compat %v: %s exports %v, want %d Dragonfly names", compat, c, names[c], n)
			}
		}
	}
}
