package deploy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/test/oci"
)

// The image built by tools/image (as `make images` does, amd64 here) is
// pushed to a real docker-registry, pulled by containerd and run with
// `ctr run` (runc) as an all-in-one node on loopback ports the test picks;
// its /healthy answers, and dfget inside the container downloads a file
// from an HTTP server the test runs, byte for byte.
func TestImageRunsAllInOne(t *testing.T) {
	requireRoot(t, "containerd and runc")
	requireTools(t, "containerd", "ctr", "runc", "docker-registry")
	ctx := t.Context()

	layoutDir := filepath.Join(oci.ShortDir(t), "layout")
	runCmd(t, nil, imageTool, "build", "--bin-dir", filepath.Dir(binDir), "--out", layoutDir,
		"--platforms", "linux/amd64", "--version", "test", "--revision", "r1")
	reg := startRegistry(t)
	ref := reg.Addr + "/damselfly:test"
	if out := runCmd(t, nil, imageTool, "push", "--layout", layoutDir, "--ref", ref, "--insecure"); !strings.Contains(out, "pushed "+ref) {
		t.Fatalf("push: %s", out)
	}

	// containerd's shims keep sockets and fifos under /run/containerd.
	removeNewEmptyDirs(t, "/run/containerd", "/run/containerd/s", "/run/containerd/fifo", "/run/containerd/runc", "/run/containerd/runc/damselfly-test")
	cdir := filepath.Join(oci.ShortDir(t), "c")
	c, err := oci.StartContainerd(ctx, "", cdir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	if _, err := c.Pull(ctx, ref, oci.PullOpts{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.RemoveImage(context.Background(), ref) })

	// The file dfget fetches, from a server the test runs on loopback.
	content := make([]byte, 3<<20+12345)
	rand.Read(content)
	sum := sha256.Sum256(content)
	var served atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		http.ServeContent(w, r, "blob.bin", time.Unix(0, 0), bytes.NewReader(content))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	ports := map[string]int{}
	for _, p := range []string{"sched", "peer", "upload", "proxy", "metrics", "seed-peer", "seed-upload"} {
		ports[p] = freePort(t)
	}
	const id = "damselfly-aio"
	run := []string{"run", "--snapshotter", "native", "--net-host", "-d", ref, id,
		"/usr/local/bin/damselfly", "all-in-one", "--data-dir", "/tmp/dfly", "--sock", "/tmp/dfly/daemon.sock",
		"--scheduler-listen", "127.0.0.1:" + strconv.Itoa(ports["sched"]),
		"--peer-port", strconv.Itoa(ports["peer"]), "--upload-port", strconv.Itoa(ports["upload"]),
		"--proxy-port", strconv.Itoa(ports["proxy"]), "--metrics-port", strconv.Itoa(ports["metrics"]),
		"--seed-peer-port", strconv.Itoa(ports["seed-peer"]), "--seed-upload-port", strconv.Itoa(ports["seed-upload"])}
	if _, err := c.Ctr(ctx, run...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		bg := context.Background()
		if t.Failed() {
			if out, err := c.Ctr(bg, "task", "ls"); err == nil {
				t.Logf("tasks:\n%s", out)
			}
		}
		_, _ = c.Ctr(bg, "task", "kill", "-s", "SIGKILL", id)
		time.Sleep(200 * time.Millisecond)
		_, _ = c.Ctr(bg, "task", "delete", "-f", id)
		if _, err := c.Ctr(bg, "container", "delete", id); err != nil {
			t.Errorf("remove container: %v", err)
		}
	})

	base := fmt.Sprintf("http://127.0.0.1:%d", ports["metrics"])
	oci.WaitUntil(t, nil, 60*time.Second, "the container's /healthy", func() error { return httpOK(base + "/healthy") })

	url := fmt.Sprintf("http://%s/blob.bin", ln.Addr())
	if out, err := c.Ctr(ctx, "task", "exec", "--exec-id", "dfget1", id, "/usr/local/bin/dfget", url,
		"-O", "/tmp/out.bin", "--sock", "/tmp/dfly/daemon.sock", "--digest", "sha256:"+hex.EncodeToString(sum[:])); err != nil {
		t.Fatalf("dfget in the container: %v\n%s", err, out)
	}
	// The output, read from the container's root file system on the host.
	matches, _ := filepath.Glob(filepath.Join(cdir, "root", "io.containerd.snapshotter.v1.native", "snapshots", "*", "tmp", "out.bin"))
	if len(matches) != 1 {
		t.Fatalf("dfget's output in the container's snapshot: %v", matches)
	}
	got, err := os.ReadFile(matches[0])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, content) {
		t.Fatalf("dfget wrote %d bytes that differ from the %d served", len(got), len(content))
	}
	if served.Load() == 0 {
		t.Fatal("the origin saw no request")
	}
	if n := metric(t, base, "damselfly_daemon_downloads_total", `outcome="success"`); n < 1 {
		t.Fatalf("the container's daemon counted %v successful downloads", n)
	}

	// The image says what it is.
	out, err := c.Ctr(ctx, "image", "ls")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), ref) {
		t.Fatalf("ctr image ls:\n%s", out)
	}
	var idx struct {
		Manifests []struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	b, _ := os.ReadFile(filepath.Join(layoutDir, "index.json"))
	if err := json.Unmarshal(b, &idx); err != nil || len(idx.Manifests) != 1 || idx.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "test" {
		t.Fatalf("layout index.json: %v %s", err, b)
	}
}
