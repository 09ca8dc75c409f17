package source

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/damselfly-io/damselfly/core"
)

// keptHeaders are the response headers a Response carries.
var keptHeaders = []string{"Content-Type", "Content-Encoding", "Content-Disposition", "ETag", "Last-Modified", "Docker-Content-Digest"}

const (
	maxBackoff     = 30 * time.Second
	maxRetryAfter  = 60 * time.Second
	maxRedirects   = 10
	drainOnFailure = 4 << 10
)

var (
	errTooManyRedirects = errors.New("too many redirects")
	// errRangeIgnored: a resumed request got 200, so its bytes would not
	// continue the ones already delivered.
	errRangeIgnored = errors.New("origin ignored the range of a resumed request")
	// errChanged: the content changed between the first request and a resumed one.
	errChanged = errors.New("content changed at the origin during the transfer")
	errStalled = errors.New("no data received")
)

// HTTP fetches http and https URLs: ranges, redirects, retries with backoff,
// and bodies that resume after a broken connection.
type HTTP struct {
	client  *http.Client
	clients map[string]*http.Client // hosts with their own TLS settings
	cfg     Config
	tokens  tokens
}

var _ Source = (*HTTP)(nil)

// NewHTTP returns an HTTP(S) source.
func NewHTTP(cfg Config) (*HTTP, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.InsecureSkipVerify} //nolint:gosec // opt-in by config
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("source config: read ca_file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("source config: ca_file %s holds no PEM certificate: %w", cfg.CAFile, core.ErrInvalid)
		}
		tlsCfg.RootCAs = pool
	}
	dialer := &net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSClientConfig:       tlsCfg,
		TLSHandshakeTimeout:   cfg.Timeout,
		ResponseHeaderTimeout: cfg.Timeout,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		// The daemon fetches many ranges of one content from one origin.
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     90 * time.Second,
		// Bytes must arrive as the origin stores them: transparent gunzip
		// would break lengths, ranges and digests.
		DisableCompression: true,
		ReadBufferSize:     64 << 10,
		WriteBufferSize:    16 << 10,
	}
	client := &http.Client{
		Transport: tr,
		// Same limit as net/http's default policy, but with an error we can
		// tell apart (not worth retrying). net/http still drops Authorization
		// and cookies when a redirect leaves the original host.
		CheckRedirect: func(_ *http.Request, via []*http.Request) error {
			if len(via) >= maxRedirects {
				return fmt.Errorf("stopped after %d redirects: %w", maxRedirects, errTooManyRedirects)
			}
			return nil
		},
	}
	h := &HTTP{client: client, cfg: cfg, clients: map[string]*http.Client{}}
	for host, hc := range cfg.Hosts {
		if !hc.Insecure && hc.CAFile == "" {
			continue
		}
		hostTLS, err := tlsFor(tlsCfg, hc)
		if err != nil {
			return nil, fmt.Errorf("host %s: %w", host, err)
		}
		htr := tr.Clone()
		htr.TLSClientConfig = hostTLS
		hcl := *client
		hcl.Transport = htr
		h.clients[host] = &hcl
	}
	return h, nil
}

// Fetch requests the range of req and returns a body that resumes with a
// range request from the byte it reached if the connection breaks.
func (h *HTTP) Fetch(ctx context.Context, req Request) (*Response, error) {
	u, err := url.Parse(req.URL)
	if err != nil {
		return nil, fmt.Errorf("fetch: parse URL: %w: %w", core.ErrInvalid, err)
	}
	if s := strings.ToLower(u.Scheme); (s != "http" && s != "https") || u.Host == "" {
		return nil, fmt.Errorf("fetch %s: not an http(s) URL with a host: %w", redact(u), core.ErrInvalid)
	}
	if req.Offset < 0 || req.Length < -1 {
		return nil, fmt.Errorf("fetch %s: bad range offset %d length %d: %w", redact(u), req.Offset, req.Length, core.ErrInvalid)
	}
	hdr := requestHeader(req.Header)
	length := req.Length
	if length == 0 {
		// Asked only for what the origin says about the content: fetch to the
		// end and hang up after the headers.
		length = -1
	}
	bctx, cancel := context.WithCancel(ctx)
	p, err := h.open(bctx, u, hdr, req.Offset, length)
	if err != nil {
		cancel()
		return nil, err
	}
	b := &body{
		ctx:       bctx,
		cancel:    cancel,
		h:         h,
		u:         u,
		hdr:       hdr,
		start:     req.Offset,
		limit:     req.Length,
		want:      -1,
		total:     p.total,
		cur:       p,
		resumable: p.rangeOK,
		validator: validator(p.header),
		etag:      p.header.Get("ETag"),
	}
	if p.total >= 0 {
		b.want = max(p.total-req.Offset, 0)
		if req.Length >= 0 {
			b.want = min(b.want, req.Length)
		}
		b.limit = b.want
	}
	if req.Length == 0 {
		b.limit, b.want = 0, 0
		_ = b.finish(io.EOF)
	}
	resp := &Response{
		Body:          b,
		ContentLength: p.total,
		Header:        p.header,
		RangeOK:       p.rangeOK,
		Remote:        p.remote,
	}
	return resp, nil
}

