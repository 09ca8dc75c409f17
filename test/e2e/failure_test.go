package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/client"
	"github.com/damselfly-io/damselfly/core"
)

// Failure tests: parts of the system die, lie or misbehave while downloads
// run, and every download must still end with exact content (or with the
// documented error and no file). Transfers are slowed with rate limits so a
// failure can be injected mid-download; all waits are bounded.

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fetchRun is a dfget running in the background.
type fetchRun struct {
	d    *daemonProc
	out  string
	done chan struct{}
	code int
	msg  string
}

func startFetch(ctx context.Context, t testing.TB, d *daemonProc, url string, extra ...string) *fetchRun {
	r := &fetchRun{d: d, out: filepath.Join(t.TempDir(), "out"), done: make(chan struct{})}
	args := append([]string{url, "-O", r.out, "--sock", d.sock, "--no-progress"}, extra...)
	go func() {
		defer close(r.done)
		r.code, r.msg = dfget(ctx, args...)
	}()
	return r
}

func (r *fetchRun) finished() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// check waits for the run and requires success with the wanted sha256.
func (r *fetchRun) check(t *testing.T, sum string) {
	t.Helper()
	<-r.done
	if r.code != 0 {
		t.Errorf("dfget on %s exited %d: %s", r.d.name, r.code, r.msg)
		return
	}
	if got := fileSHA(t, r.out); got != sum {
		t.Errorf("%s: copy has sha256 %s, want %s", r.d.name, got, sum)
	}
}

// emptyDir fails unless dir holds no file at all (no output, no temp file).
func emptyDir(t testing.TB, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("%s: unexpected file %s left behind", dir, e.Name())
	}
}

func sumMetric(t testing.TB, ds []*daemonProc, name, match string) float64 {
	t.Helper()
	s := 0.0
	for _, d := range ds {
		s += metric(t, d.metrics, name, match)
	}
	return s
}

// TestParentKilledMidDownload SIGKILLs a daemon while it serves pieces to
// the others: they must all finish with exact content from other parents or
// the origin.
func TestParentKilledMidDownload(t *testing.T) {
	o := newOrigin(t)
	// 4 MiB/s upload per host: 4 peers need 16 MiB each from ≤ 5 uplinks,
	// which takes seconds, while the first pieces are traded within a second.
	c := startCluster(t, 4, "--upload-rate-limit", "4M")
	const size = 16 << 20
	url, sum := o.add("parent-kill", size, 101)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	runs := make([]*fetchRun, len(c.daemons))
	for i, d := range c.daemons {
		runs[i] = startFetch(ctx, t, d, url)
	}

	// The victim: the first non-seed daemon seen uploading a whole piece's
	// worth to the others.
	var victim int
	var uploaded float64
	waitFor(t, 60*time.Second, "a non-seed daemon serving pieces", func() bool {
		for i, d := range c.daemons {
			if u := metric(t, d.metrics, "damselfly_daemon_upload_bytes_total", ""); u >= 256<<10 {
				victim, uploaded = i, u
				return true
			}
		}
		return false
	})
	still := 0
	for i, r := range runs {
		if i != victim && !r.finished() {
			still++
		}
	}
	if still == 0 {
		t.Fatal("every other download finished before the kill: the test proves nothing; slow it down")
	}
	c.daemons[victim].kill()
	t.Logf("killed %s after it uploaded %.0f bytes; %d other downloads in progress", c.daemons[victim].name, uploaded, still)

	for i, r := range runs {
		if i == victim {
			<-r.done // dfget falls back to a direct download or fails: either is fine
			continue
		}
		r.check(t, sum)
	}
	var others []*daemonProc
	for i, d := range c.daemons {
		if i != victim {
			others = append(others, d)
		}
	}
	t.Logf("origin served %d bytes (%.2f×F); survivors took %.0f bytes from peers",
		o.served.Load(), float64(o.served.Load())/size,
		sumMetric(t, others, "damselfly_daemon_download_bytes_total", `source="peer"`))
}

