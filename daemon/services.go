package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/api/peerv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon/store"
	"github.com/damselfly-io/damselfly/internal/fdpass"
	"github.com/damselfly-io/damselfly/internal/identity"
	"github.com/damselfly-io/damselfly/internal/pki"
	"github.com/damselfly-io/damselfly/source"
)

// peerConn returns a shared connection to a parent's peer port.
func (d *Daemon) peerConn(addr string) (*grpc.ClientConn, error) {
	d.peerMu.Lock()
	defer d.peerMu.Unlock()
	if c, ok := d.peerConns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, pki.DialOption(d.creds, identity.RolePeer, identity.RoleSeed))
	if err != nil {
		return nil, fmt.Errorf("peer client for %s: %w", addr, err)
	}
	if d.peerConns == nil {
		d.peerConns = map[string]*grpc.ClientConn{}
	}
	d.peerConns[addr] = c
	return c, nil
}

// peerService answers children asking which pieces this daemon holds.
type peerService struct {
	peerv1.UnimplementedPeerServer
	d *Daemon
}

func (s *peerService) SyncPieces(req *peerv1.SyncPiecesRequest, stream grpc.ServerStreamingServer[peerv1.PieceState]) error {
	if !identity.Allows(stream.Context(), identity.RolePeer, identity.RoleSeed) {
		return status.Error(codes.PermissionDenied, "sync pieces: only peers and seed peers may ask")
	}
	t, ok := s.d.store.Get(req.GetTaskId())
	if !ok || t.Local() {
		// (a file of this host is for local clients only)
		return status.Errorf(codes.NotFound, "task %s not held", req.GetTaskId())
	}
	var sent []bool
	relayed := map[uint32]*store.Relay{}
	first := true
	// Source progress goes out when it grew, at most every sourceNoteEvery
	// (a later growth waits for srcDue).
	var srcSent uint64
	var srcSentAt time.Time
	var srcDue <-chan time.Time
	for {
		ch, srcCh := t.Changed(), t.SourceChanged()
		if _, ok := s.d.store.Get(req.GetTaskId()); !ok {
			return status.Errorf(codes.NotFound, "task %s left the cache", req.GetTaskId())
		}
		l, ps := t.Shape()
		complete := t.Complete()
		add := t.NewPieces(&sent)
		var relaying []uint32
		if s.d.cfg.Upload.Relay && !complete {
			relaying = t.NewRelays(relayed)
		}
		var src uint64
		if v := t.SourceBytes(); !complete && v > srcSent {
			if wait := time.Until(srcSentAt.Add(sourceNoteEvery)); wait <= 0 {
				src, srcSent, srcSentAt = v, v, time.Now()
			} else if srcDue == nil {
				srcDue = time.After(wait)
			}
		}
		if first || len(add) > 0 || len(relaying) > 0 || complete || src > 0 {
			first = false
			if err := stream.Send(&peerv1.PieceState{ContentLength: l, PieceSize: ps, Pieces: add, Relaying: relaying, Done: complete, SourceBytes: src}); err != nil {
				return err
			}
		}
		if complete {
			return nil
		}
		select {
		case <-ch:
		case <-srcCh:
		case <-srcDue:
			srcDue = nil
		case <-stream.Context().Done():
			return nil
		}
	}
}

// sourceNoteEvery is the least time between two notes of source progress
// on one child's piece stream. A child waits SwarmTimeout (20 s by
// default) after the last before it leaves for the origin; a note a second
// keeps it informed at a few bytes a second.
const sourceNoteEvery = time.Second

// apiService is the local API on the unix socket.
type apiService struct {
	daemonv1.UnimplementedDaemonServer
	d *Daemon
}

