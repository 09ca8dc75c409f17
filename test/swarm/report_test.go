package swarm

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeCDFPlot writes an executable shell script named cdfplot into a new
// bin dir and returns the dir.
func fakeCDFPlot(t *testing.T, script string) string {
	t.Helper()
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "cdfplot"), []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestResultsChart checks how the harness gets cdf.png: results.json and
// results.md are written whatever happens; bin/cdfplot, when it is there,
// is run as `cdfplot -o DIR/cdf.png DIR/results.json`; a missing or failing
// cdfplot leaves no chart and fails nothing.
func TestResultsChart(t *testing.T) {
	res := &Results{
		Params:     Params{RunID: "t", Scenario: ScenarioUniform, N: 1, SizeBytes: 1 << 20},
		LowerBound: Bound{TStar: 1},
		Systems:    []SystemResult{{Name: SystemDirect, Hosts: []HostResult{{Name: "h1", DoneS: 1.5, OK: true}}, Completed: 1}},
	}
	logged := func() (*slog.Logger, *bytes.Buffer) {
		var b bytes.Buffer
		return slog.New(slog.NewTextHandler(&b, nil)), &b
	}
	write := func(t *testing.T, bin string) (dir string, log *bytes.Buffer) {
		t.Helper()
		dir = t.TempDir()
		if err := res.write(dir); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"results.json", "results.md"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				t.Fatal(err)
			}
		}
		l, b := logged()
		drawCDF(l, findCDFPlot(bin), dir)
		return dir, b
	}

	t.Run("drawn", func(t *testing.T) {
		bin := fakeCDFPlot(t, `[ "$1" = -o ] && printf '%s' "$3" > "$2"`+"\n")
		dir, log := write(t, bin)
		got, err := os.ReadFile(filepath.Join(dir, "cdf.png"))
		if err != nil {
			t.Fatalf("no chart: %v", err)
		}
		if string(got) != filepath.Join(dir, "results.json") {
			t.Errorf("cdfplot was given %q, want the run's results.json", got)
		}
		if log.Len() != 0 {
			t.Errorf("logged %q", log)
		}
	})
	t.Run("missing", func(t *testing.T) {
		bin := t.TempDir()
		if findCDFPlot(bin) != "" {
			t.Fatal("found a cdfplot in an empty dir")
		}
		// Not executable: not used either.
		os.WriteFile(filepath.Join(bin, "cdfplot"), []byte("#!/bin/sh\nexit 0\n"), 0o644)
		if findCDFPlot(bin) != "" {
			t.Fatal("found a cdfplot that is not executable")
		}
		dir, log := write(t, bin)
		if _, err := os.Stat(filepath.Join(dir, "cdf.png")); !os.IsNotExist(err) {
			t.Errorf("cdf.png without cdfplot (stat: %v)", err)
		}
		if log.Len() != 0 {
			t.Errorf("logged %q", log)
		}
	})
	t.Run("fails", func(t *testing.T) {
		bin := fakeCDFPlot(t, "printf half > \"$2\"\necho 'cdfplot: boom' >&2\nexit 3\n")
		dir, log := write(t, bin)
		if _, err := os.Stat(filepath.Join(dir, "cdf.png")); !os.IsNotExist(err) {
			t.Errorf("a failed chart was left behind (stat: %v)", err)
		}
		if n := strings.Count(log.String(), "\n"); n != 1 || !strings.Contains(log.String(), "boom") {
			t.Errorf("want one log line naming the failure, got %q", log)
		}
	})
}