// requestHeader canonicalises the caller's header and drops what the source owns.
func requestHeader(in http.Header) http.Header {
	out := make(http.Header, len(in))
	for k, vs := range in {
		for _, v := range vs {
			out.Add(k, v)
		}
	}
	out.Del("Range")
	out.Del("If-Range")
	return out
}

// validator picks the response's strong validator for If-Range.
func validator(h http.Header) string {
	if et := h.Get("ETag"); et != "" && !strings.HasPrefix(et, "W/") {
		return et
	}
	return h.Get("Last-Modified")
}

// part is one HTTP response positioned at the offset it was asked for.
type part struct {
	rc      io.ReadCloser
	left    int64 // bytes this response still owes, -1 when unknown
	total   int64 // length of the whole content, -1 when unknown
	rangeOK bool
	header  http.Header
	remote  net.Addr // the origin's address, nil through a proxy
	cancel  context.CancelFunc
	idle    *time.Timer // fires cancel when a read stalls
	timeout time.Duration
	once    sync.Once
}

// close releases the response; it may be called more than once, also
// concurrently with read (which it aborts).
func (p *part) close() {
	p.once.Do(func() {
		p.cancel()
		if p.idle != nil {
			p.idle.Stop()
		}
		if p.rc != nil {
			_ = p.rc.Close()
		}
	})
}

// open performs GET with retries and backoff.
func (h *HTTP) open(ctx context.Context, u *url.URL, hdr http.Header, off, length int64) (*part, error) {
	for attempt := 0; ; attempt++ {
		p, err := h.attempt(ctx, u, hdr, off, length, false, "")
		if err == nil {
			return p, nil
		}
		if attempt >= h.cfg.Retries || !retryable(ctx, err) {
			if attempt > 0 {
				return nil, fmt.Errorf("%w (gave up after %d attempts)", err, attempt+1)
			}
			return nil, err
		}
		if werr := sleep(ctx, h.backoff(attempt, err)); werr != nil {
			return nil, fmt.Errorf("GET %s: wait to retry: %w (last error: %v)", redact(u), werr, err)
		}
	}
}

