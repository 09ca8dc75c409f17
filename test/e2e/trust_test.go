package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/core"
)

// The poisoner (./poisoner) is an attacker process speaking our protocols: it
// registers with the scheduler under a victim task's ID with a file:// URL,
// or becomes a task's origin fetcher and reports forged piece digests.

var (
	poisonerOnce sync.Once
	poisonerErr  error
)

func buildPoisoner(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(binDir, "poisoner")
	poisonerOnce.Do(func() {
		out, err := exec.Command("go", "build", "-o", bin, "./poisoner").CombinedOutput()
		if err != nil {
			poisonerErr = err
			t.Logf("build poisoner: %s", out)
		}
	})
	if poisonerErr != nil {
		t.Fatalf("build poisoner: %v", poisonerErr)
	}
	return bin
}

type rogueStats struct {
	Decision      string `json:"decision"`
	Ready         bool   `json:"ready"`
	HostID        string `json:"host_id"`
	PieceRequests int64  `json:"piece_requests"`
}

type rogueProc struct {
	*proc
	statsPath string
}

// startRogue runs the rogue and waits for the scheduler's first answer.
func startRogue(t testing.TB, args ...string) *rogueProc {
	t.Helper()
	bin := buildPoisoner(t)
	dir := t.TempDir()
	r := &rogueProc{statsPath: filepath.Join(dir, "stats.json")}
	logPath := filepath.Join(dir, "rogue.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	// The rogue holds a valid peer certificate (not a seed one): a member
	// of the cluster that lies.
	tlsFlags := issue(t, "peer", "rogue-"+filepath.Base(dir), filepath.Join(dir, "tls"))
	cmd := exec.Command(bin, append(append(args, "-stats", r.statsPath), tlsFlags...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.proc = &proc{name: "rogue", cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(r.done) }()
	t.Cleanup(func() {
		r.stop(syscall.SIGTERM)
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("---- rogue log ----\n%s", b)
		}
	})
	waitFor(t, 20*time.Second, "the rogue's first answer from the scheduler", func() bool {
		select {
		case <-r.done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("rogue exited:\n%s", b)
		default:
		}
		return r.stats(t).Decision != ""
	})
	return r
}

func (r *rogueProc) stats(t testing.TB) rogueStats {
	t.Helper()
	var s rogueStats
	b, err := os.ReadFile(r.statsPath)
	if os.IsNotExist(err) {
		return s
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("parse rogue stats %q: %v", b, err)
	}
	return s
}

// cacheHolds reports whether any file under dir contains secret.
func cacheHolds(t testing.TB, dir string, secret []byte) bool {
	t.Helper()
	found := false
	_ = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, secret) {
			found = true
		}
		return nil
	})
	return found
}

// Attack: a rogue registers under a victim task's ID with a file:// URL of a
// 0600 file on the seed's host. The scheduler refuses it (Fail), never
// triggers the seed with it, the seed never reads the file, and a victim
// still gets the origin's bytes.
func TestRogueFileURLUnderVictimTaskRefused(t *testing.T) {
	o := newOrigin(t)
	url, sum := o.add("victim.bin", 700_000, 11)
	c := startCluster(t, 1)
	secret := make([]byte, 4096)
	_, _ = rand.Read(secret)
	secretPath := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretPath, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	victimID := core.TaskID(url, core.TaskOptions{})
	r := startRogue(t, "-mode", "file", "-scheduler", c.sched.addr, "-task", victimID, "-url", "file://"+secretPath)
	if d := r.stats(t).Decision; d != "fail" {
		t.Errorf("rogue with a file:// URL under the victim's task ID got %q, want fail", d)
	}
	if n := metric(t, c.sched.metrics, "damselfly_scheduler_seed_triggers_total", ""); n != 0 {
		t.Errorf("the scheduler triggered the seed %v times for the rogue's spec", n)
	}
	if n := metric(t, c.sched.metrics, "damselfly_scheduler_registers_refused_total", ""); n != 1 {
		t.Errorf("registers_refused_total %v, want 1", n)
	}
	out := filepath.Join(t.TempDir(), "out")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if code, msg := dfget(ctx, url, "-O", out, "--sock", c.daemons[0].sock); code != 0 {
		t.Fatalf("victim dfget exited %d: %s", code, msg)
	}
	if got := fileSHA(t, out); got != sum {
		t.Fatalf("victim got sha256 %s, want the origin's %s", got, sum)
	}
	if cacheHolds(t, c.seed.dataDir, secret) || cacheHolds(t, c.daemons[0].dataDir, secret) {
		t.Fatal("the secret file's bytes are in a daemon's cache")
	}
}

