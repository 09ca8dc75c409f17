package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
)

// The proxy is what container runtimes and other HTTP clients talk to: a
// registry mirror (requests like /v2/<repo>/blobs/<digest>?ns=<registry>)
// and an HTTP(S) proxy (absolute URLs, CONNECT). Rules pick the requests
// that go P2P — by default registry blob GETs, whose task is their digest —
// and everything else passes straight through to the upstream. Any failure
// of the P2P path before the first byte degrades to a pass-through, so a
// pull never fails because the swarm did.

// blobPath matches a registry blob URL path; the digest names the task.
var blobPath = regexp.MustCompile(`^/v2/(.+)/blobs/(sha256:[0-9a-fA-F]{64})$`)

// defaultRules send registry blob GETs P2P and nothing else.
var defaultRules = []ProxyRule{{Regex: `^https?://[^/]+/v2/.+/blobs/sha256:[0-9a-fA-F]{64}(\?.*)?$`}}

// hopHeaders are connection-level headers a proxy must not forward.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

type rule struct {
	re       *regexp.Regexp
	direct   bool
	useHTTPS bool
}

type proxy struct {
	d          *Daemon
	log        *slog.Logger
	mirror     *url.URL // default upstream registry; nil when none
	registries map[string]RegistryConfig
	rules      []rule
	hijack     []*regexp.Regexp
	allowed    []*net.IPNet
	ca         *certAuthority // nil unless hijack hosts are configured
	verify     bool

	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
}

func newProxy(d *Daemon) (*proxy, error) {
	cfg := d.cfg.Proxy
	p := &proxy{d: d, log: d.log.With("component", "proxy"), registries: map[string]RegistryConfig{}, verify: cfg.VerifyAccess}
	if cfg.RegistryMirror != "" {
		u, err := url.Parse(cfg.RegistryMirror)
		if err != nil {
			return nil, fmt.Errorf("proxy.registry_mirror: %w", err)
		}
		p.mirror = u
	}
	for _, r := range cfg.Registries {
		p.registries[r.Host] = r
	}
	rules := cfg.Rules
	if len(rules) == 0 {
		rules = defaultRules
	}
	for _, r := range rules {
		re, err := regexp.Compile(r.Regex)
		if err != nil {
			return nil, fmt.Errorf("proxy rule %q: %w", r.Regex, err)
		}
		p.rules = append(p.rules, rule{re: re, direct: r.Direct, useHTTPS: r.UseHTTPS})
	}
	for _, h := range cfg.HijackHosts {
		re, err := regexp.Compile(h)
		if err != nil {
			return nil, fmt.Errorf("proxy hijack host %q: %w", h, err)
		}
		p.hijack = append(p.hijack, re)
	}
	for _, n := range cfg.AllowedClients {
		_, ipn, err := net.ParseCIDR(n)
		if err != nil {
			return nil, fmt.Errorf("proxy.allowed_clients %q: %w", n, err)
		}
		p.allowed = append(p.allowed, ipn)
	}
	if len(p.hijack) > 0 {
		ca, err := loadOrCreateCA(cfg.CACert, cfg.CAKey, d.cfg.DataDir)
		if err != nil {
			return nil, err
		}
		p.ca = ca
		p.log.Info("proxy terminates TLS for hijacked hosts; clients must trust the CA", "ca_cert", ca.certPath)
	}
	p.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "damselfly_proxy_requests_total",
		Help: "Proxy requests by route: p2p, direct (passed through), fallback (P2P failed, passed through), tunnel, hijack, denied."},
		[]string{"route"})
	p.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "damselfly_proxy_response_bytes_total",
		Help: "Body bytes the proxy sent to its clients, by route (p2p, direct)."}, []string{"route"})
	if d.reg != nil {
		d.reg.MustRegister(p.requests, p.bytes)
	}
	return p, nil
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !p.clientAllowed(r.RemoteAddr) {
		p.requests.WithLabelValues("denied").Inc()
		http.Error(w, "damselfly proxy: client address not in proxy.allowed_clients", http.StatusForbidden)
		return
	}
	if r.Method == http.MethodConnect {
		p.connect(w, r)
		return
	}
	var upstream *url.URL
	if r.URL.IsAbs() {
		upstream = p.proxyUpstream(r.URL)
	} else {
		var err error
		if upstream, err = p.mirrorUpstream(r.URL); err != nil {
			p.requests.WithLabelValues("denied").Inc()
			http.Error(w, "damselfly proxy: "+err.Error(), http.StatusNotFound)
			return
		}
	}
	p.serve(w, r, upstream)
}