// attempt performs one GET for [off, off+length). A resumed request sends
// If-Range (when the first response gave a validator) and accepts only a 206.
func (h *HTTP) attempt(ctx context.Context, u *url.URL, hdr http.Header, off, length int64, resuming bool, ifRange string) (*part, error) {
	actx, cancel := context.WithCancel(ctx)
	var peer connPeer
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(actx, peer.trace()), http.MethodGet, u.String(), nil)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("GET %s: %w: %w", redact(u), core.ErrInvalid, err)
	}
	for k, vs := range hdr {
		if k == "Host" {
			req.Host = vs[0]
			continue
		}
		req.Header[k] = vs
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", h.cfg.UserAgent)
	}
	ranged := off > 0 || length >= 0
	if ranged {
		end := ""
		if length >= 0 {
			end = strconv.FormatInt(off+length-1, 10)
		}
		req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-"+end)
	}
	if resuming && ifRange != "" {
		req.Header.Set("If-Range", ifRange)
	}
	client := h.hostClient(u.Host)
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		if cerr := ctx.Err(); cerr != nil {
			return nil, fmt.Errorf("GET %s: %w", redact(u), cerr)
		}
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // its message repeats the full URL, query included
		}
		return nil, fmt.Errorf("GET %s: %w", redact(u), err)
	}
	if resp.StatusCode == http.StatusUnauthorized && hdr.Get("Authorization") == "" {
		// A challenge the daemon may answer itself (configured credentials,
		// anonymous registry tokens); the client's own credentials, when it
		// sent any, are never replaced.
		auth, aerr := h.authorize(ctx, u, resp.Header.Get("WWW-Authenticate"))
		_, _ = io.CopyN(io.Discard, resp.Body, drainOnFailure)
		_ = resp.Body.Close()
		cancel()
		if aerr != nil {
			return nil, fmt.Errorf("GET %s: answer the registry's challenge: %w", redact(u), aerr)
		}
		if auth != "" {
			authed := hdr.Clone()
			authed.Set("Authorization", auth)
			p, err := h.attempt(ctx, u, authed, off, length, resuming, ifRange)
			if err == nil {
				p.header.Del("Authorization")
			}
			return p, err
		}
		return nil, &StatusError{URL: redact(u), Code: resp.StatusCode, Status: resp.Status}
	}
	p := &part{rc: resp.Body, total: -1, left: -1, header: keep(resp.Header), cancel: cancel, remote: originAddr(client, resp, &peer)}
	fail := func(err error) (*part, error) {
		_, _ = io.CopyN(io.Discard, resp.Body, drainOnFailure)
		p.close()
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		cr, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || cr.start != off {
			return fail(fmt.Errorf("GET %s: asked for bytes from %d, got Content-Range %q: %w",
				redact(u), off, resp.Header.Get("Content-Range"), core.ErrOrigin))
		}
		p.total, p.rangeOK = cr.total, true
		p.left = cr.end - cr.start + 1
		if length >= 0 {
			p.left = min(p.left, length)
		}
	case http.StatusOK:
		if resuming {
			return fail(fmt.Errorf("GET %s: %w", redact(u), errRangeIgnored))
		}
		p.total = resp.ContentLength
		p.rangeOK = !ranged && acceptsRanges(resp.Header)
		if off > 0 {
			// The origin ignored our range: skip to the offset so the caller
			// still gets what it asked for.
			if _, err := io.CopyN(io.Discard, resp.Body, off); err != nil {
				p.close()
				if errors.Is(err, io.EOF) {
					return nil, fmt.Errorf("GET %s: offset %d is past the end of the content: %w", redact(u), off, core.ErrInvalid)
				}
				return nil, fmt.Errorf("GET %s: skip to offset %d of a response that ignored the range: %w", redact(u), off, err)
			}
		}
		if p.total >= 0 {
			p.left = max(p.total-off, 0)
		}
		if length >= 0 && (p.left < 0 || length < p.left) {
			p.left = length
		}
	case http.StatusRequestedRangeNotSatisfiable:
		// A range starting exactly at the end is empty, not an error: this
		// is how a 0-byte content answers a range request.
		cr, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err == nil && cr.start < 0 && cr.total == off {
			_ = resp.Body.Close()
			p.rc, p.total, p.left, p.rangeOK = nil, cr.total, 0, true
			return p, nil
		}
		return fail(&StatusError{URL: redact(u), Code: resp.StatusCode, Status: resp.Status})
	default:
		return fail(&StatusError{URL: redact(u), Code: resp.StatusCode, Status: resp.Status,
			retryAfter: parseRetryAfter(resp.Header.Get("Retry-After"))})
	}
	if h.cfg.Timeout > 0 {
		p.timeout = h.cfg.Timeout
		p.idle = time.AfterFunc(h.cfg.Timeout, cancel)
		p.idle.Stop()
	}
	return p, nil
}

// connPeer records the remote address of the connection a request went out
// on. net/http reports each hop of a redirect chain in turn, so the last one
// recorded is the connection that carried the final response; HTTP/2
// reports from its own goroutine, hence the lock.
type connPeer struct {
	mu   sync.Mutex
	addr net.Addr
}

func (c *connPeer) trace() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		c.mu.Lock()
		c.addr = info.Conn.RemoteAddr()
		c.mu.Unlock()
	}}
}

func (c *connPeer) get() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addr
}

// originAddr is the address the origin answered resp from, or nil when the
// final request went through a proxy: the connection's peer is then the
// proxy, which may well run on this host while the origin does not.
func originAddr(client *http.Client, resp *http.Response, peer *connPeer) net.Addr {
	if tr, ok := client.Transport.(*http.Transport); ok && tr.Proxy != nil && resp.Request != nil {
		if pu, err := tr.Proxy(resp.Request); err != nil || pu != nil {
			return nil
		}
	}
	return peer.get()
}

