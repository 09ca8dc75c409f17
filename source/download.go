package source

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/damselfly-io/damselfly/core"
)

const copyBufferSize = 256 << 10

// Download fetches req from s into output without a daemon: the bytes go to a
// temporary file in output's directory, are checked against digest
// ("sha256:<hex>", optional), synced, and renamed into place. On any failure
// the temporary file is removed and output is left as it was. mode 0 means
// 0644. progress, when set, is called with the bytes written and the
// expected total (-1 when unknown). It returns the number of bytes written.
func Download(ctx context.Context, s Source, req Request, output string, digest string, mode os.FileMode, progress func(done, total int64)) (int64, error) {
	var wantSum string
	if digest != "" {
		_, hexsum, err := core.ParseDigest(digest)
		if err != nil {
			return 0, fmt.Errorf("check digest for %s: %w", output, err)
		}
		wantSum = hexsum
	}
	if mode == 0 {
		mode = 0o644
	}
	mode &= 0o777
	if st, err := os.Stat(output); err == nil && !st.Mode().IsRegular() && !st.IsDir() {
		// A device, a fifo: write through, never replace the node.
		return writeThrough(ctx, s, req, output, wantSum, digest, progress)
	}
	// Create the temporary file first: an unwritable directory should not
	// cost the origin a request.
	dir, base := filepath.Dir(output), filepath.Base(output)
	if len(base) > 200 {
		base = base[:200]
	}
	tmp, err := os.CreateTemp(dir, "."+base+".damselfly-*.tmp")
	if err != nil {
		return 0, fmt.Errorf("create temporary file for %s: %w", output, err)
	}
	done := false
	defer func() {
		if !done {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()

	resp, err := s.Fetch(ctx, req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()

	total := int64(-1)
	if resp.ContentLength >= 0 {
		total = max(resp.ContentLength-req.Offset, 0)
		if req.Length >= 0 {
			total = min(total, req.Length)
		}
	}

	n, sum, err := copyHashed(tmp, resp.Body, wantSum != "", total, progress)
	if err != nil {
		var werr *writeError
		if errors.As(err, &werr) {
			return n, fmt.Errorf("write %s: %w", tmp.Name(), werr.err)
		}
		return n, err
	}
	if total >= 0 && n != total {
		return n, fmt.Errorf("read %s: origin sent %d bytes, want %d: %w", redactRaw(req.URL), n, total, core.ErrOrigin)
	}
	if wantSum != "" {
		if got := hex.EncodeToString(sum); got != wantSum {
			return n, fmt.Errorf("verify %s: content is sha256:%s, want %s: %w", output, got, digest, core.ErrDigestMismatch)
		}
	}
	if err := tmp.Chmod(mode); err != nil {
		return n, fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return n, fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return n, fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), output); err != nil {
		return n, fmt.Errorf("move %s into place: %w", output, err)
	}
	done = true
	syncDir(dir)
	return n, nil
}

// writeThrough copies req's content into the existing non-regular file
// output (opened for writing, not replaced), checking the digest at the end.
func writeThrough(ctx context.Context, s Source, req Request, output, wantSum, digest string, progress func(done, total int64)) (int64, error) {
	f, err := os.OpenFile(output, os.O_WRONLY, 0)
	if err != nil {
		return 0, fmt.Errorf("open output %s: %w", output, err)
	}
	defer f.Close()
	resp, err := s.Fetch(ctx, req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, sum, err := copyHashed(f, resp.Body, wantSum != "", -1, progress)
	if err != nil {
		var werr *writeError
		if errors.As(err, &werr) {
			return n, fmt.Errorf("write %s: %w", output, werr.err)
		}
		return n, err
	}
	if wantSum != "" {
		if got := hex.EncodeToString(sum); got != wantSum {
			return n, fmt.Errorf("verify %s: content is sha256:%s, want %s: %w", output, got, digest, core.ErrDigestMismatch)
		}
	}
	if err := f.Close(); err != nil {
		return n, fmt.Errorf("close %s: %w", output, err)
	}
	return n, nil
}

// writeError marks a failure to write the destination, as opposed to a
// failure to read the source (which already says what it was doing).
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// copyHashed copies r to w, hashing with sha256 when hash is set and
// reporting progress after each chunk.
func copyHashed(w io.Writer, r io.Reader, hash bool, total int64, progress func(done, total int64)) (int64, []byte, error) {
	h := sha256.New()
	buf := make([]byte, copyBufferSize)
	var n int64
	if progress != nil {
		progress(0, total)
	}
	for {
		m, rerr := r.Read(buf)
		if m > 0 {
			if hash {
				h.Write(buf[:m])
			}
			if _, err := w.Write(buf[:m]); err != nil {
				return n, nil, &writeError{err}
			}
			n += int64(m)
			if progress != nil {
				progress(n, total)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return n, nil, rerr
		}
	}
	return n, h.Sum(nil), nil
}

// syncDir makes a rename in dir durable. Best effort: some file systems
// cannot sync a directory, and the file itself is already synced.
func syncDir(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	_ = d.Sync()
	_ = d.Close()
}