func (s *apiService) Download(req *daemonv1.DownloadRequest, stream grpc.ServerStreamingServer[daemonv1.DownloadProgress]) error {
	u, err := checkOriginURL(req.GetUrl())
	if err != nil {
		return toStatus(err)
	}
	cred, _ := fdpass.CallerCred(stream.Context())
	s.d.log.Debug("download requested", "url", redactURL(u), "caller_uid", cred.UID, "caller_pid", cred.PID)
	if d := req.GetDigest(); d != "" {
		if _, _, err := core.ParseDigest(d); err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
	}
	if pr := req.GetPriority(); pr < 0 || pr > int32(schedulerv1.Priority_LEVEL6) {
		return status.Errorf(codes.InvalidArgument, "priority %d: want 0..6 (LEVEL0..LEVEL6)", pr)
	}
	if req.GetOutput() != "" {
		return errOutputPath
	}
	files, err := s.takeFiles(stream.Context(), req.GetFdToken())
	if err != nil {
		return err
	}
	defer files.Close()
	if req.GetStream() && files[fdpass.RoleOut] != nil {
		return status.Error(codes.InvalidArgument, "stream and output exclude each other")
	}
	var local *os.File
	if u.Scheme == "file" {
		if local, err = localSource(req.GetUrl(), files[fdpass.RoleSrc]); err != nil {
			return err
		}
	}
	opts := core.TaskOptions{Tag: req.GetTag(), Application: req.GetApplication(), FilteredQuery: req.GetFilteredQuery()}
	public, private := splitCredentials(req.GetHeaders())
	if opts.Version, err = s.d.objectVersion(stream.Context(), u, public, private, false); err != nil {
		return toStatus(err)
	}
	if opts.Version != "" {
		if public == nil {
			public = map[string]string{}
		}
		public["If-Match"] = opts.Version
	}
	id := core.TaskID(req.GetUrl(), opts)
	if m := blobPath.FindStringSubmatch(u.Path); m != nil && (u.Scheme == "http" || u.Scheme == "https") && strings.EqualFold(m[2], req.GetDigest()) {
		// A registry blob named by the digest the caller expects (dfget
		// oci://): a content task, shared with the registry mirror and
		// preheats whatever the repository or registry; like the mirror's,
		// only credentials go with it, kept on this node.
		id, _ = core.ContentTaskID(strings.ToLower(m[2]))
		public = nil
	}
	spec := &schedulerv1.TaskSpec{
		TaskId: id, Url: req.GetUrl(), Headers: public, Tag: req.GetTag(),
		Application: req.GetApplication(), FilteredQuery: req.GetFilteredQuery(), Digest: req.GetDigest(),
		// Fetched with credentials: private to the peers the origin grants it.
		Private: carriesCredentials(private) && u.Scheme != "file",
	}
	verified := false
	if u.Scheme == "s3" {
		// objectVersion above asked S3 with the caller's own credentials:
		// an answer is the origin granting them.
		verified = carriesCredentials(private)
	} else if u.Scheme != "file" {
		h := http.Header{}
		for k, v := range req.GetHeaders() {
			h.Set(k, v)
		}
		if verified, err = s.d.localAccess(stream.Context(), id, req.GetUrl(), h, carriesCredentials(private)); err != nil {
			if local != nil {
				local.Close()
			}
			return err
		}
	}
	return s.download(req, spec, taskRequest{originHeaders: private, verified: verified, localFile: local}, files[fdpass.RoleOut], stream)
}

// errOutputPath answers a client that names its output by path.
var errOutputPath = status.Error(codes.PermissionDenied,
	"the daemon does not write to paths: open the output yourself and pass it over the socket (fd_token); update dfget/dfcache")

// takeFiles returns the files the caller passed under token (none for an
// empty token). Only the process that passed them may take them.
func (s *apiService) takeFiles(ctx context.Context, token string) (fdpass.Files, error) {
	if token == "" {
		return fdpass.Files{}, nil
	}
	fs, err := s.d.fds.Take(ctx, token)
	if err != nil {
		return nil, status.Errorf(codes.PermissionDenied, "passed files: %v", err)
	}
	return fs, nil
}

