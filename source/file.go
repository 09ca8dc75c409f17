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
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fileError(path, err)
	}
	if !st.Mode().IsRegular() {
		_ = f.Close()
		return nil, fmt.Errorf("read file %s: not a regular file: %w", path, core.ErrInvalid)
	}
	size := st.Size()
	if req.Offset > size {
		_ = f.Close()
		return nil, fmt.Errorf("read file %s: offset %d is past the end (%d bytes): %w", path, req.Offset, size, core.ErrInvalid)
	}
	n := size - req.Offset
	if req.Length >= 0 {
		n = min(n, req.Length)
	}
	h := http.Header{}
	h.Set("Last-Modified", st.ModTime().UTC().Format(http.TimeFormat))
	return &Response{
		Body:          &fileBody{ctx: ctx, f: f, r: io.NewSectionReader(f, req.Offset, n), path: path},
		ContentLength: size,
		Header:        h,
		RangeOK:       true,
	}, nil
}

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
	if err := b.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("close file %s: %w", b.path, err)
	}
	return nil
}
