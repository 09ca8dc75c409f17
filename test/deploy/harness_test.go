// Package deploy tests how Damselfly is installed, with real parts: the
// container image built by tools/image, pushed to docker-registry, pulled
// and run by containerd (ctr, runc); and `damselfly configure-runtime`
// against real containerd, Podman and dockerd, each on a scratch root.
// Everything listens on loopback ports the tests pick.
package deploy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/test/oci"
)

var (
	binDir    string // static linux/amd64 binaries (damselfly, dfget, dfcache)
	imageTool string // tools/image, built
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "damselfly-deploy-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = filepath.Join(dir, "dist", "linux_amd64")
	imageTool = filepath.Join(dir, "image")
	// As `make dist` builds them: static, so they run in the image.
	build := exec.Command("go", "build", "-trimpath", "-o", binDir+"/", "../../cmd/damselfly", "../../cmd/dfget", "../../cmd/dfcache")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	tool := exec.Command("go", "build", "-o", imageTool, ".")
	tool.Dir = "../../tools/image"
	for _, c := range []*exec.Cmd{build, tool} {
		c.Stdout, c.Stderr = os.Stderr, os.Stderr
		if err := c.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build:", err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func damselfly() string { return filepath.Join(binDir, "damselfly") }

// requireTools skips when a real part is missing, except under CI=true,
// where scripts/install-deps.sh must have installed it.
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

func requireRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("needs root (%s); CI runs as root", why)
	}
	t.Skipf("needs root (%s)", why)
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

func httpGet(url string) (int, string, error) {
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func httpOK(url string) error {
	code, body, err := httpGet(url)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("%s: %d %s", url, code, body)
	}
	return nil
}

// metric sums a metric from a /metrics endpoint.
func metric(t testing.TB, base, name, match string) float64 {
	t.Helper()
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	v, err := oci.SumMetric(resp.Body, name, match)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// runCmd runs argv and fails the test with its output if it fails.
func runCmd(t testing.TB, env []string, argv ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// loopNode is a scheduler and one daemon on loopback whose mirror forwards
// to upstream.
type loopNode struct {
	mirror  string // http://127.0.0.1:PORT
	metrics string
}

func startLoopNode(t *testing.T, upstream string) *loopNode {
	t.Helper()
	sport, smport := freePort(t), freePort(t)
	sched := "127.0.0.1:" + strconv.Itoa(sport)
	sp := oci.StartT(t, "", "scheduler", damselfly(), "scheduler", "--listen", sched, "--metrics-port", strconv.Itoa(smport), "--insecure")
	oci.WaitUntil(t, sp, 30*time.Second, "scheduler", func() error { return httpOK(fmt.Sprintf("http://127.0.0.1:%d/healthy", smport)) })
	dir := oci.ShortDir(t)
	mport, pport := freePort(t), freePort(t)
	n := &loopNode{mirror: fmt.Sprintf("http://127.0.0.1:%d", pport), metrics: fmt.Sprintf("http://127.0.0.1:%d", mport)}
	dp := oci.StartT(t, "", "daemon", damselfly(), "daemon", "--scheduler", sched, "--insecure",
		"--data-dir", filepath.Join(dir, "cache"), "--advertise-ip", "127.0.0.1", "--listen-ip", "127.0.0.1",
		"--peer-port", "0", "--upload-port", "0", "--metrics-port", strconv.Itoa(mport), "--sock", filepath.Join(dir, "d.sock"),
		"--hostname", "node", "--proxy-port", strconv.Itoa(pport), "--proxy-ip", "127.0.0.1", "--registry-mirror", upstream, "--link-test=false")
	oci.WaitUntil(t, dp, 30*time.Second, "daemon", func() error { return httpOK(n.metrics + "/healthy") })
	return n
}

// startRegistry runs docker-registry on a loopback port.
func startRegistry(t *testing.T) *oci.Registry {
	t.Helper()
	r, err := oci.StartRegistry(t.Context(), "", oci.RegistryConfig{Addr: "127.0.0.1:" + strconv.Itoa(freePort(t)), Dir: oci.ShortDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

// removeNewEmptyDirs removes, at cleanup, those of dirs (listed parent
// first) that did not exist before and are empty by then: runtime
// directories containerd's shims and dockerd create under /run whatever
// their configured roots.
func removeNewEmptyDirs(t *testing.T, dirs ...string) {
	t.Helper()
	var fresh []string
	for _, d := range dirs {
		if _, err := os.Stat(d); os.IsNotExist(err) {
			fresh = append(fresh, d)
		}
	}
	t.Cleanup(func() {
		for i := len(fresh) - 1; i >= 0; i-- {
			_ = os.Remove(fresh[i]) // fails, and keeps it, unless empty
		}
	})
}
