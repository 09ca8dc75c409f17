// Package source owns fetching content from origins: one client per URL scheme
// (http, https, file), chosen through a Registry. A source returns a byte range
// of the content and what the origin said about the whole (length, range
// support, validators); it does not cache, split into pieces or verify pieces —
// that is the daemon's job. Download is the one-shot "fetch into a file"
// helper that dfget uses when no daemon answers.
package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/damselfly-io/damselfly/core"
)

// Request asks a source for bytes [Offset, Offset+Length) of the content at URL.
type Request struct {
	URL string
	// Header is sent to the origin as is (Range and If-Range excepted: the
	// source owns them). A "Host" entry sets the request's host.
	Header http.Header
	// Offset is the first byte wanted.
	Offset int64
	// Length is how many bytes are wanted; -1 reads to the end. A range that
	// runs past the end of the content is clipped to the end.
	Length int64
	// Trusted marks the daemon's own fetches for the swarm (a seed peer's
	// task, a preheat): only they may use credentials from the source's
	// configuration (S3 buckets) when the request carries none. A local
	// client's request never borrows them.
	Trusted bool
}

// Response is what an origin returned for a Request.
type Response struct {
	// Body yields exactly the bytes asked for (clipped to the end of the
	// content). The caller must close it.
	Body io.ReadCloser
	// ContentLength is the length of the whole content, -1 when unknown.
	ContentLength int64
	// Header holds the origin's response headers worth keeping (Content-Type,
	// Content-Encoding, Content-Disposition, ETag, Last-Modified,
	// Docker-Content-Digest).
	Header http.Header
	// RangeOK reports whether the origin honours byte ranges.
	RangeOK bool
	// Remote is the address the origin answered from: the TCP peer of the
	// connection that carried the response Fetch got (the last hop of its
	// redirects; requests that resume a broken body do not change it). It
	// is nil when unknown, when the answer came through a proxy (the peer
	// is then the proxy, not the origin) and for origins that are no
	// network peer (files). The daemon tells by it whether an origin runs
	// on its own host and so shares its uplink.
	Remote net.Addr
}

// Source fetches content from an origin.
type Source interface {
	Fetch(ctx context.Context, req Request) (*Response, error)
}

// Config configures the built-in sources.
type Config struct {
	// Timeout bounds one attempt's dial, TLS handshake and wait for response
	// headers, and any stall while reading a body (no byte for Timeout counts
	// as a broken connection). It does not bound a whole transfer: use the
	// context for that. 0 disables. Default 30s.
	Timeout time.Duration `yaml:"timeout"`
	// Retries is how many times a failed request is retried (connection
	// errors, 408, 429, 5xx), and how many times in a row a body that breaks
	// mid-transfer is resumed without progress. Default 3.
	Retries int `yaml:"retries"`
	// RetryBackoff is the wait before the first retry; it doubles for each
	// further one (with jitter, capped at 30s). Default 500ms.
	RetryBackoff time.Duration `yaml:"retry_backoff"`
	// InsecureSkipVerify turns off TLS certificate verification. Default false.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
	// CAFile is a PEM bundle of CA certificates trusted in addition to the
	// system's. Default "".
	CAFile string `yaml:"ca_file"`
	// UserAgent is sent when the request has none. Default "damselfly/<version>".
	UserAgent string `yaml:"user_agent"`
	// Hosts holds per-host TLS settings and credentials, keyed by "host" or
	// "host:port" (the more specific key wins).
	Hosts map[string]HostConfig `yaml:"hosts"`
	// S3 configures s3:// URLs: path-style addressing and per-bucket
	// endpoints and credentials.
	S3 S3Config `yaml:"s3"`
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Timeout:      30 * time.Second,
		Retries:      3,
		RetryBackoff: 500 * time.Millisecond,
		UserAgent:    "damselfly/" + buildVersion(),
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	switch {
	case c.Timeout < 0:
		return fmt.Errorf("source config: timeout %s is negative: %w", c.Timeout, core.ErrInvalid)
	case c.Retries < 0:
		return fmt.Errorf("source config: retries %d is negative: %w", c.Retries, core.ErrInvalid)
	case c.RetryBackoff < 0:
		return fmt.Errorf("source config: retry_backoff %s is negative: %w", c.RetryBackoff, core.ErrInvalid)
	}
	return c.S3.Validate()
}

