package swarm

import (
	"context"
	"crypto/sha1"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	HelperMain() // the test binary doubles as the origin server
	os.Exit(m.Run())
}

// requireNetns skips without root or `ip netns`, except under CI=true, where
// the environment is root and a skip would hide a broken harness.
func requireNetns(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "needs iproute2 (ip)"
	} else if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		why = "ip netns unavailable: " + strings.TrimSpace(string(out))
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("swarm smoke test %s (CI must run it; see test/swarm/install-deps.sh)", why)
	}
	t.Skipf("swarm smoke test %s", why)
}

// buildDamselfly builds the binaries into a temp dir. It reports false when
// the commands do not exist yet; a build failure of existing code fails.
func buildDamselfly(t *testing.T) (string, bool) {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"cmd/damselfly", "cmd/dfget"} {
		m, _ := filepath.Glob(filepath.Join(root, c, "*.go"))
		if len(m) == 0 {
			t.Logf("%s has no Go files yet: damselfly not run", c)
			return "", false
		}
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/damselfly", "./cmd/dfget")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build damselfly: %v\n%s", err, out)
	}
	return dir, true
}

// TestSmoke runs every system on 4 hosts and a few MB and checks
// correctness only: every copy's sha256, and that Damselfly fetched the file
// from the origin about once. No timing assertions.
func TestSmoke(t *testing.T) {
	requireNetns(t)
	systems := []string{SystemDirect}
	bin, ok := buildDamselfly(t)
	if ok {
		systems = append([]string{SystemDamselfly}, systems...)
	}
	if _, err := exec.LookPath("aria2c"); err == nil {
		if _, err := exec.LookPath("opentracker"); err == nil {
			systems = append(systems, SystemBitTorrent)
		}
	}
	if _, err := exec.LookPath("docker-registry"); err == nil {
		if _, err := exec.LookPath("skopeo"); err == nil {
			if ok {
				systems = append(systems, SystemImageDamselfly)
			}
			systems = append(systems, SystemImageDirect)
		}
	}
	if len(systems) < 5 {
		t.Logf("running %v only", systems)
	}
	cfg := DefaultConfig()
	cfg.Hosts = 4
	cfg.Size = 6 << 20
	cfg.ImageLayers = 3
	cfg.Systems = systems
	cfg.Deadline = 90 * time.Second
	cfg.BinDir = bin
	cfg.OutDir = t.TempDir()
	cfg.WorkDir = t.TempDir()
	if os.Getenv("DFSW_KEEP") != "" {
		cfg.OutDir = os.Getenv("DFSW_KEEP")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	t.Logf("\n%s", res.Markdown())
	checkRun(t, cfg, res)
}

// checkRun checks a smoke run for correctness only: every system ran, every
// host got a correct copy, Damselfly fetched the file from the origin about
// once, and no namespace was left behind.
func checkRun(t *testing.T, cfg Config, res *Results) {
	t.Helper()
	for _, s := range res.Systems {
		if s.Error != "" {
			t.Errorf("%s: %s (logs in %s)", s.Name, s.Error, cfg.OutDir)
			continue
		}
		for _, h := range s.Hosts {
			if !h.OK {
				t.Errorf("%s: host %s did not get a correct copy: %s", s.Name, h.Name, h.Error)
			}
		}
		if (s.Name == SystemDamselfly || s.Name == SystemImageDamselfly) && s.OriginServerBytes > cfg.Size*105/100 {
			t.Errorf("%s: origin served %d bytes, want ≤ 1.05 × %d", s.Name, s.OriginServerBytes, cfg.Size)
		}
	}
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), Prefix+res.Params.RunID+"-") {
		t.Errorf("namespaces left behind:\n%s", out)
	}
}

