package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/test/oci"
)

// configure runs `damselfly configure-runtime` and returns its stdout.
func configure(t *testing.T, args ...string) string {
	t.Helper()
	return runCmd(t, nil, append([]string{damselfly(), "configure-runtime"}, args...)...)
}

// containerd: configure-runtime edits containerd's real config (which
// containerd then starts with) and writes hosts.toml; ctr pulls through
// the daemon's mirror; a second run changes nothing and restarts nothing;
// --undo restores the config byte for byte.
func TestConfigureContainerd(t *testing.T) {
	requireRoot(t, "containerd")
	requireTools(t, "containerd", "ctr", "docker-registry", "skopeo")
	ctx := t.Context()
	reg := startRegistry(t)
	im, err := oci.WriteImage(filepath.Join(oci.ShortDir(t), "img"), "v1", 2, 3<<20)
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Ref("app", "v1")
	if err := oci.Push(ctx, "", im, ref, ""); err != nil {
		t.Fatal(err)
	}
	node := startLoopNode(t, "http://"+reg.Addr)

	root := oci.ShortDir(t)
	cdir := filepath.Join(root, "etc", "containerd")
	restarted := filepath.Join(root, "restarted")
	args := []string{"--root", root, "--runtimes", "containerd", "--mirror", node.mirror,
		"--registries", "http://" + reg.Addr, "--restart", "auto", "--containerd-restart-command", "touch " + restarted}
	var original []byte
	c, err := oci.StartContainerdWith(ctx, "", cdir, func(cfg string) error {
		original, _ = os.ReadFile(cfg)
		// The dry run shows the change and changes nothing.
		diff := configure(t, append(args, "--dry-run")...)
		if !strings.Contains(diff, "+[plugins.\"io.containerd.grpc.v1.cri\".registry]") || !strings.Contains(diff, "+++ b/etc/containerd/certs.d/"+reg.Addr+"/hosts.toml") {
			return fmt.Errorf("dry run diff:\n%s", diff)
		}
		if now, _ := os.ReadFile(cfg); !bytes.Equal(now, original) {
			return fmt.Errorf("dry run changed %s", cfg)
		}
		if _, err := os.Stat(restarted); err == nil {
			return fmt.Errorf("dry run restarted containerd")
		}
		configure(t, args...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	if _, err := os.Stat(restarted); err != nil {
		t.Fatalf("main config changed but containerd was not restarted: %v", err)
	}
	os.Remove(restarted)

	hostsDir := filepath.Join(cdir, "certs.d")
	before := metric(t, node.metrics, "damselfly_daemon_downloads_total", "")
	if _, err := c.Pull(ctx, ref, oci.PullOpts{HostsDir: hostsDir}); err != nil {
		t.Fatal(err)
	}
	if err := c.Verify(ctx, ref, im); err != nil {
		t.Fatal(err)
	}
	if got := metric(t, node.metrics, "damselfly_daemon_downloads_total", "") - before; got < float64(len(im.Layers)) {
		t.Fatalf("the daemon served %v downloads; the pull did not go through the mirror (want ≥ %d layers)", got, len(im.Layers))
	}

	// Again: nothing to change, no restart.
	if out := configure(t, args...); !strings.Contains(out, "already configured") {
		t.Fatalf("second run: %s", out)
	}
	if _, err := os.Stat(restarted); err == nil {
		t.Fatal("second run restarted containerd")
	}
	configure(t, "--root", root, "--undo", "--restart", "never")
	if now, _ := os.ReadFile(filepath.Join(cdir, "config.toml")); !bytes.Equal(now, original) {
		t.Fatalf("undo left:\n%s\nwant:\n%s", now, original)
	}
	if _, err := os.Stat(filepath.Join(hostsDir, reg.Addr, "hosts.toml")); err == nil {
		t.Fatal("undo left the hosts.toml it created")
	}
}

// Podman: the registries.conf.d drop-in makes a real podman pull go through
// the daemon's mirror, and podman info lists the mirror.
func TestConfigurePodman(t *testing.T) {
	requireRoot(t, "podman storage")
	requireTools(t, "podman", "docker-registry", "skopeo")
	ctx := t.Context()
	reg := startRegistry(t)
	im, err := oci.WriteImage(filepath.Join(oci.ShortDir(t), "img"), "v1", 2, 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Ref("tool", "v1")
	if err := oci.Push(ctx, "", im, ref, ""); err != nil {
		t.Fatal(err)
	}
	node := startLoopNode(t, "http://"+reg.Addr)

	root := oci.ShortDir(t)
	// Podman reads drop-ins from $HOME/.config/containers/registries.conf.d
	// (its system directory is fixed at /etc, which tests never touch).
	home := filepath.Join(root, "home")
	dropIns := "/home/.config/containers/registries.conf.d"
	conf := filepath.Join(root, "registries.conf")
	if err := os.WriteFile(conf, []byte("unqualified-search-registries = []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	containersConf := filepath.Join(root, "containers.conf")
	if err := os.WriteFile(containersConf, []byte(fmt.Sprintf("[engine]\ntmp_dir = %q\nevents_logger = \"none\"\nvolume_path = %q\n",
		filepath.Join(root, "tmp"), filepath.Join(root, "volumes"))), 0o644); err != nil {
		t.Fatal(err)
	}
	out := configure(t, "--root", root, "--runtimes", "podman", "--mirror", node.mirror, "--upstream", "http://"+reg.Addr,
		"--registries-conf-dir", dropIns, "--restart", "never")
	if !strings.Contains(out, "50-damselfly.conf") {
		t.Fatalf("configure: %s", out)
	}
	env := []string{"HOME=" + home, "XDG_CONFIG_HOME=", "CONTAINERS_REGISTRIES_CONF=" + conf, "CONTAINERS_CONF=" + containersConf}
	podman := []string{"podman", "--root", filepath.Join(root, "storage"), "--runroot", filepath.Join(root, "run"), "--storage-driver", "vfs"}
	// Storage (vfs: plain directories, no mounts), run state, temp and the
	// blob cache all live under root, removed with it.
	info := runCmd(t, env, append(podman, "info", "--format", "json")...)
	var pi struct {
		Registries map[string]json.RawMessage `json:"registries"`
	}
	if err := json.Unmarshal([]byte(info), &pi); err != nil {
		t.Fatalf("podman info: %v\n%s", err, info)
	}
	if entry := string(pi.Registries[reg.Addr]); !strings.Contains(entry, strings.TrimPrefix(node.mirror, "http://")) {
		t.Fatalf("podman info does not list the mirror for %s: %s", reg.Addr, info)
	}
	before := metric(t, node.metrics, "damselfly_daemon_downloads_total", "")
	pctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(pctx, podman[0], append(podman[1:], "pull", ref)...)
	cmd.Env = append(os.Environ(), env...)
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("podman pull: %v\n%s", err, o)
	}
	if got := metric(t, node.metrics, "damselfly_daemon_downloads_total", "") - before; got < float64(len(im.Layers)) {
		t.Fatalf("the daemon served %v downloads; podman did not pull through the mirror", got)
	}
	// Undo removes the drop-in.
	configure(t, "--root", root, "--registries-conf-dir", dropIns, "--undo", "--restart", "never")
	if _, err := os.Stat(filepath.Join(root, dropIns, "50-damselfly.conf")); err == nil {
		t.Fatal("undo left the drop-in")
	}
}

// Docker: the daemon.json configure-runtime writes (keeping the settings
// already there) is read back by a real dockerd, which lists the mirror;
// the same dockerd refuses a file with a misspelt key, so the check is real.
func TestConfigureDocker(t *testing.T) {
	requireRoot(t, "dockerd")
	requireTools(t, "dockerd", "containerd")
	// dockerd creates its plugin directory there whatever its roots.
	removeNewEmptyDirs(t, "/run/docker", "/run/docker/plugins")
	root := oci.ShortDir(t)
	cfg := filepath.Join(root, "etc", "docker", "daemon.json")
	os.MkdirAll(filepath.Dir(cfg), 0o755)
	if err := os.WriteFile(cfg, []byte(`{"debug": false, "registry-mirrors": ["https://mirror.example"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	mirror := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	configure(t, "--root", root, "--runtimes", "docker", "--mirror", mirror, "--restart", "never")

	info, err := dockerInfo(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.RegistryConfig.Mirrors) != 2 || info.RegistryConfig.Mirrors[0] != mirror+"/" || info.RegistryConfig.Mirrors[1] != "https://mirror.example/" {
		t.Fatalf("dockerd's mirrors: %v", info.RegistryConfig.Mirrors)
	}
	if info.Debug {
		t.Fatal("dockerd lost the file's other settings")
	}

	bad := filepath.Join(root, "bad.json")
	os.WriteFile(bad, []byte(`{"registry-mirrorz": ["http://127.0.0.1:1"]}`), 0o644)
	if _, err := dockerInfo(t, bad); err == nil || !strings.Contains(err.Error(), "registry-mirrorz") {
		t.Fatalf("dockerd accepted a misspelt key: %v", err)
	}
}

type dockerInfoResp struct {
	Debug          bool
	RegistryConfig struct {
		Mirrors []string
	}
}

// dockerInfo starts dockerd on the config file with every path in a
// scratch directory (its own containerd, no bridge, no iptables), asks it
// GET /info over its socket, and stops it by PID.
func dockerInfo(t *testing.T, cfg string) (*dockerInfoResp, error) {
	t.Helper()
	dir := oci.ShortDir(t)
	sock := filepath.Join(dir, "d.sock")
	p, err := oci.Start("", "dockerd", filepath.Join(dir, "dockerd.log"), "dockerd", "--config-file", cfg,
		"--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"), "--pidfile", filepath.Join(dir, "d.pid"),
		"-H", "unix://"+sock, "--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
		"--storage-driver", "vfs", "--userland-proxy=false")
	if err != nil {
		return nil, err
	}
	defer p.Stop(10 * time.Second)
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if exited, _ := p.Exited(); exited {
			return nil, fmt.Errorf("dockerd exited: %s", p.LogTail(2000))
		}
		resp, err := hc.Get("http://docker/info")
		if err == nil {
			defer resp.Body.Close()
			var info dockerInfoResp
			if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
				return nil, fmt.Errorf("decode /info: %w", err)
			}
			return &info, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return nil, fmt.Errorf("dockerd did not answer: %s", p.LogTail(2000))
}
