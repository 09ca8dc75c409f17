package source

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
)

// body delivers the bytes of one Request. When the connection breaks (or
// stalls) mid-transfer and the origin honours ranges, it asks for the rest
// with a range request from the byte it reached, up to Config.Retries times
// in a row without progress; otherwise the read error surfaces.
//
// Reads must not be concurrent with each other; Close may be called at any
// time, also during a Read, and aborts it.
//
// It keeps a context derived from the caller's: resumed requests belong to
// the Fetch that made the body and end with it (or with Close), as an
// http.Response body's reads do.
type body struct {
	ctx    context.Context
	cancel context.CancelFunc
	h      *HTTP
	u      *url.URL
	hdr    http.Header

	// Owned by the reading goroutine.
	start     int64 // content offset of the first byte delivered
	limit     int64 // most bytes to deliver, -1 for no limit
	want      int64 // bytes owed (an earlier EOF is an error), -1 when unknown
	total     int64 // whole content length, -1 when unknown
	pos       int64 // bytes delivered
	resumable bool
	validator string // for If-Range
	etag      string
	failures  int // consecutive failures without progress
	lastErr   error
	err       error // sticky: io.EOF or the failure

	mu     sync.Mutex // guards cur and closed against Close
	cur    *part
	closed bool
}

func (b *body) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.limit >= 0 {
		left := b.limit - b.pos
		if left <= 0 {
			return 0, b.finish(io.EOF)
		}
		if int64(len(p)) > left {
			p = p[:left]
		}
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		cur, err := b.acquire()
		if err != nil {
			return 0, b.finish(err)
		}
		n, err := cur.read(p)
		b.pos += int64(n)
		if n > 0 {
			b.failures = 0
		}
		if err == nil {
			return n, nil
		}
		if err == io.EOF {
			if b.want < 0 || b.pos >= b.want {
				return n, b.finish(io.EOF)
			}
			if cur.left == 0 {
				// The origin answered with a shorter range than asked
				// (allowed): ask for the rest, no failure.
				b.release(cur)
				if n > 0 {
					return n, nil
				}
				continue
			}
			err = io.ErrUnexpectedEOF
		}
		b.release(cur)
		if b.isClosed() {
			return n, b.finish(errClosed)
		}
		if cerr := b.ctx.Err(); cerr != nil {
			return n, b.finish(fmt.Errorf("GET %s: read body: %w", redact(b.u), cerr))
		}
		if !b.resumable || b.failures >= b.h.cfg.Retries {
			return n, b.finish(fmt.Errorf("GET %s: read body at byte %d: %w", redact(b.u), b.start+b.pos, err))
		}
		b.failures++
		b.lastErr = err
		if n > 0 {
			return n, nil
		}
	}
}

// acquire returns the current response, resuming when there is none.
func (b *body) acquire() (*part, error) {
	b.mu.Lock()
	cur, closed := b.cur, b.closed
	b.mu.Unlock()
	if closed {
		return nil, errClosed
	}
	if cur != nil {
		return cur, nil
	}
	cur, err := b.resume()
	if err != nil {
		if b.isClosed() {
			return nil, errClosed
		}
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		cur.close()
		return nil, errClosed
	}
	b.cur = cur
	return cur, nil
}

// release closes cur and forgets it.
func (b *body) release(cur *part) {
	b.mu.Lock()
	if b.cur == cur {
		b.cur = nil
	}
	b.mu.Unlock()
	cur.close()
}

func (b *body) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// resume opens a range request for the rest of the body.
func (b *body) resume() (*part, error) {
	off := b.start + b.pos
	length := int64(-1)
	if b.limit >= 0 {
		length = b.limit - b.pos
	}
	for {
		if b.failures > 0 {
			if err := sleep(b.ctx, b.h.backoff(b.failures-1, b.lastErr)); err != nil {
				return nil, fmt.Errorf("GET %s: wait to resume at byte %d: %w (after: %v)", redact(b.u), off, err, b.lastErr)
			}
		}
		p, err := b.h.attempt(b.ctx, b.u, b.hdr, off, length, true, b.validator)
		if err == nil {
			if err = b.checkSame(p); err == nil {
				return p, nil
			}
			p.close()
		}
		if !retryable(b.ctx, err) || b.failures >= b.h.cfg.Retries {
			return nil, fmt.Errorf("resume at byte %d (after: %v): %w", off, b.lastErr, err)
		}
		b.failures++
		b.lastErr = err
	}
}

// checkSame refuses a resumed response for another version of the content.
func (b *body) checkSame(p *part) error {
	if b.total >= 0 && p.total >= 0 && p.total != b.total {
		return fmt.Errorf("GET %s: length %d, was %d: %w", redact(b.u), p.total, b.total, errChanged)
	}
	if et := p.header.Get("ETag"); b.etag != "" && et != "" && et != b.etag {
		return fmt.Errorf("GET %s: ETag %s, was %s: %w", redact(b.u), et, b.etag, errChanged)
	}
	return nil
}

// finish ends the body with err (io.EOF when complete): it releases the
// connection and makes err the answer to further reads.
func (b *body) finish(err error) error {
	b.mu.Lock()
	cur := b.cur
	b.cur = nil
	b.mu.Unlock()
	if cur != nil {
		cur.close()
	}
	b.cancel()
	if b.err == nil {
		b.err = err
	}
	return b.err
}

// Close releases the connection and aborts a Read in progress. It never fails.
func (b *body) Close() error {
	b.mu.Lock()
	b.closed = true
	cur := b.cur
	b.cur = nil
	b.mu.Unlock()
	b.cancel()
	if cur != nil {
		cur.close()
	}
	return nil
}
