package runtimes

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/damselfly-io/damselfly/internal/config"
	"github.com/damselfly-io/damselfly/internal/golden"
)

func TestDefaultConfigGolden(t *testing.T) {
	got, err := config.Render(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, filepath.Join("testdata", "default-config.yaml"), got)
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}

func TestValidate(t *testing.T) {
	for name, mut := range map[string]func(*Config){
		"no root":          func(c *Config) { c.Root = "" },
		"unknown runtime":  func(c *Config) { c.Runtimes = []string{"rkt"} },
		"mirror no scheme": func(c *Config) { c.Mirror = "127.0.0.1:65001" },
		"mirror with path": func(c *Config) { c.Mirror = "http://127.0.0.1:65001/v2" },
		"bad registry":     func(c *Config) { c.Registries = []string{"ftp://x"} },
		"registry path":    func(c *Config) { c.Registries = []string{"ghcr.io/org"} },
		"relative path":    func(c *Config) { c.DockerConfig = "etc/docker/daemon.json" },
		"bad restart":      func(c *Config) { c.Restart = "always" },
	} {
		c := DefaultConfig()
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
	}
}

// scratch returns a config rooted in a temp dir with the given files.
func scratch(t *testing.T, files map[string]string) Config {
	t.Helper()
	c := DefaultConfig()
	c.Root = t.TempDir()
	c.Restart = "never"
	for p, s := range files {
		full := filepath.Join(c.Root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(s), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// snapshot reads every file under root.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out[strings.TrimPrefix(p, root)] = string(b) + "|" + fi.Mode().String()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func apply(t *testing.T, c Config) *Plan {
	t.Helper()
	p, err := c.PlanApply()
	if err != nil {
		t.Fatal(err)
	}
	if err := Apply(p); err != nil {
		t.Fatal(err)
	}
	return p
}

func read(t *testing.T, c Config, p string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.Root, p))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const debianContainerd = `version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
`

const operatorHosts = `server = "https://ghcr.io"
capabilities = ["pull", "resolve"]

[host."https://corp-mirror.example"]
  capabilities = ["pull"]
  ca = "/etc/ssl/corp.pem"
`

// A full round: apply keeps what was there, a second run changes nothing,
// undo brings back every byte and mode.
func TestApplyIdempotentUndo(t *testing.T) {
	c := scratch(t, map[string]string{
		"/etc/containerd/config.toml":                debianContainerd,
		"/etc/containerd/certs.d/ghcr.io/hosts.toml": operatorHosts,
		"/etc/containers/registries.conf":            "unqualified-search-registries = [\"docker.io\"]\n",
		"/etc/docker/daemon.json":                    `{"log-level":"warn","registry-mirrors":["https://other.example"]}`,
	})
	c.Registries = []string{"docker.io", "ghcr.io", "http://10.77.0.9:5000"}
	before := snapshot(t, c.Root)
	p := apply(t, c)
	if got := strings.Join(p.Runtimes, ","); got != "containerd,podman,docker" {
		t.Fatalf("detected runtimes %q", got)
	}

	cfg := read(t, c, "/etc/containerd/config.toml")
	if !strings.HasPrefix(cfg, debianContainerd) || !strings.Contains(cfg, "[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n") {
		t.Fatalf("containerd config:\n%s", cfg)
	}
	ghcr := read(t, c, "/etc/containerd/certs.d/ghcr.io/hosts.toml")
	mirrorAt := strings.Index(ghcr, `[host."http://127.0.0.1:65001"]`)
	corpAt := strings.Index(ghcr, `[host."https://corp-mirror.example"]`)
	if mirrorAt < 0 || corpAt < mirrorAt || !strings.Contains(ghcr, `ca = "/etc/ssl/corp.pem"`) ||
		!strings.HasPrefix(ghcr, "server = \"https://ghcr.io\"\ncapabilities") {
		t.Fatalf("ghcr.io hosts.toml must keep the operator's hosts after the mirror:\n%s", ghcr)
	}
	if h := read(t, c, "/etc/containerd/certs.d/10.77.0.9:5000/hosts.toml"); !strings.HasPrefix(h, "server = \"http://10.77.0.9:5000\"\n") {
		t.Fatalf("plain-HTTP registry hosts.toml:\n%s", h)
	}
	if h := read(t, c, "/etc/containerd/certs.d/docker.io/hosts.toml"); !strings.HasPrefix(h, "server = \"https://registry-1.docker.io\"\n") {
		t.Fatalf("docker.io hosts.toml:\n%s", h)
	}
	dj := read(t, c, "/etc/docker/daemon.json")
	if !strings.Contains(dj, `"log-level": "warn"`) || strings.Index(dj, "http://127.0.0.1:65001") > strings.Index(dj, "https://other.example") {
		t.Fatalf("daemon.json must keep settings and list our mirror first:\n%s", dj)
	}
	if got := read(t, c, "/etc/containers/registries.conf"); got != "unqualified-search-registries = [\"docker.io\"]\n" {
		t.Fatalf("registries.conf changed: %q", got)
	}
	if reloads := c.Reloads(p); len(reloads[Containerd]) == 0 || len(reloads[Docker]) == 0 {
		t.Fatalf("reloads after a main config change: %v", reloads)
	}

	after := snapshot(t, c.Root)
	again, err := c.PlanApply()
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Changes) != 0 {
		t.Fatalf("second run plans %d changes, first: %s", len(again.Changes), again.Changes[0].Diff(c.Root))
	}
	if len(c.Reloads(again)) != 0 {
		t.Fatalf("second run wants reloads: %v", c.Reloads(again))
	}
	if err := Apply(again); err != nil {
		t.Fatal(err)
	}
	if got := snapshot(t, c.Root); !equalMaps(got, after) {
		t.Fatal("second run changed files")
	}

	u, err := c.PlanUndo()
	if err != nil {
		t.Fatal(err)
	}
	if err := Apply(u); err != nil {
		t.Fatal(err)
	}
	if got := snapshot(t, c.Root); !equalMaps(got, before) {
		t.Fatalf("undo left:\n%v\nwant:\n%v", got, before)
	}
	if u2, err := c.PlanUndo(); err != nil || len(u2.Changes) != 0 {
		t.Fatalf("second undo: %v, %d changes", err, len(u2.Changes))
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// Only hosts.toml changes: containerd re-reads those on every pull, so no restart.
func TestHostsOnlyNoRestart(t *testing.T) {
	c := scratch(t, map[string]string{"/etc/containerd/config.toml": debianContainerd + `
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
`})
	c.Runtimes = []string{Containerd}
	p := apply(t, c)
	if len(p.Changes) != 1 || p.Changes[0].Main {
		t.Fatalf("want one hosts.toml change, got %d", len(p.Changes))
	}
	if r := c.Reloads(p); len(r) != 0 {
		t.Fatalf("reloads without a main config change: %v", r)
	}
}

// An operator's config_path elsewhere is kept and the hosts go there; an
// empty config_path is filled in.
func TestConfigPath(t *testing.T) {
	c := scratch(t, map[string]string{"/etc/containerd/config.toml": `version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/srv/registry-hosts"
`})
	c.Runtimes = []string{Containerd}
	p := apply(t, c)
	if len(p.Changes) != 1 || p.Changes[0].Path != filepath.Join(c.Root, "/srv/registry-hosts/docker.io/hosts.toml") {
		t.Fatalf("changes: %+v", p.Changes)
	}
	u, err := c.PlanUndo()
	if err != nil || len(u.Changes) != 1 || !u.Changes[0].Remove {
		t.Fatalf("undo must find the hosts.toml under the operator's config_path: %v %+v", err, u)
	}

	c = scratch(t, map[string]string{"/etc/containerd/config.toml": `version = 3
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = ''
`})
	c.Runtimes = []string{Containerd}
	apply(t, c)
	if got := read(t, c, "/etc/containerd/config.toml"); !strings.Contains(got, `config_path = "/etc/containerd/certs.d"`) || strings.Count(got, "registry]") != 1 {
		t.Fatalf("version 3 config:\n%s", got)
	}

	c = scratch(t, nil)
	c.Runtimes = []string{Containerd}
	apply(t, c)
	if got := read(t, c, "/etc/containerd/config.toml"); !strings.HasPrefix(got, "version = 2\n") {
		t.Fatalf("new config:\n%s", got)
	}
}

func TestFailures(t *testing.T) {
	c := scratch(t, map[string]string{"/etc/containerd/config.toml": `version = 2
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
  endpoint = ["https://registry-1.docker.io"]
`})
	c.Runtimes = []string{Containerd}
	if _, err := c.PlanApply(); err == nil || !strings.Contains(err.Error(), "mirrors") {
		t.Fatalf("deprecated mirrors: %v", err)
	}
	c = scratch(t, map[string]string{"/etc/docker/daemon.json": "{not json"})
	c.Runtimes = []string{Docker}
	if _, err := c.PlanApply(); err == nil || !strings.Contains(err.Error(), "daemon.json") {
		t.Fatalf("broken daemon.json: %v", err)
	}
	c = scratch(t, map[string]string{"/etc/docker/daemon.json": `{"registry-mirrors":"x"}`})
	c.Runtimes = []string{Docker}
	if _, err := c.PlanApply(); err == nil {
		t.Fatal("registry-mirrors as a string accepted")
	}
	c = scratch(t, nil)
	if _, err := c.PlanApply(); err == nil || !strings.Contains(err.Error(), "no container runtime") {
		t.Fatalf("empty root: %v", err)
	}
	// Docker mirrors Docker Hub only: another upstream is a note, not a change.
	c = scratch(t, map[string]string{"/etc/docker/daemon.json": "{}"})
	c.Runtimes = []string{Docker}
	c.Upstream = "ghcr.io"
	p, err := c.PlanApply()
	if err != nil || len(p.Changes) != 0 || len(p.Notes) != 1 {
		t.Fatalf("docker with ghcr.io upstream: %v %+v", err, p)
	}
	// A failing reload command is an error naming it.
	c = scratch(t, map[string]string{"/etc/docker/daemon.json": "{}"})
	c.Runtimes = []string{Docker}
	c.Restart = "auto"
	c.DockerReload = []string{"false"}
	p = apply(t, c)
	if _, err := c.RunReloads(context.Background(), p); err == nil || !strings.Contains(err.Error(), "run false") {
		t.Fatalf("failing reload: %v", err)
	}
}

func TestDiff(t *testing.T) {
	old := "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n"
	new := "a\nb\nc\nD\ne\nf\ng\nh\ni\nj\nk\n"
	want := `--- a/f
+++ b/f
@@ -1,10 +1,11 @@
 a
 b
 c
-d
+D
 e
 f
 g
 h
 i
 j
+k
`
	if got := unifiedDiff("/f", []byte(old), []byte(new), true, true); got != want {
		t.Fatalf("diff:\n%s\nwant:\n%s", got, want)
	}
	if got := unifiedDiff("/f", []byte(old), []byte(old), true, true); got != "" {
		t.Fatalf("equal files differ: %q", got)
	}
	far := "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n"
	far2 := "x\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\ny\n"
	if got := unifiedDiff("/f", []byte(far), []byte(far2), true, true); strings.Count(got, "@@ -") != 2 {
		t.Fatalf("distant changes want two hunks:\n%s", got)
	}
}
