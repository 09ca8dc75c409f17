package daemon

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	// and it loads back to the same thing
	p := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(p, got, 0o644)
	var c Config
	if err := config.LoadFile(p, &c); err != nil {
		t.Fatal(err)
	}
	again, err := config.Render(c)
	if err != nil || !bytes.Equal(again, got) {
		t.Fatalf("round trip changed the config (%v):\n%s", err, again)
	}
}

func TestValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	for name, mut := range map[string]func(*Config){
		"no data dir":         func(c *Config) { c.DataDir = "" },
		"negative upload_bps": func(c *Config) { c.UploadBps = -1 },
		"negative sock gid":   func(c *Config) { c.SockGroup = "-1" },
		"bad port":            func(c *Config) { c.PeerPort = 70000 },
		"bad ip":              func(c *Config) { c.AdvertiseIP = "nope" },
		"bad scheduler":       func(c *Config) { c.Scheduler = "no-port" },
		"zero pieces":         func(c *Config) { c.Download.ConcurrentPieces = 0 },
		"stall inverted":      func(c *Config) { c.Download.MaxStallTimeout = 1 },
		"no upload slots":     func(c *Config) { c.Upload.Slots = 0 },
		"no origin slots":     func(c *Config) { c.Download.MaxConcurrentOrigin = 0 },
		"negative peer rate":  func(c *Config) { c.Upload.PeerRateLimit = -1 },
		"no gc interval":      func(c *Config) { c.Cache.GCInterval = 0 },
		"negative ttl":        func(c *Config) { c.Cache.TaskTTL = -1 },
		"low above high": func(c *Config) {
			c.Cache.HighWatermark, c.Cache.LowWatermark = 10<<30, 20<<30
		},
		"low without high":     func(c *Config) { c.Cache.LowWatermark = 1 << 30 },
		"percent over 100":     func(c *Config) { c.Cache.HighWatermarkPercent = 120 },
		"percent inverted":     func(c *Config) { c.Cache.LowWatermarkPercent = 95 },
		"percent low alone":    func(c *Config) { c.Cache.HighWatermarkPercent = 0 },
		"link tests too often": func(c *Config) { c.LinkTest.Interval = config.Duration(time.Second) },
	} {
		c := DefaultConfig()
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.TrimSpace(err.Error()) == "" {
			t.Errorf("%s: empty error", name)
		}
	}
}

// Declared capacity: upload_bps/download_bps, else the host-wide limits.
func TestDeclaredCapacity(t *testing.T) {
	c := DefaultConfig()
	if up, down := c.DeclaredCapacity(); up != 0 || down != 0 {
		t.Fatalf("defaults declare %d/%d", up, down)
	}
	c.Upload.RateLimit, c.Download.RateLimit = 5<<20, 7<<20
	if up, down := c.DeclaredCapacity(); up != 5<<20 || down != 7<<20 {
		t.Fatalf("limits: %d/%d", up, down)
	}
	c.UploadBps, c.DownloadBps = 12<<20, 100<<20
	if up, down := c.DeclaredCapacity(); up != 12<<20 || down != 100<<20 {
		t.Fatalf("declared: %d/%d", up, down)
	}
}