// localSource checks that f, passed by the caller, is the file the file://
// URL names, open for reading: holding such a descriptor shows the caller
// may read the file. It returns a duplicate the task keeps (the request's
// files close when the request ends; the fetch may outlive it).
func localSource(rawURL string, f *os.File) (*os.File, error) {
	path, err := source.FilePath(rawURL)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if f == nil {
		return nil, status.Errorf(codes.PermissionDenied,
			"%s: the daemon reads local files only through the caller's own descriptor (pass it as \"src\")", path)
	}
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "passed source: %v", err)
	}
	if acc := fl & unix.O_ACCMODE; acc != unix.O_RDONLY && acc != unix.O_RDWR {
		return nil, status.Errorf(codes.PermissionDenied, "passed source for %s is not open for reading", path)
	}
	got, err := f.Stat()
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "passed source: %v", err)
	}
	want, err := os.Stat(path)
	if err != nil || !os.SameFile(got, want) {
		return nil, status.Errorf(codes.PermissionDenied, "passed source is not %s", path)
	}
	if !got.Mode().IsRegular() {
		return nil, status.Errorf(codes.InvalidArgument, "%s: not a regular file", path)
	}
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "keep passed source: %v", err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// download serves a Download (or an ExportCache turned into one) of spec
// into out (nil: none, or the stream). tr carries the request's origin
// headers (the caller's credentials), whether the origin granted them, and
// the local file; download fills in the rest.
func (s *apiService) download(req *daemonv1.DownloadRequest, spec *schedulerv1.TaskSpec, tr taskRequest, out *os.File, stream grpc.ServerStreamingServer[daemonv1.DownloadProgress]) error {
	ctx := stream.Context()
	id := spec.GetTaskId()
	tr.spec, tr.disableBackSource, tr.rateLimit, tr.streaming = spec, req.GetDisableBackSource(), req.GetRateLimit(), req.GetStream()
	tr.priority = schedulerv1.Priority(req.GetPriority())
	var exp *exporter
	if out != nil {
		var err error
		if exp, err = newExporter(out); err != nil {
			if tr.localFile != nil {
				tr.localFile.Close()
			}
			return toStatus(err)
		}
		defer exp.close()
	}
	c, cached, release, err := s.d.openTask(tr)
	if err != nil {
		return toStatus(err)
	}
	// Pinned while we read it: GC and deletion wait for us.
	defer release()
	progress := func(done bool) *daemonv1.DownloadProgress {
		p := &daemonv1.DownloadProgress{TaskId: id, ContentLength: -1, Done: done,
			PeerBytes: c.peerBytes.Load(), OriginBytes: c.originBytes.Load(), FromCache: cached}
		if cached {
			p.PeerBytes, p.OriginBytes = 0, 0
		} else if r := c.fallbackReason.Load(); r != nil {
			p.BackSourceReason = *r
		}
		l, ps := c.task.Shape()
		p.ContentLength = l
		p.CompletedLength = int64(c.task.Count()) * int64(ps)
		if l >= 0 {
			p.CompletedLength = min(l, p.CompletedLength)
		}
		return p
	}
	if req.GetStream() {
		return s.streamOut(c, cached, req, progress, stream)
	}
	// A task taken from a cached copy must still match a digest the caller
	// names (checked before any byte goes to an output written in order).
	if d := req.GetDigest(); d != "" && cached && d != c.req.spec.GetDigest() {
		if err := verifyFile(ctx, c.task.DataPath(), d); err != nil {
			return toStatus(err)
		}
	}
	if exp != nil {
		exp.start(ctx, c)
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var changed <-chan struct{}
wait:
	for {
		if changed == nil {
			changed = c.task.Changed()
		}
		select {
		case <-c.done:
			break wait
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-changed:
			changed = nil
			if _, ok := s.d.store.Get(id); !ok {
				// deleted under us; the conductor fails too, but do not spin
				select {
				case <-c.done:
				case <-time.After(50 * time.Millisecond):
				}
			}
			if exp != nil {
				if err := exp.sync(c.task); err != nil {
					return toStatus(err)
				}
			}
		case <-tick.C:
			if err := stream.Send(progress(false)); err != nil {
				return err
			}
		}
	}
	if c.err != nil {
		return toStatus(c.err)
	}
	s.served(c, cached)
	if exp != nil {
		if err := exp.finish(ctx, c.task); err != nil {
			return toStatus(err)
		}
	}
	s.d.log.Debug("download answered", "task_id", id)
	p := progress(true)
	p.CompletedLength = p.ContentLength
	return stream.Send(p)
}

// streamOut answers a stream-mode download: the content itself, in order, in
// the progress messages, as verified pieces arrive (the piece that ends it
// only once the whole content has passed its digest), with a progress
// message every 200 ms while it waits.
func (s *apiService) streamOut(c *conductor, cached bool, req *daemonv1.DownloadRequest,
	progress func(done bool) *daemonv1.DownloadProgress, stream grpc.ServerStreamingServer[daemonv1.DownloadProgress]) error {
	ctx := stream.Context()
	// A task taken from a cached copy must still match a digest the caller names.
	if d := req.GetDigest(); d != "" && cached && d != c.req.spec.GetDigest() {
		if err := verifyFile(ctx, c.task.DataPath(), d); err != nil {
			return toStatus(err)
		}
	}
	var sendMu sync.Mutex
	send := func(p *daemonv1.DownloadProgress) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(p)
	}
	copied := make(chan error, 1)
	go func() {
		l, err := c.waitShape(ctx)
		if err == nil {
			w := &chunkWriter{send: func(b []byte, off int64) error {
				p := progress(false)
				p.Data, p.Offset = b, off
				return send(p)
			}}
			_, err = c.copyOut(ctx, w, 0, l)
		}
		if err == nil {
			select { // a 0-byte content has no last piece to wait on
			case <-c.done:
				err = c.err
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
		copied <- err
	}()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-copied:
			if err != nil {
				if ctx.Err() != nil {
					return status.FromContextError(ctx.Err()).Err()
				}
				return toStatus(err)
			}
			s.served(c, cached)
			p := progress(true)
			p.CompletedLength = p.ContentLength
			return send(p)
		case <-tick.C:
			if err := send(progress(false)); err != nil {
				<-copied
				return err
			}
		}
	}
}

