package daemon

import (
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseRange: whatever the Range header, the answer is a range inside
// the content (or the whole content, or "not satisfiable"), so the
// Content-Range and Content-Length the proxy writes are well formed.
func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"", "bytes=0-", "bytes=-1", "bytes=-0", "bytes=0-0", "bytes=5-1", "bytes=0-1,2-3",
		"bytes=-9223372036854775808", "bytes=9223372036854775807-", "bytes=0-9223372036854775807", "bytes= 1 - 2 ",
		"bytes=--1", "bytes=-", "bytes=1", "items=0-1", "bytes=+1-2", "bytes=0x10-"} {
		for _, l := range []int64{0, 1, 100} {
			f.Add(s, l)
		}
	}
	f.Fuzz(func(t *testing.T, v string, l int64) {
		if l < 0 {
			l = -(l + 1)
		}
		start, end, partial, ok := parseRange(v, l)
		switch {
		case !ok:
			if start != 0 || end != 0 || partial {
				t.Fatalf("unsatisfiable with %d-%d partial=%v", start, end, partial)
			}
		case partial:
			if start < 0 || start >= end || end > l {
				t.Fatalf("parseRange(%q, %d) = [%d, %d): outside the content", v, l, start, end)
			}
			cr := "bytes " + strconv.FormatInt(start, 10) + "-" + strconv.FormatInt(end-1, 10) + "/" + strconv.FormatInt(l, 10)
			if strings.Contains(cr, "--") {
				t.Fatalf("Content-Range %q", cr)
			}
		default:
			if start != 0 || end != l {
				t.Fatalf("whole content as [%d, %d) of %d", start, end, l)
			}
		}
	})
}

// FuzzMirrorUpstream: a mirror request (path and ?ns=) maps to an upstream
// URL on the registry it names, never to another host through userinfo,
// fragments or paths smuggled into ns, and always under /v2.
func FuzzMirrorUpstream(f *testing.F) {
	for _, s := range []string{
		"/v2/a/b/manifests/v1?ns=reg.local:5000", "/v2/?ns=docker.io", "/v2/a/blobs/sha256:1?ns=evil.com%2Fx",
		"/v2/a?ns=user%40evil.com", "/v2/a?ns=a%23b", "/v2/a?ns=reg.local:5000%2F..%2F", "/v2/a?ns=%5B::1%5D:5000",
		"/v2/a?ns=", "/v2/a?ns=a&ns=b", "/v3/a?ns=x", "/v2/..%2F..%2Fetc?ns=x", "/v2/a?ns=x%20y", "/v2/a?ns=host:99999",
	} {
		f.Add(s)
	}
	mirror, _ := url.Parse("http://reg.local:5000/prefix")
	p := &proxy{mirror: mirror, registries: map[string]RegistryConfig{"plain.example": {Host: "plain.example", Scheme: "http"}}}
	f.Fuzz(func(t *testing.T, raw string) {
		in, err := url.ParseRequestURI(raw)
		if err != nil {
			return
		}
		u, err := p.mirrorUpstream(in)
		if err != nil {
			return
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			t.Fatalf("%q: scheme %q", raw, u.Scheme)
		}
		back, err := url.Parse(u.String())
		if err != nil {
			t.Fatalf("%q: upstream %q does not parse: %v", raw, u.String(), err)
		}
		if back.Host != u.Host || back.User != nil || back.Fragment != "" {
			t.Fatalf("%q: upstream %q reaches host %q, not %q", raw, u.String(), back.Host, u.Host)
		}
		host := u.Host
		if h, port, err := net.SplitHostPort(u.Host); err == nil {
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				t.Fatalf("%q: port %q", raw, port)
			}
			host = h
		}
		if host == "" || strings.ContainsAny(host, "/?#@ %\\") {
			t.Fatalf("%q: upstream host %q", raw, u.Host)
		}
		if !strings.HasPrefix(u.Path, "/v2") && !strings.HasPrefix(u.Path, "/prefix/v2") {
			t.Fatalf("%q: upstream path %q", raw, u.Path)
		}
	})
}
