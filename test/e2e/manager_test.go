package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/client"
	"github.com/damselfly-io/damselfly/core"
)

// managerProc is a manager process with its REST client.
type managerProc struct {
	*proc
	api, grpc string
	args      []string
	token     string
	dataDir   string
}

const adminPass = "e2e-admin-pass"

func startManager(t testing.TB, dataDir string, extra ...string) *managerProc {
	t.Helper()
	api, g := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	args := append([]string{"manager", "--listen", api, "--grpc-listen", g, "--data-dir", dataDir, "--admin-password", adminPass,
		"--keepalive-interval", "200ms", "--keepalive-timeout", "3s", "--scheduler-refresh-interval", "500ms",
		"--job-poll-interval", "100ms", "--job-lease", "2s", "--ca-dir", caDir}, extra...)
	m := &managerProc{api: "http://" + api, grpc: g, args: args, dataDir: dataDir}
	m.proc = start(t, "manager", args...)
	waitHTTP(t, m.api+"/healthy", m.proc)
	m.token = m.signIn(t)
	return m
}

func (m *managerProc) restart(t testing.TB) {
	t.Helper()
	m.proc = start(t, "manager-restarted", m.args...)
	waitHTTP(t, m.api+"/healthy", m.proc)
}

func (m *managerProc) signIn(t testing.TB) string {
	var out struct{ Token string }
	if code := m.call(t, "POST", "/api/v1/users/signin", map[string]string{"name": "admin", "password": adminPass}, &out); code != 200 {
		t.Fatalf("sign in: %d", code)
	}
	return out.Token
}