// served records a download answered: the task was used now, and a cache
// hit is counted here (the conductor counts the others).
func (s *apiService) served(c *conductor, cached bool) {
	c.task.Touch()
	if cached {
		l, _ := c.task.Shape()
		s.d.metrics.cacheBytes.Add(float64(l))
		s.d.metrics.downloads.WithLabelValues("success", "", "cache").Inc()
	}
}

// chunkWriter turns a byte stream into messages of at most 1 MiB, each with
// its offset in the content.
type chunkWriter struct {
	off  int64
	buf  []byte
	send func(b []byte, off int64) error
}

func (w *chunkWriter) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		k := min(len(b), 1<<20)
		if err := w.send(b[:k], w.off); err != nil {
			return n, err
		}
		w.off += int64(k)
		n += k
		b = b[k:]
	}
	return n, nil
}

// ReadFrom reads in 1 MiB steps, so io.Copy does not cut the content into
// 32 KiB messages.
func (w *chunkWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.buf == nil {
		w.buf = make([]byte, 1<<20)
	}
	var total int64
	for {
		k, err := io.ReadFull(r, w.buf)
		if k > 0 {
			if serr := w.send(w.buf[:k], w.off); serr != nil {
				return total, serr
			}
			w.off += int64(k)
			total += int64(k)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

func (s *apiService) StatTask(ctx context.Context, req *daemonv1.StatTaskRequest) (*daemonv1.StatTaskResponse, error) {
	t, ok := s.d.store.Get(req.GetTaskId())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "task %q not in the cache", req.GetTaskId())
	}
	m := t.Meta()
	return &daemonv1.StatTaskResponse{
		TaskId: m.TaskID, ContentLength: m.ContentLength, PieceSize: m.PieceSize,
		PiecesDone: t.Count(), PieceCount: core.PieceCount(m.ContentLength, m.PieceSize),
		Complete: m.Complete, Url: m.URL,
	}, nil
}

// toStatus maps error kinds to gRPC codes, once, at the edge.
func toStatus(err error) error {
	var se *source.StatusError
	switch {
	case errors.Is(err, core.ErrNoSpace):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, core.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, core.ErrDenied):
		return status.Error(codes.Unauthenticated, err.Error())
	case errors.Is(err, core.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, core.ErrDigestMismatch):
		return status.Error(codes.DataLoss, err.Error())
	case errors.Is(err, core.ErrUnavailable), errors.Is(err, errClosed):
		return status.Error(codes.Unavailable, err.Error())
	case errors.As(err, &se), errors.Is(err, core.ErrOrigin):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// Preheat fetches a task into the cache for the manager and answers when it
// is complete. The task ID must be the one the daemon itself would derive
// (the content digest's for registry blobs, the URL's otherwise), so a
// preheat cannot file content under another task's name.
func (s *peerService) Preheat(ctx context.Context, req *peerv1.PreheatRequest) (*peerv1.PreheatResponse, error) {
	if !identity.Allows(ctx, identity.RoleManager, identity.RoleScheduler) {
		return nil, status.Error(codes.PermissionDenied, "preheat: only the manager or a scheduler may ask")
	}
	spec := req.GetTask()
	u, err := url.Parse(spec.GetUrl())
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "s3") {
		return nil, status.Errorf(codes.InvalidArgument, "preheat: url %q: want an absolute http, https or s3 URL", spec.GetUrl())
	}
	opts := core.TaskOptions{Tag: spec.GetTag(), Application: spec.GetApplication(), FilteredQuery: spec.GetFilteredQuery()}
	if u.Scheme == "s3" {
		opts.Version = spec.GetHeaders()["If-Match"]
		if opts.Version == "" && spec.GetTaskId() == core.TaskID(spec.GetUrl(), opts) {
			// The manager cannot see the object: name the task after the
			// version this seed's bucket configuration finds, as a dfget
			// with the same object would.
			if opts.Version, err = s.d.objectVersion(ctx, u, spec.GetHeaders(), nil, true); err != nil {
				return nil, toStatus(fmt.Errorf("preheat: %w", err))
			}
			spec = proto.Clone(spec).(*schedulerv1.TaskSpec)
			if spec.Headers == nil {
				spec.Headers = map[string]string{}
			}
			spec.Headers["If-Match"] = opts.Version
			spec.TaskId = core.TaskID(spec.GetUrl(), opts)
		}
	}
	if d := spec.GetDigest(); d != "" {
		if _, _, err := core.ParseDigest(d); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "preheat: %v", err)
		}
	}
	if err := checkSwarmSpec(spec); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "preheat: %v", err)
	}
	cached := false
	if t, ok := s.d.store.Get(spec.GetTaskId()); ok && t.Complete() {
		cached = true
	}
	// An object fetched with this seed's own bucket credentials: it shows
	// the store granted them, so it may also serve the object to peers that
	// fetch it with credentials of theirs (a private task).
	verified := s.d.cfg.Seed && u.Scheme == "s3" && s.d.seedGranted(ctx, spec)
	c, err := s.d.startConductor(taskRequest{spec: spec, seed: s.d.cfg.Seed, preheat: true, verified: verified})
	if err != nil {
		return nil, toStatus(err)
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	if c.err != nil {
		return nil, toStatus(fmt.Errorf("preheat %s: %w", spec.GetTaskId(), c.err))
	}
	l, _ := c.task.Shape()
	s.d.log.Info("preheated", "task_id", spec.GetTaskId(), "content_length", l, "cached", cached)
	return &peerv1.PreheatResponse{ContentLength: l, Cached: cached}, nil
}

