// Package e2e runs Damselfly's real binaries on loopback: a scheduler, seed
// peers and daemons as separate processes, dfget as the client, and an
// origin HTTP server that counts what it serves.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/test/oci"
)

var (
	binDir string
	// caDir is the run's CA (damselfly certs init-ca).
	caDir string
)

// issue makes a certificate for damselfly://role/hostID from the run's CA
// into dir and returns the flags that use it.
func issue(t testing.TB, role, hostID, dir string) []string {
	t.Helper()
	out, err := exec.Command(filepath.Join(binDir, "damselfly"), "certs", "issue", "--ca-dir", caDir, "--role", role, "--host-id", hostID, "--out", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("certs issue %s/%s: %v: %s", role, hostID, err, out)
	}
	return []string{"--tls-cert", filepath.Join(dir, "tls.crt"), "--tls-key", filepath.Join(dir, "tls.key"), "--tls-ca", filepath.Join(dir, "ca.crt")}
}

// tlsArgs are the TLS flags of a component: none when extra already
// chooses (--insecure, --tls-cert, a token), else a new certificate.
func tlsArgs(t testing.TB, role, hostID string, extra []string) []string {
	for _, a := range extra {
		if a == "--insecure" || a == "--tls-cert" || a == "--bootstrap-token" || a == "--bootstrap-token-file" {
			return nil
		}
	}
	return issue(t, role, hostID, t.TempDir())
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "damselfly-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	cmd := exec.Command("go", "build", "-o", dir+"/", "../../cmd/damselfly", "../../cmd/dfget", "../../cmd/dfcache", "./localrogue")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		os.Exit(1)
	}
	// One CA for the whole run: every component gets a certificate from it
	// (the manager uses it as its own CA), as `damselfly certs` documents.
	caDir = filepath.Join(dir, "ca")
	if out, err := exec.Command(filepath.Join(dir, "damselfly"), "certs", "init-ca", "--dir", caDir).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "init-ca: %v: %s\n", err, out)
		os.Exit(1)
	}
	// DAMSELFLY_E2E_BIN: run against the damselfly, dfget and dfcache
	// binaries in that directory instead (e.g. an older release's, to see
	// an attack test fail there); the rogue client is still built here.
	if old := os.Getenv("DAMSELFLY_E2E_BIN"); old != "" {
		for _, b := range []string{"damselfly", "dfget", "dfcache"} {
			if out, err := exec.Command("cp", filepath.Join(old, b), dir+"/").CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "copy %s: %v %s\n", b, err, out)
				os.Exit(1)
			}
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
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

// proc is a started binary; it is stopped at cleanup.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func start(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "damselfly"), args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Pdeathsig: if the test binary dies (a timeout kill), so do its servers.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(syscall.SIGTERM)
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 20000 {
				b = b[len(b)-20000:]
			}
			t.Logf("---- %s log (tail) ----\n%s", name, b)
		}
	})
	return p
}

// stop signals the process and waits for it, killing it after 5 s.
func (p *proc) stop(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) kill() { p.stop(syscall.SIGKILL) }

type schedulerProc struct {
	*proc
	addr    string
	metrics string
	args    []string
}

func startScheduler(t testing.TB, extra ...string) *schedulerProc {
	t.Helper()
	var addr, metrics string
	p, args, _ := startHealthy(t, "scheduler", func() ([]string, string) {
		port, mport := freePort(t), freePort(t)
		addr = "127.0.0.1:" + strconv.Itoa(port)
		metrics = "http://127.0.0.1:" + strconv.Itoa(mport)
		args := append([]string{"scheduler", "--listen", addr, "--metrics-port", strconv.Itoa(mport)}, extra...)
		args = append(args, tlsArgs(t, "scheduler", "scheduler-"+strconv.Itoa(port), extra)...)
		return args, metrics + "/healthy"
	})
	return &schedulerProc{proc: p, addr: addr, metrics: metrics, args: args}
}

// restart stops the scheduler (SIGTERM) and starts it again on the same
// address with the same arguments: a fresh process that knows nothing.
func (s *schedulerProc) restart(t testing.TB) {
	t.Helper()
	s.stop(syscall.SIGTERM)
	s.proc = start(t, "scheduler-restarted", s.args...)
	waitHTTP(t, s.metrics+"/healthy", s.proc)
}

type daemonProc struct {
	*proc
	sock    string
	dataDir string
	metrics string
	args    []string
}

type daemonOpts struct {
	name      string
	scheduler string
	seed      bool
	dataDir   string
	extra     []string
	// linkTest leaves the daemon's link tests on: off by default, as on
	// loopback they would measure the loopback and take the CPU for a
	// second or two at every start.
	linkTest bool
}

