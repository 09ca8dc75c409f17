// Package runtimes wires a node's container runtimes to the local
// Damselfly daemon's registry mirror: containerd (config_path and
// certs.d/<registry>/hosts.toml), CRI-O and Podman (a registries.conf.d
// drop-in) and Docker (daemon.json registry-mirrors). Every path lives under
// a root directory so the same code serves a host install (root "/"), an
// init container (the host's file system mounted somewhere) and tests
// (a scratch directory).
//
// Changes are planned first (Plan), shown as a unified diff, and applied
// with a backup of each file's previous state (Apply); Undo puts back what
// was there before the first Apply. Applying twice changes nothing.
package runtimes

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// Runtime names.
const (
	Containerd = "containerd"
	CRIO       = "crio"
	Podman     = "podman"
	Docker     = "docker"
)

// Suffixes of the files that remember a managed file's state before the
// first change: a copy of it, or a marker that it did not exist.
const (
	backupSuffix = ".damselfly-orig"
	absentSuffix = ".damselfly-absent"
	// DropInName is the registries.conf.d file this package owns.
	DropInName = "50-damselfly.conf"
)

// Config says which runtimes to wire, to which mirror, and where their
// files are (paths are absolute as seen from Root).
type Config struct {
	// Root is prepended to every path below ("/" on a host).
	Root string `yaml:"root"`
	// Runtimes to configure: containerd, crio, podman, docker. Empty: every
	// runtime whose configuration directory exists under Root.
	Runtimes []string `yaml:"runtimes"`
	// Mirror is the daemon's registry mirror, e.g. http://127.0.0.1:65001.
	Mirror string `yaml:"mirror"`
	// Registries get a containerd hosts.toml each: "host[:port]" (https) or
	// "http://host:port" for a plain-HTTP registry. docker.io means Docker Hub.
	Registries []string `yaml:"registries"`
	// Upstream is the registry the daemon's --registry-mirror names.
	// CRI-O, Podman and Docker send no registry name to a mirror, so they
	// get a mirror entry for this registry only (Docker only if it is
	// docker.io, the one registry Docker mirrors).
	Upstream string `yaml:"upstream"`
	// ContainerdConfig is containerd's main config file.
	ContainerdConfig string `yaml:"containerd_config"`
	// ContainerdCertsDir is where hosts.toml files go (the config_path set
	// in ContainerdConfig, unless that already names another directory).
	ContainerdCertsDir string `yaml:"containerd_certs_dir"`
	// RegistriesConfDir is the containers-registries.conf.d directory
	// (CRI-O and Podman).
	RegistriesConfDir string `yaml:"registries_conf_dir"`
	// DockerConfig is Docker's daemon.json.
	DockerConfig string `yaml:"docker_config"`
	// Restart: "auto" runs the commands below when a runtime must re-read a
	// changed file; "never" only says what to restart.
	Restart string `yaml:"restart"`
	// ContainerdRestart restarts containerd (run only when its main config
	// changed: hosts.toml files are read on every pull).
	ContainerdRestart []string `yaml:"containerd_restart"`
	// CRIOReload makes CRI-O re-read registries.conf (SIGHUP).
	CRIOReload []string `yaml:"crio_reload"`
	// DockerReload makes dockerd re-read daemon.json (registry-mirrors is
	// reloadable with SIGHUP).
	DockerReload []string `yaml:"docker_reload"`
}