// serve routes one request for upstream.
func (p *proxy) serve(w http.ResponseWriter, r *http.Request, upstream *url.URL) {
	opts := taskOptionsFrom(r.Header)
	if r.Method == http.MethodGet && p.p2p(upstream) {
		p.serveP2P(w, r, upstream, opts)
		return
	}
	p.requests.WithLabelValues("direct").Inc()
	p.passThrough(w, r, upstream, "direct")
}

func (p *proxy) clientAllowed(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return false
	}
	for _, n := range p.allowed {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// rule returns the first rule matching u, or nil.
func (p *proxy) rule(u *url.URL) *rule {
	s := u.String()
	for i := range p.rules {
		if p.rules[i].re.MatchString(s) {
			return &p.rules[i]
		}
	}
	return nil
}

// p2p applies the rules to an upstream URL.
func (p *proxy) p2p(u *url.URL) bool {
	r := p.rule(u)
	return r != nil && !r.direct
}

// proxyUpstream is the upstream of an absolute-form (HTTP proxy) request;
// a rule with use_https upgrades plain HTTP.
func (p *proxy) proxyUpstream(in *url.URL) *url.URL {
	u := *in
	if r := p.rule(&u); u.Scheme == "http" && r != nil && r.useHTTPS {
		u.Scheme = "https"
	}
	return &u
}

// mirrorUpstream maps a mirror request (/v2/...) to its upstream registry:
// the one named by ns (containerd's hosts.toml adds it), else the default
// registry_mirror. The scheme comes from the registry's configuration, else
// from registry_mirror when ns names its host, else https.
func (p *proxy) mirrorUpstream(in *url.URL) (*url.URL, error) {
	if in.Path != "/v2" && !strings.HasPrefix(in.Path, "/v2/") {
		return nil, fmt.Errorf("%s is not a registry API path (/v2/...); use the proxy as a registry mirror or an HTTP proxy", in.Path)
	}
	q := in.Query()
	ns := q.Get("ns")
	q.Del("ns")
	u := &url.URL{Path: in.Path, RawPath: in.RawPath, RawQuery: q.Encode()}
	switch {
	case ns != "":
		if !core.ValidHostPort(ns) {
			return nil, fmt.Errorf("ns %q is not a registry host[:port]", ns)
		}
		host := ns
		if host == "docker.io" {
			host = "registry-1.docker.io" // docker.io's registry API lives there
		}
		u.Host, u.Scheme = host, "https"
		if p.mirror != nil && (p.mirror.Host == host || p.mirror.Host == ns) {
			u.Scheme = p.mirror.Scheme
		}
		if rc, ok := p.registries[ns]; ok && rc.Scheme != "" {
			u.Scheme = rc.Scheme
		} else if rc, ok := p.registries[host]; ok && rc.Scheme != "" {
			u.Scheme = rc.Scheme
		}
	case p.mirror != nil:
		u.Scheme, u.Host = p.mirror.Scheme, p.mirror.Host
		if pre := strings.TrimSuffix(p.mirror.Path, "/"); pre != "" {
			u.Path = pre + u.Path
			u.RawPath = ""
		}
	default:
		return nil, errors.New("request names no registry (no ns parameter) and proxy.registry_mirror is empty")
	}
	return u, nil
}

// outHeaders are the client's end-to-end headers for the upstream.
func outHeaders(in http.Header) http.Header {
	h := in.Clone()
	for _, c := range in.Values("Connection") {
		for _, k := range strings.Split(c, ",") {
			h.Del(strings.TrimSpace(k))
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
	return h
}

// passThrough forwards the request to upstream and the answer back, as they
// are (redirects included: the client follows them).
func (p *proxy) passThrough(w http.ResponseWriter, r *http.Request, upstream *url.URL, route string) {
	out, err := http.NewRequestWithContext(r.Context(), r.Method, upstream.String(), r.Body)
	if err != nil {
		http.Error(w, "damselfly proxy: "+err.Error(), http.StatusBadRequest)
		return
	}
	out.Header = outHeaders(r.Header)
	out.ContentLength = r.ContentLength
	if r.ContentLength == 0 {
		out.Body = nil
	}
	resp, err := p.d.httpSrc.Client(upstream.Host).Do(out)
	if err != nil {
		if r.Context().Err() == nil {
			p.log.Warn("upstream unreachable", "method", r.Method, "url", redactURL(upstream), "err", err)
		}
		msg := fmt.Sprintf("damselfly proxy: upstream %s: %v", upstream.Host, unwrapURLError(err))
		if upstream.Scheme == "https" && strings.Contains(err.Error(), "HTTP response to HTTPS client") {
			msg += fmt.Sprintf(" (a plain-HTTP registry: add {host: %q, scheme: http} to proxy.registries, or make it --registry-mirror http://%s)", upstream.Host, upstream.Host)
		}
		http.Error(w, msg, http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, vs := range outHeaders(resp.Header) {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	n, _ := io.Copy(w, resp.Body)
	p.bytes.WithLabelValues(route).Add(float64(n))
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func redactURL(u *url.URL) string {
	c := *u
	c.RawQuery, c.User = "", nil
	return c.String()
}

// checkAccess asks the upstream, with the client's own credentials, whether
// the client may read the URL. A definite no (401, 403, 404) is answered by
// passing the request through, so the client sees the upstream's answer
// unchanged (e.g. its WWW-Authenticate challenge); it reports whether it
// answered. err is set when the upstream could not tell (unreachable,
// failing): the caller then serves no private content.
func (p *proxy) checkAccess(w http.ResponseWriter, r *http.Request, upstream *url.URL) (answered bool, err error) {
	ctx, cancel := context.WithTimeout(r.Context(), p.d.cfg.OriginTimeout.D())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, upstream.String(), nil)
	if err != nil {
		return false, err
	}
	req.Header = outHeaders(r.Header)
	req.Header.Del("Range")
	resp, err := p.d.httpSrc.Client(upstream.Host).Do(req)
	if err != nil {
		p.log.Debug("access check failed", "url", redactURL(upstream), "err", err)
		return false, fmt.Errorf("access check: %w", err)
	}
	resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized, resp.StatusCode == http.StatusForbidden, resp.StatusCode == http.StatusNotFound:
		p.requests.WithLabelValues("direct").Inc()
		p.passThrough(w, r, upstream, "direct")
		return true, nil
	case resp.StatusCode >= 500:
		return false, fmt.Errorf("access check: upstream answered %s", resp.Status)
	}
	return false, nil
}

// hasCredentials reports whether a client request carries credentials for
// the upstream: what it fetches with them is private.
func hasCredentials(h http.Header) bool {
	return h.Get("Authorization") != "" || h.Get("Cookie") != ""
}

// serveP2P answers a GET from the task: the cache when complete, else the
// swarm (pieces stream to the client as they are verified). Before the first
// byte, any P2P failure falls back to passing the request through; after it,
// a failure aborts the response. The piece that completes the content is sent
// only after the whole content matched its digest, so a client never receives
// a corrupt blob whole: it sees an aborted body (and fails its own digest
// check), never a 200 with every byte.
func (p *proxy) serveP2P(w http.ResponseWriter, r *http.Request, upstream *url.URL, opts core.TaskOptions) {
	ctx := r.Context()
	var id, digest string
	if m := blobPath.FindStringSubmatch(upstream.Path); m != nil {
		digest = strings.ToLower(m[2])
		id, _ = core.ContentTaskID(digest)
	} else {
		id = core.TaskID(upstream.String(), opts)
	}
	// Private content (fetched with credentials, or held as such) is served
	// only once the upstream granted it to this client: when it cannot be
	// asked, fail closed, neither from the cache nor from the swarm.
	private := hasCredentials(r.Header)
	if t, ok := p.d.store.Get(id); ok && t.Private() {
		private = true
	}
	verified := false
	if p.verify || private {
		answered, err := p.checkAccess(w, r, upstream)
		if answered {
			return
		}
		if err != nil && private {
			p.requests.WithLabelValues("refused").Inc()
			p.log.Warn("registry unreachable for the access check; private content not served", "task_id", id, "url", redactURL(upstream), "err", err)
			http.Error(w, "damselfly proxy: cannot reach the registry to check access to private content; not served: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		verified = err == nil
	}
	hdr := outHeaders(r.Header)
	for _, k := range []string{"Range", "If-Range", "If-None-Match", "If-Modified-Since", "Accept-Encoding"} {
		hdr.Del(k) // the task is the whole content, as the origin stores it
	}
	public, creds := p.taskHeaders(hdr, digest != "")
	spec := &schedulerv1.TaskSpec{TaskId: id, Url: upstream.String(), Digest: digest, Headers: public,
		Tag: opts.Tag, Application: opts.Application, FilteredQuery: opts.FilteredQuery, Private: len(creds) > 0}
	c, _, release, err := p.d.openTask(taskRequest{spec: spec, originHeaders: creds, streaming: true, verified: verified})
	if err != nil {
		p.fallback(w, r, upstream, id, err)
		return
	}
	defer release()
	length, err := c.waitShape(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, core.ErrDigestMismatch) {
			p.requests.WithLabelValues("p2p").Inc()
			p.log.Error("upstream content does not match its digest; not served", "task_id", id, "url", redactURL(upstream), "err", err)
			http.Error(w, "damselfly proxy: upstream content does not match its digest "+digest, http.StatusBadGateway)
			return
		}
		p.fallback(w, r, upstream, id, err)
		return
	}
	start, end, partial, ok := parseRange(r.Header.Get("Range"), length)
	if !ok {
		w.Header().Set("Content-Range", "bytes */"+strconv.FormatInt(length, 10))
		http.Error(w, "damselfly proxy: range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
		return
	}
	p.requests.WithLabelValues("p2p").Inc()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Length", strconv.FormatInt(end-start, 10))
	if digest != "" {
		h.Set("Docker-Content-Digest", digest)
		h.Set("Etag", `"`+digest+`"`)
	}
	status := http.StatusOK
	if partial {
		status = http.StatusPartialContent
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, length))
	}
	w.WriteHeader(status)
	n, err := c.copyOut(ctx, w, start, end)
	p.bytes.WithLabelValues("p2p").Add(float64(n))
	if err != nil {
		if ctx.Err() == nil {
			p.log.Error("P2P transfer failed after the response started; aborting it", "task_id", id, "sent", n, "err", err)
		}
		panic(http.ErrAbortHandler) // the client must not take a short body for the content
	}
	c.task.Touch()
}

// taskHeaders splits the request headers for the task: credentials stay on
// this daemon; for a blob (content named by digest) nothing else matters to
// the origin either, for other URLs the remaining end-to-end headers travel
// with the task so a seed peer fetches the same thing.
func (p *proxy) taskHeaders(h http.Header, blob bool) (map[string]string, http.Header) {
	flat := make(map[string]string, len(h))
	for k := range h {
		switch http.CanonicalHeaderKey(k) {
		case "User-Agent", "Accept", "Accept-Language":
			continue
		}
		flat[k] = h.Get(k)
	}
	public, private := splitCredentials(flat)
	if blob {
		public = nil
	}
	return public, private
}

// fallback passes a request through after the P2P path failed before
// anything was sent.
func (p *proxy) fallback(w http.ResponseWriter, r *http.Request, upstream *url.URL, id string, err error) {
	p.log.Warn("P2P path failed; passing the request through to the upstream", "task_id", id, "url", redactURL(upstream), "err", err)
	p.requests.WithLabelValues("fallback").Inc()
	p.passThrough(w, r, upstream, "fallback")
}

// parseRange reads a single "bytes=a-b", "bytes=a-" or "bytes=-n" range of
// a content of length l into [start, end). No (or a multi-part) range means
// the whole content; ok is false when the range cannot be satisfied.
func parseRange(v string, l int64) (start, end int64, partial, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" || !strings.HasPrefix(v, "bytes=") || strings.Contains(v, ",") {
		return 0, l, false, true
	}
	a, b, found := strings.Cut(strings.TrimPrefix(v, "bytes="), "-")
	if !found {
		return 0, l, false, true
	}
	a, b = strings.TrimSpace(a), strings.TrimSpace(b)
	switch {
	case a == "" && b == "":
		return 0, l, false, true
	case a == "":
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n < 0 {
			return 0, l, false, true
		}
		if n == 0 || l == 0 {
			// No byte to send: a suffix of an empty content is not
			// satisfiable (it once answered "bytes 0--1/0").
			return 0, 0, false, false
		}
		return max(l-n, 0), l, true, true
	}
	s, err := strconv.ParseInt(a, 10, 64)
	if err != nil || s < 0 {
		return 0, l, false, true
	}
	if s >= l {
		return 0, 0, false, false
	}
	e := l - 1
	if b != "" {
		if e, err = strconv.ParseInt(b, 10, 64); err != nil || e < s {
			return 0, l, false, true
		}
		e = min(e, l-1)
	}
	return s, e + 1, true, true
}

// connect handles CONNECT: terminated with the proxy's CA for hijacked
// hosts (their requests then follow the rules like plain proxy requests),
// tunnelled untouched for everything else.
func (p *proxy) connect(w http.ResponseWriter, r *http.Request) {
	target := r.Host
	if _, _, err := net.SplitHostPort(target); err != nil {
		target = net.JoinHostPort(target, "443")
	}
	if p.ca != nil && p.hijacked(target) {
		p.requests.WithLabelValues("hijack").Inc()
		p.terminate(w, target)
		return
	}
	p.requests.WithLabelValues("tunnel").Inc()
	dst, err := (&net.Dialer{Timeout: p.d.cfg.OriginTimeout.D()}).DialContext(r.Context(), "tcp", target)
	if err != nil {
		http.Error(w, "damselfly proxy: "+err.Error(), http.StatusBadGateway)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		dst.Close()
		http.Error(w, "damselfly proxy: cannot take over the connection", http.StatusInternalServerError)
		return
	}
	_, _ = conn.Write([]byte("HTTP/1.1 200 Connection Established\r\n\r\n"))
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		// bytes the client sent after the CONNECT line are buffered in brw
		_, _ = io.Copy(dst, brw.Reader)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	go func() {
		defer wg.Done()
		_, _ = io.Copy(conn, dst)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	wg.Wait()
	conn.Close()
	dst.Close()
}

func (p *proxy) hijacked(hostport string) bool {
	for _, re := range p.hijack {
		if re.MatchString(hostport) {
			return true
		}
	}
	return false
}

// terminate speaks TLS to the client as target, with a certificate from the
// proxy's CA, and serves the requests inside as https requests to target.
func (p *proxy) terminate(w http.ResponseWriter, target string) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, "damselfly proxy: cannot take over the connection", http.StatusInternalServerError)
		return
	}
	if _, err := conn.Write([]byte("HTTP/1.1 200 Connection Established\r\n\r\n")); err != nil {
		conn.Close()
		return
	}
	host, _, _ := net.SplitHostPort(target)
	tlsConn := p.ca.server(&bufferedConn{Conn: conn, r: brw.Reader}, host)
	// The same timeouts as the proxy port itself.
	srv := p.d.cfg.Obs.Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u := *r.URL
		u.Scheme, u.Host = "https", target
		if strings.HasSuffix(target, ":443") {
			u.Host = host
		}
		p.serve(w, r, &u)
	}))
	srv.ErrorLog = slog.NewLogLogger(p.log.Handler(), slog.LevelDebug)
	_ = srv.Serve(newOneConnListener(tlsConn))
}
