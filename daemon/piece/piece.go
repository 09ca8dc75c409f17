// Package piece moves piece bytes between peers: the upload server that
// serves verified pieces of known tasks over HTTP (sendfile where possible)
// and the client that fetches one piece from a parent with a stall timeout
// that follows progress rather than a fixed deadline. It does not decide
// which piece to fetch or from whom.
package piece

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon/store"
)

// Lookup finds a task this daemon holds.
type Lookup interface {
	Get(id string) (*store.Task, bool)
}

// chunk is how many bytes pass a rate limiter at once.
const chunk = 64 << 10

// Limiter is a host-wide token bucket; nil means unlimited.
type Limiter = rate.Limiter

// NewLimiter returns a limiter for bytesPerSec (0: nil, unlimited).
func NewLimiter(bytesPerSec int64) *rate.Limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	burst := int(bytesPerSec / 10)
	if burst < 4*chunk {
		burst = 4 * chunk
	}
	return rate.NewLimiter(rate.Limit(bytesPerSec), burst)
}

// WaitN takes n tokens from l (nil: unlimited), in steps no larger than its
// burst, which rate.Limiter refuses to wait for in one call.
func WaitN(ctx context.Context, l *rate.Limiter, n int) error {
	if Unlimited(l) {
		return nil
	}
	for n > 0 {
		c := min(n, l.Burst())
		if err := l.WaitN(ctx, c); err != nil {
			return err
		}
		n -= c
	}
	return nil
}

// Metrics of piece transfer, shared by server and client.
type Metrics struct {
	UploadBytes    prometheus.Counter
	UploadsActive  prometheus.Gauge
	UploadsDenied  *prometheus.CounterVec
	PieceDuration  *prometheus.HistogramVec
	PieceFailures  *prometheus.CounterVec
	DownloadBytes  *prometheus.CounterVec
	UploadRequests prometheus.Counter
	// UploadsRelayed counts uploads of pieces still arriving (store.Relay).
	UploadsRelayed prometheus.Counter
	// LimitWaits and LimitWaitSeconds count transfers held back by a rate
	// limit or a concurrency cap, by limit (download, upload, peer_upload,
	// upload_slots, origin_slots).
	LimitWaits       *prometheus.CounterVec
	LimitWaitSeconds *prometheus.CounterVec
	// Received counts the bytes read from peers on other hosts as they
	// arrive, verified or not: what the downlink carried, which the
	// daemon samples for its downlink estimate (not exported). Bytes over
	// loopback, and from origins (which may run on this host), say
	// nothing of the link and are left out.
	Received atomic.Int64
}

// NewMetrics registers the piece metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		UploadBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "damselfly_daemon_upload_bytes_total", Help: "Piece bytes served to other peers."}),
		UploadsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "damselfly_daemon_uploads_active", Help: "Piece uploads in progress."}),
		UploadsDenied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "damselfly_daemon_upload_denied_total", Help: "Piece requests refused, by reason."}, []string{"reason"}),
		UploadRequests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "damselfly_daemon_upload_requests_total", Help: "Piece requests received."}),
		UploadsRelayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "damselfly_daemon_uploads_relayed_total", Help: "Piece uploads served while the piece was still arriving (cut-through)."}),
		PieceDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "damselfly_daemon_piece_duration_seconds",
			Help:    "Time to fetch and verify one piece, by source (peer, origin).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"source"}),
		PieceFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "damselfly_daemon_piece_failures_total", Help: "Failed piece fetches, by reason."}, []string{"reason"}),
		DownloadBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "damselfly_daemon_download_bytes_total", Help: "Bytes downloaded, by source (peer, origin)."}, []string{"source"}),
		LimitWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "damselfly_daemon_limit_waits_total",
			Help: "Transfers held back by a limit, by limit (download, upload, peer_upload, upload_slots, origin_slots)."}, []string{"limit"}),
		LimitWaitSeconds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "damselfly_daemon_limit_wait_seconds_total", Help: "Time spent waiting for a limit, by limit."}, []string{"limit"}),
	}
	// Known label values exist from the start (at 0), so dashboards and
	// alerts over them have data before the first failure.
	for _, r := range []string{"corrupt", "not_found", "error"} {
		m.PieceFailures.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.UploadBytes, m.UploadsActive, m.UploadsDenied, m.UploadRequests, m.UploadsRelayed, m.PieceDuration, m.PieceFailures, m.DownloadBytes,
			m.LimitWaits, m.LimitWaitSeconds)
	}
	return m
}

// PeerHeader names the requesting peer on a piece request, for the
// per-peer upload limit (the remote IP when absent).
const PeerHeader = "X-Damselfly-Peer"

