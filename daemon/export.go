package daemon

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/daemon/store"
)

// exporter writes a task's content to a client's output file while the task
// downloads: every verified piece is copied to its offset in a temp file
// next to the output as soon as it is stored (copy_file_range: the bytes do
// not pass through user space), so when the last piece lands only a rename
// is left. The output path never holds a partial file.
type exporter struct {
	// link: the output is on the cache's filesystem, so it becomes a hard
	// link to the cached data instead of a copy (no second copy of the
	// bytes in the page cache or on disk). The store notices if the output
	// is later modified in place (CheckIntact) before serving it again.
	link   bool
	output string
	req    *daemonv1.DownloadRequest
	tmp    *os.File
	src    *os.File
	copied []bool
	count  uint32
	resets uint64 // the task's Resets when copied was started
}

func newExporter(output string, req *daemonv1.DownloadRequest, cachePath string, link bool) (*exporter, error) {
	dir := filepath.Dir(output)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(output)+".dfget-*")
	if err != nil {
		return nil, fmt.Errorf("create output in %s: %w", dir, err)
	}
	e := &exporter{output: output, req: req, tmp: tmp}
	if link {
		e.link = sameDevice(tmp.Name(), cachePath)
	}
	return e, nil
}

func sameDevice(a, b string) bool {
	var sa, sb unix.Stat_t
	if unix.Stat(a, &sa) != nil || unix.Stat(b, &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev
}

// abort removes the temp file.
func (e *exporter) abort() {
	if e.src != nil {
		e.src.Close()
	}
	e.tmp.Close()
	os.Remove(e.tmp.Name())
}

// sync copies the pieces stored since the last call.
func (e *exporter) sync(t *store.Task) error {
	if t != nil && t.Resets() != e.resets {
		// The content failed its digest and is fetched anew: every piece
		// copied so far is suspect.
		e.resets, e.copied, e.count = t.Resets(), nil, 0
	}
	if e.link || t == nil || t.Count() == e.count {
		return nil
	}
	if e.src == nil {
		f, err := os.Open(t.DataPath())
		if err != nil {
			return fmt.Errorf("open cached content: %w", err)
		}
		e.src = f
	}
	for _, n := range t.NewPieces(&e.copied) {
		off, size, err := t.PieceSection(n)
		if err != nil {
			e.copied[n] = false // gone again (re-verified away); retry later
			continue
		}
		if err := copyRange(e.src, e.tmp, off, size); err != nil {
			return fmt.Errorf("write %s: %w", e.output, err)
		}
		e.count++
	}
	return nil
}

// finish copies what is left, sets mode and owner and moves the file into place.
func (e *exporter) finish(ctx context.Context, t *store.Task) error {
	if e.link {
		err := e.finishLink(t)
		if err == nil {
			return nil
		}
		// e.g. a filesystem without hard links: copy after all
		e.link = false
	}
	if err := e.sync(t); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	l, _ := t.Shape()
	if err := e.tmp.Truncate(max(l, 0)); err != nil {
		return fmt.Errorf("size %s: %w", e.output, err)
	}
	mode := os.FileMode(e.req.GetOutputMode())
	if mode == 0 {
		mode = 0o644
	}
	if err := e.tmp.Chmod(mode); err != nil {
		return fmt.Errorf("chmod %s: %w", e.output, err)
	}
	uid, gid := e.req.GetUid(), e.req.GetGid()
	if os.Getuid() == 0 && uid >= 0 && gid >= 0 && (uid != 0 || gid != 0) {
		if err := e.tmp.Chown(int(uid), int(gid)); err != nil {
			return fmt.Errorf("chown %s: %w", e.output, err)
		}
	}
	if e.src != nil {
		e.src.Close()
		e.src = nil
	}
	if err := e.tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", e.output, err)
	}
	if err := os.Rename(e.tmp.Name(), e.output); err != nil {
		os.Remove(e.tmp.Name())
		return fmt.Errorf("move into %s: %w", e.output, err)
	}
	return nil
}

// copyRange copies size bytes at off from src to the same offset of dst,
// in the kernel where it can, else through a buffer.
func copyRange(src, dst *os.File, off, size int64) error {
	roff, woff := off, off
	left := size
	for left > 0 {
		n, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(left), 0)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			// EXDEV on old kernels, EINVAL/ENOSYS on some filesystems.
			_, cerr := io.Copy(io.NewOffsetWriter(dst, woff), io.NewSectionReader(src, roff, left))
			return cerr
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		left -= int64(n)
	}
	return nil
}

// finishLink hard-links the cached data next to the output and renames it
// into place.
func (e *exporter) finishLink(t *store.Task) error {
	name := e.tmp.Name()
	e.tmp.Close()
	os.Remove(name)
	if err := os.Link(t.DataPath(), name); err != nil {
		// recreate the temp file for the copy path
		f, cerr := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if cerr != nil {
			return cerr
		}
		e.tmp = f
		return err
	}
	mode := os.FileMode(e.req.GetOutputMode())
	if mode == 0 {
		mode = 0o644
	}
	if err := os.Chmod(name, mode); err != nil {
		os.Remove(name)
		return fmt.Errorf("chmod %s: %w", e.output, err)
	}
	if err := os.Rename(name, e.output); err != nil {
		os.Remove(name)
		return fmt.Errorf("move into %s: %w", e.output, err)
	}
	return nil
}