// DefaultConfig returns the defaults for a host install.
func DefaultConfig() Config {
	return Config{
		Root:               "/",
		Mirror:             "http://127.0.0.1:65001",
		Registries:         []string{"docker.io"},
		Upstream:           "docker.io",
		ContainerdConfig:   "/etc/containerd/config.toml",
		ContainerdCertsDir: "/etc/containerd/certs.d",
		RegistriesConfDir:  "/etc/containers/registries.conf.d",
		DockerConfig:       "/etc/docker/daemon.json",
		Restart:            "auto",
		ContainerdRestart:  []string{"systemctl", "restart", "containerd"},
		CRIOReload:         []string{"systemctl", "reload", "crio"},
		DockerReload:       []string{"systemctl", "reload", "docker"},
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.Root == "" {
		errs = append(errs, errors.New("root is required (\"/\" on a host)"))
	}
	for _, r := range c.Runtimes {
		if !slices.Contains([]string{Containerd, CRIO, Podman, Docker}, r) {
			errs = append(errs, fmt.Errorf("runtimes: unknown runtime %q (want containerd, crio, podman or docker)", r))
		}
	}
	if u, err := url.Parse(c.Mirror); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		errs = append(errs, fmt.Errorf("mirror %q: want http(s)://host:port", c.Mirror))
	}
	for _, r := range append(slices.Clone(c.Registries), c.Upstream) {
		if _, _, err := parseRegistry(r); err != nil {
			errs = append(errs, err)
		}
	}
	for name, p := range map[string]string{"containerd_config": c.ContainerdConfig, "containerd_certs_dir": c.ContainerdCertsDir,
		"registries_conf_dir": c.RegistriesConfDir, "docker_config": c.DockerConfig} {
		if !filepath.IsAbs(p) {
			errs = append(errs, fmt.Errorf("%s %q: want an absolute path (it is taken under root)", name, p))
		}
	}
	if c.Restart != "auto" && c.Restart != "never" {
		errs = append(errs, fmt.Errorf("restart %q: want auto or never", c.Restart))
	}
	return errors.Join(errs...)
}

// parseRegistry splits "host[:port]" or "http(s)://host[:port]" into the
// host (as in image references and certs.d directory names) and the scheme.
func parseRegistry(r string) (host, scheme string, err error) {
	scheme = "https"
	if s, rest, ok := strings.Cut(r, "://"); ok {
		scheme, r = s, rest
	}
	r = strings.TrimSuffix(r, "/")
	if (scheme != "http" && scheme != "https") || r == "" || strings.ContainsAny(r, "/ \t\"'") {
		return "", "", fmt.Errorf("registry %q: want host[:port] or http(s)://host[:port]", r)
	}
	return r, scheme, nil
}

// serverURL is the registry's own endpoint (containerd's "server").
func serverURL(host, scheme string) string {
	if host == "docker.io" {
		return "https://registry-1.docker.io"
	}
	return scheme + "://" + host
}

// Change is one file's planned new state.
type Change struct {
	Runtime string
	Path    string // absolute, Root included
	Old     []byte
	Existed bool
	New     []byte
	Remove  bool // Undo: the file did not exist before
	// Main marks containerd's main config: changing it needs a restart.
	Main bool
	// restore is the backup file Undo restores from (and removes).
	restore string
}

// Diff is the change as a unified diff (paths shown without Root).
func (ch Change) Diff(root string) string {
	rel := "/" + strings.TrimPrefix(strings.TrimPrefix(ch.Path, filepath.Clean(root)), "/")
	return unifiedDiff(rel, ch.Old, ch.New, ch.Existed, !ch.Remove)
}

// Plan is what Apply (or Undo) would do.
type Plan struct {
	Changes []Change
	// Runtimes wired (or unwired), and notes for the operator.
	Runtimes []string
	Notes    []string
}

func (c Config) path(p string) string { return filepath.Join(c.Root, p) }

// selected returns the runtimes to configure.
func (c Config) selected() []string {
	if len(c.Runtimes) > 0 {
		return c.Runtimes
	}
	var rs []string
	for _, r := range []struct{ name, dir string }{
		{Containerd, filepath.Dir(c.ContainerdConfig)},
		{CRIO, "/etc/crio"},
		{Podman, filepath.Dir(c.RegistriesConfDir)},
		{Docker, filepath.Dir(c.DockerConfig)},
	} {
		if st, err := os.Stat(c.path(r.dir)); err == nil && st.IsDir() {
			rs = append(rs, r.name)
		}
	}
	return rs
}

func readFile(p string) ([]byte, bool, error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", p, err)
	}
	return b, true, nil
}