// Keys returns the key a scheduler shared for a private task, nil when
// none arrived (see core.PieceToken).
type Keys func(taskID string) []byte

// Server serves pieces over HTTP: GET /pieces/{task}/{n}.
type Server struct {
	keys    Keys
	lookup  Lookup
	limit   *rate.Limiter
	slots   *Slots
	peers   peerLimits
	metrics *Metrics
	log     *slog.Logger
	active  atomic.Int64                 // uploads in progress
	budget  atomic.Pointer[func() int64] // SetPacing
	// paced: the connections with uploads in progress whose rate pace
	// sets (pace.go).
	pacedMu sync.Mutex
	paced   map[*net.TCPConn]*pacedConn
}

// NewServer returns an upload server allowing maxUploads concurrent
// transfers and limit bytes/s for the whole host (nil: unlimited).
func NewServer(l Lookup, maxUploads int, limit *rate.Limiter, m *Metrics, log *slog.Logger) *Server {
	if maxUploads <= 0 {
		maxUploads = 64
	}
	return &Server{lookup: l, limit: limit, slots: NewSlots(maxUploads), metrics: m, log: log}
}

// Active is the number of piece uploads in progress.
func (s *Server) Active() int64 { return s.active.Load() }

// SetKeys sets where the server finds the keys that check the piece tokens
// of private tasks. Without keys every private task's pieces are refused.
func (s *Server) SetKeys(k Keys) { s.keys = k }

// allowed checks a request for a piece of the private task id: it must carry
// a token the scheduler issued for this task to the requesting peer, still
// valid. Public tasks never get here.
func (s *Server) allowed(w http.ResponseWriter, r *http.Request, id string) bool {
	tok := r.Header.Get(core.TokenHeader)
	if tok == "" {
		s.metrics.UploadsDenied.WithLabelValues("no_token").Inc()
		http.Error(w, "private task: a piece token is required", http.StatusUnauthorized)
		return false
	}
	var key []byte
	if s.keys != nil {
		key = s.keys(id)
	}
	if err := core.CheckPieceToken(key, tok, id, r.Header.Get(PeerHeader), time.Now()); err != nil {
		s.metrics.UploadsDenied.WithLabelValues("bad_token").Inc()
		s.log.Info("piece request with a bad token refused", "task_id", id, "remote", r.RemoteAddr, "err", err)
		http.Error(w, "private task: "+err.Error(), http.StatusForbidden)
		return false
	}
	return true
}

// SetLimits changes the concurrent upload cap and the per-peer limit in
// bytes/s (0: none) while the server runs.
func (s *Server) SetLimits(maxUploads int, peerBytesPerSec int64) {
	if maxUploads > 0 {
		s.slots.SetMax(maxUploads)
	}
	s.peers.set(peerBytesPerSec)
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /pieces/{task}/{n}", s.servePiece)
	return mux
}

