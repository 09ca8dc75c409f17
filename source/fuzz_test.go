package source

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// quote renders v as an HTTP quoted-string.
func quote(v string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v) + `"`
}

// FuzzParseChallenge: any WWW-Authenticate value parses without a panic or
// a hang, and quoted parameters (commas, quotes and backslashes in them)
// come back exactly as the registry sent them.
func FuzzParseChallenge(f *testing.F) {
	f.Add(`Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"`, "https://a/t", "reg", "repository:a:pull,push")
	f.Add(`Basic realm="Registry Realm"`, `a\b`, `"`, `\`)
	f.Add(`Bearer realm="unterminated`, "", "", "")
	f.Add(`Bearer realm="a\"`, `a"b`, `x\"y`, ``)
	f.Add(`Bearer =,==,"",realm`, "r", "s", "t")
	f.Add("  ", "", "", "")
	f.Fuzz(func(t *testing.T, raw, realm, service, scope string) {
		_, _ = parseChallenge(raw)
		h := "Bearer realm=" + quote(realm) + ",service=" + quote(service) + ", scope=" + quote(scope)
		ch, ok := parseChallenge(h)
		if !ok || ch.scheme != "bearer" {
			t.Fatalf("%q: scheme %q ok=%v", h, ch.scheme, ok)
		}
		for k, want := range map[string]string{"realm": realm, "service": service, "scope": scope} {
			if ch.params[k] != want {
				t.Fatalf("%q: %s = %q, want %q", h, k, ch.params[k], want)
			}
		}
	})
}

// FuzzParseContentRange: an accepted Content-Range is consistent (start ≤
// end < total) and renders back to itself.
func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-0/1", "bytes 0-99/100", "bytes */100", "bytes 0-9/*", "bytes */*", "bytes 5-1/10",
		"bytes 0-10/10", "bytes -1-2/3", "bytes 0-9223372036854775807/*", "bytes 0-99999999999999999999/*", "BYTES 1-2/3",
		"bytes  1-2/3", "bytes 1 -2/3", "bytes +1-2/3", "items 0-1/2", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cr, err := parseContentRange(s)
		if err != nil {
			return
		}
		if cr.start < 0 {
			if cr.end != -1 || cr.total < 0 {
				t.Fatalf("%q: %+v", s, cr)
			}
			return
		}
		if cr.end < cr.start || (cr.total >= 0 && cr.end >= cr.total) || cr.total < -1 {
			t.Fatalf("%q: inconsistent %+v", s, cr)
		}
		tot := "*"
		if cr.total >= 0 {
			tot = strconv.FormatInt(cr.total, 10)
		}
		again, err := parseContentRange("bytes " + strconv.FormatInt(cr.start, 10) + "-" + strconv.FormatInt(cr.end, 10) + "/" + tot)
		if err != nil || again != cr {
			t.Fatalf("%q: round trip %+v %v", s, again, err)
		}
	})
}

// FuzzParseRetryAfter: the wait is never negative and never above the cap,
// whatever the origin sends.
func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "1", "120", "-1", "9223372036854775807", "99999999999999999999", "1.5", " 3 ", "Wed, 21 Oct 2015 07:28:00 GMT", "+5", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d := parseRetryAfter(s)
		if d < 0 || d > maxRetryAfter {
			t.Fatalf("parseRetryAfter(%q) = %s", s, d)
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64); err == nil && n >= 0 && n < int64(maxRetryAfter/time.Second) && d != time.Duration(n)*time.Second {
			t.Fatalf("parseRetryAfter(%q) = %s, want %ds", s, d, n)
		}
	})
}