func startDaemon(t testing.TB, o daemonOpts) *daemonProc {
	t.Helper()
	dir := o.dataDir
	if dir == "" {
		dir = t.TempDir()
	}
	sock := filepath.Join(dir, "daemon.sock")
	var metrics string
	p, args, _ := startHealthy(t, o.name, func() ([]string, string) {
		mport := freePort(t)
		metrics = "http://127.0.0.1:" + strconv.Itoa(mport)
		args := []string{"daemon", "--scheduler", o.scheduler, "--data-dir", filepath.Join(dir, "cache"),
			"--advertise-ip", "127.0.0.1", "--listen-ip", "127.0.0.1", "--peer-port", "0", "--upload-port", "0", "--proxy-port", "0",
			"--metrics-port", strconv.Itoa(mport), "--sock", sock, "--hostname", o.name}
		role := "peer"
		if o.seed {
			args = append(args, "--seed")
			role = "seed"
		}
		if !o.linkTest {
			args = append(args, "--link-test=false")
		}
		args = append(args, o.extra...)
		args = append(args, tlsArgs(t, role, o.name+"-"+strconv.Itoa(mport), o.extra)...)
		return args, metrics + "/healthy"
	})
	d := &daemonProc{proc: p, sock: sock, dataDir: dir, metrics: metrics, args: args}
	waitSock(t, sock, d.proc)
	return d
}

// restart starts the daemon again with the same arguments and data.
func (d *daemonProc) restart(t testing.TB) {
	t.Helper()
	d.proc = start(t, d.name+"-restarted", d.args...)
	waitHTTP(t, d.metrics+"/healthy", d.proc)
	waitSock(t, d.sock, d.proc)
}

func waitHTTP(t testing.TB, url string, p *proc) {
	t.Helper()
	if err := waitHealthy(url, p); err != nil {
		t.Fatal(err)
	}
}

// errPortTaken: a server exited at start because a port freePort found
// free was taken before it bound it (by another test's server, or as some
// socket's ephemeral port).
var errPortTaken = errors.New("port taken")

// waitHealthy waits up to 20 s for url to answer 200 while p runs.
func waitHealthy(url string, p *proc) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			b, _ := os.ReadFile(p.log)
			if strings.Contains(string(b), "address already in use") {
				return fmt.Errorf("%s exited during start (%w):\n%s", p.name, errPortTaken, b)
			}
			return fmt.Errorf("%s exited during start:\n%s", p.name, b)
		default:
		}
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s: %s not healthy after 20s", p.name, url)
}

// startHealthy starts a server on ports from freePort (mk picks them and
// returns the arguments and the health URL) and waits until it is
// healthy; one that lost a port to the race between freePort and its bind
// is started again on fresh ports, up to three times.
func startHealthy(t testing.TB, name string, mk func() (args []string, url string)) (*proc, []string, string) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		args, url := mk()
		p := start(t, name, args...)
		err := waitHealthy(url, p)
		if err == nil {
			return p, args, url
		}
		if attempt == 3 || !errors.Is(err, errPortTaken) {
			t.Fatal(err)
		}
		t.Logf("%s: a port was taken before it bound it; starting it again on others", name)
	}
}

func waitSock(t testing.TB, sock string, p *proc) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: socket %s not answering after 20s", p.name, sock)
}

// metric returns the sum of a metric's samples whose label set contains match.
func metric(t testing.TB, base, name, match string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
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

// dfget runs the dfget binary and returns its exit code and everything it
// printed.
func dfget(ctx context.Context, args ...string) (int, string) {
	code, out, errs := dfgetStdout(ctx, args...)
	return code, string(out) + errs
}

// dfgetStdout runs dfget and returns its exit code, standard output and
// standard error separately.
func dfgetStdout(ctx context.Context, args ...string) (int, []byte, string) {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "dfget"), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.Bytes(), errb.String()
	}
	if err != nil {
		return -1, out.Bytes(), errb.String() + err.Error()
	}
	return 0, out.Bytes(), errb.String()
}

// dfcache runs the dfcache binary and returns its exit code, standard
// output and standard error.
func dfcache(ctx context.Context, args ...string) (int, []byte, string) {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "dfcache"), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.Bytes(), errb.String()
	}
	if err != nil {
		return -1, out.Bytes(), errb.String() + err.Error()
	}
	return 0, out.Bytes(), errb.String()
}

// origin is an HTTP server with byte counting and failure modes.
type origin struct {
	*httptest.Server
	mu      sync.Mutex
	files   map[string][]byte
	gens    map[string]*genContent
	served  atomic.Int64
	gets    atomic.Int64
	mode    atomic.Value // string: "", "500", "flaky", "reset", "slow"
	flakyN  atomic.Int64
	rateBps atomic.Int64 // per-connection throttle in bytes/s (0: none)
	// rate2Bps, when set, replaces rateBps after a connection's first
	// rate2After body bytes.
	rate2Bps, rate2After atomic.Int64
}

func newOrigin(t testing.TB) *origin {
	o := &origin{files: map[string][]byte{}, gens: map[string]*genContent{}}
	o.mode.Store("")
	o.Server = httptest.NewServer(http.HandlerFunc(o.serve))
	t.Cleanup(o.Close)
	return o
}