func (s *Server) servePiece(w http.ResponseWriter, r *http.Request) {
	s.metrics.UploadRequests.Inc()
	id := r.PathValue("task")
	n64, err := strconv.ParseUint(r.PathValue("n"), 10, 32)
	if err != nil {
		http.Error(w, "bad piece number", http.StatusBadRequest)
		return
	}
	n := uint32(n64)
	t, ok := s.lookup.Get(id)
	if !ok {
		s.metrics.UploadsDenied.WithLabelValues("unknown_task").Inc()
		http.Error(w, "unknown task", http.StatusNotFound)
		return
	}
	if t.Local() {
		// a file of this host, read with a local caller's rights: not for peers
		s.metrics.UploadsDenied.WithLabelValues("local_file").Inc()
		http.Error(w, "unknown task", http.StatusNotFound)
		return
	}
	if t.Private() && !s.allowed(w, r, id) {
		return
	}
	off, size, err := t.PieceSection(n)
	if err == nil && t.Complete() {
		// A complete task's file is checked (a stat) before its bytes go
		// out: a file changed on disk is verified again, and a piece that
		// no longer matches its digest is not held any more.
		if t.CheckIntact() != nil {
			off, size, err = t.PieceSection(n)
		}
	}
	var relay *store.RelayReader
	if err != nil {
		var ok bool
		if relay, ok = t.OpenRelay(n); !ok {
			s.metrics.UploadsDenied.WithLabelValues("unknown_piece").Inc()
			http.Error(w, "piece not held", http.StatusNotFound)
			return
		}
		defer relay.Close()
	}
	// Pinned while its bytes go out: GC and deletion wait for us.
	release := t.Hold()
	defer release()
	start := time.Now()
	if waited, err := s.slots.Acquire(r.Context()); err != nil {
		return
	} else if waited {
		s.metrics.ObserveWait("upload_slots", time.Since(start))
	}
	defer s.slots.Release()
	s.metrics.UploadsActive.Inc()
	defer s.metrics.UploadsActive.Dec()
	s.active.Add(1)
	defer s.active.Add(-1)
	defer s.pace(r)()
	peer := r.Header.Get(PeerHeader)
	if peer == "" {
		peer, _, _ = net.SplitHostPort(r.RemoteAddr)
	}
	peerLimit := s.peers.get(peer, time.Now())
	if relay != nil {
		s.serveRelay(w, r, relay, id, n, peerLimit)
		return
	}
	f, err := os.Open(t.DataPath())
	if err != nil {
		http.Error(w, "task data gone", http.StatusNotFound)
		return
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		http.Error(w, "seek", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	// io.CopyN over an *os.File lets net/http use sendfile(2).
	var sent int64
	if Unlimited(s.limit) && Unlimited(peerLimit) {
		sent, err = io.CopyN(w, f, size)
	} else {
		for sent < size && err == nil {
			c := min(int64(chunk), size-sent)
			if err = s.metrics.wait(r.Context(), "peer_upload", peerLimit, int(c)); err != nil {
				break
			}
			if err = s.metrics.wait(r.Context(), "upload", s.limit, int(c)); err != nil {
				break
			}
			var k int64
			k, err = io.CopyN(w, f, c)
			sent += k
		}
	}
	s.metrics.UploadBytes.Add(float64(sent))
	if err != nil && !errors.Is(err, context.Canceled) {
		s.log.Debug("piece upload ended early", "task_id", id, "piece", n, "sent", sent, "err", err)
	}
}

// serveRelay sends a piece this daemon is still receiving, as its bytes
// arrive; the last byte goes only after the piece was verified here, and
// the response is aborted if it failed, so the child sees a broken transfer
// rather than a complete piece with bad bytes.
func (s *Server) serveRelay(w http.ResponseWriter, r *http.Request, rr *store.RelayReader, id string, n uint32, peerLimit *rate.Limiter) {
	s.metrics.UploadsRelayed.Inc()
	size := rr.Size()
	w.Header().Set("Content-Length", strconv.Itoa(size))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	sent := 0
	defer func() { s.metrics.UploadBytes.Add(float64(sent)) }()
	for sent < size {
		b, err := rr.Next(r.Context(), sent)
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				s.log.Debug("relayed piece upload aborted", "task_id", id, "piece", n, "sent", sent, "err", err)
			}
			panic(http.ErrAbortHandler) // the child must not take a short body for a piece
		}
		for len(b) > 0 {
			c := b[:min(len(b), chunk)]
			if err := s.metrics.wait(r.Context(), "peer_upload", peerLimit, len(c)); err != nil {
				return
			}
			if err := s.metrics.wait(r.Context(), "upload", s.limit, len(c)); err != nil {
				return
			}
			k, err := w.Write(c)
			sent += k
			if err != nil {
				return
			}
			b = b[k:]
		}
		_ = rc.Flush()
	}
}

// Client fetches pieces from parents.
type Client struct {
	hc      *http.Client
	bufs    sync.Pool
	metrics *Metrics
}

// NewClient returns a piece client with a pooled transport.
func NewClient(m *Metrics) *Client {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ReadBufferSize:      256 << 10,
		WriteBufferSize:     64 << 10,
	}
	return &Client{hc: &http.Client{Transport: tr}, metrics: m}
}

// Request names one piece at one parent.
type Request struct {
	Addr   string // host:port of the parent's upload server
	TaskID string
	Number uint32
	Size   int64
	Digest []byte // trusted digest to verify against
	// Stall is how long the transfer may make no progress before it is
	// abandoned; the caller derives it from measured throughput.
	Stall time.Duration
	// Limits apply to this transfer (host-wide and per-download); nil ones are skipped.
	Limits []*rate.Limiter
	// PeerID names the requester to the parent, for its per-peer upload limit.
	PeerID string
	// Token is the piece token for a private task (empty for public ones).
	Token string
	// Buf, when set, receives the piece (len(Buf) == Size); the caller owns
	// it whatever Fetch returns. Otherwise Fetch takes a pooled buffer and
	// returns it, to be handed back with Release.
	Buf []byte
	// Progress, when set, is told after every read how much of the buffer
	// has arrived; with Buf set it lets the caller relay the piece onwards.
	Progress func(filled int)
}

// ErrDenied marks a parent that refused a piece of a private task (no valid
// token yet): not the parent's fault.
var ErrDenied = errors.New("piece token refused")

