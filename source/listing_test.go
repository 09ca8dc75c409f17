package source

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/damselfly-io/damselfly/core"
)

// TestListDir crawls an Apache-style and an nginx-style listing: sort links
// (queries), parent links, absolute links elsewhere, a link back up and a
// self-link loop are all skipped; subdirectories are followed once.
func TestListDir(t *testing.T) {
	pages := map[string]string{
		// Apache mod_autoindex
		"/pub/": `<html><body><h1>Index of /pub</h1><table>
<tr><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a></th></tr>
<tr><td><a href="/">Parent Directory</a></td></tr>
<tr><td><a href="a.bin">a.bin</a></td></tr>
<tr><td><a href="sub/">sub/</a></td></tr>
<tr><td><a href="http://elsewhere.example/x.bin">x</a></td></tr>
<tr><td><a href="#top">top</a></td></tr>
<tr><td><a href="b%20c.txt">b c.txt</a></td></tr>
</table></body></html>`,
		// nginx autoindex
		"/pub/sub/": `<html><head><title>Index of /pub/sub/</title></head><body><h1>Index of /pub/sub/</h1><hr><pre><a href="../">../</a>
<a href="deep/">deep/</a>                                              05-Dec-2026 02:00       -
<a href="c.bin">c.bin</a>                                              05-Dec-2026 02:00     123
<a href="/pub/sub/">self</a>
<a href="../../etc/passwd">escape</a>
</pre><hr></body></html>`,
		"/pub/sub/deep/": `<pre><a href="../">../</a><a href="/pub/">up</a><a href="d.bin">d.bin</a></pre>`,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := pages[r.URL.Path]
		if !ok || r.URL.RawQuery != "" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, p)
	}))
	defer srv.Close()
	h, err := NewHTTP(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	got, err := h.ListDir(context.Background(), srv.URL+"/pub", nil)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, e := range got {
		paths = append(paths, e.Path)
		if !strings.HasPrefix(e.URL, srv.URL+"/pub/") || e.Size != -1 {
			t.Errorf("entry %+v", e)
		}
	}
	if want := "a.bin,b c.txt,sub/c.bin,sub/deep/d.bin"; strings.Join(paths, ",") != want {
		t.Fatalf("paths %v, want %s", paths, want)
	}

	if _, err := h.ListDir(context.Background(), srv.URL+"/missing/", nil); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("missing listing: %v, want ErrNotFound", err)
	}
	if _, err := h.ListDir(context.Background(), "ftp://x/", nil); !errors.Is(err, core.ErrInvalid) {
		t.Errorf("ftp: %v", err)
	}
}

func TestSafeRelPath(t *testing.T) {
	for p, ok := range map[string]bool{"a": true, "a/b.c": true, "": false, "/a": false, "a/../b": false, "..": false, "a//b": false, "a/": false, "./a": false} {
		if SafeRelPath(p) != ok {
			t.Errorf("SafeRelPath(%q) = %v", p, !ok)
		}
	}
}
