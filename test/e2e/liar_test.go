package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The liar (./liar) is a malicious peer: it registers with the scheduler as
// a complete parent of one task and serves random bytes for every piece.

var (
	liarOnce sync.Once
	liarErr  error
)

// buildLiar builds the liar into binDir once per test binary.
func buildLiar(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(binDir, "liar")
	liarOnce.Do(func() {
		cmd := exec.Command("go", "build", "-o", bin, "./liar")
		out, err := cmd.CombinedOutput()
		if err != nil {
			liarErr = err
			t.Logf("build liar: %s", out)
		}
	})
	if liarErr != nil {
		t.Fatalf("build liar: %v", liarErr)
	}
	return bin
}

// liarStats mirrors liar.Stats.
type liarStats struct {
	Ready         bool   `json:"ready"`
	PeerID        string `json:"peer_id"`
	HostID        string `json:"host_id"`
	ContentLength int64  `json:"content_length"`
	PieceSize     uint32 `json:"piece_size"`
	PieceRequests int64  `json:"piece_requests"`
	SyncRequests  int64  `json:"sync_requests"`
	NewsSent      int64  `json:"news_sent"`
	LastStreamMs  int64  `json:"last_stream_ms"`
	StreamsClosed int64  `json:"streams_closed"`
}

type liarProc struct {
	*proc
	statsPath string
}

// startLiar starts the liar for url (extra: more flags, such as -mode) and
// waits until it has claimed every piece and told the scheduler it is done
// (with -mode source-news: until it has registered).
func startLiar(t testing.TB, sched, url string, extra ...string) *liarProc {
	t.Helper()
	bin := buildLiar(t)
	dir := t.TempDir()
	statsPath := filepath.Join(dir, "stats.json")
	logPath := filepath.Join(dir, "liar.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	// The liar holds a valid peer certificate: mTLS says who a peer is, not
	// whether its pieces are true; digests catch those.
	tlsFlags := issue(t, "peer", "liar-"+filepath.Base(dir), filepath.Join(dir, "tls"))
	args := append([]string{"-scheduler", sched, "-url", url, "-stats", statsPath}, tlsFlags...)
	cmd := exec.Command(bin, append(args, extra...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{name: "liar", cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(syscall.SIGTERM)
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("---- liar log ----\n%s", b)
		}
	})
	l := &liarProc{proc: p, statsPath: statsPath}
	waitFor(t, 20*time.Second, "liar registered", func() bool {
		select {
		case <-p.done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("liar exited:\n%s", b)
		default:
		}
		return l.stats(t).Ready
	})
	return l
}

// stats reads the liar's counters (zero before its first write).
func (l *liarProc) stats(t testing.TB) liarStats {
	t.Helper()
	var s liarStats
	b, err := os.ReadFile(l.statsPath)
	if os.IsNotExist(err) {
		return s
	}
	if err != nil {
		t.Fatalf("read liar stats: %v", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("parse liar stats %q: %v", b, err)
	}
	return s
}
