package oci

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Containerd is a containerd process with its own root, state and socket
// (the CRI plugin off: it pulls, nothing else).
type Containerd struct {
	NS   string // network namespace ctr runs in ("" for the caller's)
	Dir  string
	Sock string
	proc *Proc
}

// StartContainerd runs containerd in ns with everything under dir and waits
// until ctr can talk to it. dir's path must be short enough for a socket.
func StartContainerd(ctx context.Context, ns, dir string) (*Containerd, error) {
	return StartContainerdWith(ctx, ns, dir, nil)
}

// StartContainerdWith is StartContainerd with a chance to change
// containerd's config file (dir/config.toml) before containerd reads it,
// e.g. by `damselfly configure-runtime`.
func StartContainerdWith(ctx context.Context, ns, dir string, edit func(configPath string) error) (*Containerd, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("containerd: %w", err)
	}
	c := &Containerd{NS: ns, Dir: dir, Sock: filepath.Join(dir, "containerd.sock")}
	conf := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.Sock, c.Sock+".ttrpc", filepath.Join(dir, "opt"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("containerd: %w", err)
	}
	if edit != nil {
		if err := edit(cfgPath); err != nil {
			return nil, fmt.Errorf("containerd config: %w", err)
		}
	}
	p, err := Start(ns, "containerd", filepath.Join(dir, "containerd.log"), "containerd", "--config", cfgPath)
	if err != nil {
		return nil, err
	}
	c.proc = p
	if err := WaitFor(ctx, p, 30*time.Second, "containerd", func(ctx context.Context) error {
		_, err := c.ctr(ctx, "version")
		return err
	}); err != nil {
		p.Stop(0)
		return nil, err
	}
	return c, nil
}

// Stop ends containerd by its PID.
func (c *Containerd) Stop() { c.proc.Stop(3 * time.Second) }

// Log is containerd's log file.
func (c *Containerd) Log() string { return c.proc.Log }

// Ctr runs ctr against this containerd (namespace damselfly-test) and
// returns its standard output.
func (c *Containerd) Ctr(ctx context.Context, args ...string) ([]byte, error) {
	return c.ctr(ctx, args...)
}

func (c *Containerd) ctr(ctx context.Context, args ...string) ([]byte, error) {
	return Output(ctx, c.NS, append([]string{"ctr", "-a", c.Sock, "-n", "damselfly-test"}, args...)...)
}

// WriteHostsDir writes dir/<registry>/hosts.toml making mirror (e.g.
// "http://127.0.0.1:65001") the first host for registry (host:port), with
// server as the fallback, as a node's containerd is set up for Damselfly.
func WriteHostsDir(dir, registry, server, mirror string) error {
	d := filepath.Join(dir, registry)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return fmt.Errorf("hosts dir: %w", err)
	}
	conf := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", server, mirror)
	if err := os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(conf), 0o644); err != nil {
		return fmt.Errorf("hosts dir: %w", err)
	}
	return nil
}

// PullOpts are the options of one ctr pull.
type PullOpts struct {
	HostsDir string // --hosts-dir
	Creds    string // --user u:p
	Dump     bool   // --http-dump: ctr logs every request and response
}

