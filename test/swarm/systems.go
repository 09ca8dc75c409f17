package swarm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/damselfly-io/damselfly/test/oci"
)

// Ports on the emulated hosts. Every host has its own namespace, so they
// never clash.
const (
	originPort    = 8080
	trackerPort   = 6969
	btPort        = 6881
	schedPort     = 8002
	metricsPort   = 8000
	peerPort      = 65000
	proxyPort     = 65001
	uploadPort    = 65002
	readyTimeout  = 60 * time.Second
	pollInterval  = 20 * time.Millisecond
	killGrace     = 3 * time.Second
	verifyWorkers = 2
)

// writeTestFile writes size pseudo-random bytes to path and returns their
// sha256 in hex.
func writeTestFile(path string, size int64) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", fmt.Errorf("write test file: %w", err)
	}
	defer f.Close()
	var seed [32]byte
	binaryTime := time.Now().UnixNano()
	for i := range 8 {
		seed[i] = byte(binaryTime >> (8 * i))
	}
	src := rand.NewChaCha8(seed)
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	if _, err := io.CopyN(w, src, size); err != nil {
		return "", fmt.Errorf("write test file: %w", err)
	}
	if err := w.Flush(); err != nil {
		return "", fmt.Errorf("write test file: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("write test file: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// download is one peer's copy in one system's run.
type download struct {
	host     *Host
	out      string  // where the copy lands
	proc     *Proc   // the gated client (curl, aria2c, dfget)
	doneFile string  // if set, completion is the time aria2's hook wrote here
	extra    []*Proc // other processes of this host, killed with it on churn
	// check, if set, verifies the copy instead of out's sha256 (images).
	check func() error

	done   bool
	failed bool
	killed bool
	at     time.Time
	err    string
}

// sysEnv is what a system's setup needs.
type sysEnv struct {
	cfg    Config
	netw   *Network
	ps     *procSet
	dir    string // scratch for this system
	logDir string
	blob   string
	image  *oci.Image // the image systems' image
	log    *slog.Logger
	// stats reads the origin server's own count of what it sent.
	stats func(context.Context) (OriginStats, error)
}

func (e *sysEnv) logf(name string) string { return filepath.Join(e.logDir, name+".log") }

// originURL is the test file's URL on the origin host.
func (e *sysEnv) originURL() string {
	return fmt.Sprintf("http://%s%s", net.JoinHostPort(e.netw.Origin().IP.String(), strconv.Itoa(originPort)), OriginPath)
}

// startOrigin runs the origin HTTP server on the origin host and waits for it.
func (e *sysEnv) startOrigin(ctx context.Context) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("start origin: %w", err)
	}
	o := e.netw.Origin()
	addr := net.JoinHostPort(o.IP.String(), strconv.Itoa(originPort))
	if _, err := e.ps.startIn(o.NS, "origin-http", e.logf("origin-http"),
		[]string{helperEnv + "=origin", "DFSW_ORIGIN_LISTEN=" + addr, "DFSW_ORIGIN_FILE=" + e.blob}, false, exe); err != nil {
		return err
	}
	return oci.WaitFor(ctx, nil, readyTimeout, "origin http", func(ctx context.Context) error {
		_, err := e.originStats(ctx)
		return err
	})
}

func (e *sysEnv) originStats(ctx context.Context) (OriginStats, error) {
	var st OriginStats
	o := e.netw.Origin()
	err := getJSON(ctx, nsHTTPClient(o.NS, 5*time.Second),
		fmt.Sprintf("http://%s/_stats", net.JoinHostPort(o.IP.String(), strconv.Itoa(originPort))), &st)
	return st, err
}

func httpGet(ctx context.Context, c *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("get %s: %s", url, resp.Status)
	}
	return body, nil
}

// setupDirect: every peer fetches the file from the origin with curl.
func setupDirect(ctx context.Context, e *sysEnv) ([]*download, error) {
	if err := e.startOrigin(ctx); err != nil {
		return nil, err
	}
	var dls []*download
	for _, h := range e.netw.Peers() {
		out := filepath.Join(e.dir, h.Name, "blob")
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return nil, fmt.Errorf("setup direct: %w", err)
		}
		p, err := e.ps.startIn(h.NS, "curl", e.logf(h.Name+"-curl"), nil, true,
			"curl", "-sS", "--fail", "--noproxy", "*", "-o", out,
			"--max-time", strconv.Itoa(int(e.cfg.Deadline.Seconds())), e.originURL())
		if err != nil {
			return nil, err
		}
		dls = append(dls, &download{host: h, out: out, proc: p})
	}
	return dls, nil
}