// read reads from the part, treating a stall longer than the timeout as a
// broken connection.
func (p *part) read(b []byte) (int, error) {
	if p.left == 0 || p.rc == nil {
		return 0, io.EOF
	}
	if p.left > 0 && int64(len(b)) > p.left {
		b = b[:p.left]
	}
	if p.idle != nil {
		p.idle.Reset(p.timeout)
	}
	n, err := p.rc.Read(b)
	if p.idle != nil && !p.idle.Stop() && err != nil {
		err = fmt.Errorf("%w for %s: %w", errStalled, p.timeout, err)
	}
	if p.left > 0 {
		p.left -= int64(n)
		if p.left == 0 && err == nil {
			err = io.EOF
		}
	}
	return n, err
}

func keep(h http.Header) http.Header {
	out := make(http.Header, len(keptHeaders))
	for _, k := range keptHeaders {
		if vs := h.Values(k); len(vs) > 0 {
			out[http.CanonicalHeaderKey(k)] = vs
		}
	}
	return out
}

func acceptsRanges(h http.Header) bool {
	for _, v := range h.Values("Accept-Ranges") {
		for _, f := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), "bytes") {
				return true
			}
		}
	}
	return false
}

// retryable reports whether another attempt may succeed.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	var se *StatusError
	if errors.As(err, &se) {
		return se.retryable()
	}
	var (
		dnsErr      *net.DNSError
		unknownCA   x509.UnknownAuthorityError
		hostnameErr x509.HostnameError
		invalidCert x509.CertificateInvalidError
		verifyErr   *tls.CertificateVerificationError
	)
	switch {
	case errors.Is(err, core.ErrInvalid), errors.Is(err, errTooManyRedirects),
		errors.Is(err, errRangeIgnored), errors.Is(err, errChanged), errors.Is(err, core.ErrOrigin):
		return false
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return false
	case errors.As(err, &unknownCA), errors.As(err, &hostnameErr), errors.As(err, &invalidCert), errors.As(err, &verifyErr):
		return false
	}
	return true
}

// backoff returns the wait before retry number attempt+1: exponential with
// ±25% jitter, or the origin's Retry-After when that is longer.
func (h *HTTP) backoff(attempt int, err error) time.Duration {
	d := h.cfg.RetryBackoff
	for i := 0; i < attempt && d < maxBackoff; i++ {
		d *= 2
	}
	d = min(d, maxBackoff)
	if d > 0 {
		d += time.Duration(rand.Int64N(int64(d)/2+1)) - d/4
	}
	var se *StatusError
	if errors.As(err, &se) && se.retryAfter > d {
		d = min(se.retryAfter, maxRetryAfter)
	}
	return d
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// parseRetryAfter reads delta-seconds (the HTTP-date form is rare from
// origins and ignored).
func parseRetryAfter(s string) time.Duration {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return time.Duration(min(n, int64(maxRetryAfter/time.Second))) * time.Second
}

// contentRange is a parsed Content-Range header. start is -1 for the
// unsatisfied form "bytes */total"; total is -1 for "/*".
type contentRange struct {
	start, end, total int64
}

// parseContentRange parses "bytes a-b/total", "bytes a-b/*" and "bytes */total".
func parseContentRange(s string) (contentRange, error) {
	bad := func() (contentRange, error) {
		return contentRange{}, fmt.Errorf("content-range %q: %w", s, core.ErrInvalid)
	}
	unit, spec, ok := strings.Cut(strings.TrimSpace(s), " ")
	if !ok || !strings.EqualFold(unit, "bytes") {
		return bad()
	}
	rng, tot, ok := strings.Cut(strings.TrimSpace(spec), "/")
	if !ok {
		return bad()
	}
	cr := contentRange{start: -1, end: -1, total: -1}
	if tot != "*" {
		n, ok := parseUint(tot)
		if !ok {
			return bad()
		}
		cr.total = n
	}
	if rng == "*" {
		if cr.total < 0 {
			return bad()
		}
		return cr, nil
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return bad()
	}
	start, ok1 := parseUint(a)
	end, ok2 := parseUint(b)
	if !ok1 || !ok2 || end < start || (cr.total >= 0 && end >= cr.total) {
		return bad()
	}
	cr.start, cr.end = start, end
	return cr, nil
}

// parseUint accepts decimal digits only (no sign, no spaces).
func parseUint(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}