// Pull runs `ctr image pull` and returns its output.
func (c *Containerd) Pull(ctx context.Context, ref string, o PullOpts) ([]byte, error) {
	args := []string{"image", "pull", "--plain-http", "--snapshotter", "native"}
	if o.HostsDir != "" {
		args = append(args, "--hosts-dir", o.HostsDir)
	}
	if o.Creds != "" {
		args = append(args, "--user", o.Creds)
	}
	if o.Dump {
		args = append(args, "--http-dump")
	}
	args = append(args, ref)
	cmd := Command(ctx, c.NS, append([]string{"ctr", "-a", c.Sock, "-n", "damselfly-test"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("ctr pull %s: %w: %s", ref, err, tail(out.String(), 4000))
	}
	return out.Bytes(), nil
}

// Verify checks that containerd has image ref pointing at im's manifest and
// holds every blob of im with the right sha256 (read back with ctr).
func (c *Containerd) Verify(ctx context.Context, ref string, im *Image) error {
	out, err := c.ctr(ctx, "image", "ls")
	if err != nil {
		return err
	}
	found := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && f[0] == ref {
			found = f[2]
		}
	}
	if found != im.Manifest.Digest {
		return fmt.Errorf("containerd image %s points at %q, want %s (ctr image ls:\n%s)", ref, found, im.Manifest.Digest, out)
	}
	for _, b := range append([]Descriptor{im.Manifest}, im.Blobs()...) {
		data, err := c.ctr(ctx, "content", "get", b.Digest)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		if got := "sha256:" + hex.EncodeToString(sum[:]); got != b.Digest || int64(len(data)) != b.Size {
			return fmt.Errorf("containerd content %s: %d bytes with digest %s, want %d bytes", b.Digest, len(data), got, b.Size)
		}
	}
	return nil
}

// RemoveImage deletes image ref and lets containerd collect its content,
// so that the next pull fetches again.
func (c *Containerd) RemoveImage(ctx context.Context, ref string) error {
	_, err := c.ctr(ctx, "image", "rm", "--sync", ref)
	return err
}

// Push copies the image's OCI layout to docker://ref with skopeo, run in ns.
func Push(ctx context.Context, ns string, im *Image, ref, creds string) error {
	args := []string{"skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false"}
	if creds != "" {
		args = append(args, "--dest-creds", creds)
	}
	args = append(args, "oci:"+im.Dir+":"+im.Tag, "docker://"+ref)
	if _, err := Output(ctx, ns, args...); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}

// WriteRegistriesConf writes a containers-registries.conf(5) file that
// sends pulls from registry (host:port) to mirror (host:port) first, then
// to location, all over plain HTTP.
func WriteRegistriesConf(path, registry, location, mirror string) error {
	conf := fmt.Sprintf(`unqualified-search-registries = []

[[registry]]
prefix = %q
location = %q
insecure = true

[[registry.mirror]]
location = %q
insecure = true
`, registry, location, mirror)
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return fmt.Errorf("registries.conf: %w", err)
	}
	return nil
}

// SkopeoOpts are the options of one skopeo pull.
type SkopeoOpts struct {
	// RegistriesConf, if set, is passed with --registries-conf; without
	// it skopeo talks plain HTTP straight to the registry.
	RegistriesConf string
	// Creds ("user:password") go with --src-creds.
	Creds string
	// AuthFile, if set, goes with --src-authfile. skopeo 1.9 does not send
	// --src-creds to a mirror (it sends "Basic Og==", empty user and
	// password); credentials for a mirror must be in an auth file under the
	// mirror's host (WriteAuthFile).
	AuthFile string
}

// WriteAuthFile writes a containers-auth.json(5) file giving creds
// ("user:password") for host.
func WriteAuthFile(path, host, creds string) error {
	data, err := json.Marshal(map[string]any{"auths": map[string]any{host: map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(creds))}}})
	if err != nil {
		return fmt.Errorf("auth file: %w", err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("auth file: %w", err)
	}
	return nil
}

// SkopeoPullArgs is the skopeo command line that copies docker://ref into
// the OCI layout out, tagged tag.
func SkopeoPullArgs(ref, out, tag string, o SkopeoOpts) []string {
	args := []string{"skopeo", "--insecure-policy"}
	if o.RegistriesConf != "" {
		args = append(args, "--registries-conf", o.RegistriesConf)
	}
	args = append(args, "copy", "--retry-times", "0")
	if o.RegistriesConf == "" {
		args = append(args, "--src-tls-verify=false")
	}
	if o.Creds != "" {
		args = append(args, "--src-creds", o.Creds)
	}
	if o.AuthFile != "" {
		args = append(args, "--src-authfile", o.AuthFile)
	}
	return append(args, "docker://"+ref, "oci:"+out+":"+tag)
}

// SkopeoPull runs SkopeoPullArgs in ns.
func SkopeoPull(ctx context.Context, ns, ref, out, tag string, o SkopeoOpts) error {
	args := SkopeoPullArgs(ref, out, tag, o)
	if stdout, err := Output(ctx, ns, args...); err != nil {
		return fmt.Errorf("skopeo pull %s: %w (stdout: %s)", ref, err, tail(string(stdout), 2000))
	}
	return nil
}