// PlanApply computes the changes that wire the selected runtimes.
func (c Config) PlanApply() (*Plan, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	p := &Plan{Runtimes: c.selected()}
	if len(p.Runtimes) == 0 {
		return nil, fmt.Errorf("no container runtime found under %s (looked for %s, /etc/crio, %s, %s); name them with --runtimes",
			c.Root, filepath.Dir(c.ContainerdConfig), filepath.Dir(c.RegistriesConfDir), filepath.Dir(c.DockerConfig))
	}
	dropIn := false
	for _, r := range p.Runtimes {
		var chs []Change
		var err error
		switch r {
		case Containerd:
			chs, err = c.planContainerd()
		case CRIO, Podman:
			if dropIn {
				continue // one drop-in serves both
			}
			dropIn = true
			chs, err = c.planDropIn(r)
		case Docker:
			chs, err = c.planDocker(p)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r, err)
		}
		p.Changes = append(p.Changes, chs...)
	}
	return p, nil
}

// Mirror host as registries.conf and daemon.json want it.
func (c Config) mirrorHost() string {
	u, _ := url.Parse(c.Mirror)
	return u.Host
}

var (
	versionRe    = regexp.MustCompile(`(?m)^\s*version\s*=\s*(\d+)`)
	configPathRe = regexp.MustCompile(`^\s*config_path\s*=\s*["']([^"']*)["']`)
	headerRe     = regexp.MustCompile(`^\s*\[\[?([^\]]+)\]\]?`)
)

// normHeader makes table headers comparable: no spaces, one quote style.
func normHeader(h string) string {
	return strings.ReplaceAll(strings.Join(strings.Fields(h), ""), "'", `"`)
}

// registrySection is the CRI registry table of containerd's config format v.
func registrySection(v string) string {
	switch v {
	case "1":
		return `plugins.cri.registry`
	case "3":
		return `plugins."io.containerd.cri.v1.images".registry`
	default:
		return `plugins."io.containerd.grpc.v1.cri".registry`
	}
}

func (c Config) planContainerd() ([]Change, error) {
	var chs []Change
	cfgPath := c.path(c.ContainerdConfig)
	old, existed, err := readFile(cfgPath)
	if err != nil {
		return nil, err
	}
	version := "2"
	if m := versionRe.FindSubmatch(old); m != nil {
		version = string(m[1])
	} else if len(bytes.TrimSpace(old)) > 0 {
		version = "1" // containerd 1.x reads a config without version as version 1
	}
	section := registrySection(version)
	certsDir := c.ContainerdCertsDir
	lines := splitLines(string(old))
	cur, sectionAt, pathAt := "", -1, -1
	for i, l := range lines {
		if m := headerRe.FindStringSubmatch(l); m != nil && !strings.HasPrefix(strings.TrimSpace(l), "#") {
			cur = normHeader(m[1])
			if cur == normHeader(section) {
				sectionAt = i
			}
			if strings.HasPrefix(cur, normHeader(section)+".mirrors") {
				return nil, fmt.Errorf("%s sets [%s] (deprecated): containerd refuses it together with config_path; move those mirrors to hosts.toml files under %s first", c.ContainerdConfig, cur, certsDir)
			}
			continue
		}
		if cur == normHeader(section) {
			if m := configPathRe.FindStringSubmatch(l); m != nil {
				pathAt = i
				if m[1] != "" {
					certsDir = m[1] // keep the operator's directory
				}
			}
		}
	}
	newLines := slices.Clone(lines)
	entry := fmt.Sprintf("  config_path = %q", certsDir)
	switch {
	case pathAt >= 0:
		newLines[pathAt] = regexp.MustCompile(`["'][^"']*["']`).ReplaceAllString(lines[pathAt], fmt.Sprintf("%q", certsDir))
	case sectionAt >= 0:
		newLines = slices.Insert(newLines, sectionAt+1, entry)
	default:
		if len(strings.TrimSpace(string(old))) == 0 {
			newLines = []string{"version = 2"}
		}
		newLines = append(newLines, "", "# Registry hosts (mirrors) live in hosts.toml files: damselfly configure-runtime", "["+section+"]", entry)
	}
	newCfg := []byte(strings.Join(newLines, "\n") + "\n")
	if !existed || !slices.Equal(newLines, lines) {
		chs = append(chs, Change{Runtime: Containerd, Path: cfgPath, Old: old, Existed: existed, New: newCfg, Main: true})
	}
	for _, r := range c.Registries {
		host, scheme, _ := parseRegistry(r)
		ch, err := c.planHostsToml(filepath.Join(c.path(certsDir), host, "hosts.toml"), host, scheme)
		if err != nil {
			return nil, err
		}
		if ch != nil {
			chs = append(chs, *ch)
		}
	}
	return chs, nil
}

