package scenario

import (
	"flag"
	"io"
	"testing"
	"time"
)

func TestParseRateSize(t *testing.T) {
	for in, want := range map[string]Rate{"100mbit": 100e6, "1gbit": 1e9, "2.5mbit": 2.5e6, "800kbit": 8e5, "1000": 1000} {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for in, want := range map[string]int64{"128MiB": 128 << 20, "4MB": 4e6, "1GiB": 1 << 30, "512": 512} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"fast", "0mbit", "-1"} {
		if _, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q): want an error", in)
		}
	}
	if _, err := ParseSize("big"); err == nil {
		t.Error("ParseSize(big): want an error")
	}
}

// The shared flags set the spec's fields, keep its defaults when absent
// and refuse values they cannot parse.
func TestAddFlags(t *testing.T) {
	s := DefaultSpec()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	s.AddFlags(fs)
	err := fs.Parse([]string{"-n", "16", "-size", "64MiB", "-rate", "1gbit", "-scenario", "spread", "-spread-min", "200mbit",
		"-spread-max", "1gbit", "-churn-at", "3s", "-seed-on-origin", "-declare", "-mixed-down"})
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultSpec()
	want.Hosts, want.Size, want.Rate, want.Scenario = 16, 64<<20, 1e9, Spread
	want.SpreadMin, want.SpreadMax, want.ChurnAt = 200e6, 1e9, 3*time.Second
	want.SeedOnOrigin, want.Declare, want.MixedDown = true, true, true
	if s != want {
		t.Errorf("parsed %+v\nwant   %+v", s, want)
	}
	for _, bad := range [][]string{{"-rate", "fast"}, {"-size", "big"}, {"-n", "x"}} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		s := DefaultSpec()
		s.AddFlags(fs)
		if err := fs.Parse(bad); err == nil {
			t.Errorf("%v parsed", bad)
		}
	}
}

// Validate fills the rates that default to -rate and refuses what no run
// can have.
func TestValidate(t *testing.T) {
	s := DefaultSpec()
	if err := s.Validate(8); err != nil {
		t.Fatal(err)
	}
	if s.DownRate != s.Rate || s.SeedRate != s.Rate || s.InterRackRate != s.Rate {
		t.Errorf("rates not filled from -rate: %+v", s)
	}
	for name, mod := range map[string]func(*Spec){
		"too many hosts": func(s *Spec) { s.Hosts = 9 },
		"no hosts":       func(s *Spec) { s.Hosts = 0 },
		"no size":        func(s *Spec) { s.Size = 0 },
		"no origin rate": func(s *Spec) { s.OriginRate = 0 },
		"scenario":       func(s *Spec) { s.Scenario = "flood" },
		"spread min>max": func(s *Spec) { s.Scenario, s.SpreadMin, s.SpreadMax = Spread, 100e6, 20e6 },
		"spread no min":  func(s *Spec) { s.Scenario, s.SpreadMax = Spread, 100e6 },
		"slow frac":      func(s *Spec) { s.SlowFrac = 1.5 },
		"churn frac":     func(s *Spec) { s.ChurnFrac = 1 },
		"slow factor":    func(s *Spec) { s.SlowFactor = 0.5 },
	} {
		s := DefaultSpec()
		mod(&s)
		if err := s.Validate(8); err == nil {
			t.Errorf("%s: %+v validated", name, s)
		}
	}
}

// Churn kills round(N·frac) peers spread over the index range, and none
// in another scenario.
func TestChurnVictims(t *testing.T) {
	s := DefaultSpec()
	if v := s.ChurnVictims(8); len(v) != 0 {
		t.Errorf("uniform: victims %v", v)
	}
	s.Scenario = Churn
	if v := s.ChurnVictims(8); len(v) != 2 || !v[2] || !v[6] {
		t.Errorf("victims %v, want 2 and 6", v)
	}
	s.ChurnFrac = 0.5
	if v := s.ChurnVictims(16); len(v) != 8 || !v[1] || !v[15] {
		t.Errorf("half of 16: victims %v", v)
	}
}
