package job

import (
	"net/url"
	"strings"
	"testing"
)

func quote(v string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v) + `"`
}

// FuzzParseChallenge: any WWW-Authenticate value parses without a panic or
// a hang, and quoted parameters come back exactly as sent.
func FuzzParseChallenge(f *testing.F) {
	f.Add(`Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"`, "https://a/t", "reg", "repository:a:pull,push")
	f.Add(`Bearer realm="a\"b",service=x`, `a"b`, `\`, `,`)
	f.Add(`Bearer realm="unterminated`, "", "", "")
	f.Add(`Basic`, "=", `\\`, `"",`)
	f.Fuzz(func(t *testing.T, raw, realm, service, scope string) {
		_, _ = parseChallenge(raw)
		h := "Bearer realm=" + quote(realm) + ",service=" + quote(service) + ", scope=" + quote(scope)
		scheme, p := parseChallenge(h)
		if scheme != "Bearer" {
			t.Fatalf("%q: scheme %q", h, scheme)
		}
		for k, want := range map[string]string{"realm": realm, "service": service, "scope": scope} {
			if p[k] != want {
				t.Fatalf("%q: %s = %q, want %q", h, k, p[k], want)
			}
		}
	})
}

// FuzzParseImage: an accepted reference names a registry that its manifest
// and blob URLs really reach, with the repository and reference intact.
func FuzzParseImage(f *testing.F) {
	for _, s := range []string{
		"reg.example/team/app:v1", "localhost:5000/a@sha256:" + strings.Repeat("a", 64), "https://reg.example/v2/a/b/manifests/v1",
		"http://127.0.0.1:5000/v2/x/manifests/latest", "evil.com#x/repo:tag", "a.b@evil.com/repo:tag", "reg.example:99999/a:b",
		"https://user:pw@reg.example/v2/a/manifests/v1", "reg.example/A:b", "reg.example/a:", "[::1]:5000/a:b", "reg.example/a/../b:c",
		"https://reg.example/v2/a%2Fb/manifests/v1", "reg.example/a:" + strings.Repeat("t", 200),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		img, err := ParseImage(s)
		if err != nil {
			return
		}
		if img.Scheme != "http" && img.Scheme != "https" {
			t.Fatalf("%q: scheme %q", s, img.Scheme)
		}
		for _, raw := range []string{img.manifestURL(img.Reference), img.BlobURL("sha256:" + strings.Repeat("0", 64))} {
			u, err := url.Parse(raw)
			if err != nil {
				t.Fatalf("%q: %q does not parse: %v", s, raw, err)
			}
			if u.Host != img.Registry || u.User != nil || u.Fragment != "" || u.RawQuery != "" {
				t.Fatalf("%q: %q reaches %q (user %v, fragment %q), not registry %q", s, raw, u.Host, u.User, u.Fragment, img.Registry)
			}
			if !strings.HasPrefix(u.Path, "/v2/"+img.Repo+"/") {
				t.Fatalf("%q: %q has path %q", s, raw, u.Path)
			}
		}
	})
}