const (
	blockBegin = "# damselfly: begin (written by damselfly configure-runtime; --undo removes it)"
	blockEnd   = "# damselfly: end"
)

// planHostsToml puts the mirror first in a registry's hosts.toml, keeping
// whatever else the file says.
func (c Config) planHostsToml(path, host, scheme string) (*Change, error) {
	old, existed, err := readFile(path)
	if err != nil {
		return nil, err
	}
	block := []string{blockBegin, fmt.Sprintf("[host.%q]", c.Mirror), `  capabilities = ["pull", "resolve"]`, blockEnd}
	var kept []string
	in, after := false, false
	for _, l := range splitLines(string(old)) {
		switch {
		case strings.TrimSpace(l) == blockBegin:
			in = true
		case strings.TrimSpace(l) == blockEnd && in:
			in, after = false, true
			continue
		case !in && !(after && strings.TrimSpace(l) == ""):
			kept = append(kept, l)
		}
		after = false
	}
	var out []string
	if !existed {
		out = append([]string{fmt.Sprintf("server = %q", serverURL(host, scheme)), ""}, block...)
	} else {
		mirrorHeader := normHeader(fmt.Sprintf("host.%q", c.Mirror))
		first := -1
		for i, l := range kept {
			if m := headerRe.FindStringSubmatch(l); m != nil && !strings.HasPrefix(strings.TrimSpace(l), "#") {
				if normHeader(m[1]) == mirrorHeader {
					// The operator lists the mirror already: leave it as they wrote it.
					out = kept
					first = -2
					break
				}
				if first == -1 {
					first = i
				}
			}
		}
		switch {
		case first == -2:
		case first >= 0:
			out = slices.Concat(kept[:first], block, []string{""}, kept[first:])
		default:
			out = kept
			if len(out) > 0 && strings.TrimSpace(out[len(out)-1]) != "" {
				out = append(out, "")
			}
			out = append(out, block...)
		}
	}
	newB := []byte(strings.Join(out, "\n") + "\n")
	if existed && string(newB) == string(old) {
		return nil, nil
	}
	return &Change{Runtime: Containerd, Path: path, Old: old, Existed: existed, New: newB}, nil
}