// aria2Args are the options every aria2c in the swarm shares: no DHT, no
// local peer discovery, peer exchange on (any BitTorrent client would use
// it), no upload limit, seeding until killed, IPv4 only.
func aria2Args(dir string, stopAfter time.Duration) []string {
	return []string{
		"--dir=" + dir,
		"--seed-ratio=0.0",
		"--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
		"--enable-peer-exchange=true",
		"--bt-max-peers=55",
		"--max-upload-limit=0", "--max-overall-upload-limit=0",
		"--listen-port=" + strconv.Itoa(btPort),
		"--disable-ipv6=true",
		"--file-allocation=none",
		"--summary-interval=0",
		"--console-log-level=warn",
		"--stop=" + strconv.Itoa(int(stopAfter.Seconds())),
		"--stop-with-process=" + strconv.Itoa(os.Getpid()),
	}
}

// setupBitTorrent: opentracker and the only initial seeder (aria2c) on the
// origin host; every peer runs aria2c, leeching then seeding.
func setupBitTorrent(ctx context.Context, e *sysEnv) ([]*download, error) {
	o := e.netw.Origin()
	announce := fmt.Sprintf("http://%s/announce", net.JoinHostPort(o.IP.String(), strconv.Itoa(trackerPort)))
	tor, err := MakeTorrent(e.blob, announce, TorrentPieceSize)
	if err != nil {
		return nil, err
	}
	torrent := filepath.Join(e.dir, "blob.torrent")
	// opentracker chroots into its directory and drops to nobody; the
	// Debian build only tracks whitelisted info-hashes.
	trackerDir := filepath.Join(e.dir, "tracker")
	if err := os.MkdirAll(trackerDir, 0o755); err != nil {
		return nil, fmt.Errorf("setup bittorrent: %w", err)
	}
	if err := os.Chmod(trackerDir, 0o755); err != nil {
		return nil, fmt.Errorf("setup bittorrent: %w", err)
	}
	if err := os.WriteFile(filepath.Join(trackerDir, "whitelist.txt"), []byte(tor.InfoHashHex()+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("setup bittorrent: %w", err)
	}
	if err := os.WriteFile(torrent, tor.Data, 0o644); err != nil {
		return nil, fmt.Errorf("setup bittorrent: %w", err)
	}
	hook := filepath.Join(e.dir, "done-hook.sh")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\ndate +%s%N > \"$DFSW_DONE.tmp\" && mv \"$DFSW_DONE.tmp\" \"$DFSW_DONE\"\n"), 0o755); err != nil {
		return nil, fmt.Errorf("setup bittorrent: %w", err)
	}
	if _, err := e.ps.startIn(o.NS, "opentracker", e.logf("opentracker"), nil, false,
		"opentracker", "-i", o.IP.String(), "-p", strconv.Itoa(trackerPort), "-P", strconv.Itoa(trackerPort),
		"-w", "whitelist.txt", "-d", trackerDir, "-u", "nobody"); err != nil {
		return nil, err
	}
	tracker := nsHTTPClient(o.NS, 5*time.Second)
	scrape := fmt.Sprintf("http://%s/scrape?info_hash=%s", net.JoinHostPort(o.IP.String(), strconv.Itoa(trackerPort)), urlEscapeBytes(tor.InfoHash[:]))
	seeders := func(ctx context.Context) (int64, error) {
		body, err := httpGet(ctx, tracker, scrape)
		if err != nil {
			return 0, err
		}
		return scrapeComplete(body, string(tor.InfoHash[:]))
	}
	if err := oci.WaitFor(ctx, nil, readyTimeout, "opentracker", func(ctx context.Context) error { _, err := seeders(ctx); return err }); err != nil {
		return nil, err
	}
	seedDir := filepath.Join(e.dir, "origin")
	if err := os.MkdirAll(seedDir, 0o755); err != nil {
		return nil, fmt.Errorf("setup bittorrent: %w", err)
	}
	if err := os.Link(e.blob, filepath.Join(seedDir, filepath.Base(e.blob))); err != nil {
		return nil, fmt.Errorf("setup bittorrent: %w", err)
	}
	stopAfter := e.cfg.Deadline + time.Minute
	seedArgs := append([]string{"aria2c"}, aria2Args(seedDir, stopAfter)...)
	seedArgs = append(seedArgs, "--check-integrity=true", "--log="+e.logf("origin-aria2c-detail"), "--log-level=notice", torrent)
	if _, err := e.ps.startIn(o.NS, "aria2c-seeder", e.logf("origin-aria2c"), nil, false, seedArgs...); err != nil {
		return nil, err
	}
	if err := oci.WaitFor(ctx, nil, readyTimeout, "seeder announced", func(ctx context.Context) error {
		n, err := seeders(ctx)
		if err == nil && n < 1 {
			err = fmt.Errorf("tracker knows %d seeders", n)
		}
		return err
	}); err != nil {
		return nil, err
	}
	var dls []*download
	for _, h := range e.netw.Peers() {
		dir := filepath.Join(e.dir, h.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("setup bittorrent: %w", err)
		}
		doneFile := filepath.Join(dir, "done")
		args := append([]string{"aria2c"}, aria2Args(dir, stopAfter)...)
		args = append(args, "--on-bt-download-complete="+hook, "--log="+e.logf(h.Name+"-aria2c-detail"), "--log-level=notice", torrent)
		p, err := e.ps.startIn(h.NS, "aria2c", e.logf(h.Name+"-aria2c"), []string{"DFSW_DONE=" + doneFile}, true, args...)
		if err != nil {
			return nil, err
		}
		dls = append(dls, &download{host: h, out: filepath.Join(dir, filepath.Base(e.blob)), proc: p, doneFile: doneFile})
	}
	return dls, nil
}

