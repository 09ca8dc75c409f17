package scheduler

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/golden"
)

func TestDefaultConfigGolden(t *testing.T) {
	got, err := yaml.Marshal(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, filepath.Join("testdata", "default-config.yaml"), got)
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}

func TestConfigYAMLRoundTrip(t *testing.T) {
	in := `
listen: 127.0.0.1:9002
max_parents: 6
seed_trigger_timeout: 1m30s
weights:
  free_slots: 0.9
  seed_penalty: 0.2
`
	cfg := DefaultConfig()
	dec := yaml.NewDecoder(strings.NewReader(in))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:9002" || cfg.MaxParents != 6 || cfg.SeedTriggerTimeout.D() != 90*time.Second {
		t.Fatalf("decoded %+v", cfg)
	}
	if cfg.Weights.FreeSlots != 0.9 || cfg.Weights.SeedPenalty != 0.2 || cfg.Weights.Progress != DefaultConfig().Weights.Progress {
		t.Fatalf("weights %+v: set fields change, others keep defaults", cfg.Weights)
	}
	if cfg.WaitTimeout != DefaultConfig().WaitTimeout {
		t.Fatalf("unset duration changed: %v", cfg.WaitTimeout)
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "seed_trigger_timeout: 1m30s") {
		t.Fatalf("durations must render as strings:\n%s", out)
	}

	var bad Config
	if err := yaml.Unmarshal([]byte("wait_timeout: 30"), &bad); err == nil {
		t.Fatal("a duration without unit was accepted")
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"defaults", func(*Config) {}, ""},
		{"no back to source at all", func(c *Config) { c.MaxBackToSource = 0 }, ""},
		{"empty listen", func(c *Config) { c.Listen = "" }, "listen"},
		{"max parents", func(c *Config) { c.MaxParents = 0 }, "max_parents"},
		{"negative back to source", func(c *Config) { c.MaxBackToSource = -1 }, "max_back_to_source"},
		{"zero refresh", func(c *Config) { c.RefreshInterval = 0 }, "refresh_interval"},
		{"negative ttl", func(c *Config) { c.TaskTTL = Duration(-time.Second) }, "task_ttl"},
		{"zero wait timeout", func(c *Config) { c.WaitTimeout = 0 }, "wait_timeout"},
		{"zero seed timeout", func(c *Config) { c.SeedTriggerTimeout = 0 }, "seed_trigger_timeout"},
		{"zero gc", func(c *Config) { c.GCInterval = 0 }, "gc_interval"},
		{"slots", func(c *Config) { c.DefaultUploadSlots = 0 }, "default_upload_slots"},
		{"candidate limit", func(c *Config) { c.MaxParents, c.CandidateLimit = 4, 2 }, "candidate_limit"},
		{"negative children", func(c *Config) { c.MaxChildren = -1 }, "max_children"},
		{"send buffer", func(c *Config) { c.SendBuffer = 0 }, "send_buffer"},
		{"negative weight", func(c *Config) { c.Weights.Locality = -1 }, "weights.locality"},
		{"zero weights", func(c *Config) {
			c.Weights.Progress, c.Weights.FreeSlots, c.Weights.Success, c.Weights.Throughput, c.Weights.Locality = 0, 0, 0, 0, 0
		}, "all zero"},
		{"seed penalty", func(c *Config) { c.Weights.SeedPenalty = 2 }, "seed_penalty"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := DefaultConfig()
			c.mutate(&cfg)
			err := cfg.Validate()
			if c.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one mentioning %q", err, c.want)
			}
			if !errors.Is(err, core.ErrInvalid) {
				t.Fatalf("error %v does not wrap core.ErrInvalid", err)
			}
		})
	}
	if _, err := New(Config{}, nil, nil); !errors.Is(err, core.ErrInvalid) {
		t.Fatalf("New with a zero config: %v", err)
	}
}
