// Package console tests the manager's web console in real headless
// Chromium (Debian's chromium, driven over the DevTools protocol by
// chromedp) against real binaries on loopback: a manager, a scheduler, a
// seed peer, two daemons and a docker-registry. It is its own Go module so
// that chromedp stays out of the product's dependencies.
package console

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/test/oci"
)

var (
	binDir string
	// caDir is the run's CA when the binary has mutual TLS (`damselfly
	// certs`): every component then gets a certificate from it, as the
	// e2e harness does. Empty for a build without it.
	caDir string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "damselfly-console-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/damselfly")
	cmd.Dir = "../.."
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	ca := filepath.Join(dir, "ca")
	if out, err := exec.Command(filepath.Join(dir, "damselfly"), "certs", "init-ca", "--dir", ca).CombinedOutput(); err == nil {
		caDir = ca
	} else {
		fmt.Fprintf(os.Stderr, "no mutual TLS in this build (damselfly certs init-ca: %v: %.200s); components run without it\n", err, out)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// tlsArgs issues a certificate for damselfly://role/hostID from the run's
// CA and returns the flags that use it (none without mutual TLS).
func tlsArgs(t testing.TB, role, hostID string) []string {
	t.Helper()
	if caDir == "" {
		return nil
	}
	dir := t.TempDir()
	out, err := exec.Command(filepath.Join(binDir, "damselfly"), "certs", "issue", "--ca-dir", caDir, "--role", role, "--host-id", hostID, "--out", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("certs issue %s/%s: %v: %s", role, hostID, err, out)
	}
	return []string{"--tls-cert", filepath.Join(dir, "tls.crt"), "--tls-key", filepath.Join(dir, "tls.key"), "--tls-ca", filepath.Join(dir, "ca.crt")}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// proc is a damselfly process, stopped (by its PID's process group) at cleanup.
type proc struct {
	*oci.Proc
	name string
}

func start(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	p, err := oci.Start("", name, filepath.Join(t.TempDir(), name+".log"), append([]string{filepath.Join(binDir, "damselfly")}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(5 * time.Second)
		if t.Failed() {
			b, _ := os.ReadFile(p.Log)
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			t.Logf("---- %s log (tail) ----\n%s", name, b)
		}
	})
	return &proc{Proc: p, name: name}
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitHTTP(t testing.TB, url string, p *proc) {
	t.Helper()
	waitFor(t, 20*time.Second, p.name+" to answer "+url, func() bool {
		if done, err := p.Exited(); done {
			b, _ := os.ReadFile(p.Log)
			t.Fatalf("%s exited during start (%v):\n%s", p.name, err, b)
		}
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

const adminPass = "console-admin-pass"

// cluster is the system under test.
type cluster struct {
	api, grpc string // manager REST (http://...) and gRPC addresses
	token     string
	daemons   map[string]*daemonProc
	registry  string // host:port
}

type daemonProc struct {
	*proc
	sock string
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{daemons: map[string]*daemonProc{}}
	apiAddr, g := "127.0.0.1:"+strconv.Itoa(freePort(t)), "127.0.0.1:"+strconv.Itoa(freePort(t))
	c.api, c.grpc = "http://"+apiAddr, g
	margs := []string{"manager", "--listen", apiAddr, "--grpc-listen", g, "--data-dir", t.TempDir(),
		"--admin-password", adminPass, "--keepalive-interval", "200ms", "--keepalive-timeout", "3s",
		"--scheduler-refresh-interval", "300ms", "--peer-ttl", "3s", "--job-poll-interval", "100ms",
		"--console-sample-interval", "1s"}
	if caDir != "" {
		margs = append(margs, "--ca-dir", caDir)
	}
	mgr := start(t, "manager", margs...)
	waitHTTP(t, c.api+"/healthy", mgr)
	c.token = c.signIn(t)

	sport, smetrics := freePort(t), freePort(t)
	sched := start(t, "scheduler", append([]string{"scheduler", "--listen", "127.0.0.1:" + strconv.Itoa(sport), "--metrics-port", strconv.Itoa(smetrics),
		"--manager", g, "--advertise-ip", "127.0.0.1", "--hostname", "sched-1"}, tlsArgs(t, "scheduler", "sched-1")...)...)
	waitHTTP(t, "http://127.0.0.1:"+strconv.Itoa(smetrics)+"/healthy", sched)
	waitFor(t, 20*time.Second, "the scheduler to register", func() bool { return c.count(t, "/api/v1/schedulers?state=active") == 1 })

	c.startDaemon(t, "seed-1", true)
	c.startDaemon(t, "d0", false)
	c.startDaemon(t, "d1", false)
	waitFor(t, 20*time.Second, "the seed peer to register", func() bool { return c.count(t, "/api/v1/seed-peers?state=active") == 1 })
	waitFor(t, 20*time.Second, "the daemons to be known", func() bool { return c.count(t, "/api/v1/peers") == 3 })
	return c
}

func (c *cluster) startDaemon(t *testing.T, name string, seed bool) {
	t.Helper()
	dir := t.TempDir()
	mport := freePort(t)
	sock := filepath.Join(dir, "daemon.sock")
	args := []string{"daemon", "--manager", c.grpc, "--scheduler", "", "--data-dir", filepath.Join(dir, "cache"),
		"--advertise-ip", "127.0.0.1", "--listen-ip", "127.0.0.1", "--peer-port", "0", "--upload-port", "0", "--proxy-port", "-1",
		"--metrics-port", strconv.Itoa(mport), "--sock", sock, "--hostname", name, "--link-test=false"}
	role := "peer"
	if seed {
		args, role = append(args, "--seed"), "seed"
	}
	args = append(args, tlsArgs(t, role, name)...)
	p := start(t, name, args...)
	waitHTTP(t, "http://127.0.0.1:"+strconv.Itoa(mport)+"/healthy", p)
	c.daemons[name] = &daemonProc{proc: p, sock: sock}
}

func (c *cluster) signIn(t testing.TB) string {
	t.Helper()
	var out struct{ Token string }
	if code := c.call(t, "POST", "/api/v1/users/signin", map[string]string{"name": "admin", "password": adminPass}, &out); code != 200 || out.Token == "" {
		t.Fatalf("sign in: %d", code)
	}
	return out.Token
}

func (c *cluster) call(t testing.TB, method, path string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, c.api+path, rd)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode
}

func (c *cluster) count(t testing.TB, path string) int {
	var items []json.RawMessage
	if code := c.call(t, "GET", path, nil, &items); code != 200 {
		t.Fatalf("GET %s: %d", path, code)
	}
	return len(items)
}

// startRegistry runs docker-registry (test/oci) on loopback and pushes a
// small generated image; it returns the image reference.
func (c *cluster) startRegistry(t *testing.T) (string, *oci.Image) {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reg, err := oci.StartRegistry(ctx, "", oci.RegistryConfig{Addr: addr, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Stop)
	im, err := oci.WriteImage(t.TempDir(), "v1", 2, 3<<20)
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Ref("console/app", "v1")
	if err := oci.Push(ctx, "", im, ref, ""); err != nil {
		t.Fatal(err)
	}
	c.registry = addr
	return ref, im
}