func TestLowerBound(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err == nil {
		t.Fatal("want an error without an out dir")
	}
	cfg.OutDir = t.TempDir()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	b := lowerBound(cfg, peersOf(cfg.hosts()))
	// 128 MiB at 100 Mbit/s: 10.74 s; the swarm term is 8/9 of that.
	const want = 128 * 8 * (1 << 20) / 100e6
	if d := b.TStar - want; d > 1e-9 || d < -1e-9 {
		t.Errorf("T* = %v, want %v", b.TStar, want)
	}
	if d := b.SwarmTerm - 8*want/9; d > 1e-9 || d < -1e-9 {
		t.Errorf("swarm term = %v, want %v", b.SwarmTerm, 8*want/9)
	}

	cfg.Scenario = ScenarioMixed
	cfg.Hosts = 8
	cfg.OriginRate = 1e9
	cfg.DownRate = 1e9
	n := 0
	peers := peersOf(cfg.hosts())
	for _, h := range peers {
		if h.Up < cfg.Rate {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("mixed: %d slow peers, want 2", n)
	}
	b = lowerBound(cfg, peers)
	// N·F/(u_o + 6 u + 2 u/10) with u_o = 10 u.
	if w := 8 * want / (10 + 6 + 0.2); b.SwarmTerm-w > 1e-9 || w-b.SwarmTerm > 1e-9 {
		t.Errorf("mixed swarm term = %v, want %v", b.SwarmTerm, w)
	}
}

func TestChurnVictims(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Scenario = ScenarioChurn
	cfg.Hosts = 8
	v := cfg.churnVictims(peersOf(cfg.hosts()))
	if len(v) != 2 || !v["h3"] || !v["h7"] {
		t.Errorf("victims = %v, want h3 and h7", v)
	}
}

func TestTorrent(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "blob")
	data := make([]byte, TorrentPieceSize*2+100)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	tor, err := MakeTorrent(path, "http://10.77.1.2:6969/announce", TorrentPieceSize)
	if err != nil {
		t.Fatal(err)
	}
	v, err := Bdecode(tor.Data)
	if err != nil {
		t.Fatal(err)
	}
	m := v.(map[string]any)
	info := m["info"].(map[string]any)
	if info["length"].(int64) != int64(len(data)) || info["piece length"].(int64) != TorrentPieceSize || info["name"] != "blob" {
		t.Errorf("info = %v", info)
	}
	pieces := info["pieces"].(string)
	if len(pieces) != 3*20 {
		t.Fatalf("pieces: %d bytes, want 60", len(pieces))
	}
	if last := sha1.Sum(data[2*TorrentPieceSize:]); pieces[40:] != string(last[:]) {
		t.Error("last piece hash wrong")
	}
	enc, err := Bencode(info)
	if err != nil {
		t.Fatal(err)
	}
	if sha1.Sum(enc) != tor.InfoHash {
		t.Error("info hash is not sha1 of the re-encoded info dictionary")
	}
	if m["announce"] != "http://10.77.1.2:6969/announce" {
		t.Errorf("announce = %v", m["announce"])
	}
}

func TestSumCounter(t *testing.T) {
	body := []byte(`# HELP damselfly_daemon_upload_bytes_total bytes served
# TYPE damselfly_daemon_upload_bytes_total counter
damselfly_daemon_upload_bytes_total{task="a"} 1.5e+06
damselfly_daemon_upload_bytes_total{task="b",x="}"} 500000
damselfly_daemon_upload_bytes_total_other 7
damselfly_daemon_upload_requests_total 9
`)
	n, ok := sumCounter(body, uploadMetric)
	if !ok || n != 2_000_000 {
		t.Errorf("sumCounter = %d, %v; want 2000000, true", n, ok)
	}
	if _, ok := sumCounter([]byte("go_threads 8\n"), uploadMetric); ok {
		t.Error("sumCounter found a missing metric")
	}
}

func FuzzBdecode(f *testing.F) {
	f.Add([]byte("d3:fooi42e3:barl4:spamee"))
	f.Add([]byte("i-3e"))
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := Bdecode(data)
		if err != nil {
			return
		}
		if _, err := Bencode(v); err != nil {
			t.Fatalf("decoded value does not encode: %v", err)
		}
	})
}

// The harness waits for the seed's link tests unless the seed's own flags
// declare its uplink or turn the tests off.
func TestSeedTestsLinks(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{
		{nil, true},
		{[]string{"--log-level", "debug"}, true},
		{[]string{"--upload-bps", "3000000"}, false},
		{[]string{"--upload-bps=3000000"}, false},
		{[]string{"--upload-bps=0"}, true},
		{[]string{"--upload-bps", "0"}, true},
		{[]string{"--link-test=false"}, false},
		{[]string{"-link-test=false"}, false},
		{[]string{"--link-test=true"}, true},
	} {
		if got := seedTestsLinks(c.args); got != c.want {
			t.Errorf("seedTestsLinks(%q) = %v, want %v", c.args, got, c.want)
		}
	}
}
