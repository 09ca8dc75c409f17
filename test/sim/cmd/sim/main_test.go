package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/damselfly-io/damselfly/test/sim"
	"github.com/damselfly-io/damselfly/test/swarm"
)

func TestLastLineIsJSON(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"-n", "4", "-size", "4MiB", "-rate", "100mbit", "-scenario", "mixed", "-seed", "7"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &m); err != nil {
		t.Fatalf("last line is not JSON: %v\n%s", err, out.String())
	}
	for _, k := range []string{"n", "completed", "t_star_s", "t_median_s", "t_last_s", "origin_bytes_over_f", "scheduler_cpu_s", "wall_s", "scenario", "rate_bps", "origin_rate_bps", "seed_rate_bps"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}
	if m["n"].(float64) != 4 || m["completed"].(float64) != 4 || m["scenario"] != "mixed" || m["models"] != "real" {
		t.Errorf("unexpected result %v", m)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-scenario", "nope"},
		{"-rate", "fast"},
		{"-n", "0"},
		{"-models", "mine"},
		{"extra"},
		{"-scheduler-config", "/nonexistent/scheduler.yaml"},
	} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, errb.String())
		}
		if errb.Len() == 0 {
			t.Errorf("%v: no error message", args)
		}
	}
}

// -harness takes the scenario and rates from a harness results.json and
// -table prints the comparison.
func TestHarnessAndTable(t *testing.T) {
	dir := t.TempDir()
	res := swarm.Results{
		Params: swarm.Params{Scenario: "churn", N: 8, SizeBytes: 4 << 20, RateBps: 100e6, DownRateBps: 100e6,
			OriginRateBps: 100e6, SeedRateBps: 100e6, ChurnFrac: 0.25, ChurnAtS: 0.1},
		LowerBound: swarm.Bound{TStar: 0.36},
		Systems:    []swarm.SystemResult{{Name: "damselfly", Completed: 6, TMedian: 0.5, TLast: 0.6, OriginOverF: 1.01, CPUBusy: 0.4}},
	}
	data, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	hp := filepath.Join(dir, "results.json")
	if err := os.WriteFile(hp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"-harness", hp}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var m map[string]any
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &m); err != nil {
		t.Fatal(err)
	}
	if m["scenario"] != "churn" || m["n"].(float64) != 8 || m["killed"].(float64) != 2 || m["payload_frac"].(float64) != sim.HarnessPayloadFrac {
		t.Errorf("the harness's run was not reproduced: %v", m)
	}
	if h, ok := m["harness"].(map[string]any); !ok || h["t_last_s"].(float64) != 0.6 {
		t.Errorf("harness figures missing: %v", m["harness"])
	}
	sp := filepath.Join(dir, "sim.json")
	if err := os.WriteFile(sp, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if code := run([]string{"-table", sp}, &out, &errb); code != 0 {
		t.Fatalf("table: exit %d: %s", code, errb.String())
	}
	rows := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(rows) != 3 || !strings.HasPrefix(rows[2], "| churn | 8 | 0.34 | 0.50 |") {
		t.Errorf("table:\n%s", out.String())
	}
	// A harness run without the damselfly system cannot be compared.
	res.Systems[0].Name = "direct"
	data, _ = json.Marshal(res)
	if err := os.WriteFile(hp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if code := run([]string{"-harness", hp}, &out, &errb); code != 2 {
		t.Errorf("no damselfly system: exit %d, want 2", code)
	}
}
