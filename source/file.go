package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/damselfly-io/damselfly/core"
)

// File serves file:// URLs (file:///abs/path or file://localhost/abs/path)
// from the local file system.
type File struct{}

var _ Source = (*File)(nil)

// Fetch opens the file and returns the requested range of it.
func (*File) Fetch(ctx context.Context, req Request) (*Response, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("fetch %s: %w", req.URL, err)
	}
	path, err := filePath(req.URL)
	if err != nil {
		return nil, err
	}
	if req.Offset < 0 || req.Length < -1 {
		return nil, fmt.Errorf("read file %s: bad range offset %d length %d: %w", path, req.Offset, req.Length, core.ErrInvalid)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fileError(path, err)
	}
	return serveFile(ctx, f, path, req, true)
}

// serveFile answers req from the open file f; the body closes f when own.
func serveFile(ctx context.Context, f *os.File, path string, req Request, own bool) (*Response, error) {
	closeF := func() {
		if own {
			_ = f.Close()
		}
	}
	st, err := f.Stat()
	if err != nil {
		closeF()
		return nil, fileError(path, err)
	}
	if !st.Mode().IsRegular() {
		closeF()
		return nil, fmt.Errorf("read file %s: not a regular file: %w", path, core.ErrInvalid)
	}
	size := st.Size()
	if req.Offset > size {
		closeF()
		return nil, fmt.Errorf("read file %s: offset %d is past the end (%d bytes): %w", path, req.Offset, size, core.ErrInvalid)
	}
	n := size - req.Offset
	if req.Length >= 0 {
		n = min(n, req.Length)
	}
	h := http.Header{}
	h.Set("Last-Modified", st.ModTime().UTC().Format(http.TimeFormat))
	var owned *os.File
	if own {
		owned = f
	}
	return &Response{
		Body:          &fileBody{ctx: ctx, f: owned, r: io.NewSectionReader(f, req.Offset, n), path: path},
		ContentLength: size,
		Header:        h,
		RangeOK:       true,
	}, nil
}

// Opened serves every request from one file that is already open: a
// file:// URL's file as the local caller opened it (with the caller's
// rights) and passed it to the daemon. It does not close F.
type Opened struct {
	F *os.File
}

var _ Source = (*Opened)(nil)

// Fetch returns the requested range of o.F (req.URL only names it).
func (o *Opened) Fetch(ctx context.Context, req Request) (*Response, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("fetch %s: %w", req.URL, err)
	}
	if req.Offset < 0 || req.Length < -1 {
		return nil, fmt.Errorf("read file %s: bad range offset %d length %d: %w", o.F.Name(), req.Offset, req.Length, core.ErrInvalid)
	}
	return serveFile(ctx, o.F, o.F.Name(), req, false)
}

// FilePath returns the absolute path a file:// URL names.
func FilePath(raw string) (string, error) { return filePath(raw) }

// filePath extracts the absolute path of a file URL.
func filePath(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("fetch: parse URL: %w: %w", core.ErrInvalid, err)
	}
	if !strings.EqualFold(u.Scheme, "file") || u.Opaque != "" || (u.Host != "" && u.Host != "localhost") || !filepath.IsAbs(u.Path) {
		return "", fmt.Errorf("fetch %s: want file:///absolute/path: %w", raw, core.ErrInvalid)
	}
	return filepath.Clean(u.Path), nil
}

func fileError(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("read file %s: %w: %w", path, core.ErrNotFound, err)
	default:
		return fmt.Errorf("read file %s: %w: %w", path, core.ErrOrigin, err)
	}
}

// fileBody reads a section of a file and stops when ctx ends. It keeps ctx
// for the same reason an http.Response body does: reads belong to the Fetch.
type fileBody struct {
	ctx  context.Context
	f    *os.File
	r    *io.SectionReader
	path string
}

func (b *fileBody) Read(p []byte) (int, error) {
	if err := b.ctx.Err(); err != nil {
		return 0, fmt.Errorf("read file %s: %w", b.path, err)
	}
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("read file %s: %w", b.path, err)
	}
	return n, err
}

func (b *fileBody) Close() error {
	if b.f == nil {
		return nil
	}
	if err := b.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("close file %s: %w", b.path, err)
	}
	return nil
}
