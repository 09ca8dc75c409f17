package daemon

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/source"
)

// credentialHeaders never leave this daemon except towards the origin: they
// are kept out of the task spec that the scheduler and other peers see, and
// out of the cache.
var credentialHeaders = append([]string{"Authorization", "Proxy-Authorization", "Cookie"}, source.S3CredentialHeaders...)

// carriesCredentials reports whether a request's private part (what
// splitCredentials kept back) holds credentials: an Authorization or Cookie
// header, or S3 keys. Content fetched with credentials is the caller's
// private business, not the swarm's.
func carriesCredentials(private http.Header) bool {
	for _, k := range credentialHeaders {
		if private.Get(k) != "" {
			return true
		}
	}
	return false
}

// splitCredentials separates a request's headers into those that may travel
// with the task (to the scheduler, seed peers) and the credentials that only
// this daemon's own origin requests carry.
func splitCredentials(h map[string]string) (public map[string]string, private http.Header) {
	for k, v := range h {
		ck := http.CanonicalHeaderKey(k)
		if core.ContainsString(credentialHeaders, ck) {
			if private == nil {
				private = http.Header{}
			}
			private.Set(ck, v)
			continue
		}
		if public == nil {
			public = map[string]string{}
		}
		public[k] = v
	}
	return public, private
}

// openTask returns the conductor serving r, starting one when none runs,
// whether the task was already complete in the cache, and a hold on the task
// (GC and deletion wait until release is called; call it once when done
// reading). A cached copy modified on disk is dropped and fetched again.
func (d *Daemon) openTask(r taskRequest) (c *conductor, cached bool, release func(), err error) {
	// startConductor takes r.localFile; a second start (below) needs its own.
	var spare *os.File
	if r.localFile != nil {
		if fd, derr := unix.FcntlInt(r.localFile.Fd(), unix.F_DUPFD_CLOEXEC, 0); derr == nil {
			spare = os.NewFile(uintptr(fd), r.localFile.Name())
			defer func() {
				if spare != nil {
					spare.Close()
				}
			}()
		}
	}
	c, err = d.startConductor(r)
	if err != nil {
		return nil, false, nil, err
	}
	release = c.task.Hold()
	select {
	case <-c.done:
		cached = c.err == nil
	default:
		// a conductor just started for a task already complete
		cached = c.task.Complete()
	}
	if !cached {
		return c, false, release, nil
	}
	err = c.task.CheckIntact()
	if err == nil && !c.task.Complete() {
		// a check on another path (the upload port) dropped pieces already
		err = fmt.Errorf("task %s: cached copy lost pieces to re-verification: %w", r.spec.GetTaskId(), core.ErrDigestMismatch)
	}
	if err != nil {
		id := r.spec.GetTaskId()
		d.log.Warn("cached copy damaged; downloading again", "task_id", id, "err", err)
		release()
		_ = d.store.Delete(id)
		select {
		case <-c.exited:
		case <-time.After(5 * time.Second):
		}
		r.localFile, spare = spare, nil
		if c, err = d.startConductor(r); err != nil {
			return nil, false, nil, err
		}
		return c, false, c.task.Hold(), nil
	}
	return c, true, release, nil
}

// waitShape waits until the task's length is known, the task ends, or ctx
// ends; it reports the length (-1 when the task ended without one).
func (c *conductor) waitShape(ctx context.Context) (int64, error) {
	for {
		ch := c.task.Changed()
		if l, ps := c.task.Shape(); l >= 0 && ps > 0 {
			return l, nil
		}
		select {
		case <-c.done:
			if l, ps := c.task.Shape(); l >= 0 && ps > 0 && c.err == nil {
				return l, nil
			}
			if c.err != nil {
				return -1, c.err
			}
			return -1, fmt.Errorf("task %s ended without a length: %w", c.id, core.ErrUnavailable)
		case <-ctx.Done():
			return -1, ctx.Err()
		case <-ch:
		}
	}
}

// copyOut writes the content's bytes [off, end) to w in order, as verified
// pieces arrive. The piece that ends the content is written only once the
// task has completed, i.e. passed its whole-content digest, so a content
// that fails verification never reaches w whole. The length must be known
// (waitShape). Copies go from the cache file, with sendfile when w can.
func (c *conductor) copyOut(ctx context.Context, w io.Writer, off, end int64) (int64, error) {
	f, err := os.Open(c.task.DataPath())
	if err != nil {
		return 0, fmt.Errorf("open cached content: %w", err)
	}
	defer f.Close()
	l, ps := c.task.Shape()
	next := off
	doneSeen := false
	resets := c.task.Resets()
	for next < end {
		ch := c.task.Changed()
		if c.task.Resets() != resets && next > off {
			// Bytes already written came from content that failed its
			// digest; they cannot be taken back.
			return next - off, fmt.Errorf("task %s: content failed its digest after %d bytes were sent; fetching it again: %w", c.id, next-off, core.ErrDigestMismatch)
		}
		progressed := false
		for next < end {
			n := uint32(next / int64(ps))
			pOff, pSize := core.PieceRange(n, l, ps)
			if !c.task.Has(n) {
				break
			}
			if pOff+pSize >= l && !c.succeeded() {
				break // the last piece waits for the whole-content digest
			}
			k := min(end, pOff+pSize) - next
			if _, err := f.Seek(next, io.SeekStart); err != nil {
				return next - off, fmt.Errorf("seek cached content: %w", err)
			}
			// CopyN wraps f in a LimitedReader, which net/http's response
			// writer turns into sendfile.
			m, err := io.CopyN(w, f, k)
			next += m
			if err != nil {
				return next - off, err
			}
			progressed = true
		}
		if next >= end {
			break
		}
		if progressed {
			continue
		}
		if c.succeeded() && doneSeen {
			return next - off, fmt.Errorf("task %s: piece at byte %d left the cache: %w", c.id, next, core.ErrUnavailable)
		}
		select {
		case <-c.done:
			if c.err != nil {
				return next - off, c.err
			}
			doneSeen = true // complete: loop once more to write what is left
		case <-ctx.Done():
			return next - off, ctx.Err()
		case <-ch:
		}
	}
	return next - off, nil
}

// succeeded reports whether the task completed without error.
func (c *conductor) succeeded() bool {
	select {
	case <-c.done:
		return c.err == nil
	default:
		return false
	}
}

// dragonflyHeaders are the per-request task options a proxy client may set,
// under Dragonfly's names and ours.
var dragonflyHeaders = map[string]string{
	"X-Dragonfly-Tag": "tag", "X-Damselfly-Tag": "tag",
	"X-Dragonfly-Application": "application", "X-Damselfly-Application": "application",
	"X-Dragonfly-Filter": "filter", "X-Damselfly-Filter": "filter",
}

// taskOptionsFrom reads (and removes) the task-option headers of a request:
// tag, application and the query parameters to leave out of the task ID
// ("&"-separated, as Dragonfly writes them; commas work too).
func taskOptionsFrom(h http.Header) core.TaskOptions {
	var o core.TaskOptions
	for name, what := range dragonflyHeaders {
		v := h.Get(name)
		h.Del(name)
		if v == "" {
			continue
		}
		switch what {
		case "tag":
			o.Tag = v
		case "application":
			o.Application = v
		case "filter":
			for _, f := range strings.FieldsFunc(v, func(r rune) bool { return r == '&' || r == ',' }) {
				if f = strings.TrimSpace(f); f != "" && !core.ContainsString(o.FilteredQuery, f) {
					o.FilteredQuery = append(o.FilteredQuery, f)
				}
			}
		}
	}
	return o
}