func (m *managerProc) call(t testing.TB, method, path string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, m.api+path, rd)
	if m.token != "" {
		req.Header.Set("Authorization", "Bearer "+m.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode
}

type jobView struct {
	ID       int64           `json:"id"`
	State    string          `json:"state"`
	Error    string          `json:"error"`
	Attempts int             `json:"attempts"`
	Args     json.RawMessage `json:"args"`
	Result   *struct {
		Manifest string `json:"manifest_digest"`
		Tasks    []struct {
			TaskID string `json:"task_id"`
			URL    string `json:"url"`
			Digest string `json:"digest"`
			Size   int64  `json:"size"`
			State  string `json:"state"`
			Peers  []struct {
				Hostname      string `json:"hostname"`
				Addr          string `json:"addr"`
				Seed          bool   `json:"seed"`
				State         string `json:"state"`
				ContentLength int64  `json:"content_length"`
				Error         string `json:"error"`
			} `json:"peers"`
		} `json:"tasks"`
	} `json:"result"`
}

func (m *managerProc) preheat(t testing.TB, args map[string]any) int64 {
	t.Helper()
	var j jobView
	if code := m.call(t, "POST", "/api/v1/jobs", map[string]any{"type": "preheat", "args": args}, &j); code != http.StatusCreated {
		t.Fatalf("create job: %d", code)
	}
	return j.ID
}

func (m *managerProc) job(t testing.TB, id int64) jobView {
	t.Helper()
	var j jobView
	if code := m.call(t, "GET", fmt.Sprintf("/api/v1/jobs/%d", id), nil, &j); code != 200 {
		t.Fatalf("get job %d: %d", id, code)
	}
	return j
}

func (m *managerProc) waitJob(t testing.TB, id int64) jobView {
	t.Helper()
	var j jobView
	waitFor(t, 90*time.Second, fmt.Sprintf("job %d to end", id), func() bool {
		j = m.job(t, id)
		return j.State == "SUCCESS" || j.State == "FAILURE"
	})
	return j
}

// count returns how many objects a list endpoint holds.
func (m *managerProc) count(t testing.TB, path string) int {
	var items []json.RawMessage
	if code := m.call(t, "GET", path, nil, &items); code != 200 {
		t.Fatalf("GET %s: %d", path, code)
	}
	return len(items)
}

// managedCluster is a manager, a scheduler registered with it, a seed peer
// and n daemons that all find the scheduler through the manager.
type managedCluster struct {
	mgr     *managerProc
	sched   *schedulerProc
	seed    *daemonProc
	daemons []*daemonProc
}

// A seedExtra holding --insecure runs the manager and the scheduler with
// --insecure too (the daemons' daemonExtra must say so itself).
func startManaged(t testing.TB, n int, daemonExtra func(i int) []string, seedExtra ...string) *managedCluster {
	t.Helper()
	var plain []string
	if slices.Contains(seedExtra, "--insecure") {
		plain = []string{"--insecure"}
	}
	c := &managedCluster{mgr: startManager(t, t.TempDir(), plain...)}
	c.sched = startScheduler(t, append([]string{"--manager", c.mgr.grpc, "--advertise-ip", "127.0.0.1"}, plain...)...)
	waitFor(t, 20*time.Second, "scheduler registered", func() bool { return c.mgr.count(t, "/api/v1/schedulers?state=active") == 1 })
	c.seed = startDaemon(t, daemonOpts{name: "seed", seed: true, extra: append([]string{"--manager", c.mgr.grpc}, seedExtra...)})
	for i := range n {
		extra := []string{"--manager", c.mgr.grpc}
		if daemonExtra != nil {
			extra = append(extra, daemonExtra(i)...)
		}
		c.daemons = append(c.daemons, startDaemon(t, daemonOpts{name: fmt.Sprintf("d%d", i), extra: extra}))
	}
	waitFor(t, 20*time.Second, "seed peer registered", func() bool { return c.mgr.count(t, "/api/v1/seed-peers?state=active") == 1 })
	waitFor(t, 20*time.Second, "daemons known", func() bool { return c.mgr.count(t, "/api/v1/peers") == n+1 })
	return c
}

// statTask asks a daemon's local API what it holds of a task.
func statTask(t testing.TB, d *daemonProc, id string) (complete bool, length int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.StatTask(ctx, id)
	if err != nil {
		return false, 0
	}
	return st.GetComplete(), st.GetContentLength()
}

func contentID(t testing.TB, digest string) string {
	id, err := core.ContentTaskID(digest)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// checkJob asserts a successful preheat of want's blobs on the named peers.
func checkJob(t testing.TB, j jobView, want []ociDesc, peers int) {
	t.Helper()
	if j.State != "SUCCESS" || j.Result == nil {
		t.Fatalf("job %d: %s (%s)", j.ID, j.State, j.Error)
	}
	if len(j.Result.Tasks) != len(want) {
		t.Fatalf("job %d: %d tasks, want %d (config + layers)", j.ID, len(j.Result.Tasks), len(want))
	}
	for i, d := range want {
		tr := j.Result.Tasks[i]
		if tr.Digest != d.Digest || tr.Size != d.Size || tr.TaskID != contentID(t, d.Digest) || tr.State != "SUCCESS" || !strings.HasSuffix(tr.URL, "/blobs/"+d.Digest) {
			t.Fatalf("task %d: %+v, want digest %s size %d", i, tr, d.Digest, d.Size)
		}
		if len(tr.Peers) != peers {
			t.Fatalf("task %s: %d peers, want %d", tr.Digest, len(tr.Peers), peers)
		}
		for _, p := range tr.Peers {
			if p.State != "SUCCESS" || p.ContentLength != d.Size {
				t.Fatalf("task %s on %s: %s %q (%d bytes)", tr.Digest, p.Addr, p.State, p.Error, p.ContentLength)
			}
		}
	}
}

func sumSizes(ds []ociDesc) int64 {
	var n int64
	for _, d := range ds {
		n += d.Size
	}
	return n
}

// TestManagerPreheatImage preheats a multi-platform image from a real
// registry: to one seed peer (each blob leaves the registry once), then to
// all peers (they fetch from the seed: the registry serves nothing more),
// then another platform; unknown images and platforms fail with a reason.
func TestManagerPreheatImage(t *testing.T) {
	reg := startRegistry(t, "", "")
	dir := t.TempDir()
	img := makeImage(t, dir, "v1", []int{300 << 10, 1 << 20, 2<<20 + 12345}, 1)
	reg.push(t, dir, "library/app", "v1")
	mirrorPort := freePort(t)
	c := startManaged(t, 2, func(i int) []string {
		if i > 0 {
			return nil
		}
		// d0's registry mirror, for the pull at the end
		return []string{"--proxy-port", strconv.Itoa(mirrorPort), "--registry-mirror", "http://" + reg.addr}
	})
	amd := img.blobs["linux/amd64"]

	id := c.mgr.preheat(t, map[string]any{"type": "image", "url": "http://" + reg.addr + "/v2/library/app/manifests/v1", "scope": "single_seed_peer"})
	j := c.mgr.waitJob(t, id)
	checkJob(t, j, amd, 1)
	if !j.Result.Tasks[0].Peers[0].Seed || j.Result.Manifest == "" {
		t.Fatalf("single seed peer job: %+v", j.Result)
	}
	for _, d := range amd {
		if ok, l := statTask(t, c.seed, contentID(t, d.Digest)); !ok || l != d.Size {
			t.Fatalf("seed holds %s: complete=%v length=%d, want %d", d.Digest, ok, l, d.Size)
		}
		for _, dm := range c.daemons {
			if ok, _ := statTask(t, dm, contentID(t, d.Digest)); ok {
				t.Fatalf("daemon %s holds %s after a single_seed_peer preheat", dm.name, d.Digest)
			}
		}
	}
	if got := reg.blobGets.Load(); got != int64(len(amd)) {
		t.Fatalf("registry served %d blob requests, want %d (one per blob)", got, len(amd))
	}
	if got := reg.blobOut.Load(); got != sumSizes(amd) {
		t.Fatalf("registry served %d blob bytes, want %d", got, sumSizes(amd))
	}

	// all peers, by plain reference: the daemons fetch from the seed
	id = c.mgr.preheat(t, map[string]any{"type": "image", "url": reg.addr + "/library/app:v1", "scope": "all_peers"})
	j = c.mgr.waitJob(t, id)
	checkJob(t, j, amd, 3)
	for _, dm := range c.daemons {
		for _, d := range amd {
			if ok, l := statTask(t, dm, contentID(t, d.Digest)); !ok || l != d.Size {
				t.Fatalf("daemon %s holds %s: complete=%v length=%d", dm.name, d.Digest, ok, l)
			}
		}
	}
	if got := reg.blobOut.Load(); got != sumSizes(amd) {
		t.Fatalf("registry served %d blob bytes after the all_peers preheat, want still %d", got, sumSizes(amd))
	}

	// A pull through d0's registry mirror (skopeo, as CRI-O/Podman would):
	// every preheated blob is a cache hit, the registry serves no blob bytes.
	conf := filepath.Join(t.TempDir(), "registries.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("[[registry]]\nprefix = %q\nlocation = %q\ninsecure = true\n\n[[registry.mirror]]\nlocation = \"127.0.0.1:%d\"\ninsecure = true\n",
		reg.addr, reg.addr, mirrorPort)), 0o644); err != nil {
		t.Fatal(err)
	}
	gets := reg.blobGets.Load()
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "skopeo", "copy", "--registries-conf", conf, "--insecure-policy", "--override-os", "linux", "--override-arch", "amd64",
		"docker://"+reg.addr+"/library/app:v1", "dir:"+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("skopeo pull through the mirror: %v\n%s", err, b)
	}
	for _, d := range amd {
		if fileSHA(t, filepath.Join(out, strings.TrimPrefix(d.Digest, "sha256:"))) != strings.TrimPrefix(d.Digest, "sha256:") {
			t.Fatalf("pulled blob %s has the wrong content", d.Digest)
		}
	}
	if p2p := metric(t, c.daemons[0].metrics, "damselfly_proxy_requests_total", `route="p2p"`); p2p < float64(len(amd)) {
		t.Fatalf("the mirror served %v blobs over its P2P route, want %d: skopeo did not pull through it", p2p, len(amd))
	}
	t.Logf("pull through the mirror: %d blobs over the P2P route; registry blob GETs %d in all (%d bytes = the image's %d blobs once, all by the seed)",
		int(metric(t, c.daemons[0].metrics, "damselfly_proxy_requests_total", `route="p2p"`)), reg.blobGets.Load(), reg.blobOut.Load(), len(amd))
	if got, bytes := reg.blobGets.Load(), reg.blobOut.Load(); got != gets || bytes != sumSizes(amd) {
		t.Fatalf("the pull through the mirror made the registry serve blobs: %d more GETs, %d bytes in all (want %d)", got-gets, bytes, sumSizes(amd))
	}

	// another platform of the index
	arm := img.blobs["linux/arm64"]
	id = c.mgr.preheat(t, map[string]any{"type": "image", "url": "http://" + reg.addr + "/v2/library/app/manifests/v1", "platform": "linux/arm64", "scope": "all_seed_peers"})
	checkJob(t, c.mgr.waitJob(t, id), arm, 1)

	for _, tc := range []struct {
		args map[string]any
		want string
	}{
		{map[string]any{"type": "image", "url": "http://" + reg.addr + "/v2/library/app/manifests/v9"}, "image not found"},
		{map[string]any{"type": "image", "url": "http://" + reg.addr + "/v2/library/nothing/manifests/v1"}, "image not found"},
		{map[string]any{"type": "image", "url": "http://" + reg.addr + "/v2/library/app/manifests/v1", "platform": "linux/s390x"}, "no manifest for the platform"},
		{map[string]any{"type": "file", "url": "http://" + reg.addr + "/v2/library/app/blobs/sha256:" + strings.Repeat("0", 64)}, "404"},
	} {
		j := c.mgr.waitJob(t, c.mgr.preheat(t, tc.args))
		if j.State != "FAILURE" || !strings.Contains(j.Error, tc.want) {
			t.Errorf("%v: %s %q, want FAILURE mentioning %q", tc.args, j.State, j.Error, tc.want)
		}
	}
}