func urlEscapeBytes(b []byte) string {
	var sb strings.Builder
	for _, c := range b {
		fmt.Fprintf(&sb, "%%%02X", c)
	}
	return sb.String()
}

// scrapeComplete reads the seeder count of infoHash from a tracker scrape.
func scrapeComplete(body []byte, infoHash string) (int64, error) {
	v, err := Bdecode(body)
	if err != nil {
		return 0, fmt.Errorf("scrape: %w", err)
	}
	files, _ := v.(map[string]any)["files"].(map[string]any)
	entry, ok := files[infoHash].(map[string]any)
	if !ok {
		return 0, nil
	}
	n, _ := entry["complete"].(int64)
	return n, nil
}

// setupDamselfly: scheduler, seed peer and one daemon per peer, all ready
// before the gated dfgets are created.
func setupDamselfly(ctx context.Context, e *sysEnv) ([]*download, error) {
	dfget, err := e.binary("dfget")
	if err != nil {
		return nil, err
	}
	if err := e.startOrigin(ctx); err != nil {
		return nil, err
	}
	daemons, err := e.startDamselfly(ctx)
	if err != nil {
		return nil, err
	}
	var dls []*download
	for _, d := range daemons[1:] {
		out := filepath.Join(e.dir, d.host.Name, "blob")
		p, err := e.ps.startIn(d.host.NS, "dfget", e.logf(d.host.Name+"-dfget"), nil, true,
			dfget, e.originURL(), "-O", out, "--sock", d.sock, "--no-progress")
		if err != nil {
			return nil, err
		}
		dls = append(dls, &download{host: d.host, out: out, proc: p, extra: []*Proc{d.proc}})
	}
	return dls, nil
}

// binary is the path of one of Damselfly's binaries in BinDir.
func (e *sysEnv) binary(name string) (string, error) {
	bin, err := filepath.Abs(e.cfg.BinDir)
	if err != nil {
		return "", fmt.Errorf("setup %s: %w", name, err)
	}
	path := filepath.Join(bin, name)
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("setup damselfly: binary missing (run make build or pass -bin-dir): %w", err)
	}
	return path, nil
}

// damselflyNode is a running daemon: the seed peer first, then one per peer.
type damselflyNode struct {
	host *Host
	proc *Proc
	sock string
}

