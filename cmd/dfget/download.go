package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/client"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/progress"
	"github.com/damselfly-io/damselfly/source"
)

// downloader runs one download: through the daemon, else directly.
type downloader struct {
	opts     *options
	stdout   io.Writer // the content goes here with -O -
	written  int64     // bytes already written to stdout
	stderr   io.Writer
	tty      bool
	barShown bool
	// onProgress, when set, also gets every progress update (the
	// recursive mode's bar for the whole set).
	onProgress func(done, total int64)
}

// update feeds bar and onProgress.
func (d *downloader) update(b *bar) func(done, total int64) {
	return func(done, total int64) {
		b.Update(done, total)
		if d.onProgress != nil {
			d.onProgress(done, total)
		}
	}
}

// result says how a download went, for the summary line.
type result struct {
	bytes    int64
	elapsed  time.Duration
	direct   bool
	final    *daemonv1.DownloadProgress // daemon downloads only
	fellBack bool
}

func (d *downloader) note(format string, args ...any) {
	if !d.opts.quiet {
		fmt.Fprintf(d.stderr, "dfget: "+format+"\n", args...)
	}
}

func (d *downloader) download(ctx context.Context) (*result, error) {
	o := d.opts
	if o.direct {
		return d.direct(ctx)
	}
	c, err := client.Dial(ctx, o.sock)
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		if o.disableBackSource {
			return nil, fmt.Errorf("daemon not reachable and back-source disabled: %w", err)
		}
		d.note("daemon not reachable at %s: downloading directly", o.sock)
		return d.direct(ctx)
	}
	defer c.Close()
	res, started, err := d.viaDaemon(ctx, c)
	if err == nil {
		return res, nil
	}
	if ctx.Err() != nil || o.disableBackSource || o.priority == 1 || o.priority == 2 || !worthDirect(err) || d.written > 0 {
		// (LEVEL1 forbids the download, LEVEL2 its trip to the origin)
		// (bytes already on standard output cannot be taken back)
		return nil, err
	}
	if started || !errors.Is(err, core.ErrUnavailable) {
		// (the daemon answered, with an error of its own: say which)
		d.note("daemon download failed: %v: downloading directly", err)
	} else {
		d.note("daemon not reachable at %s: downloading directly", o.sock)
	}
	res, err = d.direct(ctx)
	if res != nil {
		res.fellBack = true
	}
	return res, err
}

// worthDirect reports whether a daemon failure may not happen on a direct
// download. The daemon already falls back to the origin itself, so an
// origin answer (not found, digest mismatch, ...) would only repeat.
func worthDirect(err error) bool {
	if errors.Is(err, core.ErrUnavailable) {
		return true
	}
	switch status.Code(err) {
	case codes.Internal, codes.Unknown, codes.ResourceExhausted, codes.PermissionDenied, codes.Unimplemented:
		// PermissionDenied: the daemon may not write where the caller can.
		return true
	}
	return false
}

func (d *downloader) viaDaemon(ctx context.Context, c *client.Client) (*result, bool, error) {
	o := d.opts
	req := &daemonv1.DownloadRequest{
		Url:               o.url,
		Output:            o.output,
		Digest:            o.digest,
		Headers:           flatHeaders(o),
		FilteredQuery:     o.filter,
		Tag:               o.tag,
		Application:       o.application,
		RateLimit:         o.rateLimit,
		DisableBackSource: o.disableBackSource,
		// The client library creates the output with our own rights:
		// 0666 less the umask, owned by us.
		Priority: o.priority,
	}
	stream := o.output == "-"
	if stream {
		req.Output, req.Stream = "", true
	}
	start := time.Now()
	bar := d.newBar(ctx)
	started := false
	var werr error
	final, err := c.Download(ctx, req, func(p *daemonv1.DownloadProgress) {
		started = true
		if stream && len(p.GetData()) > 0 && werr == nil {
			if p.GetOffset() != d.written {
				werr = fmt.Errorf("daemon sent bytes at %d, want %d", p.GetOffset(), d.written)
				return
			}
			n, err := d.stdout.Write(p.GetData())
			d.written += int64(n)
			if err != nil {
				werr = fmt.Errorf("write standard output: %w", err)
			}
		}
		d.update(bar)(p.GetCompletedLength(), p.GetContentLength())
	})
	if err == nil && werr != nil {
		err = werr
	}
	if err == nil && stream && final.GetContentLength() >= 0 && d.written != final.GetContentLength() {
		err = fmt.Errorf("daemon streamed %d of %d bytes: %w", d.written, final.GetContentLength(), core.ErrUnavailable)
	}
	bar.Finish(err == nil)
	if err != nil {
		return nil, started, err
	}
	return &result{bytes: final.GetCompletedLength(), elapsed: time.Since(start), final: final}, true, nil
}

// flatHeaders joins repeated headers with ", " (the proto carries one value per name).
func flatHeaders(o *options) map[string]string {
	if len(o.header) == 0 {
		return nil
	}
	m := make(map[string]string, len(o.header))
	for k, vs := range o.header {
		m[k] = strings.Join(vs, ", ")
	}
	return m
}