// TestManagerPreheatCredentials preheats from a registry behind basic auth:
// wrong credentials fail with the reason; right ones reach the seed peer,
// which fetches with them but keeps them nowhere; the API shows them redacted.
func TestManagerPreheatCredentials(t *testing.T) {
	const user, pass = "puller", "s3cret-pull-pass"
	reg := startRegistry(t, user, pass)
	dir := t.TempDir()
	img := makeImage(t, dir, "v2", []int{200 << 10, 600 << 10}, 2)
	reg.push(t, dir, "team/private", "v2")
	c := startManaged(t, 0, nil)
	u := "http://" + reg.addr + "/v2/team/private/manifests/v2"

	j := c.mgr.waitJob(t, c.mgr.preheat(t, map[string]any{"type": "image", "url": u}))
	if j.State != "FAILURE" || !strings.Contains(j.Error, "credentials") {
		t.Fatalf("no credentials: %s %q", j.State, j.Error)
	}
	j = c.mgr.waitJob(t, c.mgr.preheat(t, map[string]any{"type": "image", "url": u, "username": user, "password": "wrong"}))
	if j.State != "FAILURE" || !strings.Contains(j.Error, "refused the credentials") {
		t.Fatalf("wrong password: %s %q", j.State, j.Error)
	}
	j = c.mgr.waitJob(t, c.mgr.preheat(t, map[string]any{"type": "image", "url": u, "username": user, "password": pass}))
	checkJob(t, j, img.blobs["linux/amd64"], 1)
	if strings.Contains(string(j.Args), pass) || !strings.Contains(string(j.Args), "[redacted]") {
		t.Fatalf("job args show the password: %s", j.Args)
	}
	basic := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	err := filepath.Walk(c.seed.dataDir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || strings.HasSuffix(p, ".log") || fi.Size() > 1<<20 {
			return err
		}
		b, err := os.ReadFile(p)
		if err == nil && (bytes.Contains(b, []byte(pass)) || bytes.Contains(b, []byte(basic))) {
			t.Errorf("seed file %s holds the registry credentials", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*proc{c.mgr.proc, c.seed.proc, c.sched.proc} {
		if b, _ := os.ReadFile(p.log); bytes.Contains(b, []byte(pass)) || bytes.Contains(b, []byte(basic)) {
			t.Errorf("%s logged the registry credentials", p.name)
		}
	}
	// The manager's database (and its -wal) holds no credential bytes after
	// the jobs (FAILURE and SUCCESS) ended: they were sealed with a key kept
	// apart and the sealed copy was dropped.
	ents, err := os.ReadDir(c.mgr.dataDir)
	if err != nil {
		t.Fatal(err)
	}
	scanned := 0
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "manager.db") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(c.mgr.dataDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		scanned++
		for _, needle := range []string{pass, basic, "wrong\"", user} {
			if bytes.Contains(b, []byte(needle)) {
				t.Errorf("manager file %s holds %q", e.Name(), needle)
			}
		}
	}
	if scanned == 0 {
		t.Fatalf("no manager.db under %s", c.mgr.dataDir)
	}
}

// TestManagerRestartMidPreheat kills the manager while a preheat runs (the
// seed peer is rate-limited) and starts it again on the same database: the
// job is taken over when its lease expires and finishes, and the seed's
// fetch was not started over (the registry served the layer once).
func TestManagerRestartMidPreheat(t *testing.T) {
	reg := startRegistry(t, "", "")
	dir := t.TempDir()
	img := makeImage(t, dir, "big", []int{6 << 20}, 3)
	reg.push(t, dir, "library/big", "big")
	c := startManaged(t, 0, nil, "--download-rate-limit", "1M")
	amd := img.blobs["linux/amd64"]
	layer := amd[1]

	id := c.mgr.preheat(t, map[string]any{"type": "image", "url": "http://" + reg.addr + "/v2/library/big/manifests/big"})
	waitFor(t, 30*time.Second, "the layer fetch running", func() bool {
		j := c.mgr.job(t, id)
		if j.State != "RUNNING" || j.Result == nil || len(j.Result.Tasks) != 2 {
			return false
		}
		return j.Result.Tasks[1].Peers[0].State == "RUNNING"
	})
	if ok, _ := statTask(t, c.seed, contentID(t, layer.Digest)); ok {
		t.Fatal("the layer finished before the manager was killed; slow the seed down further")
	}
	c.mgr.kill()
	c.mgr.restart(t)
	j := c.mgr.waitJob(t, id)
	checkJob(t, j, amd, 1)
	if j.Attempts < 2 {
		t.Fatalf("job attempts %d: it was not taken over after the restart", j.Attempts)
	}
	if ok, l := statTask(t, c.seed, contentID(t, layer.Digest)); !ok || l != layer.Size {
		t.Fatalf("seed holds the layer: %v %d", ok, l)
	}
	if got := reg.blobGets.Load(); got != int64(len(amd)) {
		t.Fatalf("registry served %d blob requests, want %d: the fetch restarted", got, len(amd))
	}
	var jobs []jobView
	if code := c.mgr.call(t, "GET", "/api/v1/jobs?state=SUCCESS", nil, &jobs); code != 200 || len(jobs) != 1 {
		t.Fatalf("jobs after restart: %d %d", code, len(jobs))
	}
}

// TestManagerFilePreheatAndManagerDown preheats a plain file to all peers
// (the origin serves it once), then stops the manager and restarts a
// daemon: it starts with the scheduler list it saved on disk and downloads
// through that scheduler.
func TestManagerFilePreheatAndManagerDown(t *testing.T) {
	o := newOrigin(t)
	url, sum := o.add("model.bin", 3<<20+7, 11)
	c := startManaged(t, 2, nil)

	j := c.mgr.waitJob(t, c.mgr.preheat(t, map[string]any{"type": "file", "url": url, "scope": "all_peers"}))
	if j.State != "SUCCESS" || len(j.Result.Tasks) != 1 || len(j.Result.Tasks[0].Peers) != 3 {
		t.Fatalf("file preheat: %s %q %+v", j.State, j.Error, j.Result)
	}
	id := core.TaskID(url, core.TaskOptions{})
	if j.Result.Tasks[0].TaskID != id {
		t.Fatalf("task id %s, want dfget's %s", j.Result.Tasks[0].TaskID, id)
	}
	for _, d := range append([]*daemonProc{c.seed}, c.daemons...) {
		if ok, l := statTask(t, d, id); !ok || l != 3<<20+7 {
			t.Fatalf("%s holds the file: %v %d", d.name, ok, l)
		}
	}
	if got := o.served.Load(); got != 3<<20+7 {
		t.Fatalf("origin served %d bytes, want the file once (%d)", got, 3<<20+7)
	}

	d := c.daemons[0]
	if _, err := os.Stat(filepath.Join(d.dataDir, "cache", "schedulers.json")); err != nil {
		t.Fatalf("the daemon keeps no scheduler list on disk: %v", err)
	}
	c.mgr.kill()
	d.kill()
	d.restart(t)
	url2, sum2 := o.add("second.bin", 1<<20, 12)
	before := metric(t, c.sched.metrics, "damselfly_scheduler_decisions_total", "")
	fetchAll(t, []*daemonProc{d}, url2, sum2)
	if after := metric(t, c.sched.metrics, "damselfly_scheduler_decisions_total", ""); after <= before {
		t.Fatalf("scheduler decisions %v → %v: the restarted daemon did not use the scheduler saved on disk", before, after)
	}
	if b, _ := os.ReadFile(d.log); !bytes.Contains(b, []byte("saved on disk")) {
		t.Fatal("the restarted daemon did not say it used the saved scheduler list")
	}
	// and the preheated file is still a cache hit
	fetchAll(t, []*daemonProc{d}, url, sum)
	if got := o.served.Load(); got != 3<<20+7+1<<20 {
		t.Fatalf("origin served %d bytes, want %d", got, 3<<20+7+1<<20)
	}
}

// logHas reports whether a process's log has a line containing every part.
func logHas(p *proc, parts ...string) bool {
	b, _ := os.ReadFile(p.log)
	for _, line := range strings.Split(string(b), "\n") {
		ok := true
		for _, s := range parts {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			return true
		}
	}
	return false
}

// TestDaemonFollowsSchedulerList starts a daemon before any scheduler: it
// picks the scheduler up on its next refresh once it registers, downloads
// through it, and drops it when it stops keeping alive.
func TestDaemonFollowsSchedulerList(t *testing.T) {
	o := newOrigin(t)
	url, sum := o.add("a.bin", 512<<10, 21)
	mgr := startManager(t, t.TempDir())
	d := startDaemon(t, daemonOpts{name: "d", extra: []string{"--manager", mgr.grpc}})
	sched := startScheduler(t, "--manager", mgr.grpc, "--advertise-ip", "127.0.0.1")
	waitFor(t, 20*time.Second, "the daemon to pick the scheduler up", func() bool { return logHas(d.proc, "msg=schedulers", sched.addr) })
	fetchAll(t, []*daemonProc{d}, url, sum)
	if n := metric(t, sched.metrics, "damselfly_scheduler_decisions_total", ""); n == 0 {
		t.Fatal("the download did not go through the scheduler the manager named")
	}
	sched.kill()
	waitFor(t, 20*time.Second, "the scheduler to turn inactive", func() bool { return mgr.count(t, "/api/v1/schedulers?state=inactive") == 1 })
	waitFor(t, 20*time.Second, "the daemon to drop it", func() bool { return logHas(d.proc, "msg=schedulers", "addrs=[]") })
}

// home is the scheduler a task goes to first: the daemon's rendezvous hash.
func home(taskID string, addrs []string) string {
	best, bestScore := "", uint64(0)
	for _, a := range addrs {
		h := sha256.Sum256([]byte(taskID + "\x00" + a))
		if s := binary.BigEndian.Uint64(h[:8]); best == "" || s > bestScore {
			best, bestScore = a, s
		}
	}
	return best
}

// TestSchedulerFallback: with two schedulers from the manager, a task whose
// scheduler is dead (not yet marked inactive) is announced to the other.
func TestSchedulerFallback(t *testing.T) {
	o := newOrigin(t)
	mgr := startManager(t, t.TempDir(), "--keepalive-timeout", "60s")
	a := startScheduler(t, "--manager", mgr.grpc, "--advertise-ip", "127.0.0.1")
	b := startScheduler(t, "--manager", mgr.grpc, "--advertise-ip", "127.0.0.1")
	waitFor(t, 20*time.Second, "schedulers registered", func() bool { return mgr.count(t, "/api/v1/schedulers?state=active") == 2 })
	d := startDaemon(t, daemonOpts{name: "d", extra: []string{"--manager", mgr.grpc}})
	waitFor(t, 20*time.Second, "the daemon to know both", func() bool { return logHas(d.proc, "msg=schedulers", a.addr, b.addr) })

	var url, sum string
	for i := range 64 {
		u, s := o.add(fmt.Sprintf("f%d.bin", i), 256<<10, uint64(100+i))
		if home(core.TaskID(u, core.TaskOptions{}), []string{a.addr, b.addr}) == a.addr {
			url, sum = u, s
			break
		}
	}
	if url == "" {
		t.Fatal("no task hashes to the first scheduler")
	}
	a.kill()
	before := metric(t, b.metrics, "damselfly_scheduler_decisions_total", "")
	fetchAll(t, []*daemonProc{d}, url, sum)
	if after := metric(t, b.metrics, "damselfly_scheduler_decisions_total", ""); after <= before {
		t.Fatalf("the other scheduler made no decision (%v → %v): no fallback", before, after)
	}
}
