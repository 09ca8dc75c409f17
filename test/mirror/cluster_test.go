package mirror

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/test/netns"
	"github.com/damselfly-io/damselfly/test/oci"
	"github.com/damselfly-io/damselfly/test/swarm"
)

// Ports on the emulated hosts (each host is its own namespace).
const (
	registryPort = 5000
	tokenPort    = 5001
	schedPort    = 8002
	metricsPort  = 8000
	proxyPort    = 65001
	// deadPort has no listener on any host: the clients' fallback to the
	// registry itself is pointed there, so a pull succeeds only through
	// the mirror and a failing mirror cannot hide behind the fallback.
	deadPort = 9
)

// cluster is the emulated network of the mirror tests: the registry (and
// token realm) on the origin host, the scheduler and the seed peer on their
// own hosts, and three hosts with a daemon and a containerd each.
type cluster struct {
	netw     *swarm.Network
	sched    *oci.Proc
	seed     *oci.Proc
	hosts    []*node
	registry string // 10.77.1.2:5000
}

type node struct {
	host    *swarm.Host
	daemon  *oci.Proc
	cd      *oci.Containerd
	dir     string
	hosts   string // containerd hosts dir
	regConf string // skopeo registries.conf
}

func (n *node) metrics() string {
	return "http://" + net.JoinHostPort(n.host.IP.String(), strconv.Itoa(metricsPort))
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	requireRoot(t, "network namespaces, containerd")
	requireTools(t, "docker-registry", "skopeo", "htpasswd", "containerd", "ctr", "ip", "tc")
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		t.Skipf("ip netns unavailable: %s", out)
	}
	cfg := swarm.DefaultConfig()
	cfg.Hosts = 3
	cfg.Rate, cfg.OriginRate = 1e9, 1e9 // the links do not matter here; bytes do
	cfg.OutDir = t.TempDir()
	cfg.Logger = testLogger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	netw, err := swarm.NewNetwork(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Registered first, so it runs last: after every process is stopped.
	t.Cleanup(func() {
		netw.Teardown(context.Background())
		if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), swarm.Prefix+netw.RunID) {
			t.Errorf("namespaces left behind:\n%s", out)
		}
	})
	c := &cluster{netw: netw, registry: net.JoinHostPort(netw.Origin().IP.String(), strconv.Itoa(registryPort))}
	bin := filepath.Join(binDir, "damselfly")

	s := netw.Scheduler()
	schedAddr := net.JoinHostPort(s.IP.String(), strconv.Itoa(schedPort))
	schedArgs := append([]string{bin, "scheduler", "--listen", schedAddr, "--metrics-port", strconv.Itoa(metricsPort)},
		tlsFlags(t, "scheduler", "scheduler", oci.ShortDir(t))...)
	c.sched = oci.StartT(t, s.NS, "scheduler", schedArgs...)
	sc := netns.HTTPClient(s.NS, 2*time.Second)
	oci.WaitUntil(t, c.sched, 30*time.Second, "scheduler", func() error {
		return httpOK(sc, "http://"+net.JoinHostPort(s.IP.String(), strconv.Itoa(metricsPort))+"/healthy")
	})

	daemon := func(h *swarm.Host, dir string, seed bool) *oci.Proc {
		args := []string{bin, "daemon", "--scheduler", schedAddr, "--data-dir", filepath.Join(dir, "data"),
			"--advertise-ip", h.IP.String(), "--metrics-port", strconv.Itoa(metricsPort),
			"--sock", filepath.Join(dir, "daemon.sock"), "--hostname", h.Name, "--link-test=false",
			"--proxy-port", strconv.Itoa(proxyPort), "--proxy-ip", "127.0.0.1",
			"--registry-mirror", "http://" + c.registry}
		role := "peer"
		if seed {
			role = "seed"
		}
		// Each namespaced host's certificate sits in its own directory.
		args = append(args, tlsFlags(t, role, h.Name, dir)...)
		if seed {
			// Seed peers fetch with their own credentials (clients' never
			// leave their node), as an operator would configure them.
			conf := filepath.Join(dir, "seed.yaml")
			yaml := fmt.Sprintf("proxy:\n  registries:\n    - host: %q\n      scheme: http\n      username: %q\n      password: %q\n", c.registry, testUser, testPassword)
			if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			args = append(args, "--seed", "--config", conf)
		}
		p := oci.StartT(t, h.NS, h.Name+"-daemon", args...)
		hc := netns.HTTPClient(h.NS, 2*time.Second)
		oci.WaitUntil(t, p, 30*time.Second, "daemon on "+h.Name, func() error {
			return httpOK(hc, "http://"+net.JoinHostPort(h.IP.String(), strconv.Itoa(metricsPort))+"/healthy")
		})
		return p
	}
	c.seed = daemon(netw.Seed(), oci.ShortDir(t), true)
	for _, h := range netw.Peers() {
		n := &node{host: h, dir: oci.ShortDir(t)}
		n.daemon = daemon(h, n.dir, false)
		if n.cd, err = oci.StartContainerd(ctx, h.NS, filepath.Join(n.dir, "cd")); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			n.cd.Stop()
			if t.Failed() {
				b, _ := os.ReadFile(n.cd.Log())
				t.Logf("---- containerd on %s (tail) ----\n%s", h.Name, tailString(string(b), 3000))
			}
		})
		mirror := fmt.Sprintf("127.0.0.1:%d", proxyPort)
		dead := fmt.Sprintf("127.0.0.1:%d", deadPort)
		n.hosts = filepath.Join(n.dir, "hosts")
		if err := oci.WriteHostsDir(n.hosts, c.registry, "http://"+dead, "http://"+mirror); err != nil {
			t.Fatal(err)
		}
		n.regConf = filepath.Join(n.dir, "registries.conf")
		if err := oci.WriteRegistriesConf(n.regConf, c.registry, dead, mirror); err != nil {
			t.Fatal(err)
		}
		c.hosts = append(c.hosts, n)
	}
	return c
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// startRegistry runs a fresh registry with auth on the origin host.
func (c *cluster) startRegistry(t *testing.T, auth oci.Auth) *registryEnv {
	o := c.netw.Origin()
	return startRegistry(t, o.NS, c.registry, net.JoinHostPort(o.IP.String(), strconv.Itoa(tokenPort)), auth)
}

