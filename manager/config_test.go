package manager

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/config"
	"github.com/damselfly-io/damselfly/internal/golden"
)

// The rendered defaults are a golden file, so a changed default shows in review.
func TestDefaultConfigGolden(t *testing.T) {
	got, err := config.Render(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, filepath.Join("testdata", "default-config.yaml"), got)
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, got, 0o644); err != nil {
		t.Fatal(err)
	}
	var c Config
	if err := config.LoadFile(p, &c); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, DefaultConfig()) {
		t.Fatalf("round trip changed the config: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"defaults", func(*Config) {}, ""},
		{"postgres without dsn", func(c *Config) { c.Database.Type = "postgres" }, "database.dsn"},
		{"unknown database", func(c *Config) { c.Database.Type = "oracle" }, "database.type"},
		{"mysql without dsn", func(c *Config) { c.Database.Type = "mysql" }, "database.dsn"},
		{"listen", func(c *Config) { c.Listen = "8080" }, "listen"},
		{"keepalive", func(c *Config) { c.KeepAliveTimeout = c.KeepAliveInterval }, "keepalive"},
		{"workers", func(c *Config) { c.Jobs.Workers = 0 }, "jobs.workers"},
		{"lease", func(c *Config) { c.Jobs.Lease = 0 }, "jobs.lease"},
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
			if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, core.ErrInvalid) {
				t.Fatalf("error %v, want one mentioning %q wrapping core.ErrInvalid", err, c.want)
			}
		})
	}
}
