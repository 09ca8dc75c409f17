package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"golang.org/x/time/rate"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon/fetch"
	"github.com/damselfly-io/damselfly/daemon/piece"
	"github.com/damselfly-io/damselfly/daemon/store"
	"github.com/damselfly-io/damselfly/source"
)

// fetchOrigin fetches the given runs of pieces from the origin, one range
// request per run (the whole content when ranges is nil: its shape is
// unknown).
func (c *conductor) fetchOrigin(ctx context.Context, ranges []fetch.Range) error {
	l, ps := c.task.Shape()
	if ranges == nil || l < 0 || ps == 0 {
		return c.fetchOriginRange(ctx, 0, -1)
	}
	for _, r := range ranges {
		off, _ := core.PieceRange(r.First, l, ps)
		lastOff, lastSize := core.PieceRange(r.Last, l, ps)
		if err := c.fetchOriginRange(ctx, off, lastOff+lastSize-off); err != nil {
			return err
		}
	}
	return nil
}

func (c *conductor) headers() http.Header {
	h := specHeaders(c.req.spec.GetHeaders())
	if v := core.SpecVersion(c.req.spec.GetUrl(), c.req.spec.GetHeaders()); v != "" {
		// An object's version is part of its task ID (checked against the
		// spec), so this If-Match names the bytes the ID stands for.
		h.Set("If-Match", v)
	}
	for k, vs := range c.req.originHeaders {
		h[k] = vs
	}
	return h
}

// representationHeaders would make the origin send other bytes than the
// content as it stores it (a part, an encoding, nothing when unchanged) or
// another resource: a task's spec travels to seed peers, so whoever
// registered it last must not choose what they fetch through these.
var representationHeaders = []string{
	"Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since",
	"Accept-Encoding", "Te", "Host", "Connection", "Upgrade", "Transfer-Encoding", "Content-Length",
}

// specHeaders returns a task spec's headers for an origin request, without
// representationHeaders.
func specHeaders(m map[string]string) http.Header {
	h := http.Header{}
	for k, v := range m {
		if !core.ContainsString(representationHeaders, http.CanonicalHeaderKey(k)) {
			h.Set(k, v)
		}
	}
	return h
}

func (c *conductor) fetchOriginRange(ctx context.Context, off, length int64) error {
	url := c.req.spec.GetUrl()
	var src source.Source = c.d.src
	if c.req.localFile != nil {
		src = &source.Opened{F: c.req.localFile}
	}
	fetchStart := time.Now()
	resp, err := src.Fetch(ctx, source.Request{URL: url, Header: c.headers(), Offset: off, Length: length, Trusted: c.req.seed || c.req.preheat})
	if err != nil {
		return fmt.Errorf("fetch %s from origin: %w", url, err)
	}
	defer resp.Body.Close()
	// Before the shape is posted: the TaskMeta that carries it says too
	// whether the origin shares this host's uplink.
	c.noteOrigin(ctx, resp.Remote)
	l, ps := c.task.Shape()
	total := resp.ContentLength
	if ps == 0 {
		ps = core.PieceSize(total)
		if err := c.task.SetShape(total, ps); err != nil {
			return err
		}
		c.post(ctx, evOriginShape{})
	} else if l < 0 && total >= 0 {
		if err := c.task.SetShape(total, ps); err != nil {
			return err
		}
		c.post(ctx, evOriginShape{})
	} else if l >= 0 && total >= 0 && total != l {
		return fmt.Errorf("origin %s: content length changed from %d to %d: %w", url, l, total, core.ErrOrigin)
	}
	n := uint32(off / int64(ps))
	buf := make([]byte, ps)
	var read int64
	// A piece's latency runs from asking for it (the request, for the first)
	// to holding it verified and stored, as for pieces from peers.
	pieceStart := fetchStart
	for length < 0 || read < length {
		want := buf
		if length >= 0 && length-read < int64(len(buf)) {
			want = buf[:length-read]
		}
		k, err := readLimited(ctx, c.d.pm, originCounter{resp.Body, c.task}, want, c.d.dl, c.limit)
		if k > 0 {
			read += int64(k)
			c.originBytes.Add(int64(k))
			c.d.metrics.originBytes.Add(float64(k))
			c.d.pm.DownloadBytes.WithLabelValues("origin").Add(float64(k))
			if !c.task.Has(n) {
				if werr := c.task.WritePiece(n, want[:k], nil); werr != nil {
					return werr
				}
				cost := time.Since(pieceStart)
				c.d.pm.PieceDuration.WithLabelValues("origin").Observe(cost.Seconds())
				c.post(ctx, evOriginPiece{n: n, size: k, cost: cost})
			}
			pieceStart = time.Now()
			n++
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read %s from origin at byte %d: %w", url, off+read, err)
		}
	}
	if length >= 0 && read != length {
		return fmt.Errorf("origin %s: got %d of %d bytes: %w", url, read, length, core.ErrOrigin)
	}
	if l, _ := c.task.Shape(); l < 0 {
		if err := c.task.SetShape(off+read, ps); err != nil {
			return err
		}
		c.post(ctx, evOriginShape{})
	}
	return nil
}

