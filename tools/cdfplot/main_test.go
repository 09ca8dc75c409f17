package main

import (
	"bytes"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sample is a small results.json in the harness's shape (with some of the
// fields the chart does not use): two systems of four hosts, one of them
// with a failed host and a killed one.
const sample = `{
  "params": {"run_id": "t1", "scenario": "uniform", "n": 4, "size_bytes": 134217728,
             "rate_bps": 100000000, "down_rate_bps": 100000000, "hosts": []},
  "lower_bound": {"t_star_s": 10.7, "t_star_with_seed_s": 8.9, "origin_term_s": 10.7},
  "sha256": "00",
  "systems": [
    {"name": "damselfly", "t_last_s": 12.5, "completed": 4, "hosts": [
      {"name": "h1", "done_s": 11.2, "ok": true}, {"name": "h2", "done_s": 11.9, "ok": true},
      {"name": "h3", "done_s": 12.1, "ok": true}, {"name": "h4", "done_s": 12.5, "ok": true}]},
    {"name": "bittorrent", "t_last_s": 0, "completed": 2, "failed": 1, "killed": 1, "hosts": [
      {"name": "h1", "done_s": 15.0, "ok": true}, {"name": "h2", "done_s": 19.5, "ok": true},
      {"name": "h3", "done_s": -1, "ok": false, "error": "deadline"},
      {"name": "h4", "done_s": -1, "ok": false, "killed": true}]}
  ]
}
`

func writeSample(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "results.json")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// decode reads the PNG at path.
func decode(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
	return img
}

// near reports whether some pixel of img is within a small distance of c
// (the lines are anti-aliased).
func near(img image.Image, c [3]uint8) bool {
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			d := func(v uint32, w uint8) int { return max(int(v>>8)-int(w), int(w)-int(v>>8)) }
			if d(r, c[0]) <= 8 && d(g, c[1]) <= 8 && d(bl, c[2]) <= 8 {
				return true
			}
		}
	}
	return false
}

func TestDrawChart(t *testing.T) {
	in := writeSample(t, sample)
	out := filepath.Join(t.TempDir(), "chart.png")
	var stderr bytes.Buffer
	if code := run([]string{"-o", out, in}, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	img := decode(t, out)
	b := img.Bounds()
	// 7 × 4.5 inches at the PNG back end's 96 dpi.
	if b.Dx() != 672 || b.Dy() != 432 {
		t.Errorf("size %v, want 672×432", b.Size())
	}
	colours := map[uint32]bool{}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			colours[r>>8<<16|g>>8<<8|bl>>8] = true
		}
	}
	if len(colours) < 10 {
		t.Errorf("%d distinct colours: the chart looks empty", len(colours))
	}
	for name, c := range map[string][3]uint8{"damselfly": {0x1f, 0x77, 0xb4}, "bittorrent": {0xd6, 0x27, 0x28}} {
		if !near(img, c) {
			t.Errorf("no pixel in %s's colour", name)
		}
	}
}

func TestDefaultOutput(t *testing.T) {
	in := writeSample(t, sample)
	var stderr bytes.Buffer
	if code := run([]string{in}, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	decode(t, filepath.Join(filepath.Dir(in), "cdf.png"))
}

func TestSteps(t *testing.T) {
	r, err := load(writeSample(t, sample))
	if err != nil {
		t.Fatal(err)
	}
	if r.Params.N != 4 || r.LowerBound.TStar != 10.7 || len(r.Systems) != 2 {
		t.Fatalf("loaded %+v", r)
	}
	// bittorrent: the killed host is left out, the failed one counts, so
	// the line rises in thirds and stops at 2/3.
	xy, last := steps(r.Systems[1])
	if last != 19.5 {
		t.Errorf("last = %v, want 19.5", last)
	}
	want := [][2]float64{{0, 0}, {15, 0}, {15, 1.0 / 3}, {19.5, 1.0 / 3}, {19.5, 2.0 / 3}}
	if len(xy) != len(want) {
		t.Fatalf("steps %v, want %v", xy, want)
	}
	for i, w := range want {
		if xy[i].X != w[0] || xy[i].Y != w[1] {
			t.Errorf("step %d = (%v, %v), want (%v, %v)", i, xy[i].X, xy[i].Y, w[0], w[1])
		}
	}
	if xy, _ := steps(system{Name: "x", Hosts: []host{{DoneS: -1}}}); xy != nil {
		t.Errorf("a system with no finished host has steps %v", xy)
	}
	if formatSize(134217728) != "128MiB" || formatSize(1000) != "1000B" || formatRate(100e6) != "100mbit" || formatRate(2500) != "2500bit" {
		t.Errorf("units: %s %s %s %s", formatSize(134217728), formatSize(1000), formatRate(100e6), formatRate(2500))
	}
}

func TestFailures(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name string
		args func(out string) []string
		code int
		msg  string
	}{
		{"missing file", func(out string) []string { return []string{"-o", out, filepath.Join(dir, "nope.json")} }, 1, "read results"},
		{"invalid JSON", func(out string) []string { return []string{"-o", out, writeSample(t, `{"systems": [`)} }, 1, "parse"},
		{"not results", func(out string) []string { return []string{"-o", out, writeSample(t, `{"hello": 1}`)} }, 1, "no systems"},
		{"no argument", func(out string) []string { return []string{"-o", out} }, 2, "usage"},
		{"unknown flag", func(out string) []string { return []string{"-x", writeSample(t, sample)} }, 2, "usage"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "cdf.png")
			var stderr bytes.Buffer
			code := run(c.args(out), &stderr)
			if code != c.code || !strings.Contains(stderr.String(), c.msg) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, stderr.String(), c.code, c.msg)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("a chart was written after a failure (stat: %v)", err)
			}
		})
	}
}