// Attack and recovery: a rogue is the first peer of a task, is sent to the
// origin and reports forged piece digests, then serves the forged pieces. A
// victim with --digest assembles the forged content, which fails the
// whole-content digest: it reports the content corrupt and fetches it again
// from the origin, once, ending with the origin's bytes. The next peer,
// sent to the origin by the scheduler, proves the rogue's digests wrong and
// the rogue's host is banned.
func TestPoisonedDigestsFallBackToOriginOnceAndBanTheLiar(t *testing.T) {
	o := newOrigin(t)
	url, sum := o.add("layer.bin", 3<<20+4321, 12)
	sched := startScheduler(t)
	r := startRogue(t, "-mode", "poison", "-scheduler", sched.addr, "-url", url)
	if d := r.stats(t).Decision; d != "back_to_source" {
		t.Fatalf("rogue got %q, want back_to_source (it registered first, no seed peer)", d)
	}
	waitFor(t, 20*time.Second, "the rogue's forged digests", func() bool { return r.stats(t).Ready })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v1 := startDaemon(t, daemonOpts{name: "victim1", scheduler: sched.addr})
	out := filepath.Join(t.TempDir(), "out1")
	code, msg := dfget(ctx, url, "-O", out, "--sock", v1.sock, "--digest", "sha256:"+sum)
	if code != 0 {
		t.Fatalf("victim dfget with --digest exited %d: %s", code, msg)
	}
	if got := fileSHA(t, out); got != sum {
		t.Fatalf("victim exited 0 with sha256 %s, want %s", got, sum)
	}
	if r.stats(t).PieceRequests == 0 {
		t.Fatal("the victim never fetched from the rogue: the attack did not happen")
	}
	if n := metric(t, v1.metrics, "damselfly_daemon_back_to_source_total", `reason="content_corrupt"`); n != 1 {
		t.Errorf("victim fell back to the origin %v times for corrupt content, want 1", n)
	}
	if n := metric(t, sched.metrics, "damselfly_scheduler_content_corrupt_total", `outcome="reported"`); n != 1 {
		t.Errorf("content-corrupt reports %v, want 1", n)
	}

	v2 := startDaemon(t, daemonOpts{name: "victim2", scheduler: sched.addr})
	out2 := filepath.Join(t.TempDir(), "out2")
	if code, msg := dfget(ctx, url, "-O", out2, "--sock", v2.sock, "--digest", "sha256:"+sum); code != 0 {
		t.Fatalf("second victim exited %d: %s", code, msg)
	}
	if got := fileSHA(t, out2); got != sum {
		t.Fatalf("second victim got sha256 %s, want %s", got, sum)
	}
	waitFor(t, 20*time.Second, "the rogue's host banned", func() bool {
		return metric(t, sched.metrics, "damselfly_scheduler_content_corrupt_total", `outcome="confirmed"`) == 1
	})
	b, _ := os.ReadFile(sched.log)
	if !regexp.MustCompile(`host banned.*banned_host=` + regexp.QuoteMeta(r.stats(t).HostID)).Match(b) {
		t.Errorf("scheduler log does not name the rogue's host %s as banned", r.stats(t).HostID)
	}
}

// Attack: a rogue with a valid peer certificate announces with seed_request
// (as if it were a seed peer answering SeedTasks), hoping to be sent to the
// origin at once and have its forged piece digests trusted. It is refused;
// the seed fetches the content and a victim dfget without --digest gets the
// origin's bytes.
func TestRogueSeedRequestRefused(t *testing.T) {
	o := newOrigin(t)
	url, sum := o.add("tool.bin", 1<<20+99, 13)
	c := startCluster(t, 1)
	r := startRogue(t, "-mode", "poison", "-seed-request", "-scheduler", c.sched.addr, "-url", url)
	if d := r.stats(t).Decision; !strings.HasPrefix(d, "ended:") || !strings.Contains(d, "PermissionDenied") {
		t.Errorf("rogue with seed_request and a peer certificate got %q, want the stream refused with PermissionDenied", d)
	}
	out := filepath.Join(t.TempDir(), "out")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code, msg := dfget(ctx, url, "-O", out, "--sock", c.daemons[0].sock)
	if code != 0 {
		t.Fatalf("victim dfget exited %d: %s", code, msg)
	}
	if got := fileSHA(t, out); got != sum {
		t.Fatalf("victim exited 0 with sha256 %s, want the origin's %s", got, sum)
	}
	if n := r.stats(t).PieceRequests; n != 0 {
		t.Errorf("the victim fetched %d pieces from the rogue", n)
	}
}