// buildVersion returns the main module's version, "dev" for local builds.
func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// Registry dispatches requests to a source by URL scheme.
type Registry struct {
	mu      sync.RWMutex
	sources map[string]Source
}

var _ Source = (*Registry)(nil)

// New returns a registry serving http, https, s3 and file URLs.
func New(cfg Config) (*Registry, error) {
	h, err := NewHTTP(cfg)
	if err != nil {
		return nil, err
	}
	return NewRegistry(h), nil
}

// NewRegistry returns a registry serving http and https URLs through h, s3
// URLs through h with the S3 settings of h's configuration, and file URLs.
func NewRegistry(h *HTTP) *Registry {
	r := &Registry{sources: map[string]Source{}}
	r.Register("http", h)
	r.Register("https", h)
	r.Register("s3", &S3{http: h, cfg: h.cfg.S3})
	r.Register("file", &File{})
	return r
}

// Schemes lists the URL schemes the registry serves, sorted.
func (r *Registry) Schemes() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.sources))
	for s := range r.sources {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// Lookup returns the source registered for scheme.
func (r *Registry) Lookup(scheme string) (Source, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	s, ok := r.sources[strings.ToLower(scheme)]
	return s, ok
}

// Register makes s serve URLs of scheme (case-insensitive), replacing any
// source registered for it before.
func (r *Registry) Register(scheme string, s Source) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sources == nil {
		r.sources = map[string]Source{}
	}
	r.sources[strings.ToLower(scheme)] = s
}

// Fetch hands req to the source registered for its URL's scheme.
func (r *Registry) Fetch(ctx context.Context, req Request) (*Response, error) {
	u, err := url.Parse(req.URL)
	if err != nil {
		return nil, fmt.Errorf("fetch: parse URL: %w: %w", core.ErrInvalid, err)
	}
	scheme := strings.ToLower(u.Scheme)
	r.mu.RLock()
	s, ok := r.sources[scheme]
	r.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("fetch %s: unsupported URL scheme %q: %w", redact(u), u.Scheme, core.ErrInvalid)
	}
	return s.Fetch(ctx, req)
}

// StatusError is an HTTP answer other than success from an origin.
type StatusError struct {
	Method string // "" means GET
	URL    string // without query string or password
	Code   int
	Status string // e.g. "404 Not Found"

	retryAfter time.Duration
}

func (e *StatusError) Error() string {
	m := e.Method
	if m == "" {
		m = http.MethodGet
	}
	return fmt.Sprintf("%s %s: origin answered %s", m, e.URL, e.Status)
}

// Unwrap gives the error kind: core.ErrNotFound for 404 and 410,
// core.ErrDenied (and core.ErrOrigin) for 401 and 403, core.ErrOrigin
// otherwise.
func (e *StatusError) Unwrap() []error {
	switch e.Code {
	case http.StatusNotFound, http.StatusGone:
		return []error{core.ErrNotFound}
	case http.StatusUnauthorized, http.StatusForbidden:
		return []error{core.ErrDenied, core.ErrOrigin}
	}
	return []error{core.ErrOrigin}
}

func (e *StatusError) retryable() bool {
	switch {
	case e.Code == http.StatusRequestTimeout, e.Code == http.StatusTooManyRequests:
		return true
	case e.Code == http.StatusNotImplemented, e.Code == http.StatusHTTPVersionNotSupported:
		return false
	default:
		return e.Code >= 500 && e.Code <= 599
	}
}

// redact renders u without password and query: query strings often carry
// signatures that must not end up in logs.
func redact(u *url.URL) string {
	c := *u
	c.RawQuery = ""
	c.ForceQuery = false
	c.Fragment = ""
	c.RawFragment = ""
	if c.User != nil {
		c.User = url.User(c.User.Username())
	}
	return c.String()
}

// redactRaw is redact for a URL string; an unparsable one is kept whole.
func redactRaw(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	return redact(u)
}

// errClosed is returned by reads on a closed body.
var errClosed = errors.New("read on closed body")