// TestSlowSourceKeepsPeersInSwarm: the seed peer fetches the content from
// an origin whose answer slows down after the first piece (as when other
// fetches start to share its link), so that each further piece reaches the
// seed later than the peer's swarm timeout. The peer's wait stretches with
// the source's pace (three times its longest wait for a piece) and it
// takes everything from the swarm: the origin answers the seed alone. With
// a fixed timeout the peer left for the origin after its first piece.
func TestSlowSourceKeepsPeersInSwarm(t *testing.T) {
	o := newOrigin(t)
	c := startCluster(t, 1, "--swarm-timeout", "3s")
	const size = 1 << 20 // four pieces of 256 KiB
	url, sum := o.add("slow-source", size, 131)
	// The first piece in about 2 s (the peer's patience: three times
	// that), each further one in about 4.3 s.
	o.rateBps.Store(128 << 10)
	o.rate2After.Store(256 << 10)
	o.rate2Bps.Store(60 << 10)
	t.Cleanup(func() { o.rateBps.Store(0); o.rate2Bps.Store(0); o.rate2After.Store(0) })
	fetchAllWaitingForSeed(t, o, c, url, sum, size)
}

// fetchAllWaitingForSeed fetches url on every peer of c at once and checks
// that they waited for the seed: the origin answered the seed alone (one
// GET, size bytes), the peers took everything from the swarm, and each
// peer's log says that a wait longer than swarm_timeout kept it there.
func fetchAllWaitingForSeed(t *testing.T, o *origin, c *cluster, url, sum string, size int) {
	t.Helper()
	gets, served := o.gets.Load(), o.served.Load()
	fetchAll(t, c.daemons, url, sum)
	if n := o.gets.Load() - gets; n != 1 {
		t.Errorf("the origin answered %d GETs, want 1 (the seed's): peers left the swarm for it", n)
	}
	if n := o.served.Load() - served; n != int64(size) {
		t.Errorf("the origin served %d bytes, want %d", n, size)
	}
	if b, want := sumMetric(t, c.daemons, "damselfly_daemon_download_bytes_total", `source="peer"`), len(c.daemons)*size; b != float64(want) {
		t.Errorf("the peers took %.0f bytes from the swarm, want %d", b, want)
	}
	for _, d := range c.daemons {
		if b, err := os.ReadFile(d.log); err != nil {
			t.Error(err)
		} else if !strings.Contains(string(b), "the swarm went on after a wait longer than swarm_timeout") {
			t.Errorf("%s's log does not say that it waited longer than swarm_timeout for its source", d.name)
		}
	}
}

// TestSlowFirstPieceKeepsPeersInSwarm: the seed's origin takes longer than
// the peers' swarm timeout for the first piece, so no piece shows the
// source's pace yet. The peers hear from their parents that the source is
// still receiving (PieceState.source_bytes, passed down from peer to peer)
// and wait for it instead of all going to the slow origin as well.
func TestSlowFirstPieceKeepsPeersInSwarm(t *testing.T) {
	o := newOrigin(t)
	c := startCluster(t, 3, "--swarm-timeout", "3s")
	const size = 512 << 10 // two pieces of 256 KiB
	url, sum := o.add("slow-first-piece", size, 137)
	// About 5.3 s a piece: the first comes well after the 3 s timeout
	// (and before the 30 s cap of the wait).
	o.rateBps.Store(48 << 10)
	t.Cleanup(func() { o.rateBps.Store(0) })
	fetchAllWaitingForSeed(t, o, c, url, sum, size)
}