// pullResult is what one pull of an image through the cluster cost.
type pullResult struct {
	served     oci.Served   // registry access log, pulls only
	log        []oci.Access // the log's lines of the pulls
	originTx   int64        // origin host's eth0 transmit bytes during the pulls
	proxyCount float64      // daemons' proxy requests during the pulls (all routes)
	direct     float64      // of which route="direct" (passed through)
	fallback   float64      // of which route="fallback" (P2P failed, passed through)
}

// pullEverywhere pushes im (already written) and pulls it on every host
// with containerd and skopeo at once, through the daemons, checking every
// copy's digests.
func (c *cluster) pullEverywhere(t *testing.T, env *registryEnv, repo string, layers int, size int64) (*oci.Image, pullResult) {
	t.Helper()
	o := c.netw.Origin()
	im, ref := pushImage(t, o.NS, env, repo, layers, size)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	before, err := env.reg.AccessLog()
	if err != nil {
		t.Fatal(err)
	}
	var r pullResult
	tx0, err := c.netw.TxBytes(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	proxy0, direct0, fallback0 := c.proxyRequests(t)

	var wg sync.WaitGroup
	errs := make(chan error, 2*len(c.hosts))
	for _, n := range c.hosts {
		wg.Go(func() {
			if _, err := n.cd.Pull(ctx, ref, oci.PullOpts{HostsDir: n.hosts, Creds: env.reg.Creds()}); err != nil {
				errs <- fmt.Errorf("%s: containerd: %w", n.host.Name, err)
				return
			}
			if err := n.cd.Verify(ctx, ref, im); err != nil {
				errs <- fmt.Errorf("%s: containerd: %w", n.host.Name, err)
			}
		})
		wg.Go(func() {
			out := filepath.Join(n.dir, "skopeo-"+strings.ReplaceAll(repo, "/", "-"))
			o := oci.SkopeoOpts{RegistriesConf: n.regConf}
			if creds := env.reg.Creds(); creds != "" {
				// skopeo sends a mirror only the credentials an auth file
				// holds for the mirror's own host (see oci.SkopeoOpts).
				o.AuthFile = filepath.Join(n.dir, "auth.json")
				if err := oci.WriteAuthFile(o.AuthFile, fmt.Sprintf("127.0.0.1:%d", proxyPort), creds); err != nil {
					errs <- err
					return
				}
			}
			if err := oci.SkopeoPull(ctx, n.host.NS, ref, out, "latest", o); err != nil {
				errs <- fmt.Errorf("%s: %w", n.host.Name, err)
				return
			}
			if err := oci.VerifyLayout(out, im); err != nil {
				errs <- fmt.Errorf("%s: skopeo: %w", n.host.Name, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	tx1, err := c.netw.TxBytes(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	after, err := env.reg.AccessLog()
	if err != nil {
		t.Fatal(err)
	}
	proxy1, direct1, fallback1 := c.proxyRequests(t)
	r.log = after[len(before):]
	r.served = oci.Sum(r.log)
	r.originTx = tx1 - tx0
	r.proxyCount, r.direct, r.fallback = proxy1-proxy0, direct1-direct0, fallback1-fallback0
	t.Logf("%s: blobs %d B (image %d B, %.3f×), %d blob GETs; manifests %d B in %d GETs; other %d B; %d requests; origin eth0 tx %d B; proxy requests %.0f (direct %.0f, fallback %.0f)",
		repo, r.served.BlobBytes, im.BlobBytes(), float64(r.served.BlobBytes)/float64(im.BlobBytes()), r.served.BlobGets,
		r.served.ManifestBytes, r.served.ManifestGets, r.served.OtherBytes, r.served.Requests, r.originTx, r.proxyCount, r.direct, r.fallback)
	return im, r
}

// proxyRequests sums the daemons' proxy request counters: all routes,
// route="direct" and route="fallback".
func (c *cluster) proxyRequests(t *testing.T) (all, direct, fallback float64) {
	for _, n := range c.hosts {
		hc := netns.HTTPClient(n.host.NS, 5*time.Second)
		all += metric(t, hc, n.metrics(), "damselfly_proxy_requests_total", "")
		direct += metric(t, hc, n.metrics(), "damselfly_proxy_requests_total", `route="direct"`)
		fallback += metric(t, hc, n.metrics(), "damselfly_proxy_requests_total", `route="fallback"`)
	}
	return all, direct, fallback
}

// checkOnce asserts the registry sent the blobs about once: its access log
// counts at most 1.05 × the image's blob bytes of blob bodies, and its
// interface sent no more than that plus the manifests and other bodies the
// log shows, 4 KiB of headers per request and per token.
func checkOnce(t *testing.T, im *oci.Image, r pullResult, tokens int64) {
	t.Helper()
	limit := im.BlobBytes() * 105 / 100
	if r.served.BlobBytes > limit {
		t.Errorf("registry served %d blob bytes for an image of %d blob bytes (%.2f×), want ≤ 1.05×",
			r.served.BlobBytes, im.BlobBytes(), float64(r.served.BlobBytes)/float64(im.BlobBytes()))
	}
	allow := limit + r.served.ManifestBytes + r.served.OtherBytes + 4096*(int64(r.served.Requests)+tokens)
	if r.originTx > allow {
		t.Errorf("registry host sent %d bytes on its interface, want ≤ %d (1.05 × %d blob bytes + %d manifest + %d other body bytes + 4 KiB × %d requests and %d tokens)",
			r.originTx, allow, im.BlobBytes(), r.served.ManifestBytes, r.served.OtherBytes, r.served.Requests, tokens)
	}
	// A healthy cluster serves every blob through P2P.
	if r.fallback > 0 {
		t.Errorf("%.0f proxy requests fell back to the upstream (route=\"fallback\") in a healthy cluster", r.fallback)
	}
	if t.Failed() {
		logBlobGets(t, r.log)
	}
	// 3 hosts × 2 clients each fetch the config and every layer through
	// their daemon: the proxy must have seen at least those requests.
	if want := float64(2 * 3 * len(im.Blobs())); r.proxyCount < want {
		t.Errorf("daemons' proxies counted %.0f requests, want ≥ %.0f blob requests", r.proxyCount, want)
	}
}

const (
	imageLayers = 4
	imageSize   = 12 << 20
)

// TestClusterPull: three hosts pull one image at once with containerd and
// skopeo through their daemons, from a registry without auth, with
// htpasswd basic auth and with a bearer-token realm. Every copy has exact
// digests and the registry sends the blobs about once.
func TestClusterPull(t *testing.T) {
	c := startCluster(t)
	for _, auth := range []oci.Auth{oci.AuthNone, oci.AuthBasic, oci.AuthToken} {
		t.Run(auth.String(), func(t *testing.T) {
			env := c.startRegistry(t, auth)
			im, r := c.pullEverywhere(t, env, "cluster/"+auth.String(), imageLayers, imageSize)
			var tokens int64
			if env.token != nil {
				tokens = env.token.Issued() + env.token.Denied()
				if env.token.Issued() == 0 {
					t.Error("no token was issued: the pulls did not go through the token realm")
				}
			}
			checkOnce(t, im, r, tokens)
		})
	}
}

// TestClusterPullDegraded: pulls still succeed, with exact digests and
// through the mirror only (the clients' fallback is a dead port), after the
// seed peer is killed — still one registry fetch per blob — and then after
// the scheduler is killed — at most one fetch per blob per node. Each case
// has a new image, so nothing is cached.
func TestClusterPullDegraded(t *testing.T) {
	c := startCluster(t)
	env := c.startRegistry(t, oci.AuthNone)
	c.seed.Stop(0)
	t.Run("seed-killed", func(t *testing.T) {
		im, r := c.pullEverywhere(t, env, "degraded/seed", imageLayers, imageSize)
		// The peers still share: one origin fetch per blob.
		checkOnce(t, im, r, 0)
	})
	c.sched.Stop(0)
	t.Run("scheduler-killed", func(t *testing.T) {
		im, r := c.pullEverywhere(t, env, "degraded/scheduler", imageLayers, imageSize)
		if r.proxyCount < float64(2*3*len(im.Blobs())) {
			t.Errorf("daemons' proxies counted %.0f requests, want ≥ %d", r.proxyCount, 2*3*len(im.Blobs()))
		}
		// Without a scheduler every node fetches from the registry, but
		// once: its daemon serves containerd and skopeo from one download.
		if limit := int64(len(c.hosts)) * im.BlobBytes() * 105 / 100; r.served.BlobBytes > limit {
			t.Errorf("registry served %d blob bytes (%.2f × the image) with the scheduler down, want ≤ 1.05 × one copy per node (%d)",
				r.served.BlobBytes, float64(r.served.BlobBytes)/float64(im.BlobBytes()), limit)
		}
	})
}

// logBlobGets lists the registry's blob responses with a body, for
// diagnosing over-fetching.
func logBlobGets(t *testing.T, log []oci.Access) {
	t.Helper()
	var b strings.Builder
	for _, a := range log {
		if a.IsBlob() && a.Bytes > 0 {
			fmt.Fprintf(&b, "\n  %s %s %s %d %d B %q", a.Remote, a.Method, a.Path, a.Status, a.Bytes, a.UserAgent)
		}
	}
	t.Logf("registry blob responses with a body:%s", b.String())
}
