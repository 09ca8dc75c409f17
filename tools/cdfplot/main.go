// Command cdfplot draws the completion-time CDF of a swarm benchmark run
// (test/swarm, docs/swarm.md) from the harness's results.json: one step
// line per system, the fraction of its hosts done against the seconds
// since the common start, and the lower bound T* as a dashed line.
//
//	cdfplot [-o out.png] results.json
//
// Without -o the chart is cdf.png beside results.json. The harness runs
// bin/cdfplot after each results.json it writes when that binary exists.
//
// It is a separate module so the plotting library (gonum.org/v1/plot and
// its fonts, PDF and SVG back ends) stays out of the product's dependency
// graph.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// results is the part of the harness's results.json the chart needs (the
// harness's Results type in test/swarm/report.go has the whole of it).
type results struct {
	Params struct {
		Scenario  string `json:"scenario"`
		N         int    `json:"n"`
		SizeBytes int64  `json:"size_bytes"`
		RateBps   int64  `json:"rate_bps"`
	} `json:"params"`
	LowerBound struct {
		TStar float64 `json:"t_star_s"`
	} `json:"lower_bound"`
	Systems []system `json:"systems"`
}

type system struct {
	Name  string `json:"name"`
	Hosts []host `json:"hosts"`
}

type host struct {
	DoneS  float64 `json:"done_s"` // -1 if it did not finish
	OK     bool    `json:"ok"`     // finished with a correct copy
	Killed bool    `json:"killed"` // churn victim: not counted
}

// lineColors gives each of the harness's systems its colour; a system not
// listed here is drawn in black.
var lineColors = map[string]color.Color{
	"damselfly":       color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	"direct":          color.RGBA{R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff},
	"bittorrent":      color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	"image-damselfly": color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	"image-direct":    color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("cdfplot", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "the PNG to write (default: cdf.png beside results.json)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: cdfplot [-o out.png] results.json")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	in := fs.Arg(0)
	if *out == "" {
		*out = filepath.Join(filepath.Dir(in), "cdf.png")
	}
	r, err := load(in)
	if err == nil {
		err = draw(r, *out)
	}
	if err != nil {
		fmt.Fprintln(stderr, "cdfplot:", err)
		return 1
	}
	return 0
}

// load reads and checks a results.json.
func load(path string) (*results, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read results: %w", err)
	}
	var r results
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	if len(r.Systems) == 0 {
		return nil, fmt.Errorf("%s lists no systems: not a swarm harness results.json?", path)
	}
	return &r, nil
}

// steps is a system's CDF as a step line: it starts at (0, 0) and rises by
// 1/total at each host's completion time. Killed hosts are not counted;
// hosts that failed count in total but never rise, so the line ends below
// 1. It also returns the last completion time (0 if none).
func steps(s system) (plotter.XYs, float64) {
	var done []float64
	total := 0
	for _, h := range s.Hosts {
		if h.Killed {
			continue
		}
		total++
		if h.OK {
			done = append(done, h.DoneS)
		}
	}
	if len(done) == 0 {
		return nil, 0
	}
	slices.Sort(done)
	xy := make(plotter.XYs, 0, 1+2*len(done))
	xy = append(xy, plotter.XY{})
	for i, t := range done {
		xy = append(xy,
			plotter.XY{X: t, Y: float64(i) / float64(total)},
			plotter.XY{X: t, Y: float64(i+1) / float64(total)})
	}
	return xy, done[len(done)-1]
}

// draw writes the chart as a 7 × 4.5 inch PNG.
func draw(r *results, path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s: N=%d, F=%s, %s", r.Params.Scenario, r.Params.N,
		formatSize(r.Params.SizeBytes), formatRate(r.Params.RateBps))
	p.X.Label.Text = "seconds since the common start"
	p.Y.Label.Text = "fraction of hosts done"
	p.Legend.Top, p.Legend.Left = false, false

	tstar := r.LowerBound.TStar
	xmax := tstar
	for _, s := range r.Systems {
		xy, last := steps(s)
		if xy == nil {
			continue // no host finished: nothing to draw
		}
		line, err := plotter.NewLine(xy)
		if err != nil {
			return fmt.Errorf("plot %s: %w", s.Name, err)
		}
		line.Color = color.Black
		if c, ok := lineColors[s.Name]; ok {
			line.Color = c
		}
		line.Width = vg.Points(1.5)
		p.Add(line)
		p.Legend.Add(s.Name, line)
		xmax = max(xmax, last)
	}

	bound, err := plotter.NewLine(plotter.XYs{{X: tstar, Y: 0}, {X: tstar, Y: 1}})
	if err != nil {
		return fmt.Errorf("plot T*: %w", err)
	}
	bound.Color = color.Black
	bound.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	p.Add(bound)
	p.Legend.Add("T*", bound)
	p.Add(plotter.NewGrid())

	if xmax <= 0 {
		xmax = 1 // no time at all: keep the axis drawable
	}
	p.X.Min, p.X.Max = 0, xmax*1.05
	p.Y.Min, p.Y.Max = 0, 1

	if err := p.Save(7*vg.Inch, 4.5*vg.Inch, path); err != nil {
		os.Remove(path) // no half-written chart
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// formatSize renders a byte count as the harness does (a whole number of
// GiB, MiB or KiB when it is one, else bytes).
func formatSize(n int64) string {
	for _, u := range []struct {
		shift uint
		name  string
	}{{30, "GiB"}, {20, "MiB"}, {10, "KiB"}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", n>>u.shift, u.name)
		}
	}
	return fmt.Sprintf("%dB", n)
}

// formatRate renders bits per second in tc's syntax, as the harness does.
func formatRate(bps int64) string {
	for _, u := range []struct {
		mult int64
		name string
	}{{1e9, "gbit"}, {1e6, "mbit"}, {1e3, "kbit"}} {
		if bps >= u.mult && bps%u.mult == 0 {
			return fmt.Sprintf("%d%s", bps/u.mult, u.name)
		}
	}
	return fmt.Sprintf("%dbit", bps)
}