// TestSchedulerKilledMidDownload kills the scheduler while peers trade
// pieces: every download still completes (the rest from the origin), and a
// download started with the scheduler dead goes straight to the origin.
func TestSchedulerKilledMidDownload(t *testing.T) {
	o := newOrigin(t)
	c := startCluster(t, 3, "--upload-rate-limit", "4M")
	const size = 24 << 20
	url, sum := o.add("sched-kill", size, 202)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	runs := make([]*fetchRun, len(c.daemons))
	for i, d := range c.daemons {
		runs[i] = startFetch(ctx, t, d, url)
	}
	waitFor(t, 60*time.Second, "pieces moving between peers", func() bool {
		return sumMetric(t, c.daemons, "damselfly_daemon_download_bytes_total", `source="peer"`) >= 1<<20
	})
	running := 0
	for _, r := range runs {
		if !r.finished() {
			running++
		}
	}
	if running == 0 {
		t.Fatal("every download finished before the kill: the test proves nothing; slow it down")
	}
	c.sched.kill()
	t.Logf("killed the scheduler with %d downloads in progress", running)
	for _, r := range runs {
		r.check(t, sum)
	}
	if lost := sumMetric(t, c.daemons, "damselfly_daemon_back_to_source_total", `reason="scheduler_lost"`); lost < 1 {
		t.Errorf("no daemon fell back to the origin because the scheduler was lost (back_to_source{reason=scheduler_lost} = %v)", lost)
	}

	// With the scheduler gone, a new download goes straight to the origin.
	url2, sum2 := o.add("sched-dead", 3<<20+17, 203)
	d := c.daemons[0]
	before := metric(t, d.metrics, "damselfly_daemon_back_to_source_total", `reason="scheduler_unreachable"`)
	r := startFetch(ctx, t, d, url2)
	r.check(t, sum2)
	if after := metric(t, d.metrics, "damselfly_daemon_back_to_source_total", `reason="scheduler_unreachable"`); after <= before {
		t.Errorf("download with the scheduler dead was not counted as back_to_source{reason=scheduler_unreachable} (%v → %v)", before, after)
	}
	if strings.Contains(r.msg, "downloading directly") {
		t.Errorf("dfget bypassed the daemon: %s", r.msg)
	}
}

