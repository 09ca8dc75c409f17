package core

import (
	"errors"
	"strings"
	"testing"
)

func TestTaskIDFiltersAndSortsQuery(t *testing.T) {
	a := TaskID("http://o/x?b=2&sig=abc&a=1", TaskOptions{FilteredQuery: []string{"sig"}})
	b := TaskID("http://o/x?a=1&sig=zzz&b=2", TaskOptions{FilteredQuery: []string{"sig"}})
	if a != b {
		t.Fatalf("same object under other signatures got two tasks: %s %s", a, b)
	}
	if c := TaskID("http://o/x?a=1&sig=zzz&b=2", TaskOptions{}); c == a {
		t.Fatal("without a filter the signature must change the task")
	}
	if d := TaskID("http://o/x?a=1&b=2", TaskOptions{Tag: "t"}); d == a {
		t.Fatal("tag must change the task")
	}
	if e := TaskID("http://o/x?a=1&b=2", TaskOptions{Application: "app"}); e == a {
		t.Fatal("application must change the task")
	}
}

func TestPieceLayout(t *testing.T) {
	cases := []struct {
		length int64
		size   uint32
		count  uint32
	}{
		{0, MinPieceSize, 0},
		{1, MinPieceSize, 1},
		{MinPieceSize - 1, MinPieceSize, 1},
		{MinPieceSize + 1, MinPieceSize, 2},
		{128 << 20, 512 << 10, 256},
		{1 << 30, MaxPieceSize, 256},
		{100 << 30, MaxPieceSize, 25600},
	}
	for _, c := range cases {
		s := PieceSize(c.length)
		if s != c.size {
			t.Errorf("PieceSize(%d)=%d want %d", c.length, s, c.size)
		}
		if n := PieceCount(c.length, s); n != c.count {
			t.Errorf("PieceCount(%d)=%d want %d", c.length, n, c.count)
		}
		if c.count > 0 {
			off, sz := PieceRange(c.count-1, c.length, s)
			if off+sz != c.length || sz <= 0 {
				t.Errorf("last piece of %d: off %d size %d", c.length, off, sz)
			}
		}
	}
}

func TestParseDigest(t *testing.T) {
	good := "sha256:" + "ab0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"[:64]
	if _, _, err := ParseDigest(good); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "sha256", "md5:00", "sha256:zz", "sha256:abcd"} {
		if _, _, err := ParseDigest(bad); err == nil {
			t.Errorf("ParseDigest(%q) accepted", bad)
		}
	}
}

func TestPieceDigestDetectsChange(t *testing.T) {
	a := PieceDigest([]byte("hello"))
	if !EqualDigest(a, PieceDigest([]byte("hello"))) || EqualDigest(a, PieceDigest([]byte("hellO"))) {
		t.Fatal("piece digest does not tell contents apart")
	}
}

func TestContentTaskID(t *testing.T) {
	d := "sha256:" + strings.Repeat("ab", 32)
	id, err := ContentTaskID(strings.ToUpper(d[:6]) + d[6:])
	if err != nil || id != strings.Repeat("ab", 32) {
		t.Fatalf("ContentTaskID = %q, %v", id, err)
	}
	for _, bad := range []string{"", "sha256:abc", "md5:" + strings.Repeat("ab", 16), strings.Repeat("ab", 32)} {
		if _, err := ContentTaskID(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ContentTaskID(%q) err = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestCacheTaskID(t *testing.T) {
	a := CacheTaskID("model-v1", "")
	if a == CacheTaskID("model-v1", "x") || a == CacheTaskID("model-v2", "") {
		t.Fatal("cache task IDs collide across id or tag")
	}
	if a != CacheTaskID("model-v1", "") {
		t.Fatal("cache task ID not stable")
	}
	if a == TaskID("http://model-v1", TaskOptions{}) {
		t.Fatal("cache task ID equals a URL task ID")
	}
	if id, ok := ParseCacheURL(CacheURL("team/model:v1")); !ok || id != "team/model:v1" {
		t.Fatalf("ParseCacheURL round trip: %q %v", id, ok)
	}
	for _, u := range []string{"http://x", "dfcache://", "dfcache://a b", "dfcache://?x"} {
		if _, ok := ParseCacheURL(u); ok {
			t.Errorf("ParseCacheURL(%q) accepted", u)
		}
	}
	for _, id := range []string{"", "-x", "a b", "a?b", strings.Repeat("a", 256)} {
		if err := ValidateCacheID(id); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateCacheID(%q) = %v", id, err)
		}
	}
}

func TestTaskIDVersion(t *testing.T) {
	plain := TaskID("s3://b/k", TaskOptions{})
	v1 := TaskID("s3://b/k", TaskOptions{Version: `"e1"`})
	v2 := TaskID("s3://b/k", TaskOptions{Version: `"e2"`})
	if plain == v1 || v1 == v2 || v1 != TaskID("s3://b/k", TaskOptions{Version: `"e1"`}) {
		t.Fatalf("versions must name distinct, stable tasks: %s %s %s", plain, v1, v2)
	}
	// IDs without a version are unchanged (caches and preheats keep them).
	if plain != TaskID("s3://b/k", TaskOptions{Version: ""}) {
		t.Fatal("empty version changed the ID")
	}
}

func TestLoopbackHost(t *testing.T) {
	for s, want := range map[string]bool{
		"127.0.0.1:1": true, "127.0.0.1": true, "[::1]:1": true, "::1": true, "localhost:1": true, "localhost": true,
		"10.77.0.9:1": false, "[fd00::1]:1": false, "registry.example:5000": false, "": false,
	} {
		if got := LoopbackHost(s); got != want {
			t.Errorf("LoopbackHost(%q) = %v, want %v", s, got, want)
		}
	}
}