// noteOrigin records whether the origin that answered from remote shares
// this host's uplink: the operator said so (origin_shares_uplink) or it
// answered from one of this host's own addresses. The scheduler learns it
// with the task's shape (TaskMeta.origin_on_host) and then keeps what it
// sends through this host, a seed peer above all, to about one copy: more
// would take the uplink from the origin's own answers. Once found, it holds
// for the task: a later range answered from elsewhere (another address of a
// round-robin name) does not make the shared link free.
func (c *conductor) noteOrigin(ctx context.Context, remote net.Addr) {
	if c.originOnHost.Load() {
		return // found already: it holds for the task
	}
	shared := c.d.cfg.OriginSharesUplink
	first := !c.originNoted.Swap(true)
	if !shared && !addrOnHost(remote) {
		if first {
			c.log.Debug("origin not on this host", "origin", remote)
		}
		return
	}
	if c.originOnHost.Swap(true) {
		return
	}
	level := slog.LevelDebug
	if c.d.cfg.Seed {
		level = slog.LevelInfo
	}
	c.log.Log(ctx, level, "origin on this host: its uplink is the origin's", "origin", remote, "origin_shares_uplink", shared)
}

// addrOnHost reports whether a is an IP address of this host: loopback, or
// an address of one of its interfaces. The interfaces are listed on every
// call (once per origin fetch): addresses come and go, and a stale list
// would misjudge an origin for as long as it is kept.
func addrOnHost(a net.Addr) bool {
	var ip net.IP
	switch a := a.(type) {
	case *net.TCPAddr:
		ip = a.IP
	case *net.UDPAddr:
		ip = a.IP
	case *net.IPAddr:
		ip = a.IP
	}
	if ip == nil || ip.IsUnspecified() {
		return false
	}
	if ip.IsLoopback() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range addrs {
		switch ia := ia.(type) {
		case *net.IPNet:
			if ia.IP.Equal(ip) {
				return true
			}
		case *net.IPAddr:
			if ia.IP.Equal(ip) {
				return true
			}
		}
	}
	return false
}

// originCounter counts the bytes read from the origin into the task as
// they come, not per piece: children learn that the source is still
// receiving a piece that is slow to complete (store.Task.SourceBytes).
type originCounter struct {
	r io.Reader
	t *store.Task
}

func (o originCounter) Read(b []byte) (int, error) {
	n, err := o.r.Read(b)
	o.t.AddOriginBytes(int64(n))
	return n, err
}

// readLimited fills b from r, paying the limiters as it goes.
func readLimited(ctx context.Context, m *piece.Metrics, r io.Reader, b []byte, ls ...*rate.Limiter) (int, error) {
	const step = 64 << 10
	got := 0
	for got < len(b) {
		end := min(len(b), got+step)
		for _, l := range ls {
			if err := waitObserved(ctx, m, l, end-got); err != nil {
				return got, err
			}
		}
		k, err := io.ReadFull(r, b[got:end])
		got += k
		if err != nil {
			if err == io.ErrUnexpectedEOF || (err == io.EOF && got > 0) {
				return got, io.ErrUnexpectedEOF
			}
			return got, err
		}
	}
	return got, nil
}

// waitObserved pays n bytes to l, recording a wait in m.
func waitObserved(ctx context.Context, m *piece.Metrics, l *rate.Limiter, n int) error {
	if piece.Unlimited(l) {
		return nil
	}
	start := time.Now()
	err := piece.WaitN(ctx, l, n)
	m.ObserveWait("download", time.Since(start))
	return err
}

// verifyFile checks a file against "sha256:<hex>".
func verifyFile(ctx context.Context, path, digest string) error {
	_, want, err := core.ParseDigest(digest)
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, &ctxReader{ctx: ctx, r: f}); err != nil {
		return fmt.Errorf("hash content: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("content is sha256:%s, want sha256:%s: %w", got, want, core.ErrDigestMismatch)
	}
	return nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r *ctxReader) Read(b []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(b)
}
