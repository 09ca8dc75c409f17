package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
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
