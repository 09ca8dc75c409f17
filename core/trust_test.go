package core

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCheckTaskID(t *testing.T) {
	const u = "https://origin.test/a/b?sig=1&x=2"
	o := TaskOptions{Tag: "t", Application: "app", FilteredQuery: []string{"sig"}}
	dg := "sha256:" + strings.Repeat("ab", 32)
	cid, _ := ContentTaskID(dg)
	for _, c := range []struct {
		name, id, url, digest string
		o                     TaskOptions
		ok                    bool
	}{
		{"url task", TaskID(u, o), u, "", o, true},
		{"url task, other signature", TaskID(u, o), "https://origin.test/a/b?sig=9&x=2", "", o, true},
		{"url task, other tag", TaskID(u, o), u, "", TaskOptions{Tag: "u", Application: "app", FilteredQuery: []string{"sig"}}, false},
		{"url task, other url", TaskID(u, o), "file:///etc/shadow", "", o, false},
		{"content task", cid, "https://registry.test/v2/x/blobs/" + dg, dg, TaskOptions{}, true},
		{"content task without digest", cid, "https://registry.test/v2/x/blobs/" + dg, "", TaskOptions{}, false},
		{"content id, other digest", cid, "https://registry.test/", "sha256:" + strings.Repeat("cd", 32), TaskOptions{}, false},
		{"cache task", CacheTaskID("m", "v1"), CacheURL("m"), "", TaskOptions{Tag: "v1"}, true},
		{"cache task, other id", CacheTaskID("m", "v1"), CacheURL("n"), "", TaskOptions{Tag: "v1"}, false},
		{"cache url under a url task id", TaskID(u, o), CacheURL("m"), "", o, false},
	} {
		err := CheckTaskID(c.id, c.url, c.digest, c.o)
		if (err == nil) != c.ok {
			t.Errorf("%s: err %v, want ok=%v", c.name, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v is not ErrInvalid", c.name, err)
		}
	}
}

func TestCheckSwarmURL(t *testing.T) {
	for u, ok := range map[string]bool{
		"http://o.test/x": true, "HTTPS://o.test/x": true, CacheURL("m"): true,
		"file:///etc/shadow": false, "file://host/etc/shadow": false, "ftp://o.test/x": false,
		"http:///nohost": false, "/relative": false, "gopher://o.test/": false,
	} {
		if err := CheckSwarmURL(u); (err == nil) != ok {
			t.Errorf("%s: err %v, want ok=%v", u, err, ok)
		}
	}
}

func TestPieceToken(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	now := time.Unix(1_700_000_000, 0)
	tok := PieceToken(key, "task", "child", now.Add(time.Minute))
	if err := CheckPieceToken(key, tok, "task", "child", now); err != nil {
		t.Fatalf("valid token refused: %v", err)
	}
	for name, err := range map[string]error{
		"other task":   CheckPieceToken(key, tok, "task2", "child", now),
		"other peer":   CheckPieceToken(key, tok, "task", "child2", now),
		"other key":    CheckPieceToken([]byte("another key of thirty-two bytes!"), tok, "task", "child", now),
		"expired":      CheckPieceToken(key, tok, "task", "child", now.Add(time.Minute)),
		"no key":       CheckPieceToken(nil, tok, "task", "child", now),
		"empty":        CheckPieceToken(key, "", "task", "child", now),
		"garbage":      CheckPieceToken(key, "x.y", "task", "child", now),
		"later expiry": CheckPieceToken(key, strings.Replace(tok, tok[:4], "9999", 1), "task", "child", now),
	} {
		if err == nil {
			t.Errorf("%s: token accepted", name)
		}
	}
}
