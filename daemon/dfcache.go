package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon/store"
	"github.com/damselfly-io/damselfly/internal/fdpass"
)

// dfcache entries are tasks like any other, named by core.CacheTaskID and
// with the URL core.CacheURL(id): they live in the same store, obey the same
// GC, and move between peers the same way. What differs is that they have no
// origin: the daemon that imported an entry (or holds it complete) registers
// as its source, and the scheduler trusts its piece digests.

func cacheSpec(id, tag string) *schedulerv1.TaskSpec {
	return &schedulerv1.TaskSpec{TaskId: core.CacheTaskID(id, tag), Url: core.CacheURL(id), Tag: tag}
}

func statOf(t *store.Task) *daemonv1.StatTaskResponse {
	m := t.Meta()
	r := &daemonv1.StatTaskResponse{
		TaskId: m.TaskID, ContentLength: m.ContentLength, PieceSize: m.PieceSize,
		PiecesDone: t.Count(), PieceCount: core.PieceCount(m.ContentLength, m.PieceSize),
		Complete: m.Complete, Url: m.URL, Tag: m.Tag, TtlSeconds: int64(m.TTL / time.Second),
	}
	r.CacheId, _ = core.ParseCacheURL(m.URL)
	return r
}

func entryName(id, tag string) string {
	if tag == "" {
		return fmt.Sprintf("dfcache entry %q", id)
	}
	return fmt.Sprintf("dfcache entry %q (tag %q)", id, tag)
}

func (s *apiService) ImportCache(ctx context.Context, req *daemonv1.ImportCacheRequest) (*daemonv1.StatTaskResponse, error) {
	if err := core.ValidateCacheID(req.GetId()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	path := req.GetPath()
	if req.GetTtlSeconds() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "ttl %ds: must be ≥ 0", req.GetTtlSeconds())
	}
	// The daemon reads only the file the caller opened with its own rights.
	files, err := s.takeFiles(ctx, req.GetFdToken())
	if err != nil {
		return nil, err
	}
	defer files.Close()
	f := files[fdpass.RoleIn]
	if f == nil {
		return nil, status.Errorf(codes.PermissionDenied,
			"import %s: the daemon reads the file only through the caller's own descriptor (pass it as \"in\"); update dfcache", path)
	}
	if fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0); err != nil || (fl&unix.O_ACCMODE != unix.O_RDONLY && fl&unix.O_ACCMODE != unix.O_RDWR) {
		return nil, status.Errorf(codes.PermissionDenied, "import %s: the passed file is not open for reading", path)
	}
	st, err := f.Stat()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "import %s: %v", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, status.Errorf(codes.InvalidArgument, "import %s: not a regular file", path)
	}
	name := entryName(req.GetId(), req.GetTag())
	spec := cacheSpec(req.GetId(), req.GetTag())
	id := spec.GetTaskId()
	if t, ok := s.d.store.Get(id); ok {
		if t.Complete() || s.d.downloading(id) {
			return nil, status.Errorf(codes.AlreadyExists, "%s is already in this daemon's cache (delete it first to import other content)", name)
		}
		_ = s.d.store.Delete(id) // a partial export: the import replaces it
	}
	t, created, err := s.d.store.GetOrCreate(store.Meta{TaskID: id, URL: spec.GetUrl(), Tag: spec.GetTag(), ContentLength: -1})
	if err != nil {
		return nil, toStatus(err)
	}
	if !created {
		return nil, status.Errorf(codes.AlreadyExists, "%s is being imported or exported right now", name)
	}
	release := t.Hold()
	defer release()
	err = importFile(ctx, t, f, st.Size())
	if err == nil && req.GetTtlSeconds() > 0 {
		err = t.SetTTL(time.Duration(req.GetTtlSeconds()) * time.Second)
	}
	if err != nil {
		_ = s.d.store.Delete(id)
		return nil, toStatus(fmt.Errorf("import %s as %s: %w", path, name, err))
	}
	if _, err := s.d.startConductor(taskRequest{spec: spec, fromCache: true}); err != nil {
		s.d.log.Warn("cannot announce imported entry", "task_id", id, "err", err)
	}
	cred, _ := fdpass.CallerCred(ctx)
	s.d.log.Info("dfcache entry imported", "task_id", id, "cache_id", req.GetId(), "tag", req.GetTag(), "bytes", st.Size(),
		"caller_uid", cred.UID, "caller_pid", cred.PID)
	return statOf(t), nil
}

