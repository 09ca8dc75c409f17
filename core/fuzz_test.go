package core

import (
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzParseDigest: an accepted digest is sha256 with 64 lower-case hex
// digits and parses back to itself.
func FuzzParseDigest(f *testing.F) {
	for _, s := range []string{"sha256:" + strings.Repeat("a", 64), "SHA256:" + strings.Repeat("F", 64), "sha256:", ":", "",
		"sha256:" + strings.Repeat("g", 64), "sha512:" + strings.Repeat("a", 128), "sha256:" + strings.Repeat("a", 63) + "\x00",
		"sha256:" + strings.Repeat("a", 64) + ":"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, d string) {
		algo, hexsum, err := ParseDigest(d)
		if err != nil {
			return
		}
		if algo != "sha256" || len(hexsum) != 64 || strings.Trim(hexsum, "0123456789abcdef") != "" {
			t.Fatalf("ParseDigest(%q) = %q %q", d, algo, hexsum)
		}
		if a2, h2, err := ParseDigest(algo + ":" + hexsum); err != nil || a2 != algo || h2 != hexsum {
			t.Fatalf("round trip of %q: %q %q %v", d, a2, h2, err)
		}
		if _, err := ContentTaskID(d); err != nil {
			t.Fatalf("ContentTaskID(%q): %v", d, err)
		}
	})
}

// FuzzValidHostPort: an accepted host[:port] is, in a URL, exactly the host
// that URL reaches.
func FuzzValidHostPort(f *testing.F) {
	for _, s := range []string{"reg.local:5000", "docker.io", "[::1]:5000", "[::1]", "a@b", "a/b", "a#b", "[X0]:1", "a:0",
		"a:65536", "a:+1", "a:01", ":80", "-a", "1.2.3.4", "a b", "a%2fb", "[fe80::1%25eth0]:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !ValidHostPort(s) {
			return
		}
		u, err := url.Parse("https://" + s + "/v2/")
		if err != nil || u.Host != s || u.User != nil || u.Path != "/v2/" {
			t.Fatalf("ValidHostPort(%q) but the URL parses as %+v (%v)", s, u, err)
		}
	})
}

// FuzzCheckPieceToken: a token from the upload port's request is accepted
// only when it is exactly the one PieceToken makes for that task, peer and
// expiry (and the expiry is still ahead); nothing panics.
func FuzzCheckPieceToken(f *testing.F) {
	key := []byte("0123456789abcdef0123456789abcdef")
	now := time.Unix(1_700_000_000, 0)
	good := PieceToken(key, "task", "peer", now.Add(time.Minute))
	for _, s := range []string{good, "", ".", "1.", ".ab", "9223372036854775807.00", "-1.ab", good + "0", "x" + good,
		strings.ToUpper(good), "1700000060000." + strings.Repeat("0", 64)} {
		f.Add(s, "task", "peer")
	}
	f.Fuzz(func(t *testing.T, token, task, peer string) {
		if CheckPieceToken(key, token, task, peer, now) != nil {
			return
		}
		ms, _, _ := strings.Cut(token, ".")
		exp, err := strconv.ParseInt(ms, 10, 64)
		if err != nil || exp <= now.UnixMilli() || PieceToken(key, task, peer, time.UnixMilli(exp)) != token {
			t.Fatalf("token %q accepted for %q/%q but PieceToken does not make it", token, task, peer)
		}
	})
}