// privateOrigin serves one file only to requests with the right bearer token.
func privateOrigin(t testing.TB, size int) (url, sum string, body []byte) {
	body = make([]byte, size)
	_, _ = rand.Read(body)
	s := sha256.Sum256(body)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer s3cret" {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/private.bin", hex.EncodeToString(s[:]), body
}

// Private content: a file fetched with credentials is served from the swarm
// only to a peer whose own credentials the origin accepts. A plain HTTP
// client asking the upload port for its pieces is refused (no token, a
// forged one); a second node's dfget without the Authorization header gets
// none of its bytes; with the header, it gets them from the first node.
func TestPrivateContentStaysPrivate(t *testing.T) {
	url, sum, body := privateOrigin(t, 2<<20+77)
	sched := startScheduler(t)
	a := startDaemon(t, daemonOpts{name: "a", scheduler: sched.addr})
	b := startDaemon(t, daemonOpts{name: "b", scheduler: sched.addr})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	outA := filepath.Join(t.TempDir(), "a")
	if code, msg := dfget(ctx, url, "-O", outA, "--sock", a.sock, "-H", "Authorization: Bearer s3cret"); code != 0 {
		t.Fatalf("dfget with credentials exited %d: %s", code, msg)
	}
	if got := fileSHA(t, outA); got != sum {
		t.Fatalf("a got sha256 %s", got)
	}

	// Another local user of a, without credentials: not from a's cache.
	outA2 := filepath.Join(t.TempDir(), "a2")
	if code, msg := dfget(ctx, url, "-O", outA2, "--sock", a.sock); code == 0 {
		t.Errorf("dfget on a without credentials exited 0 (%s)", msg)
	} else {
		t.Logf("dfget on a without credentials: exit %d: %s", code, msg)
	}
	if got, err := os.ReadFile(outA2); err == nil && len(got) > 0 {
		t.Errorf("dfget on a without credentials wrote %d bytes", len(got))
	}

	// A plain HTTP client at a's upload port.
	upload := uploadAddr(t, a)
	id := core.TaskID(url, core.TaskOptions{})
	for name, tok := range map[string]string{
		"no token":     "",
		"forged token": core.PieceToken([]byte("guessed key guessed key guessed!"), id, "thief", time.Now().Add(time.Minute)),
	} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+upload+"/pieces/"+id+"/0", nil)
		req.Header.Set("X-Damselfly-Peer", "thief")
		if tok != "" {
			req.Header.Set(core.TokenHeader, tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4096)
		n, _ := resp.Body.Read(got)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: upload port answered %d, want 401/403", name, resp.StatusCode)
		}
		if n > 0 && bytes.Contains(body, got[:n]) {
			t.Errorf("%s: upload port sent the private bytes", name)
		}
	}

	// b without credentials: nothing from the swarm, and dfget fails.
	outB := filepath.Join(t.TempDir(), "b")
	code, msg := dfget(ctx, url, "-O", outB, "--sock", b.sock)
	if code == 0 {
		t.Fatalf("dfget without credentials exited 0 (%s)", msg)
	}
	t.Logf("dfget without credentials: exit %d: %s", code, msg)
	if !strings.Contains(msg, "401") {
		t.Errorf("dfget without credentials does not say the origin refused it: %s", msg)
	}
	if got, err := os.ReadFile(outB); err == nil && len(got) > 0 {
		t.Fatalf("dfget without credentials wrote %d bytes", len(got))
	}
	if n := metric(t, b.metrics, "damselfly_daemon_download_bytes_total", `source="peer"`); n != 0 {
		t.Fatalf("b received %v bytes from peers without credentials", n)
	}
	// b with credentials: from a, with a piece token.
	if code, msg := dfget(ctx, url, "-O", outB, "--sock", b.sock, "-H", "Authorization: Bearer s3cret"); code != 0 {
		t.Fatalf("b's dfget with credentials exited %d: %s", code, msg)
	}
	if got := fileSHA(t, outB); got != sum {
		t.Fatalf("b got sha256 %s", got)
	}
	if n := metric(t, b.metrics, "damselfly_daemon_download_bytes_total", `source="peer"`); n == 0 {
		t.Errorf("b with credentials got nothing from a: piece tokens did not work")
	}
}