// planDropIn writes the registries.conf.d file CRI-O and Podman read.
func (c Config) planDropIn(runtime string) ([]Change, error) {
	path := filepath.Join(c.path(c.RegistriesConfDir), DropInName)
	old, existed, err := readFile(path)
	if err != nil {
		return nil, err
	}
	host, scheme, _ := parseRegistry(c.Upstream)
	location := host
	if host == "docker.io" {
		location = "registry-1.docker.io"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by damselfly configure-runtime (--undo removes it): pulls from %s try the\n", host)
	b.WriteString("# local Damselfly daemon's registry mirror first, then the registry itself.\n")
	fmt.Fprintf(&b, "[[registry]]\nprefix = %q\nlocation = %q\n", host, location)
	if scheme == "http" {
		b.WriteString("insecure = true\n")
	}
	u, _ := url.Parse(c.Mirror)
	fmt.Fprintf(&b, "\n[[registry.mirror]]\nlocation = %q\ninsecure = %t\n", c.mirrorHost(), u.Scheme == "http")
	newB := []byte(b.String())
	if existed && string(old) == string(newB) {
		return nil, nil
	}
	return []Change{{Runtime: runtime, Path: path, Old: old, Existed: existed, New: newB}}, nil
}

// planDocker adds the mirror to daemon.json's registry-mirrors, keeping
// every other setting.
func (c Config) planDocker(p *Plan) ([]Change, error) {
	host, _, _ := parseRegistry(c.Upstream)
	if host != "docker.io" {
		p.Notes = append(p.Notes, fmt.Sprintf("docker: not configured: Docker uses registry mirrors for Docker Hub only, and the daemon's upstream is %s; use the daemon's HTTPS proxy for other registries (docs/deploy.md)", host))
		return nil, nil
	}
	path := c.path(c.DockerConfig)
	old, existed, err := readFile(path)
	if err != nil {
		return nil, err
	}
	doc := map[string]any{}
	if len(bytes.TrimSpace(old)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(old))
		dec.UseNumber()
		if err := dec.Decode(&doc); err != nil {
			return nil, fmt.Errorf("parse %s: %w", c.DockerConfig, err)
		}
	}
	var mirrors []string
	if v, ok := doc["registry-mirrors"]; ok {
		list, ok := v.([]any)
		if !ok {
			return nil, fmt.Errorf("%s: registry-mirrors is not a list", c.DockerConfig)
		}
		for _, m := range list {
			s, ok := m.(string)
			if !ok {
				return nil, fmt.Errorf("%s: registry-mirrors holds a non-string %v", c.DockerConfig, m)
			}
			mirrors = append(mirrors, s)
		}
	}
	if slices.ContainsFunc(mirrors, func(m string) bool { return strings.TrimSuffix(m, "/") == strings.TrimSuffix(c.Mirror, "/") }) {
		return nil, nil
	}
	list := []any{c.Mirror}
	for _, m := range mirrors {
		list = append(list, m)
	}
	doc["registry-mirrors"] = list
	newB, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("render %s: %w", c.DockerConfig, err)
	}
	return []Change{{Runtime: Docker, Path: path, Old: old, Existed: existed, New: append(newB, '\n')}}, nil
}

// PlanUndo computes the changes that restore every file Apply changed.
func (c Config) PlanUndo() (*Plan, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	p := &Plan{}
	add := func(runtime, path string, main bool) error {
		cur, existed, err := readFile(path)
		if err != nil {
			return err
		}
		if orig, ok, err := readFile(path + backupSuffix); err != nil {
			return err
		} else if ok {
			p.Changes = append(p.Changes, Change{Runtime: runtime, Path: path, Old: cur, Existed: existed, New: orig, Main: main, restore: path + backupSuffix})
			return nil
		}
		if _, err := os.Stat(path + absentSuffix); err == nil {
			p.Changes = append(p.Changes, Change{Runtime: runtime, Path: path, Old: cur, Existed: existed, Remove: true, Main: main, restore: path + absentSuffix})
		}
		return nil
	}
	if err := add(Containerd, c.path(c.ContainerdConfig), true); err != nil {
		return nil, err
	}
	// hosts.toml files: in the configured directory and in whatever
	// config_path named (found through the markers Apply left).
	dirs := []string{c.path(c.ContainerdCertsDir)}
	if cur, _, err := readFile(c.path(c.ContainerdConfig)); err == nil {
		for _, l := range splitLines(string(cur)) {
			if m := configPathRe.FindStringSubmatch(l); m != nil && m[1] != "" && m[1] != c.ContainerdCertsDir {
				dirs = append(dirs, c.path(m[1]))
			}
		}
	}
	for _, d := range dirs {
		matches, _ := filepath.Glob(filepath.Join(d, "*", "hosts.toml"+"*"))
		seen := map[string]bool{}
		sort.Strings(matches)
		for _, m := range matches {
			hp := strings.TrimSuffix(strings.TrimSuffix(m, backupSuffix), absentSuffix)
			if seen[hp] || filepath.Base(hp) != "hosts.toml" {
				continue
			}
			seen[hp] = true
			if err := add(Containerd, hp, false); err != nil {
				return nil, err
			}
		}
	}
	dropIn := filepath.Join(c.path(c.RegistriesConfDir), DropInName)
	if cur, ok, err := readFile(dropIn); err != nil {
		return nil, err
	} else if ok {
		p.Changes = append(p.Changes, Change{Runtime: Podman, Path: dropIn, Old: cur, Existed: true, Remove: true})
	}
	if err := add(Docker, c.path(c.DockerConfig), false); err != nil {
		return nil, err
	}
	for _, ch := range p.Changes {
		if !slices.Contains(p.Runtimes, ch.Runtime) {
			p.Runtimes = append(p.Runtimes, ch.Runtime)
		}
	}
	return p, nil
}

