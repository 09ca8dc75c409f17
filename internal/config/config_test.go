package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1048576": 1 << 20, "512K": 512 << 10, "100M": 100 << 20,
		"100MiB": 100 << 20, "1G": 1 << 30, "1.5G": 3 << 29, "2gb": 2 << 30} {
		got, err := ParseByteSize(in)
		if err != nil || int64(got) != want {
			t.Errorf("ParseByteSize(%q)=%d,%v want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-1", "10Q"} {
		if _, err := ParseByteSize(bad); err == nil {
			t.Errorf("ParseByteSize(%q) accepted", bad)
		}
	}
}

func TestLoadFileStrict(t *testing.T) {
	type C struct {
		Timeout Duration `yaml:"timeout"`
		Rate    ByteSize `yaml:"rate"`
		Name    string   `yaml:"name"`
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	os.WriteFile(p, []byte("timeout: 1m30s\nrate: 10MiB\n"), 0o644)
	c := C{Name: "default"}
	if err := LoadFile(p, &c); err != nil {
		t.Fatal(err)
	}
	if c.Timeout.D() != 90*time.Second || c.Rate != 10<<20 || c.Name != "default" {
		t.Fatalf("loaded %+v", c)
	}
	os.WriteFile(p, []byte("timeot: 1s\n"), 0o644)
	if err := LoadFile(p, &c); err == nil {
		t.Fatal("unknown key accepted")
	}
	out, err := Render(C{Timeout: Duration(time.Second), Rate: 1 << 20})
	if err != nil || string(out) != "timeout: 1s\nrate: 1MiB\nname: \"\"\n" {
		t.Fatalf("render: %q %v", out, err)
	}
}

func TestRenderRedacted(t *testing.T) {
	type reg struct {
		Host     string            `yaml:"host"`
		Password string            `yaml:"password"`
		Headers  map[string]string `yaml:"headers"`
	}
	type cfg struct {
		Listen   string `yaml:"listen"`
		Database struct {
			DSN string `yaml:"dsn"`
		} `yaml:"database"`
		AdminPassword string `yaml:"admin_password"`
		Registries    []reg  `yaml:"registries"`
	}
	var c cfg
	c.Listen = ":8080"
	c.Database.DSN = "postgres://u:hunter2@db/x"
	c.Registries = []reg{{Host: "r.example", Password: "hunter2", Headers: map[string]string{"X-Token": "hunter2"}}}
	b, err := RenderRedacted(c)
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	if strings.Contains(out, "hunter2") {
		t.Fatalf("secret shown:\n%s", out)
	}
	for _, want := range []string{"listen: :8080", "host: r.example", "dsn: '[redacted]'", "password: '[redacted]'", "X-Token: '[redacted]'", `admin_password: ""`} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}
