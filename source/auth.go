package source

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/damselfly-io/damselfly/core"
)

// HostConfig configures one origin host (a registry, an object store): how
// to trust its TLS certificate and which credentials to answer its
// challenges with. Credentials are used only for requests that carry no
// Authorization of their own, so a client's credentials always win.
type HostConfig struct {
	// Insecure skips TLS verification for this host.
	Insecure bool `yaml:"insecure"`
	// CAFile is a PEM bundle trusted for this host, in addition to the
	// system's roots.
	CAFile string `yaml:"ca_file"`
	// Username and Password answer Basic challenges and buy Bearer tokens
	// (the registry token flow). Empty: anonymous tokens only.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
}

// hostClient returns the client for host ("name" or "name:port"): one with
// the host's own TLS settings when it has any, else the shared one.
func (h *HTTP) hostClient(host string) *http.Client {
	if c, ok := h.clients[host]; ok {
		return c
	}
	if c, ok := h.clients[hostOnly(host)]; ok {
		return c
	}
	return h.client
}

// hostConfig returns the settings for host, matching "name:port" first.
func (h *HTTP) hostConfig(host string) (HostConfig, bool) {
	if hc, ok := h.cfg.Hosts[host]; ok {
		return hc, true
	}
	hc, ok := h.cfg.Hosts[hostOnly(host)]
	return hc, ok
}

// Client returns the HTTP client the source uses for host, with the host's
// TLS settings: for callers that pass requests through to an origin as they
// are (the registry mirror's pass-through), so TLS trust is configured once.
// It follows no redirects: a pass-through hands them to its client.
func (h *HTTP) Client(host string) *http.Client {
	c := *h.hostClient(host)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &c
}

func hostOnly(host string) string {
	if i := strings.LastIndexByte(host, ':'); i > 0 && !strings.HasSuffix(host, "]") {
		return host[:i]
	}
	return host
}

// tlsFor builds the TLS config of one host.
func tlsFor(base *tls.Config, hc HostConfig) (*tls.Config, error) {
	c := base.Clone()
	if hc.Insecure {
		c.InsecureSkipVerify = true //nolint:gosec // opt-in per host
	}
	if hc.CAFile != "" {
		pem, err := os.ReadFile(hc.CAFile)
		if err != nil {
			return nil, fmt.Errorf("source config: read ca_file: %w", err)
		}
		pool := c.RootCAs
		if pool == nil {
			if pool, err = x509.SystemCertPool(); err != nil {
				pool = x509.NewCertPool()
			}
		} else {
			pool = pool.Clone()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("source config: ca_file %s holds no PEM certificate: %w", hc.CAFile, core.ErrInvalid)
		}
		c.RootCAs = pool
	}
	return c, nil
}

// challenge is a parsed WWW-Authenticate header.
type challenge struct {
	scheme string // "basic" or "bearer", lower case
	params map[string]string
}

// parseChallenge reads the first challenge of a WWW-Authenticate value:
// `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
func parseChallenge(v string) (challenge, bool) {
	v = strings.TrimSpace(v)
	scheme, rest, _ := strings.Cut(v, " ")
	ch := challenge{scheme: strings.ToLower(scheme), params: map[string]string{}}
	if ch.scheme == "" {
		return ch, false
	}
	for rest = strings.TrimSpace(rest); rest != ""; {
		k, after, ok := strings.Cut(rest, "=")
		if !ok {
			break
		}
		k = strings.ToLower(strings.TrimSpace(k))
		var val string
		if strings.HasPrefix(after, `"`) {
			// quoted-string; scopes hold commas, so read to the closing
			// quote. A backslash quotes the next byte (RFC 9110 5.6.4).
			var b strings.Builder
			end := 1
			for end < len(after) && after[end] != '"' {
				if after[end] == '\\' && end+1 < len(after) {
					end++
				}
				b.WriteByte(after[end])
				end++
			}
			val = b.String()
			rest = after[min(end+1, len(after)):]
		} else {
			val, rest, _ = strings.Cut(after, ",")
			val = strings.TrimSpace(val)
			rest = "," + rest
		}
		ch.params[k] = val
		rest = strings.TrimLeft(strings.TrimSpace(rest), ",")
		rest = strings.TrimSpace(rest)
	}
	return ch, true
}