// importFile stores the size bytes of f as t's pieces (digests computed
// here: the importer is the source) and commits t.
func importFile(ctx context.Context, t *store.Task, f *os.File, size int64) error {
	ps := core.PieceSize(size)
	if err := t.SetShape(size, ps); err != nil {
		return err
	}
	buf := make([]byte, ps)
	for n := range core.PieceCount(size, ps) {
		if err := ctx.Err(); err != nil {
			return err
		}
		off, l := core.PieceRange(n, size, ps)
		if _, err := f.ReadAt(buf[:l], off); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("file shrank while being imported: %w", core.ErrInvalid)
			}
			return fmt.Errorf("read at %d: %w", off, err)
		}
		if err := t.WritePiece(n, buf[:l], nil); err != nil {
			return err
		}
	}
	return t.Commit()
}

func (s *apiService) ExportCache(req *daemonv1.ExportCacheRequest, stream grpc.ServerStreamingServer[daemonv1.DownloadProgress]) error {
	if err := core.ValidateCacheID(req.GetId()); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if req.GetOutput() != "" {
		return errOutputPath
	}
	files, err := s.takeFiles(stream.Context(), req.GetFdToken())
	if err != nil {
		return err
	}
	defer files.Close()
	out := files[fdpass.RoleOut]
	if req.GetStream() == (out != nil) {
		return status.Error(codes.InvalidArgument, "want exactly one of stream and an output file")
	}
	spec := cacheSpec(req.GetId(), req.GetTag())
	id := spec.GetTaskId()
	name := entryName(req.GetId(), req.GetTag())
	t, present := s.d.store.Get(id)
	if req.GetLocalOnly() && (!present || !t.Complete()) {
		return status.Errorf(codes.NotFound, "%s is not in this daemon's cache", name)
	}
	dreq := &daemonv1.DownloadRequest{Stream: req.GetStream(), Tag: req.GetTag(), DisableBackSource: true}
	err = s.download(dreq, spec, taskRequest{}, out, stream)
	if err != nil && !present {
		// Nothing of it came: leave no empty entry behind.
		if t, ok := s.d.store.Get(id); ok && t.Count() == 0 && !s.d.downloading(id) {
			_ = s.d.store.Delete(id)
		}
	}
	if status.Code(err) == codes.NotFound {
		return status.Errorf(codes.NotFound, "%s: no peer holds it", name)
	}
	return err
}

func (s *apiService) StatCache(_ context.Context, req *daemonv1.CacheRequest) (*daemonv1.StatTaskResponse, error) {
	if err := core.ValidateCacheID(req.GetId()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	t, ok := s.d.store.Get(core.CacheTaskID(req.GetId(), req.GetTag()))
	if !ok {
		return nil, status.Errorf(codes.NotFound, "%s is not in this daemon's cache", entryName(req.GetId(), req.GetTag()))
	}
	return statOf(t), nil
}

func (s *apiService) DeleteCache(ctx context.Context, req *daemonv1.CacheRequest) (*daemonv1.StatTaskResponse, error) {
	if err := core.ValidateCacheID(req.GetId()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	id := core.CacheTaskID(req.GetId(), req.GetTag())
	t, ok := s.d.store.Get(id)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "%s is not in this daemon's cache", entryName(req.GetId(), req.GetTag()))
	}
	st := statOf(t)
	if err := s.d.store.Delete(id); err != nil {
		return nil, toStatus(err)
	}
	cred, _ := fdpass.CallerCred(ctx)
	s.d.log.Info("dfcache entry deleted", "task_id", id, "cache_id", req.GetId(), "tag", req.GetTag(), "caller_uid", cred.UID, "caller_pid", cred.PID)
	return st, nil
}