// Apply writes the plan's changes. For a configure plan it first records
// each file's previous state (once: a second run keeps the first backup);
// for an undo plan it removes the records it restored from.
func Apply(p *Plan) error {
	for _, ch := range p.Changes {
		if ch.restore == "" && !ch.Remove {
			if err := remember(ch); err != nil {
				return err
			}
		}
		if ch.Remove {
			if err := os.Remove(ch.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("remove %s: %w", ch.Path, err)
			}
			// A certs.d/<registry> directory we created goes too, if empty.
			if filepath.Base(ch.Path) == "hosts.toml" {
				defer os.Remove(filepath.Dir(ch.Path))
			}
		} else if err := writeAtomic(ch.Path, ch.New); err != nil {
			return err
		}
		if ch.restore != "" {
			if err := os.Remove(ch.restore); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("remove %s: %w", ch.restore, err)
			}
		}
	}
	return nil
}

// remember saves a file's state before its first change.
func remember(ch Change) error {
	if filepath.Base(ch.Path) == DropInName {
		return nil // ours entirely: undo removes it
	}
	for _, s := range []string{backupSuffix, absentSuffix} {
		if _, err := os.Stat(ch.Path + s); err == nil {
			return nil
		}
	}
	if err := os.MkdirAll(filepath.Dir(ch.Path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(ch.Path), err)
	}
	if !ch.Existed {
		if err := os.WriteFile(ch.Path+absentSuffix, nil, 0o644); err != nil {
			return fmt.Errorf("record that %s did not exist: %w", ch.Path, err)
		}
		return nil
	}
	mode := os.FileMode(0o644)
	if st, err := os.Stat(ch.Path); err == nil {
		mode = st.Mode().Perm()
	}
	if err := os.WriteFile(ch.Path+backupSuffix, ch.Old, mode); err != nil {
		return fmt.Errorf("back up %s: %w", ch.Path, err)
	}
	return nil
}

// writeAtomic replaces path with data (same mode as before, else 0644).
func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	mode := os.FileMode(0o644)
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm()
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return nil
}

// Reloads lists the commands the applied plan needs, by runtime:
// containerd only when its main config changed, CRI-O when the drop-in
// changed, Docker when daemon.json changed.
func (c Config) Reloads(p *Plan) map[string][]string {
	out := map[string][]string{}
	for _, ch := range p.Changes {
		switch {
		case ch.Runtime == Containerd && ch.Main:
			out[Containerd] = c.ContainerdRestart
		case (ch.Runtime == CRIO || ch.Runtime == Podman) && slices.Contains(c.selected(), CRIO):
			out[CRIO] = c.CRIOReload
		case ch.Runtime == Docker:
			out[Docker] = c.DockerReload
		}
	}
	return out
}

// RunReloads runs the reload commands (when Restart is "auto") and returns
// what it ran or what the operator must run.
func (c Config) RunReloads(ctx context.Context, p *Plan) ([]string, error) {
	var msgs []string
	var errs []error
	reloads := c.Reloads(p)
	names := make([]string, 0, len(reloads))
	for n := range reloads {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		argv := reloads[n]
		if c.Restart == "never" || len(argv) == 0 {
			msgs = append(msgs, fmt.Sprintf("%s must re-read its configuration: run %s", n, strings.Join(argv, " ")))
			continue
		}
		out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: run %s: %w: %s", n, strings.Join(argv, " "), err, bytes.TrimSpace(out)))
			continue
		}
		msgs = append(msgs, fmt.Sprintf("%s: ran %s", n, strings.Join(argv, " ")))
	}
	return msgs, errors.Join(errs...)
}
