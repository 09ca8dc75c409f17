package daemon

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"google.golang.org/grpc"
)

// testRegistry is a minimal registry origin: blobs by digest (optionally
// behind a Basic challenge), one manifest, and counters of what it served.
type testRegistry struct {
	*httptest.Server
	mu        sync.Mutex
	blobs     map[string][]byte // digest → bytes served for it
	blobGets  map[string]int
	heads     int
	lastAuth  string
	needsAuth bool
}

func newTestRegistry(t *testing.T, tlsServer bool) *testRegistry {
	r := &testRegistry{blobs: map[string][]byte{}, blobGets: map[string]int{}}
	h := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.lastAuth = req.Header.Get("Authorization")
		if r.needsAuth && r.lastAuth != "Basic dTpw" { // u:p
			w.Header().Set("WWW-Authenticate", `Basic realm="test-registry"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			if req.Method != http.MethodHead {
				_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`)
			}
			return
		}
		switch {
		case req.URL.Path == "/v2/" || req.URL.Path == "/v2":
			w.WriteHeader(http.StatusOK)
		case strings.HasPrefix(req.URL.Path, "/v2/lib/app/manifests/"):
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("1", 64))
			_, _ = io.WriteString(w, `{"schemaVersion":2}`)
		case strings.HasPrefix(req.URL.Path, "/v2/lib/app/blobs/"):
			d := strings.TrimPrefix(req.URL.Path, "/v2/lib/app/blobs/")
			b, ok := r.blobs[d]
			if !ok {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusNotFound)
				_, _ = io.WriteString(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`)
				return
			}
			if req.Method == http.MethodHead {
				r.heads++
			} else {
				r.blobGets[d]++
			}
			http.ServeContent(w, req, "", time.Unix(1700000000, 0), bytes.NewReader(b))
		case req.URL.Path == "/files/big.bin":
			http.ServeContent(w, req, "", time.Unix(1700000000, 0), bytes.NewReader(r.blobs["file"]))
		default:
			http.NotFound(w, req)
		}
	})
	if tlsServer {
		r.Server = httptest.NewTLSServer(h)
	} else {
		r.Server = httptest.NewServer(h)
	}
	t.Cleanup(r.Close)
	return r
}

// addBlob stores content under its digest (or under a wrong one: corrupt).
func (r *testRegistry) addBlob(b []byte, corrupt bool) string {
	sum := sha256.Sum256(b)
	d := "sha256:" + hex.EncodeToString(sum[:])
	r.mu.Lock()
	defer r.mu.Unlock()
	if corrupt {
		bad := bytes.Clone(b)
		bad[len(bad)/2] ^= 0xff
		r.blobs[d] = bad
	} else {
		r.blobs[d] = b
	}
	return d
}

func (r *testRegistry) gets(d string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.blobGets[d]
}

func randomBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

// startProxyDaemon runs an in-process daemon without a scheduler (every

// serveScheduler serves srv, a fake scheduler, on 127.0.0.1:0 until the test
// ends and returns its address and server.
func serveScheduler(t *testing.T, srv schedulerv1.SchedulerServer) (string, *grpc.Server) {
	t.Helper()
	gs := grpc.NewServer()
	schedulerv1.RegisterSchedulerServer(gs, srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return lis.Addr().String(), gs
}

// P2P task falls back to the origin itself) with its proxy on a free port.
func startProxyDaemon(t *testing.T, mutate func(*Config)) *Daemon {
	t.Helper()
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.Scheduler = ""
	cfg.DataDir = filepath.Join(dir, "cache")
	cfg.Sock = filepath.Join(dir, "d.sock")
	cfg.ListenIP, cfg.AdvertiseIP = "127.0.0.1", "127.0.0.1"
	cfg.PeerPort, cfg.UploadPort, cfg.ProxyPort, cfg.MetricsPort = 0, 0, 0, -1
	cfg.OriginTimeout.Set("5s")
	cfg.LogLevel = "error"
	cfg.TLS.Insecure = true
	if mutate != nil {
		mutate(&cfg)
	}
	d, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon run: %v", err)
		}
	})
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatalf("daemon did not start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("daemon not ready after 10s")
	}
	return d
}

func mirrorGet(t *testing.T, d *Daemon, path string, hdr http.Header) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+d.ProxyAddr()+path, nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp, nil // aborted body
	}
	return resp, b
}

func TestMirrorServesBlobsFromTheTaskAndPassesTheRestThrough(t *testing.T) {
	reg := newTestRegistry(t, false)
	blob := randomBytes(3<<20+123, 1)
	dg := reg.addBlob(blob, false)
	regURL, _ := url.Parse(reg.URL)
	d := startProxyDaemon(t, func(c *Config) { c.Proxy.RegistryMirror = "https://unused.invalid" })
	ns := "?ns=" + regURL.Host

	// ns names a host that registry_mirror does not: https by default, so
	// this plain-HTTP registry needs a registries entry for its scheme.
	if resp, _ := mirrorGet(t, d, "/v2/lib/app/blobs/"+dg+ns, nil); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("https to a plain-HTTP registry: status %d, want 502", resp.StatusCode)
	}
	d = startProxyDaemon(t, func(c *Config) { c.Proxy.RegistryMirror = reg.URL })

	resp, got := mirrorGet(t, d, "/v2/lib/app/blobs/"+dg+ns, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, blob) {
		t.Fatalf("blob: status %d, %d bytes (want %d)", resp.StatusCode, len(got), len(blob))
	}
	if resp.Header.Get("Docker-Content-Digest") != dg {
		t.Fatalf("Docker-Content-Digest = %q", resp.Header.Get("Docker-Content-Digest"))
	}
	id, _ := core.ContentTaskID(dg)
	if tk, ok := d.Store().Get(id); !ok || !tk.Complete() {
		t.Fatal("blob is not a complete task under its digest")
	}
	// Again, and as a range, without ns (the default upstream): from the cache.
	if _, got := mirrorGet(t, d, "/v2/lib/app/blobs/"+dg, nil); !bytes.Equal(got, blob) {
		t.Fatal("cached blob differs")
	}
	resp, got = mirrorGet(t, d, "/v2/lib/app/blobs/"+dg, http.Header{"Range": {"bytes=100-1099"}})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, blob[100:1100]) ||
		resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 100-1099/%d", len(blob)) {
		t.Fatalf("range: status %d, %d bytes, Content-Range %q", resp.StatusCode, len(got), resp.Header.Get("Content-Range"))
	}
	resp, _ = mirrorGet(t, d, "/v2/lib/app/blobs/"+dg, http.Header{"Range": {fmt.Sprintf("bytes=%d-", len(blob))}})
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("range past the end: status %d", resp.StatusCode)
	}
	if n := reg.gets(dg); n != 1 {
		t.Fatalf("registry served the blob %d times, want 1", n)
	}

	// Pass-through: manifests, 404s, the ping.
	resp, got = mirrorGet(t, d, "/v2/lib/app/manifests/v1"+ns, nil)
	if resp.StatusCode != http.StatusOK || string(got) != `{"schemaVersion":2}` ||
		resp.Header.Get("Content-Type") != "application/vnd.oci.image.manifest.v1+json" {
		t.Fatalf("manifest: %d %q %q", resp.StatusCode, got, resp.Header.Get("Content-Type"))
	}
	unknown := "sha256:" + strings.Repeat("ab", 32)
	resp, got = mirrorGet(t, d, "/v2/lib/app/blobs/"+unknown+ns, nil)
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(got), "BLOB_UNKNOWN") {
		t.Fatalf("unknown blob: %d %q", resp.StatusCode, got)
	}
	if resp, _ := mirrorGet(t, d, "/v2/"+ns, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("ping: %d", resp.StatusCode)
	}
	if resp, _ := mirrorGet(t, d, "/not-registry", nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("non-registry path: %d", resp.StatusCode)
	}
}

func TestMirrorAuthPassesThrough(t *testing.T) {
	reg := newTestRegistry(t, false)
	reg.needsAuth = true
	blob := randomBytes(200_000, 2)
	dg := reg.addBlob(blob, false)
	d := startProxyDaemon(t, func(c *Config) { c.Proxy.RegistryMirror = reg.URL })

	resp, got := mirrorGet(t, d, "/v2/lib/app/blobs/"+dg, nil)
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != `Basic realm="test-registry"` ||
		!strings.Contains(string(got), "UNAUTHORIZED") {
		t.Fatalf("no credentials: %d %q %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), got)
	}
	id, _ := core.ContentTaskID(dg)
	if _, ok := d.Store().Get(id); ok {
		t.Fatal("a refused client started a task")
	}
	auth := http.Header{"Authorization": {"Basic dTpw"}}
	resp, got = mirrorGet(t, d, "/v2/lib/app/blobs/"+dg, auth)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, blob) {
		t.Fatalf("with credentials: %d, %d bytes", resp.StatusCode, len(got))
	}
	// Credentials never reach the cache's metadata.
	meta, err := os.ReadFile(filepath.Join(d.cfg.DataDir, id, "meta.json"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(meta, []byte("dTpw")) || bytes.Contains(meta, []byte("Authorization")) {
		t.Fatalf("credentials in the cache metadata: %s", meta)
	}
	// The cached blob is not handed to a client the registry refuses.
	if resp, _ := mirrorGet(t, d, "/v2/lib/app/blobs/"+dg, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("cached blob without credentials: %d", resp.StatusCode)
	}
}

func TestMirrorRefusesCorruptBlob(t *testing.T) {
	reg := newTestRegistry(t, false)
	dg := reg.addBlob(randomBytes(1<<20+7, 3), true)
	d := startProxyDaemon(t, func(c *Config) { c.Proxy.RegistryMirror = reg.URL })
	for i := range 2 {
		// Refusing may be a status, a body cut short, or — when the
		// mismatch shows before the buffered headers went out — a
		// connection closed with no response at all.
		resp, err := http.Get("http://" + d.ProxyAddr() + "/v2/lib/app/blobs/" + dg)
		var got []byte
		if err == nil {
			got, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				got = nil // aborted body
			}
		} else {
			t.Logf("try %d: connection closed without a response: %v", i, err)
		}
		if got != nil {
			sum := sha256.Sum256(got)
			if resp.StatusCode == http.StatusOK && "sha256:"+hex.EncodeToString(sum[:]) != dg {
				t.Fatalf("try %d: corrupt content served as complete (%d bytes)", i, len(got))
			}
			if resp.StatusCode == http.StatusOK {
				t.Fatalf("try %d: status 200 for corrupt content", i)
			}
		}
		id, _ := core.ContentTaskID(dg)
		if tk, ok := d.Store().Get(id); ok && tk.Complete() {
			t.Fatalf("try %d: corrupt blob held as complete", i)
		}
	}
}

func TestHTTPProxyModeRulesAndHeaders(t *testing.T) {
	reg := newTestRegistry(t, false)
	file := randomBytes(2<<20, 4)
	reg.mu.Lock()
	reg.blobs["file"] = file
	reg.mu.Unlock()
	d := startProxyDaemon(t, func(c *Config) {
		c.Proxy.Rules = []ProxyRule{{Regex: `/files/.*\.bin(\?|$)`}}
	})
	pu, _ := url.Parse("http://" + d.ProxyAddr())
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}
	req, _ := http.NewRequest(http.MethodGet, reg.URL+"/files/big.bin?sig=1", nil)
	req.Header.Set("X-Dragonfly-Tag", "t1")
	req.Header.Set("X-Dragonfly-Filter", "sig")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, file) {
		t.Fatalf("proxied P2P file: %d, %d bytes", resp.StatusCode, len(got))
	}
	id := core.TaskID(reg.URL+"/files/big.bin?sig=2", core.TaskOptions{Tag: "t1", FilteredQuery: []string{"sig"}})
	if tk, ok := d.Store().Get(id); !ok || !tk.Complete() {
		for _, tk := range d.Store().List() {
			t.Logf("task %s %+v", tk.ID(), tk.Meta())
		}
		t.Fatal("the file is not a task keyed by URL without the filtered parameter, with the tag")
	}
	// A URL no rule matches passes through (not cached).
	resp, err = client.Get(reg.URL + "/v2/lib/app/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(d.Store().List()) != 1 {
		t.Fatalf("pass-through: %d, %d tasks", resp.StatusCode, len(d.Store().List()))
	}
}

func TestProxyConnectTunnelAndHijack(t *testing.T) {
	reg := newTestRegistry(t, true)
	blob := randomBytes(500_000, 5)
	dg := reg.addBlob(blob, false)
	regURL, _ := url.Parse(reg.URL)
	_, port, _ := net.SplitHostPort(regURL.Host)
	host := "localhost:" + port // the CA signs for the name the client asks for

	// Tunnel: the client sees the registry's own certificate.
	d := startProxyDaemon(t, nil)
	pu, _ := url.Parse("http://" + d.ProxyAddr())
	pool := x509.NewCertPool()
	pool.AddCert(reg.Certificate())
	tunnel := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu), TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := tunnel.Get("https://" + regURL.Host + "/v2/lib/app/blobs/" + dg)
	if err != nil {
		t.Fatalf("tunnelled GET: %v", err)
	}
	resp.Body.Close()
	if len(d.Store().List()) != 0 {
		t.Fatal("a tunnelled request was cached")
	}

	// Hijack: the proxy's CA signs the host; the blob goes through the task.
	d = startProxyDaemon(t, func(c *Config) {
		c.Proxy.HijackHosts = []string{`^localhost:`}
		c.Proxy.Registries = []RegistryConfig{{Host: host, Insecure: true}}
	})
	caPEM, err := os.ReadFile(filepath.Join(d.cfg.DataDir, "proxy-ca", "ca.crt"))
	if err != nil {
		t.Fatalf("CA certificate not written: %v", err)
	}
	caPool := x509.NewCertPool()
	if !caPool.AppendCertsFromPEM(caPEM) {
		t.Fatal("CA certificate unreadable")
	}
	pu, _ = url.Parse("http://" + d.ProxyAddr())
	hijack := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu), TLSClientConfig: &tls.Config{RootCAs: caPool}}}
	resp, err = hijack.Get("https://" + host + "/v2/lib/app/blobs/" + dg)
	if err != nil {
		t.Fatalf("hijacked GET: %v", err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, blob) {
		t.Fatalf("hijacked blob: %d, %d bytes", resp.StatusCode, len(got))
	}
	id, _ := core.ContentTaskID(dg)
	if tk, ok := d.Store().Get(id); !ok || !tk.Complete() {
		t.Fatal("hijacked blob did not go through the task")
	}
}

func TestProxyDeniesClientsOutsideAllowedNetworks(t *testing.T) {
	d := startProxyDaemon(t, func(c *Config) { c.Proxy.AllowedClients = []string{"10.99.0.0/16"} })
	resp, _ := mirrorGet(t, d, "/v2/", nil)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("client outside allowed_clients: %d", resp.StatusCode)
	}
	// CONNECT is refused too, before any dial.
	conn, err := net.Dial("tcp", d.ProxyAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "CONNECT example.invalid:443 HTTP/1.1\r\nHost: example.invalid:443\r\n\r\n")
	r, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || r.StatusCode != http.StatusForbidden {
		t.Fatalf("CONNECT: %v %v", r, err)
	}
}

func TestParseRange(t *testing.T) {
	for _, c := range []struct {
		v           string
		start, end  int64
		partial, ok bool
	}{
		{"", 0, 100, false, true},
		{"bytes=0-9", 0, 10, true, true},
		{"bytes=90-", 90, 100, true, true},
		{"bytes=90-1000", 90, 100, true, true},
		{"bytes=-10", 90, 100, true, true},
		{"bytes=-1000", 0, 100, true, true},
		{"bytes=100-", 0, 0, false, false},
		{"bytes=-0", 0, 0, false, false},
		{"bytes=5-1", 0, 100, false, true},
		{"bytes=0-1,5-6", 0, 100, false, true},
		{"items=0-1", 0, 100, false, true},
	} {
		s, e, p, ok := parseRange(c.v, 100)
		if s != c.start || e != c.end || p != c.partial || ok != c.ok {
			t.Errorf("parseRange(%q) = %d %d %v %v, want %d %d %v %v", c.v, s, e, p, ok, c.start, c.end, c.partial, c.ok)
		}
	}
}

func TestMirrorUpstream(t *testing.T) {
	mirror, _ := url.Parse("http://reg.local:5000")
	p := &proxy{mirror: mirror, registries: map[string]RegistryConfig{"plain.example": {Host: "plain.example", Scheme: "http"}}}
	for in, want := range map[string]string{
		"/v2/a/b/manifests/v1?ns=reg.local:5000":    "http://reg.local:5000/v2/a/b/manifests/v1",
		"/v2/a/b/manifests/v1":                      "http://reg.local:5000/v2/a/b/manifests/v1",
		"/v2/library/x/blobs/sha256:1?ns=docker.io": "https://registry-1.docker.io/v2/library/x/blobs/sha256:1",
		"/v2/a/tags/list?n=5&ns=plain.example":      "http://plain.example/v2/a/tags/list?n=5",
		"/v2/a/tags/list?ns=other.example":          "https://other.example/v2/a/tags/list",
	} {
		u, _ := url.Parse(in)
		got, err := p.mirrorUpstream(u)
		if err != nil || got.String() != want {
			t.Errorf("mirrorUpstream(%s) = %v, %v; want %s", in, got, err, want)
		}
	}
	p.mirror = nil
	if _, err := p.mirrorUpstream(&url.URL{Path: "/v2/a/manifests/v1"}); err == nil {
		t.Error("no ns and no registry_mirror: want an error")
	}
}

func TestSplitCredentialsAndTaskOptions(t *testing.T) {
	pub, priv := splitCredentials(map[string]string{"authorization": "Bearer x", "Cookie": "c", "X-Custom": "1"})
	if len(pub) != 1 || pub["X-Custom"] != "1" || priv.Get("Authorization") != "Bearer x" || priv.Get("Cookie") != "c" {
		t.Fatalf("split: %v %v", pub, priv)
	}
	h := http.Header{"X-Dragonfly-Tag": {"t"}, "X-Damselfly-Application": {"app"}, "X-Dragonfly-Filter": {"Signature&Expires,x"}}
	o := taskOptionsFrom(h)
	if o.Tag != "t" || o.Application != "app" || strings.Join(o.FilteredQuery, " ") != "Signature Expires x" || len(h) != 0 {
		t.Fatalf("task options %+v, left headers %v", o, h)
	}
}

// An HTTPS upstream with its own CA: both the P2P path (the daemon's origin
// fetch) and the pass-through trust it through proxy.registries[].ca_file.
func TestMirrorHTTPSUpstreamWithCustomCA(t *testing.T) {
	reg := newTestRegistry(t, true)
	blob := randomBytes(700_000, 6)
	dg := reg.addBlob(blob, false)
	host := strings.TrimPrefix(reg.URL, "https://")
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: reg.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	untrusted := startProxyDaemon(t, func(c *Config) { c.Proxy.RegistryMirror = reg.URL })
	if resp, _ := mirrorGet(t, untrusted, "/v2/lib/app/manifests/v1?ns="+host, nil); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("unknown CA: status %d, want 502", resp.StatusCode)
	}
	d := startProxyDaemon(t, func(c *Config) {
		c.Proxy.RegistryMirror = reg.URL
		c.Proxy.Registries = []RegistryConfig{{Host: host, CAFile: ca}}
	})
	if resp, _ := mirrorGet(t, d, "/v2/lib/app/manifests/v1?ns="+host, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("manifest over https with ca_file: %d", resp.StatusCode)
	}
	resp, got := mirrorGet(t, d, "/v2/lib/app/blobs/"+dg+"?ns="+host, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, blob) {
		t.Fatalf("blob over https with ca_file: %d, %d bytes", resp.StatusCode, len(got))
	}
}

// A rule with use_https fetches a plain-HTTP proxy request over https (the
// upstream here speaks only TLS, so without the upgrade the fetch fails).
func TestHTTPProxyUseHTTPS(t *testing.T) {
	reg := newTestRegistry(t, true)
	file := randomBytes(300_000, 7)
	reg.mu.Lock()
	reg.blobs["file"] = file
	reg.mu.Unlock()
	host := strings.TrimPrefix(reg.URL, "https://")
	plain := "http://" + host + "/files/big.bin"
	for _, upgrade := range []bool{false, true} {
		d := startProxyDaemon(t, func(c *Config) {
			c.Proxy.Rules = []ProxyRule{{Regex: `/files/.*\.bin$`, UseHTTPS: upgrade}}
			c.Proxy.Registries = []RegistryConfig{{Host: host, Insecure: true}}
		})
		pu, _ := url.Parse("http://" + d.ProxyAddr())
		client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}
		resp, err := client.Get(plain)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if ok := resp.StatusCode == http.StatusOK && bytes.Equal(got, file); ok != upgrade {
			t.Fatalf("use_https=%v: status %d, %d bytes", upgrade, resp.StatusCode, len(got))
		}
	}
}

// A blob fetched with credentials is private: when the registry cannot be
// reached for the access check, the cached copy is not served (fail closed),
// with or without credentials, while a public cached blob still is.
func TestMirrorFailsClosedForPrivateBlob(t *testing.T) {
	reg := newTestRegistry(t, false)
	reg.needsAuth = true
	blob := randomBytes(300_000, 5)
	dg := reg.addBlob(blob, false)
	d := startProxyDaemon(t, func(c *Config) { c.Proxy.RegistryMirror = reg.URL })
	auth := http.Header{"Authorization": {"Basic dTpw"}}
	resp, got := mirrorGet(t, d, "/v2/lib/app/blobs/"+dg, auth)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, blob) {
		t.Fatalf("with credentials: %d, %d bytes", resp.StatusCode, len(got))
	}
	id, _ := core.ContentTaskID(dg)
	tk, ok := d.Store().Get(id)
	if !ok || !tk.Complete() || !tk.Private() {
		t.Fatalf("blob fetched with credentials: cached %v, private %v", ok, ok && tk.Private())
	}
	// A public blob, fetched without credentials, for comparison.
	reg.mu.Lock()
	reg.needsAuth = false
	reg.mu.Unlock()
	pub := randomBytes(100_000, 6)
	pdg := reg.addBlob(pub, false)
	if resp, got := mirrorGet(t, d, "/v2/lib/app/blobs/"+pdg, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(got, pub) {
		t.Fatalf("public blob: %d", resp.StatusCode)
	}

	reg.Close() // the registry is gone
	for name, h := range map[string]http.Header{"with credentials": auth, "without": nil} {
		resp, got := mirrorGet(t, d, "/v2/lib/app/blobs/"+dg, h)
		if resp.StatusCode != http.StatusServiceUnavailable || bytes.Contains(got, blob[:1000]) {
			t.Errorf("private cached blob, registry unreachable, %s: status %d, %d bytes", name, resp.StatusCode, len(got))
		}
	}
	if resp, got := mirrorGet(t, d, "/v2/lib/app/blobs/"+pdg, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(got, pub) {
		t.Errorf("public cached blob, registry unreachable: status %d, %d bytes", resp.StatusCode, len(got))
	}
}