func (d *downloader) direct(ctx context.Context) (*result, error) {
	o := d.opts
	cfg := source.DefaultConfig()
	reg, err := source.New(cfg)
	if err != nil {
		return nil, err
	}
	var src source.Source = reg
	if o.rateLimit > 0 {
		src = newLimited(src, o.rateLimit)
	}
	start := time.Now()
	bar := d.newBar(ctx)
	if o.output == "-" {
		n, err := d.directStream(ctx, src, bar)
		bar.Finish(err == nil)
		if err != nil {
			return nil, err
		}
		return &result{bytes: n, elapsed: time.Since(start), direct: true}, nil
	}
	n, err := source.Download(ctx, src, source.Request{URL: o.url, Header: o.header, Length: -1}, o.output, o.digest, 0o644, d.update(bar))
	bar.Finish(err == nil)
	if err != nil {
		return nil, err
	}
	return &result{bytes: n, elapsed: time.Since(start), direct: true}, nil
}

// limited is a source whose bodies are read no faster than a rate.
type limited struct {
	src   source.Source
	lim   *rate.Limiter
	burst int
}

func newLimited(src source.Source, bps int64) *limited {
	burst := int(min(max(bps/4, 16<<10), 1<<20))
	return &limited{src: src, lim: rate.NewLimiter(rate.Limit(bps), burst), burst: burst}
}

func (l *limited) Fetch(ctx context.Context, req source.Request) (*source.Response, error) {
	resp, err := l.src.Fetch(ctx, req)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{ctx: ctx, rc: resp.Body, l: l}
	return resp, nil
}

// limitedBody keeps the Fetch's ctx, as the body it wraps does: waiting for
// tokens belongs to the same request.
type limitedBody struct {
	ctx context.Context
	rc  io.ReadCloser
	l   *limited
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if len(p) > b.l.burst {
		p = p[:b.l.burst]
	}
	n, err := b.rc.Read(p)
	if n > 0 {
		if werr := b.l.lim.WaitN(b.ctx, n); werr != nil && err == nil {
			if _, ok := b.ctx.Deadline(); ok && b.ctx.Err() == nil {
				// The limiter refuses to wait past the deadline: that is a timeout.
				werr = fmt.Errorf("rate limit: %w", context.DeadlineExceeded)
			}
			err = werr
		}
	}
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// summary renders the one line printed when no progress bar was shown.
func (r *result) summary(output string) string {
	secs := r.elapsed.Seconds()
	speed := ""
	if secs > 0 {
		speed = fmt.Sprintf(" (%s/s)", size(int64(float64(r.bytes)/secs)))
	}
	how := "directly from the origin"
	if r.fellBack {
		how = "directly from the origin after the daemon failed"
	}
	if f := r.final; f != nil {
		switch {
		case f.GetFromCache():
			how = "from the daemon's cache"
		case f.GetPeerBytes()+f.GetOriginBytes() > 0:
			how = fmt.Sprintf("via the daemon: %s from peers, %s from the origin", size(f.GetPeerBytes()), size(f.GetOriginBytes()))
		default:
			how = "via the daemon"
		}
	}
	return fmt.Sprintf("dfget: downloaded %s to %s in %s%s, %s", size(r.bytes), output, r.elapsed.Round(time.Millisecond), speed, how)
}

// fallbackReasons words the daemon's back_source_reason for people.
var fallbackReasons = map[string]string{
	"no_scheduler":          "the daemon has no scheduler configured",
	"scheduler_unreachable": "no scheduler could be reached",
	"scheduler_lost":        "the daemon lost its scheduler",
	"scheduler_failed":      "the scheduler gave up on the task",
	"swarm_stalled":         "the swarm stopped delivering",
}

// warning is the one line printed when the daemon had to fetch from the
// origin because peer-to-peer was unavailable ("" otherwise).
func (r *result) warning() string {
	f := r.final
	if f == nil || f.GetBackSourceReason() == "" {
		return ""
	}
	why, ok := fallbackReasons[f.GetBackSourceReason()]
	if !ok {
		why = f.GetBackSourceReason()
	}
	return fmt.Sprintf("dfget: warning: peer-to-peer was unavailable (%s); the daemon downloaded from the origin", why)
}

// size renders bytes with binary units.
func size(n int64) string { return progress.Size(n) }

// redactURL drops the query (often a signature) and password for messages.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = "", false, "", ""
	if u.User != nil {
		u.User = url.User(u.User.Username())
	}
	return u.String()
}

// directStream copies the origin's content to standard output, checking the
// digest (if given) once everything is written.
func (d *downloader) directStream(ctx context.Context, src source.Source, bar *bar) (int64, error) {
	o := d.opts
	resp, err := src.Fetch(ctx, source.Request{URL: o.url, Header: o.header, Length: -1})
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	h := sha256.New()
	buf := make([]byte, 256<<10)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			h.Write(buf[:n])
			k, werr := d.stdout.Write(buf[:n])
			d.written += int64(k)
			if werr != nil {
				return d.written, fmt.Errorf("write standard output: %w", werr)
			}
			bar.Update(d.written, resp.ContentLength)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return d.written, rerr
		}
	}
	if o.digest != "" {
		_, want, _ := core.ParseDigest(o.digest)
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			return d.written, fmt.Errorf("content is sha256:%s, want sha256:%s: %w", got, want, core.ErrDigestMismatch)
		}
	}
	return d.written, nil
}