// TestLyingSourceNewsIsBounded: a rogue peer registers first for a task
// (the scheduler sends it to the origin, so it is the source every
// newcomer's pipeline starts at), never reports a piece, and tells its
// children four times a second that it keeps receiving the content. The
// news stretches a child's wait, but no further than its cap (ten times
// swarm_timeout after its last progress): the child then takes the content
// from the origin.
func TestLyingSourceNewsIsBounded(t *testing.T) {
	o := newOrigin(t)
	sched := startScheduler(t)
	const size = 1 << 20
	url, sum := o.add("lying-source", size, 141)
	liar := startLiar(t, sched.addr, url, "-mode", "source-news")
	const timeout = 2 * time.Second
	victim := startDaemon(t, daemonOpts{name: "victim", scheduler: sched.addr, extra: []string{"--swarm-timeout", timeout.String()}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	startFetch(ctx, t, victim, url).check(t, sum)
	st := liar.stats(t)
	t.Logf("liar: %d piece streams, %d notes of news, the last stream open %d ms", st.SyncRequests, st.NewsSent, st.LastStreamMs)
	if st.SyncRequests < 1 || st.NewsSent < 1 {
		t.Fatal("the victim never heard the liar's news: the test proves nothing")
	}
	if n := metric(t, victim.metrics, "damselfly_daemon_back_to_source_total", `reason="swarm_stalled"`); n != 1 {
		t.Errorf("back_to_source{reason=swarm_stalled} = %v, want 1", n)
	}
	waitFor(t, 10*time.Second, "the victim to close the liar's piece stream", func() bool {
		return liar.stats(t).StreamsClosed >= liar.stats(t).SyncRequests
	})
	// The news was heard (without it the victim leaves after 2 s) and
	// bounded (the cap is 20 s; margins for a busy machine).
	if ms := liar.stats(t).LastStreamMs; ms < (5 * timeout / 2).Milliseconds() {
		t.Errorf("the victim left the liar after %d ms: the news did not stretch its wait", ms)
	} else if ms > (maxWait(timeout) + 6*time.Second).Milliseconds() {
		t.Errorf("the victim stayed with the liar %d ms: longer than the cap of %v", ms, maxWait(timeout))
	}
}

// maxWait is the daemon's longest swarm wait for a swarm timeout of d.
func maxWait(d time.Duration) time.Duration { return 10 * d }

// TestCorruptPeer registers a liar that claims every piece and serves
// random bytes. Honest daemons must detect it, avoid it, and still finish
// with exact content; the scheduler must stop handing it out.
func TestCorruptPeer(t *testing.T) {
	o := newOrigin(t)
	const maxParents = 4
	sched := startScheduler(t, "--max-parents", strconv.Itoa(maxParents))
	// The first daemon fetches from the origin and becomes an honest
	// complete parent; its uplink is slow so that the others keep asking
	// their parents for pieces long enough to meet the liar.
	first := startDaemon(t, daemonOpts{name: "first", scheduler: sched.addr, extra: []string{"--upload-rate-limit", "8M"}})
	const size = 8 << 20 // 32 pieces of 256 KiB
	url, sum := o.add("liar", size, 303)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	startFetch(ctx, t, first, url).check(t, sum)
	if t.Failed() {
		t.FailNow()
	}

	liar := startLiar(t, sched.addr, url)
	// The scheduler has taken the liar's PeerDone: two complete parents.
	waitFor(t, 10*time.Second, "the scheduler to count the liar as a complete peer", func() bool {
		return metric(t, sched.metrics, "damselfly_scheduler_peers", `state="succeeded"`) >= 2
	})

	const perParent = 4 // piece requests a daemon keeps outstanding at one parent
	var honest []*daemonProc
	for i := range maxParents - 1 { // with the first daemon: maxParents honest parents for the late one
		honest = append(honest, startDaemon(t, daemonOpts{name: fmt.Sprintf("honest%d", i), scheduler: sched.addr,
			extra: []string{"--per-parent-requests", strconv.Itoa(perParent)}}))
	}
	fetchAll(t, honest, url, sum)
	served := liar.stats(t).PieceRequests
	t.Logf("liar served %d piece requests and %d piece-set syncs", served, liar.stats(t).SyncRequests)
	if served < 1 {
		t.Fatal("the liar was never asked for a piece: the test proves nothing")
	}
	if limit := int64(len(honest) * perParent); served > limit {
		t.Errorf("liar served %d piece requests to %d daemons; want ≤ %d (each drops it at the first bad piece)", served, len(honest), limit)
	}
	if n := sumMetric(t, honest, "damselfly_daemon_piece_failures_total", `reason="corrupt"`); n < 1 {
		t.Errorf("no daemon counted a corrupt piece (damselfly_daemon_piece_failures_total{reason=corrupt} = %v)", n)
	}
	waitFor(t, 10*time.Second, "the scheduler to count corrupt piece reports", func() bool {
		return metric(t, sched.metrics, "damselfly_scheduler_piece_results_total", `result="corrupt"`) >= 1
	})

	// A daemon joining now has maxParents honest complete parents to choose
	// from: the scheduler must not hand it the liar at all.
	late := startDaemon(t, daemonOpts{name: "late", scheduler: sched.addr})
	fetchAll(t, []*daemonProc{late}, url, sum)
	if now := liar.stats(t).PieceRequests; now != served {
		t.Errorf("liar served %d more piece requests after it was reported corrupt", now-served)
	}
	if n := metric(t, late.metrics, "damselfly_daemon_piece_failures_total", `reason="corrupt"`); n != 0 {
		t.Errorf("late daemon still got %v corrupt pieces", n)
	}
	if peer := metric(t, late.metrics, "damselfly_daemon_download_bytes_total", `source="peer"`); peer < size {
		t.Errorf("late daemon took %v bytes from peers; want all %d", peer, size)
	}
}

// TestOriginFailures checks dfget through a daemon against an origin that
// fails in every documented way, and dfget's input checks.
func TestOriginFailures(t *testing.T) {
	o := newOrigin(t)
	sched := startScheduler(t)
	d := startDaemon(t, daemonOpts{name: "peer", scheduler: sched.addr})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	get := func(t *testing.T, url string, extra ...string) (int, string, string) {
		dir := t.TempDir()
		out := filepath.Join(dir, "out")
		code, msg := dfget(ctx, append([]string{url, "-O", out, "--sock", d.sock, "--no-progress"}, extra...)...)
		return code, msg, dir
	}
	setMode := func(t *testing.T, mode string, n int64) {
		o.flakyN.Store(n)
		o.mode.Store(mode)
		t.Cleanup(func() { o.mode.Store(""); o.flakyN.Store(0) })
	}

	t.Run("404", func(t *testing.T) {
		url := o.URL + "/no-such-file"
		code, msg, dir := get(t, url)
		t.Logf("dfget: %s", msg)
		if code != 3 {
			t.Errorf("exit %d, want 3 (not found): %s", code, msg)
		}
		if !strings.Contains(msg, url) || !strings.Contains(msg, "404") {
			t.Errorf("message does not name the URL and the 404: %q", msg)
		}
		emptyDir(t, dir)
	})
	t.Run("500", func(t *testing.T) {
		url, _ := o.add("always-500", 100<<10, 401)
		setMode(t, "500", 0)
		code, msg, dir := get(t, url)
		t.Logf("dfget: %s", msg)
		if code != 1 {
			t.Errorf("exit %d, want 1: %s", code, msg)
		}
		if !strings.Contains(msg, "500") {
			t.Errorf("message does not give the status: %q", msg)
		}
		emptyDir(t, dir)
	})
	t.Run("flaky", func(t *testing.T) {
		url, sum := o.add("flaky", 1<<20+3, 402)
		setMode(t, "flaky", 2)
		gets := o.gets.Load()
		code, msg, dir := get(t, url)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, msg)
		}
		if got := fileSHA(t, filepath.Join(dir, "out")); got != sum {
			t.Errorf("sha256 %s, want %s", got, sum)
		}
		if n := o.gets.Load() - gets; n < 3 {
			t.Errorf("origin saw %d GETs; want ≥ 3 (two 503s, then the content)", n)
		}
	})
	t.Run("slow", func(t *testing.T) {
		url, sum := o.add("slow", 4<<20, 403)
		o.rateBps.Store(2 << 20)
		t.Cleanup(func() { o.rateBps.Store(0) })
		code, msg, dir := get(t, url)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, msg)
		}
		if got := fileSHA(t, filepath.Join(dir, "out")); got != sum {
			t.Errorf("sha256 %s, want %s", got, sum)
		}
	})
	t.Run("reset", func(t *testing.T) {
		const size = 3<<20 + 5
		url, sum := o.add("reset", size, 404)
		setMode(t, "reset", 1)
		gets, served := o.gets.Load(), o.served.Load()
		code, msg, dir := get(t, url)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, msg)
		}
		if got := fileSHA(t, filepath.Join(dir, "out")); got != sum {
			t.Errorf("sha256 %s, want %s", got, sum)
		}
		if n := o.gets.Load() - gets; n < 2 {
			t.Errorf("origin saw %d GETs; want ≥ 2 (the reset one and the resumed one)", n)
		}
		// Resuming with a range request: about one copy in all, not 1⅓.
		if n := o.served.Load() - served; n > size*105/100 {
			t.Errorf("origin served %d bytes for a %d-byte file cut at a third: not resumed from where it broke", n, size)
		}
	})
	t.Run("invalid-url", func(t *testing.T) {
		code, msg, dir := get(t, "not-a-url")
		if code != 2 {
			t.Errorf("exit %d, want 2: %s", code, msg)
		}
		emptyDir(t, dir)
	})
	t.Run("bad-digest", func(t *testing.T) {
		url, _ := o.add("bad-digest", 1000, 405)
		code, msg, dir := get(t, url, "--digest", "sha256:1234")
		if code != 2 {
			t.Errorf("exit %d, want 2: %s", code, msg)
		}
		emptyDir(t, dir)
	})
	t.Run("wrong-digest", func(t *testing.T) {
		url, _ := o.add("wrong-digest", 300<<10, 406)
		wrong := "sha256:" + strings.Repeat("ab", 32)
		code, msg, dir := get(t, url, "--digest", wrong)
		t.Logf("dfget: %s", msg)
		if code != 4 {
			t.Errorf("exit %d, want 4: %s", code, msg)
		}
		emptyDir(t, dir)
	})
}

