package source

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"sort"
	"strings"

	"golang.org/x/net/html"

	"github.com/damselfly-io/damselfly/core"
)

// Listing bounds: a directory tree larger than this is refused rather than
// crawled for ever.
const (
	// MaxListEntries bounds the files one listing returns.
	MaxListEntries = 100000
	maxListDepth   = 32
	maxListPage    = 16 << 20
)

// Entry is one file found under a listed URL.
type Entry struct {
	// URL is the file's absolute URL.
	URL string
	// Path is the file's path relative to the listed URL, with "/"
	// separators and no ".." (safe to join under an output directory).
	Path string
	// Size is the length when the listing says (S3), else -1.
	Size int64
	// Digest is the content's digest when the listing names one (an OCI
	// artifact's layers), else "".
	Digest string
}

// ListDir crawls an HTTP directory listing (nginx autoindex, Apache's
// mod_autoindex and alike): it reads every <a href> of the page, follows
// links ending in "/" as subdirectories and returns the rest as files. Only
// links under the base URL count: parent links, other hosts, and links with
// a query (Apache's sort links) or a fragment are skipped, and every
// directory is visited once, so a listing cannot loop.
func (h *HTTP) ListDir(ctx context.Context, base string, header http.Header) ([]Entry, error) {
	bu, err := url.Parse(base)
	if err != nil || (bu.Scheme != "http" && bu.Scheme != "https") || bu.Host == "" {
		return nil, fmt.Errorf("list %s: want an http(s) directory URL: %w", redactRaw(base), core.ErrInvalid)
	}
	if !strings.HasSuffix(bu.Path, "/") {
		bu.Path += "/"
		if bu.RawPath != "" {
			bu.RawPath += "/"
		}
	}
	bu.RawQuery, bu.Fragment = "", ""
	type dir struct {
		u     *url.URL
		depth int
	}
	queue := []dir{{bu, 0}}
	seen := map[string]bool{bu.EscapedPath(): true}
	files := map[string]Entry{}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		links, err := h.pageLinks(ctx, d.u, header)
		if err != nil {
			return nil, err
		}
		for _, l := range links {
			u, err := d.u.Parse(l)
			if err != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Scheme != bu.Scheme || u.Host != bu.Host || u.User != nil {
				continue
			}
			rel, ok := strings.CutPrefix(u.Path, bu.Path)
			if !ok || rel == "" || path.Clean("/"+rel) != "/"+strings.TrimSuffix(rel, "/") {
				continue // outside the base, the base itself, or with dot segments
			}
			if strings.HasSuffix(rel, "/") {
				if !seen[u.EscapedPath()] && d.depth+1 <= maxListDepth {
					seen[u.EscapedPath()] = true
					queue = append(queue, dir{u, d.depth + 1})
				}
				continue
			}
			files[rel] = Entry{URL: u.String(), Path: rel, Size: -1}
			if len(files) > MaxListEntries {
				return nil, fmt.Errorf("list %s: more than %d files: %w", redact(bu), MaxListEntries, core.ErrInvalid)
			}
		}
	}
	out := make([]Entry, 0, len(files))
	for _, e := range files {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// pageLinks GETs one listing page and returns its href values.
func (h *HTTP) pageLinks(ctx context.Context, u *url.URL, header http.Header) ([]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w: %w", redact(u), core.ErrInvalid, err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", h.cfg.UserAgent)
	}
	resp, err := h.hostClient(u.Host).Do(req)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w: %w", redact(u), core.ErrOrigin, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("list: %w", &StatusError{URL: redact(u), Code: resp.StatusCode, Status: resp.Status})
	}
	if ct := resp.Header.Get("Content-Type"); ct != "" && !strings.Contains(strings.ToLower(ct), "html") {
		return nil, fmt.Errorf("list %s: answer is %s, not an HTML directory listing: %w", redact(u), ct, core.ErrInvalid)
	}
	var links []string
	z := html.NewTokenizer(io.LimitReader(resp.Body, maxListPage))
	for {
		switch z.Next() {
		case html.ErrorToken:
			if err := z.Err(); err != io.EOF {
				return nil, fmt.Errorf("list %s: read page: %w", redact(u), err)
			}
			return links, nil
		case html.StartTagToken, html.SelfClosingTagToken:
			name, hasAttr := z.TagName()
			if string(name) != "a" || !hasAttr {
				continue
			}
			for {
				k, v, more := z.TagAttr()
				if string(k) == "href" {
					links = append(links, string(v))
				}
				if !more {
					break
				}
			}
		}
	}
}

// SafeRelPath reports whether p is a clean relative file path ("a/b.bin":
// no leading "/", no "." or ".." segments, no empty segment, not a
// directory): one that stays under the directory it is joined to.
func SafeRelPath(p string) bool {
	return p != "" && !strings.HasPrefix(p, "/") && !strings.HasSuffix(p, "/") && path.Clean(p) == p && p != "." && p != ".." && !strings.HasPrefix(p, "../")
}