// add registers deterministic pseudo-random content and returns its URL and sha256.
func (o *origin) add(name string, size int, seed uint64) (string, string) {
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64()
		for k := 0; k < 8; k++ {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(r.Uint32())
	}
	o.mu.Lock()
	o.files["/"+name] = b
	o.mu.Unlock()
	sum := sha256.Sum256(b)
	return o.URL + "/" + name, hex.EncodeToString(sum[:])
}

// addGen registers generated content of any size and returns its URL and sha256.
func (o *origin) addGen(name string, size int64, seed uint64) (string, string) {
	g := newGen(size, seed)
	o.mu.Lock()
	o.gens["/"+name] = g
	o.mu.Unlock()
	return o.URL + "/" + name, g.sha256()
}

type countingWriter struct {
	http.ResponseWriter
	o     *origin
	rate  int64
	reset int64 // close the connection after this many body bytes (0: never)
	n     int64
	// rate2 replaces rate once n reaches after2 (0: never).
	rate2, after2 int64
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.reset > 0 && w.n+int64(len(b)) > w.reset {
		b = b[:w.reset-w.n]
		k, _ := w.ResponseWriter.Write(b)
		w.n += int64(k)
		w.o.served.Add(int64(k))
		panic(http.ErrAbortHandler)
	}
	if w.rate > 0 {
		total := 0
		for len(b) > 0 {
			c := min(len(b), 16<<10)
			if w.rate2 > 0 && w.n >= w.after2 {
				w.rate = w.rate2
			}
			k, err := w.ResponseWriter.Write(b[:c])
			w.n += int64(k)
			w.o.served.Add(int64(k))
			total += k
			if err != nil {
				return total, err
			}
			time.Sleep(time.Duration(float64(c) / float64(w.rate) * float64(time.Second)))
			b = b[c:]
		}
		return total, nil
	}
	k, err := w.ResponseWriter.Write(b)
	w.n += int64(k)
	w.o.served.Add(int64(k))
	return k, err
}

func (o *origin) serve(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	b, ok := o.files[r.URL.Path]
	g := o.gens[r.URL.Path]
	o.mu.Unlock()
	if g != nil {
		o.gets.Add(1)
		http.ServeContent(&countingWriter{ResponseWriter: w, o: o}, r, "", time.Time{}, &readSeeker{g: g})
		return
	}
	if !ok {
		http.NotFound(w, r)
		return
	}
	o.gets.Add(1)
	cw := &countingWriter{ResponseWriter: w, o: o, rate: o.rateBps.Load(), rate2: o.rate2Bps.Load(), after2: o.rate2After.Load()}
	switch o.mode.Load().(string) {
	case "500":
		http.Error(w, "origin broken", http.StatusInternalServerError)
		return
	case "flaky":
		if o.flakyN.Add(-1) >= 0 {
			http.Error(w, "try again", http.StatusServiceUnavailable)
			return
		}
	case "reset":
		if o.flakyN.Add(-1) >= 0 {
			cw.reset = int64(len(b) / 3)
		}
	}
	http.ServeContent(cw, r, "", time.Time{}, bytes.NewReader(b))
}

func fileSHA(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// cluster is a scheduler, one seed peer and n daemons.
type cluster struct {
	sched   *schedulerProc
	seed    *daemonProc
	daemons []*daemonProc
}

func startCluster(t testing.TB, n int, daemonExtra ...string) *cluster {
	t.Helper()
	c := &cluster{sched: startScheduler(t)}
	c.seed = startDaemon(t, daemonOpts{name: "seed", scheduler: c.sched.addr, seed: true, extra: daemonExtra})
	for i := 0; i < n; i++ {
		c.daemons = append(c.daemons, startDaemon(t, daemonOpts{name: fmt.Sprintf("peer%d", i), scheduler: c.sched.addr, extra: daemonExtra}))
	}
	return c
}

// fetchAll runs dfget on every daemon at once and checks each copy.
func fetchAll(t *testing.T, ds []*daemonProc, url, sum string, extra ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]string, len(ds))
	outs := make([]string, len(ds))
	for i, d := range ds {
		outs[i] = filepath.Join(t.TempDir(), "out")
		wg.Add(1)
		go func(i int, d *daemonProc) {
			defer wg.Done()
			args := append([]string{url, "-O", outs[i], "--sock", d.sock}, extra...)
			code, out := dfget(ctx, args...)
			if code != 0 {
				errs[i] = fmt.Sprintf("dfget on %s exited %d: %s", d.name, code, out)
			}
		}(i, d)
	}
	wg.Wait()
	for i := range ds {
		if errs[i] != "" {
			t.Error(errs[i])
			continue
		}
		if got := fileSHA(t, outs[i]); got != sum {
			t.Errorf("%s: copy has sha256 %s, want %s", ds[i].name, got, sum)
		}
	}
}