// DeleteTask evicts a task for the manager (a delete_task job): the task
// leaves the cache (a reader in progress finishes first, see store.Delete),
// and its conductor stops serving it, which ends its Announce stream so the
// scheduler forgets this peer in the task. It waits, briefly, for that.
func (s *peerService) DeleteTask(ctx context.Context, req *peerv1.DeleteTaskRequest) (*peerv1.DeleteTaskResponse, error) {
	if !identity.Allows(ctx, identity.RoleManager) {
		return nil, status.Error(codes.PermissionDenied, "delete task: only the manager may evict tasks")
	}
	id := req.GetTaskId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "delete task: task_id is empty")
	}
	if s.d.downloading(id) {
		return nil, status.Errorf(codes.FailedPrecondition, "delete task %s: it is being downloaded", id)
	}
	t, ok := s.d.store.Get(id)
	if !ok {
		return &peerv1.DeleteTaskResponse{Deleted: false, ContentLength: -1}, nil
	}
	l, _ := t.Shape()
	s.d.mu.Lock()
	c := s.d.conductors[id]
	s.d.mu.Unlock()
	if err := s.d.store.Delete(id); err != nil && !errors.Is(err, core.ErrNotFound) {
		return nil, toStatus(fmt.Errorf("delete task %s: %w", id, err))
	}
	s.d.inventory().remove(id)
	if c != nil && c.task == t {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		select {
		case <-c.exited:
		case <-wctx.Done():
		}
		cancel()
	}
	s.d.log.Info("task evicted on the manager's request", "task_id", id, "content_length", l)
	return &peerv1.DeleteTaskResponse{Deleted: true, ContentLength: l}, nil
}
