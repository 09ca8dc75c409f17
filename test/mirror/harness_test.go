// Package mirror tests Damselfly's registry mirror end to end with real
// parts: docker-registry (no auth, htpasswd, bearer-token realm), images
// pushed with skopeo, containerd (ctr) and skopeo pulling through the
// daemons' mirror ports, on loopback and on an emulated network of network
// namespaces (test/swarm).
package mirror

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/test/netns"
	"github.com/damselfly-io/damselfly/test/oci"
)

var binDir string

var (
	caOnce sync.Once
	caErr  error
)

// tlsFlags issues a certificate for damselfly://role/hostID into dir/tls
// from a CA made once per test binary (damselfly certs) and returns the
// flags that use it.
func tlsFlags(t *testing.T, role, hostID, dir string) []string {
	t.Helper()
	bin := filepath.Join(binDir, "damselfly")
	caDir := filepath.Join(binDir, "ca")
	caOnce.Do(func() {
		if out, err := exec.Command(bin, "certs", "init-ca", "--dir", caDir).CombinedOutput(); err != nil {
			caErr = fmt.Errorf("certs init-ca: %w: %s", err, out)
		}
	})
	if caErr != nil {
		t.Fatal(caErr)
	}
	out := filepath.Join(dir, "tls")
	if b, err := exec.Command(bin, "certs", "issue", "--ca-dir", caDir, "--role", role, "--host-id", hostID, "--out", out).CombinedOutput(); err != nil {
		t.Fatalf("certs issue %s/%s: %v: %s", role, hostID, err, b)
	}
	return []string{"--tls-cert", filepath.Join(out, "tls.crt"), "--tls-key", filepath.Join(out, "tls.key"), "--tls-ca", filepath.Join(out, "ca.crt")}
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "damselfly-mirror-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	cmd := exec.Command("go", "build", "-o", dir+"/", "../../cmd/damselfly")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireTools skips when the real parts are not installed, except under
// CI=true, where scripts/install-deps.sh must have installed them.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not installed (scripts/install-deps.sh installs it)", tool)
			}
			t.Skipf("%s not installed (scripts/install-deps.sh installs it)", tool)
		}
	}
}

// requireRoot skips without root (containerd, network namespaces), except
// under CI=true, which runs as root.
func requireRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("needs root (%s); CI must run it as root", why)
	}
	t.Skipf("needs root (%s)", why)
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func httpOK(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// metric returns the sum of a metric's samples whose label set contains
// match, read through c.
func metric(t testing.TB, c *http.Client, base, name, match string) float64 {
	t.Helper()
	resp, err := c.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("metrics %s: %v", base, err)
	}
	defer resp.Body.Close()
	sum, err := oci.SumMetric(resp.Body, name, match)
	if err != nil {
		t.Fatalf("metrics %s: %v", base, err)
	}
	return sum
}

// registryEnv is a registry with one auth mode, plus its token server.
type registryEnv struct {
	reg   *oci.Registry
	token *oci.TokenServer
}

const (
	testUser     = "puller"
	testPassword = "s3cret-pw"
)

// startRegistry runs docker-registry with auth on addr in ns; for token
// auth, the realm listens in ns on tokenAddr.
func startRegistry(t testing.TB, ns, addr, tokenAddr string, auth oci.Auth) *registryEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	env := &registryEnv{}
	cfg := oci.RegistryConfig{Addr: addr, Dir: oci.ShortDir(t), Auth: auth, User: testUser, Password: testPassword}
	if auth == oci.AuthToken {
		ts, err := oci.NewTokenServer(testUser, testPassword, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		ln, err := listenIn(ns, tokenAddr)
		if err != nil {
			t.Fatalf("token server: %v", err)
		}
		ts.Serve(ln)
		t.Cleanup(func() { ts.Close() })
		env.token, cfg.Token = ts, ts
	}
	reg, err := oci.StartRegistry(ctx, ns, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		reg.Stop()
		if t.Failed() {
			b, _ := os.ReadFile(reg.Log())
			s := string(b)
			if len(s) > 8000 {
				s = s[len(s)-8000:]
			}
			t.Logf("---- registry %s log (tail) ----\n%s", auth, s)
		}
	})
	env.reg = reg
	return env
}

// pushImage writes a new image (layers layers, size bytes of content) and
// pushes it as repo:latest.
func pushImage(t testing.TB, ns string, env *registryEnv, repo string, layers int, size int64) (*oci.Image, string) {
	t.Helper()
	im, err := oci.WriteImage(filepath.Join(t.TempDir(), "layout"), "latest", layers, size)
	if err != nil {
		t.Fatal(err)
	}
	ref := env.reg.Ref(repo, "latest")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := oci.Push(ctx, ns, im, ref, env.reg.Creds()); err != nil {
		t.Fatal(err)
	}
	return im, ref
}

// listenIn listens on addr inside ns ("" for here).
func listenIn(ns, addr string) (net.Listener, error) {
	return netns.Listen(ns, "tcp", addr)
}
