package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/fdpass"
	"github.com/damselfly-io/damselfly/source"
)

// The daemon never opens a path a client names: the client opens its
// output, its dfcache import input and a file:// source itself, with its own
// rights, and passes the descriptors over the socket (internal/fdpass).

// output is where a download lands, opened by the caller.
type output struct {
	final string
	f     *os.File
	// tmp is the temp file next to final that is renamed into place once
	// the download succeeded; "" for an output written through (a device,
	// a pipe).
	tmp  string
	mode os.FileMode
}

// openOutput opens path for a download. An existing non-regular file (a
// character or block device, a fifo) is opened for writing and written
// through, never replaced; otherwise a temp file is created next to path,
// with the caller's rights, to be renamed into place by commit. mode is
// masked to 0777 (0 means 0666) and then by the process umask, as a
// newly created file would be.
func openOutput(path string, mode uint32) (*output, error) {
	if st, err := os.Stat(path); err == nil && !st.Mode().IsRegular() {
		if st.IsDir() {
			return nil, fmt.Errorf("output %s is a directory: %w", path, core.ErrInvalid)
		}
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("open output %s: %w", path, err)
		}
		return &output{final: path, f: f}, nil
	}
	m := os.FileMode(mode) & 0o777
	if m == 0 {
		m = 0o666
	}
	m &^= umask()
	dir, base := filepath.Dir(path), filepath.Base(path)
	if len(base) > 200 {
		base = base[:200]
	}
	f, err := os.CreateTemp(dir, "."+base+".dfget-*")
	if err != nil {
		return nil, fmt.Errorf("create output in %s: %w", dir, err)
	}
	return &output{final: path, f: f, tmp: f.Name(), mode: m}, nil
}

// commit gives a regular output its mode and moves it into place.
func (o *output) commit() error {
	if o.tmp == "" {
		if err := o.f.Close(); err != nil {
			return fmt.Errorf("close %s: %w", o.final, err)
		}
		return nil
	}
	if err := o.f.Chmod(o.mode); err != nil {
		o.abort()
		return fmt.Errorf("chmod %s: %w", o.final, err)
	}
	if err := o.f.Close(); err != nil {
		o.abort()
		return fmt.Errorf("close %s: %w", o.final, err)
	}
	if err := os.Rename(o.tmp, o.final); err != nil {
		o.abort()
		return fmt.Errorf("move into %s: %w", o.final, err)
	}
	return nil
}

// abort drops a temp file (an output written through keeps what it got).
func (o *output) abort() {
	_ = o.f.Close()
	if o.tmp != "" {
		_ = os.Remove(o.tmp)
	}
}

// umask returns the process's file mode creation mask (from
// /proc/self/status; 022 when it cannot be read).
func umask() os.FileMode {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0o022
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Umask:"); ok {
			if n, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
				return os.FileMode(n) & 0o777
			}
		}
	}
	return 0o022
}

// openSource opens the file a file:// URL names, for reading, with the
// caller's rights; nil for other URLs.
func openSource(rawURL string) (*os.File, error) {
	u, err := url.Parse(rawURL)
	if err != nil || !strings.EqualFold(u.Scheme, "file") {
		return nil, nil //nolint:nilerr // not a file URL: the daemon checks the rest
	}
	path, err := source.FilePath(rawURL)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("open %s: %w: %w", path, core.ErrNotFound, err)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return f, nil
}

// pass hands files to the daemon and returns their token. A daemon that
// does not take files (an older one) counts as unavailable.
func (c *Client) pass(ctx context.Context, files map[string]*os.File) (string, error) {
	tok, err := fdpass.Send(ctx, c.sock, files)
	if err != nil {
		return "", fmt.Errorf("%w: %w", core.ErrUnavailable, err)
	}
	return tok, nil
}