// ErrStalled marks a transfer abandoned after its stall timeout without
// progress.
var ErrStalled = errors.New("transfer stalled")

// ErrCorrupt marks bytes that do not match the trusted digest.
var ErrCorrupt = fmt.Errorf("piece %w", core.ErrDigestMismatch)

// Fetch downloads and verifies one piece. The returned buffer must be handed
// back with Release.
func (c *Client) Fetch(ctx context.Context, r Request) ([]byte, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := r.Stall
	if stall <= 0 {
		stall = 10 * time.Second
	}
	errStall := fmt.Errorf("no progress for %s: %w", stall, ErrStalled)
	watchdog := time.AfterFunc(stall, func() { cancel(errStall) })
	defer watchdog.Stop()

	url := "http://" + r.Addr + "/pieces/" + r.TaskID + "/" + strconv.FormatUint(uint64(r.Number), 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if r.PeerID != "" {
		req.Header.Set(PeerHeader, r.PeerID)
	}
	if r.Token != "" {
		req.Header.Set(core.TokenHeader, r.Token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if cerr := context.Cause(ctx); cerr != nil && cerr != context.Canceled {
			err = cerr
		}
		return nil, fmt.Errorf("fetch piece %d from %s: %w", r.Number, r.Addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		if resp.StatusCode == http.StatusNotFound {
			return nil, fmt.Errorf("fetch piece %d from %s: %w", r.Number, r.Addr, core.ErrNotFound)
		}
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			return nil, fmt.Errorf("fetch piece %d from %s: %s: %w", r.Number, r.Addr, resp.Status, ErrDenied)
		}
		return nil, fmt.Errorf("fetch piece %d from %s: status %s", r.Number, r.Addr, resp.Status)
	}
	if resp.ContentLength >= 0 && resp.ContentLength != r.Size {
		return nil, fmt.Errorf("fetch piece %d from %s: %d bytes offered, want %d: %w", r.Number, r.Addr, resp.ContentLength, r.Size, ErrCorrupt)
	}
	buf := r.Buf
	if buf == nil {
		buf = c.get(int(r.Size))
	} else if int64(len(buf)) != r.Size {
		return nil, fmt.Errorf("fetch piece %d: buffer of %d bytes for %d", r.Number, len(buf), r.Size)
	}
	drop := func() {
		if r.Buf == nil {
			c.Release(buf)
		}
	}
	// Plain Reads of up to 1 MiB: larger than the transport's buffer, so the
	// bytes land in buf directly, and every Read that returns is progress for
	// the stall watchdog. Limiters are paid after each read.
	var got int
	viaLink := !core.LoopbackHost(r.Addr)
	for got < len(buf) {
		end := min(len(buf), got+(1<<20))
		k, err := resp.Body.Read(buf[got:end])
		got += k
		if k > 0 {
			if viaLink {
				c.metrics.Received.Add(int64(k))
			}
			if r.Progress != nil {
				r.Progress(got)
			}
			// Waiting for this host's own limits is no stall of the
			// parent's: the watchdog rests meanwhile.
			watchdog.Stop()
			for _, l := range r.Limits {
				if werr := c.metrics.wait(ctx, "download", l, k); werr != nil {
					drop()
					return nil, fmt.Errorf("fetch piece %d from %s: rate limit: %w", r.Number, r.Addr, werr)
				}
			}
			watchdog.Reset(stall)
		}
		if err != nil {
			if err == io.EOF && got == len(buf) {
				break
			}
			drop()
			if cerr := context.Cause(ctx); cerr != nil {
				err = cerr
			} else if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("fetch piece %d from %s after %d bytes: %w", r.Number, r.Addr, got, err)
		}
	}
	if !core.EqualDigest(core.PieceDigest(buf), r.Digest) {
		drop()
		return nil, fmt.Errorf("piece %d from %s: %w", r.Number, r.Addr, ErrCorrupt)
	}
	c.metrics.DownloadBytes.WithLabelValues("peer").Add(float64(len(buf)))
	return buf, nil
}

// Buffer returns a pooled buffer of n bytes, for Request.Buf; hand it back
// with Release.
func (c *Client) Buffer(n int) []byte { return c.get(n) }

func (c *Client) get(n int) []byte {
	if v := c.bufs.Get(); v != nil {
		b := *(v.(*[]byte))
		if cap(b) >= n {
			return b[:n]
		}
	}
	return make([]byte, n)
}

// Release returns a buffer from Fetch to the pool.
func (c *Client) Release(b []byte) {
	if cap(b) == 0 {
		return
	}
	c.bufs.Put(&b)
}