// tokens caches registry bearer tokens by realm, service and scope.
type tokens struct {
	mu sync.Mutex
	m  map[string]token
}

type token struct {
	value   string
	expires time.Time
}

// authorize answers a 401 challenge from u's host for a request that had no
// Authorization: Basic with the host's configured credentials, or a Bearer
// token bought from the challenge's realm (with those credentials, or
// anonymously). It returns "" when it has nothing to offer.
func (h *HTTP) authorize(ctx context.Context, u *url.URL, wwwAuth string) (string, error) {
	ch, ok := parseChallenge(wwwAuth)
	if !ok {
		return "", nil
	}
	hc, _ := h.hostConfig(u.Host)
	switch ch.scheme {
	case "basic":
		if hc.Username == "" {
			return "", nil
		}
		req := &http.Request{Header: http.Header{}}
		req.SetBasicAuth(hc.Username, hc.Password)
		return req.Header.Get("Authorization"), nil
	case "bearer":
		realm := ch.params["realm"]
		if realm == "" {
			return "", nil
		}
		key := realm + "\x00" + ch.params["service"] + "\x00" + ch.params["scope"] + "\x00" + hc.Username
		h.tokens.mu.Lock()
		t, ok := h.tokens.m[key]
		h.tokens.mu.Unlock()
		if ok && time.Now().Before(t.expires) {
			return "Bearer " + t.value, nil
		}
		t, err := h.fetchToken(ctx, realm, ch.params["service"], ch.params["scope"], hc)
		if err != nil {
			return "", err
		}
		h.tokens.mu.Lock()
		if h.tokens.m == nil {
			h.tokens.m = map[string]token{}
		}
		h.tokens.m[key] = t
		h.tokens.mu.Unlock()
		return "Bearer " + t.value, nil
	}
	return "", nil
}

// fetchToken runs the registry token flow: GET realm?service=…&scope=…,
// with Basic credentials when configured.
func (h *HTTP) fetchToken(ctx context.Context, realm, service, scope string, hc HostConfig) (token, error) {
	ru, err := url.Parse(realm)
	if err != nil || (ru.Scheme != "http" && ru.Scheme != "https") {
		return token{}, fmt.Errorf("token realm %q: not an http(s) URL: %w", realm, core.ErrOrigin)
	}
	q := ru.Query()
	if service != "" {
		q.Set("service", service)
	}
	if scope != "" {
		q.Set("scope", scope)
	}
	ru.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ru.String(), nil)
	if err != nil {
		return token{}, fmt.Errorf("token request: %w", err)
	}
	if hc.Username != "" {
		req.SetBasicAuth(hc.Username, hc.Password)
	}
	req.Header.Set("User-Agent", h.cfg.UserAgent)
	resp, err := h.hostClient(ru.Host).Do(req)
	if err != nil {
		return token{}, fmt.Errorf("token from %s: %w", redact(ru), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return token{}, fmt.Errorf("token from %s: %w", redact(ru), &StatusError{URL: redact(ru), Code: resp.StatusCode, Status: resp.Status})
	}
	var body struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body); err != nil {
		return token{}, fmt.Errorf("token from %s: %w: %w", redact(ru), core.ErrOrigin, err)
	}
	t := body.Token
	if t == "" {
		t = body.AccessToken
	}
	if t == "" {
		return token{}, fmt.Errorf("token from %s: answer holds no token: %w", redact(ru), core.ErrOrigin)
	}
	ttl := time.Duration(body.ExpiresIn) * time.Second
	if ttl <= 0 {
		ttl = 60 * time.Second // the distribution spec's default
	}
	// Renew a little early, so a token does not expire between check and use.
	return token{value: t, expires: time.Now().Add(ttl * 9 / 10)}, nil
}