// TestDaemonRestartMidDownload SIGKILLs a daemon fetching from the origin
// and restarts it on the same cache: the next dfget must finish the content
// without fetching the verified pieces again.
//
// The transfer is slowed at the origin (a per-connection throttle) rather
// than with the daemon's --download-rate-limit: a rate-limited reader lets
// the kernel's socket buffers fill with ~5 MB the origin counts as served
// but the daemon never read, which would blur the accounting below.
func TestDaemonRestartMidDownload(t *testing.T) {
	o := newOrigin(t)
	sched := startScheduler(t)
	d := startDaemon(t, daemonOpts{name: "peer", scheduler: sched.addr})
	const size = 100 << 20
	const pieceSize = 512 << 10 // core.PieceSize for 100 MiB: 200 pieces
	url, sum := o.add("restart", size, 505)
	o.rateBps.Store(25 << 20)
	id := core.TaskID(url, core.TaskOptions{})

	// The first download goes through the client package, not dfget, so
	// that nothing falls back to a direct download when the daemon dies.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl, err := client.Dial(ctx, d.sock)
	if err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	out1 := filepath.Join(t.TempDir(), "out")
	go func() {
		_, err := cl.Download(ctx, &daemonv1.DownloadRequest{Url: url, Output: out1, Uid: -1, Gid: -1}, nil)
		first <- err
	}()
	start := time.Now()
	waitFor(t, 30*time.Second, "pieces stored in the cache", func() bool {
		st, err := cl.StatTask(ctx, id)
		return err == nil && st.GetPiecesDone() >= 4
	})
	time.Sleep(1500*time.Millisecond - time.Since(start))
	d.kill()
	killedAfter := time.Since(start)
	if err := <-first; err == nil {
		t.Fatal("first download finished before the kill: the test proves nothing; slow it down")
	}
	cl.Close()
	// The origin notices the broken connection after its next write.
	var served1 int64
	waitFor(t, 10*time.Second, "the origin to stop sending", func() bool {
		n := o.served.Load()
		time.Sleep(200 * time.Millisecond)
		served1 = o.served.Load()
		return n == served1
	})

	d.restart(t)
	cl, err = client.Dial(ctx, d.sock)
	if err != nil {
		t.Fatal(err)
	}
	st, err := cl.StatTask(ctx, id)
	cl.Close()
	if err != nil {
		t.Fatalf("the restarted daemon does not know the task: %v", err)
	}
	if st.GetPiecesDone() == 0 || st.GetComplete() {
		t.Fatalf("restarted daemon holds %d pieces (complete %v); want some, not all", st.GetPiecesDone(), st.GetComplete())
	}
	kept := int64(st.GetPiecesDone()) * pieceSize
	t.Logf("killed after %s: origin had served %d bytes; %d of %d pieces (%d bytes) kept across the restart",
		killedAfter.Round(time.Millisecond), served1, st.GetPiecesDone(), st.GetPieceCount(), kept)
	// What the origin sent and the cache did not keep: at most the piece
	// being read from the origin at the kill and the one being stored.
	if lost := served1 - kept; lost > 2*pieceSize {
		t.Errorf("the origin served %d bytes before the kill but only %d survived the restart: %d bytes of verified pieces lost", served1, kept, lost)
	}

	r := startFetch(ctx, t, d, url)
	r.check(t, sum)
	served2 := o.served.Load() - served1
	total := served1 + served2
	t.Logf("second run: origin served %d bytes; total %d bytes (%.3f×F)", served2, total, float64(total)/size)
	if want := size - kept; served2 > want {
		t.Errorf("second run took %d bytes from the origin; want ≤ %d (only the missing pieces)", served2, want)
	}
	if served2 >= size {
		t.Errorf("second run took %d bytes from the origin: verified pieces were fetched again", served2)
	}
	if limit := int64(size) * 105 / 100; total > limit {
		t.Errorf("origin served %d bytes in all for a %d-byte file; want ≤ %d", total, size, limit)
	}
}

// TestDisableBackSourceNoScheduler: with no scheduler reachable and
// --disable-back-source, dfget must fail with exit code 6 (daemon
// unavailable and back-source disabled, docs/dfget.md) without touching the
// origin or leaving a file; without the flag the same daemon goes to the
// origin.
func TestDisableBackSourceNoScheduler(t *testing.T) {
	o := newOrigin(t)
	closed := "127.0.0.1:" + strconv.Itoa(freePort(t))
	d := startDaemon(t, daemonOpts{name: "peer", scheduler: closed})
	url, sum := o.add("no-back-source", 1<<20, 606)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	dir := t.TempDir()
	gets := o.gets.Load()
	code, msg := dfget(ctx, url, "-O", filepath.Join(dir, "out"), "--sock", d.sock, "--no-progress", "--disable-back-source")
	if code != 6 {
		t.Errorf("exit %d, want 6: %s", code, msg)
	}
	emptyDir(t, dir)
	if n := o.gets.Load() - gets; n != 0 {
		t.Errorf("origin got %d requests despite --disable-back-source", n)
	}

	startFetch(ctx, t, d, url).check(t, sum)
}