// startDamselfly starts the scheduler, the seed peer and a daemon on every
// peer (with extra flags added to every daemon's), and waits until all are
// ready.
func (e *sysEnv) startDamselfly(ctx context.Context, extra ...string) ([]damselflyNode, error) {
	damselfly, err := e.binary("damselfly")
	if err != nil {
		return nil, err
	}
	s := e.netw.Scheduler()
	schedAddr := net.JoinHostPort(s.IP.String(), strconv.Itoa(schedPort))
	tlsFor, err := e.damselflyTLS(ctx, damselfly)
	if err != nil {
		return nil, err
	}
	schedTLS, err := tlsFor("scheduler", "scheduler", filepath.Join(e.dir, "scheduler"))
	if err != nil {
		return nil, err
	}
	if _, err := e.ps.startIn(s.NS, "scheduler", e.logf("scheduler"), nil, false,
		append(append([]string{damselfly, "scheduler", "--listen", schedAddr, "--metrics-port", strconv.Itoa(metricsPort)}, schedTLS...), e.cfg.SchedulerArgs...)...); err != nil {
		return nil, err
	}
	if err := oci.WaitFor(ctx, nil, readyTimeout, "scheduler", func(ctx context.Context) error {
		c, err := nsDialer(s.NS)(ctx, "tcp", schedAddr)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		return nil, err
	}
	var daemons []damselflyNode
	for _, h := range append([]*Host{e.netw.Seed()}, e.netw.Peers()...) {
		dir := filepath.Join(e.dir, h.Name)
		if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
			return nil, fmt.Errorf("setup damselfly: %w", err)
		}
		sock := filepath.Join(dir, "daemon.sock")
		args := []string{damselfly, "daemon",
			"--scheduler", schedAddr,
			"--data-dir", filepath.Join(dir, "data"),
			"--advertise-ip", h.IP.String(),
			"--peer-port", strconv.Itoa(peerPort),
			"--upload-port", strconv.Itoa(uploadPort),
			"--proxy-port", strconv.Itoa(proxyPort),
			"--metrics-port", strconv.Itoa(metricsPort),
			"--sock", sock,
			"--log-level", "info",
		}
		role := "peer"
		if h.Role == RoleSeed {
			role = "seed"
		}
		// Each namespaced host's certificate lives in its own directory.
		tlsArgs, err := tlsFor(role, h.Name, dir)
		if err != nil {
			return nil, err
		}
		args = append(args, tlsArgs...)
		args = append(args, extra...)
		if e.cfg.NoLinkTest {
			args = append(args, "--link-test=false")
		}
		if e.cfg.Declare {
			// The host's link rates as its operator would declare them
			// (bytes/s), instead of the scheduler measuring them.
			args = append(args, "--upload-bps", strconv.FormatInt(int64(h.Up)/8, 10), "--download-bps", strconv.FormatInt(int64(h.Down)/8, 10))
		}
		if h.Role == RoleSeed {
			args = append(args, "--seed")
			args = append(args, e.cfg.SeedArgs...)
		} else {
			args = append(args, e.cfg.DaemonArgs...)
		}
		if e.cfg.Scenario == ScenarioRacks {
			args = append(args, "--idc", fmt.Sprintf("rack%d", h.Rack), "--location", fmt.Sprintf("swarm|rack%d|%s", h.Rack, h.Name))
		}
		p, err := e.ps.startIn(h.NS, "daemon", e.logf(h.Name+"-daemon"), nil, false, args...)
		if err != nil {
			return nil, err
		}
		daemons = append(daemons, damselflyNode{h, p, sock})
	}
	var wg sync.WaitGroup
	errs := make([]error, len(daemons))
	for i, d := range daemons {
		wg.Go(func() {
			hc := nsHTTPClient(d.host.NS, 2*time.Second)
			health := fmt.Sprintf("http://%s/healthy", net.JoinHostPort(d.host.IP.String(), strconv.Itoa(metricsPort)))
			errs[i] = oci.WaitFor(ctx, nil, readyTimeout, "daemon on "+d.host.Name, func(ctx context.Context) error {
				if done, _, err := d.proc.Exited(); done {
					return fmt.Errorf("daemon exited: %v (see %s)", err, e.logf(d.host.Name+"-daemon"))
				}
				c, err := net.DialTimeout("unix", d.sock, time.Second)
				if err != nil {
					return err
				}
				c.Close()
				_, err = httpGet(ctx, hc, health)
				return err
			})
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	if !e.cfg.Declare && !e.cfg.NoLinkTest {
		// The seed peer too, unless its own flags declare its uplink or
		// turn its tests off: a test still running when the downloads
		// start shares its uplink with them (and, in seed-on-origin, is
		// counted in the origin host's bytes).
		testers := daemons[1:]
		if seedTestsLinks(e.cfg.SeedArgs) {
			testers = daemons
		}
		e.waitLinkTests(ctx, testers)
	}
	return daemons, nil
}

// seedTestsLinks reports whether a seed daemon started with these extra
// flags runs link tests of its own: it does unless it declares its uplink
// or turns them off.
func seedTestsLinks(args []string) bool {
	for i, a := range args {
		name, val, eq := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !eq && name == "upload-bps" && i+1 < len(args) {
			val = args[i+1]
		}
		switch {
		case name == "upload-bps" && val != "0":
			return false
		case name == "link-test" && val == "false":
			return false
		}
	}
	return true
}

// linkTestWait bounds the wait for the daemons' link tests.
const linkTestWait = 90 * time.Second

// waitLinkTests waits until each of these daemons has finished its first round
// of link tests (two tests sent), as on a cluster whose daemons run before
// anything is pulled, and logs what each measured against its shaped
// rates. Past linkTestWait the run starts anyway, with a warning.
func (e *sysEnv) waitLinkTests(ctx context.Context, peers []damselflyNode) {
	start := time.Now()
	want := min(2, len(peers)-1)
	if want <= 0 {
		return
	}
	bodies := make([][]byte, len(peers))
	// metric sums host i's samples of name whose labels contain match.
	metric := func(i int, name, match string) float64 {
		v, _ := oci.SumMetric(bytes.NewReader(bodies[i]), name, match)
		return v
	}
	for {
		left := 0
		for i, d := range peers {
			url := fmt.Sprintf("http://%s/metrics", net.JoinHostPort(d.host.IP.String(), strconv.Itoa(metricsPort)))
			body, err := httpGet(ctx, nsHTTPClient(d.host.NS, 2*time.Second), url)
			if err == nil {
				bodies[i] = body
			}
			if metric(i, "damselfly_daemon_link_tests_total", `direction="sent",result="ok"`) < float64(want) {
				left++
			}
		}
		if left == 0 {
			break
		}
		if time.Since(start) > linkTestWait || ctx.Err() != nil {
			e.log.Warn("link tests unfinished; the run starts anyway", "hosts_left", left, "waited", time.Since(start).Round(time.Millisecond))
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
	for i, d := range peers {
		e.log.Info("link test", "host", d.host.Name,
			"up_mbit", metric(i, "damselfly_daemon_link_upload_bps", "")*8/1e6, "shaped_up_mbit", float64(d.host.Up)/1e6,
			"down_mbit", metric(i, "damselfly_daemon_link_download_bps", "")*8/1e6, "shaped_down_mbit", float64(d.host.Down)/1e6)
	}
	e.log.Info("link tests done", "hosts", len(peers), "took", time.Since(start).Round(time.Millisecond))
}

// uploadMetric is the daemon's counter of bytes served to other peers.
const uploadMetric = "damselfly_daemon_upload_bytes_total"

// saveMetrics stores /metrics of the scheduler and every daemon, for reading
// the system's own view of the run afterwards, and returns what each host
// uploaded according to its uploadMetric (hosts without it are left out).
func saveMetrics(ctx context.Context, e *sysEnv) map[string]int64 {
	uploads := map[string]int64{}
	dir := filepath.Join(e.logDir, "metrics")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return uploads
	}
	hosts := append([]*Host{e.netw.Scheduler(), e.netw.Seed()}, e.netw.Peers()...)
	for _, h := range hosts {
		url := fmt.Sprintf("http://%s/metrics", net.JoinHostPort(h.IP.String(), strconv.Itoa(metricsPort)))
		body, err := httpGet(ctx, nsHTTPClient(h.NS, 5*time.Second), url)
		if err != nil {
			e.log.Debug("save metrics", "host", h.Name, "err", err)
			continue
		}
		_ = os.WriteFile(filepath.Join(dir, h.Name+".prom"), body, 0o644)
		if n, ok := sumCounter(body, uploadMetric); ok {
			uploads[h.Name] = n
		}
	}
	return uploads
}

// sumCounter adds up every series of a counter in Prometheus text format.
func sumCounter(body []byte, name string) (int64, bool) {
	var sum float64
	found := false
	for _, line := range strings.Split(string(body), "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	return int64(sum), found
}

// damselflyTLS prepares the run's certificates: with cfg.TLS a CA made by
// `damselfly certs init-ca` in the run's directory, and a function that
// issues one component's certificate into dir/tls and returns its flags;
// without, a function returning --insecure.
func (e *sysEnv) damselflyTLS(ctx context.Context, damselfly string) (func(role, hostID, dir string) ([]string, error), error) {
	if !e.cfg.TLS {
		return func(string, string, string) ([]string, error) { return []string{"--insecure"}, nil }, nil
	}
	caDir := filepath.Join(e.dir, "ca")
	if out, err := exec.CommandContext(ctx, damselfly, "certs", "init-ca", "--dir", caDir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("setup damselfly: certs init-ca: %w: %s", err, out)
	}
	return func(role, hostID, dir string) ([]string, error) {
		out := filepath.Join(dir, "tls")
		if b, err := exec.CommandContext(ctx, damselfly, "certs", "issue", "--ca-dir", caDir, "--role", role, "--host-id", hostID, "--out", out).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("setup damselfly: certs issue %s/%s: %w: %s", role, hostID, err, b)
		}
		return []string{"--tls-cert", filepath.Join(out, "tls.crt"), "--tls-key", filepath.Join(out, "tls.key"), "--tls-ca", filepath.Join(out, "ca.crt")}, nil
	}, nil
}
