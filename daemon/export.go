package daemon

import (
	"context"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon/store"
)

// exporter writes a task's content to the output file a client opened and
// passed over the socket: the daemon never opens, creates, chmods or
// renames a client's path, so it writes only where the client itself could.
//
// A regular output (the client's temp file next to its final name) gets
// every verified piece at its offset as soon as it is stored
// (copy_file_range: the bytes do not pass through user space) and is sized
// at the end; the client renames it into place once the download succeeds.
// Anything else (a character device such as /dev/null, a pipe, a socket)
// is written through, in order, as the pieces arrive; the last piece is
// written only after the whole content has passed its digest.
type exporter struct {
	out     *os.File
	regular bool
	src     *os.File
	copied  []bool
	count   uint32
	resets  uint64 // the task's Resets when copied was started
	// seq is the result of the in-order copy to a non-regular output.
	seq chan error
}

// newExporter checks the passed output: open for writing, not in append
// mode (pieces are written at their offsets).
func newExporter(out *os.File) (*exporter, error) {
	fl, err := unix.FcntlInt(out.Fd(), unix.F_GETFL, 0)
	if err != nil {
		return nil, fmt.Errorf("passed output: %w", err)
	}
	if acc := fl & unix.O_ACCMODE; acc != unix.O_WRONLY && acc != unix.O_RDWR {
		return nil, fmt.Errorf("passed output is not open for writing: %w", core.ErrInvalid)
	}
	st, err := out.Stat()
	if err != nil {
		return nil, fmt.Errorf("passed output: %w", err)
	}
	e := &exporter{out: out, regular: st.Mode().IsRegular()}
	switch {
	case st.IsDir():
		return nil, fmt.Errorf("passed output is a directory: %w", core.ErrInvalid)
	case e.regular && fl&unix.O_APPEND != 0:
		return nil, fmt.Errorf("passed output is open for appending: %w", core.ErrInvalid)
	}
	return e, nil
}

// start begins the in-order copy for a non-regular output.
func (e *exporter) start(ctx context.Context, c *conductor) {
	if e.regular {
		return
	}
	e.seq = make(chan error, 1)
	go func() {
		l, err := c.waitShape(ctx)
		if err == nil {
			_, err = c.copyOut(ctx, e.out, 0, l)
		}
		if err != nil {
			err = fmt.Errorf("write output: %w", err)
		}
		e.seq <- err
	}()
}

// close releases the files; the client keeps its own descriptor.
func (e *exporter) close() {
	if e.src != nil {
		e.src.Close()
		e.src = nil
	}
	e.out.Close()
}

// sync copies the pieces stored since the last call to a regular output.
func (e *exporter) sync(t *store.Task) error {
	if t != nil && t.Resets() != e.resets {
		// The content failed its digest and is fetched anew: every piece
		// copied so far is suspect.
		e.resets, e.copied, e.count = t.Resets(), nil, 0
	}
	if !e.regular || t == nil || t.Count() == e.count {
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
		if err := copyRange(e.src, e.out, off, size); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		e.count++
	}
	return nil
}

// finish writes what is left: the remaining pieces and the size of a
// regular output, or the end of the in-order copy.
func (e *exporter) finish(ctx context.Context, t *store.Task) error {
	if !e.regular {
		select {
		case err := <-e.seq:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := e.sync(t); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	l, _ := t.Shape()
	if err := e.out.Truncate(max(l, 0)); err != nil {
		return fmt.Errorf("size output: %w", err)
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
