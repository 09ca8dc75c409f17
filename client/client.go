// Package client is the Go client of the daemon's local API: gRPC over the
// daemon's unix socket, used by dfget, dfcache and tests. It turns gRPC status
// codes back into core error kinds once, here at the edge; it does no
// downloading of its own and keeps no state beyond the connection.
package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/fdpass"
)

// DefaultSock is where the daemon serves its local API.
const DefaultSock = "/var/run/damselfly/daemon.sock"

// answerTimeout bounds how long Dial waits for the daemon to answer, so that
// callers fall back to a direct download quickly.
const answerTimeout = time.Second

// Client talks to one daemon. It is safe for concurrent use.
type Client struct {
	conn *grpc.ClientConn
	api  daemonv1.DaemonClient
	sock string
}

// Dial connects to the daemon at sock and checks that it answers within about
// a second. A missing socket, a refused connection or a silent peer give an
// error wrapping core.ErrUnavailable.
func Dial(ctx context.Context, sock string) (*Client, error) {
	abs, err := filepath.Abs(sock)
	if err != nil {
		return nil, fmt.Errorf("connect to daemon at %s: %w: %w", sock, core.ErrUnavailable, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("connect to daemon at %s: %w: %w", abs, core.ErrUnavailable, err)
	}
	if st.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("connect to daemon at %s: not a socket: %w", abs, core.ErrUnavailable)
	}
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to daemon at %s: %w: %w", abs, core.ErrUnavailable, err)
	}
	if err := waitReady(ctx, conn); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("connect to daemon at %s: %w", abs, err)
	}
	return &Client{conn: conn, api: daemonv1.NewDaemonClient(conn), sock: abs}, nil
}

// waitReady waits until the connection is up (the daemon has sent its HTTP/2
// settings), failing at once when the connection is refused.
func waitReady(ctx context.Context, conn *grpc.ClientConn) error {
	wctx, cancel := context.WithTimeout(ctx, answerTimeout)
	defer cancel()
	conn.Connect()
	for {
		s := conn.GetState()
		switch s {
		case connectivity.Ready:
			return nil
		case connectivity.TransientFailure, connectivity.Shutdown:
			return fmt.Errorf("daemon does not answer (%s): %w", s, core.ErrUnavailable)
		}
		if !conn.WaitForStateChange(wctx, s) {
			if err := ctx.Err(); err != nil {
				return err
			}
			return fmt.Errorf("no answer within %s: %w", answerTimeout, core.ErrUnavailable)
		}
	}
}

// Sock returns the absolute socket path the client is connected to.
func (c *Client) Sock() string { return c.sock }

// Download asks the daemon to download req and calls progress (when not nil)
// for every progress message. It returns the final message (Done set).
//
// The daemon never opens a path: when req.Output is set, Download opens it
// here with the caller's rights (a temp file next to it, renamed into place
// on success with req.OutputMode masked to 0777 and by the umask; or, for
// an existing device or fifo, the node itself, written through), and for a
// file:// URL it opens the file; both go to the daemon as descriptors.
// req.Uid and req.Gid are ignored: the output belongs to the caller.
func (c *Client) Download(ctx context.Context, req *daemonv1.DownloadRequest, progress func(*daemonv1.DownloadProgress)) (*daemonv1.DownloadProgress, error) {
	// Cancelling on return releases the stream whatever way we leave.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if req.GetStream() && req.GetOutput() != "" {
		return nil, fmt.Errorf("download %s: stream and output exclude each other: %w", req.GetUrl(), core.ErrInvalid)
	}
	files := map[string]*os.File{}
	defer func() {
		for _, f := range files {
			_ = f.Close()
		}
	}()
	src, err := openSource(req.GetUrl())
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", req.GetUrl(), err)
	}
	if src != nil {
		files[fdpass.RoleSrc] = src
	}
	var out *output
	if req.GetOutput() != "" {
		if out, err = openOutput(req.GetOutput(), req.GetOutputMode()); err != nil {
			return nil, fmt.Errorf("download %s: %w", req.GetUrl(), err)
		}
		files[fdpass.RoleOut] = out.f
	}
	ok := false
	defer func() {
		if out != nil && !ok {
			out.abort()
		}
	}()
	req = proto.CloneOf(req)
	req.Output, req.Uid, req.Gid, req.OutputMode = "", 0, 0, 0
	if len(files) > 0 {
		if req.FdToken, err = c.pass(ctx, files); err != nil {
			return nil, fmt.Errorf("download via daemon at %s: %w", c.sock, err)
		}
	}
	p, err := c.download(ctx, req, progress)
	if err != nil {
		return nil, err
	}
	if out != nil {
		delete(files, fdpass.RoleOut)
		ok = true
		if err := out.commit(); err != nil {
			return nil, fmt.Errorf("download %s: %w", req.GetUrl(), err)
		}
	}
	return p, nil
}

func (c *Client) download(ctx context.Context, req *daemonv1.DownloadRequest, progress func(*daemonv1.DownloadProgress)) (*daemonv1.DownloadProgress, error) {
	stream, err := c.api.Download(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("download via daemon at %s: %w", c.sock, fromStatus(ctx, err))
	}
	for {
		p, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("download via daemon at %s: stream ended before the download was done: %w", c.sock, core.ErrUnavailable)
		}
		if err != nil {
			return nil, fmt.Errorf("download via daemon at %s: %w", c.sock, fromStatus(ctx, err))
		}
		if progress != nil {
			progress(p)
		}
		if p.GetDone() {
			return p, nil
		}
	}
}

// ImportCache imports the file req.Path as the dfcache entry (req.Id,
// req.Tag). The file is opened here, with the caller's rights, and passed to
// the daemon as a descriptor: a file the caller cannot read cannot be
// imported.
func (c *Client) ImportCache(ctx context.Context, req *daemonv1.ImportCacheRequest) (*daemonv1.StatTaskResponse, error) {
	f, err := os.Open(req.GetPath())
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			err = fmt.Errorf("%w: %w", core.ErrNotFound, err)
		}
		return nil, fmt.Errorf("import %s as %q: %w", req.GetPath(), req.GetId(), err)
	}
	defer f.Close()
	req = proto.CloneOf(req)
	if req.FdToken, err = c.pass(ctx, map[string]*os.File{fdpass.RoleIn: f}); err != nil {
		return nil, fmt.Errorf("import %s as %q via daemon at %s: %w", req.GetPath(), req.GetId(), c.sock, err)
	}
	resp, err := c.api.ImportCache(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("import %s as %q via daemon at %s: %w", req.GetPath(), req.GetId(), c.sock, fromStatus(ctx, err))
	}
	return resp, nil
}

// ExportCache asks the daemon to write the dfcache entry req names, calling
// progress (when not nil) for every progress message, and returns the
// final message (Done set). req.Output is opened here as Download's is.
func (c *Client) ExportCache(ctx context.Context, req *daemonv1.ExportCacheRequest, progress func(*daemonv1.DownloadProgress)) (*daemonv1.DownloadProgress, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if req.GetStream() && req.GetOutput() != "" {
		return nil, fmt.Errorf("export %q: stream and output exclude each other: %w", req.GetId(), core.ErrInvalid)
	}
	var out *output
	req = proto.CloneOf(req)
	if req.GetOutput() != "" {
		var err error
		if out, err = openOutput(req.GetOutput(), req.GetOutputMode()); err != nil {
			return nil, fmt.Errorf("export %q: %w", req.GetId(), err)
		}
		ok := false
		defer func() {
			if !ok {
				out.abort()
			}
		}()
		if req.FdToken, err = c.pass(ctx, map[string]*os.File{fdpass.RoleOut: out.f}); err != nil {
			return nil, fmt.Errorf("export %q via daemon at %s: %w", req.GetId(), c.sock, err)
		}
		req.Output, req.Uid, req.Gid, req.OutputMode = "", 0, 0, 0
		p, err := c.exportCache(ctx, req, progress)
		if err != nil {
			return nil, err
		}
		ok = true
		if err := out.commit(); err != nil {
			return nil, fmt.Errorf("export %q: %w", req.GetId(), err)
		}
		return p, nil
	}
	return c.exportCache(ctx, req, progress)
}

func (c *Client) exportCache(ctx context.Context, req *daemonv1.ExportCacheRequest, progress func(*daemonv1.DownloadProgress)) (*daemonv1.DownloadProgress, error) {
	stream, err := c.api.ExportCache(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("export %q via daemon at %s: %w", req.GetId(), c.sock, fromStatus(ctx, err))
	}
	for {
		p, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("export %q via daemon at %s: stream ended before the export was done: %w", req.GetId(), c.sock, core.ErrUnavailable)
		}
		if err != nil {
			return nil, fmt.Errorf("export %q via daemon at %s: %w", req.GetId(), c.sock, fromStatus(ctx, err))
		}
		if progress != nil {
			progress(p)
		}
		if p.GetDone() {
			return p, nil
		}
	}
}

// StatCache reports what the daemon holds of the dfcache entry (id, tag).
func (c *Client) StatCache(ctx context.Context, id, tag string) (*daemonv1.StatTaskResponse, error) {
	resp, err := c.api.StatCache(ctx, &daemonv1.CacheRequest{Id: id, Tag: tag})
	if err != nil {
		return nil, fmt.Errorf("stat %q via daemon at %s: %w", id, c.sock, fromStatus(ctx, err))
	}
	return resp, nil
}

// DeleteCache removes the dfcache entry (id, tag) from the daemon's cache.
func (c *Client) DeleteCache(ctx context.Context, id, tag string) (*daemonv1.StatTaskResponse, error) {
	resp, err := c.api.DeleteCache(ctx, &daemonv1.CacheRequest{Id: id, Tag: tag})
	if err != nil {
		return nil, fmt.Errorf("delete %q via daemon at %s: %w", id, c.sock, fromStatus(ctx, err))
	}
	return resp, nil
}

// StatTask reports what the daemon holds of task id.
func (c *Client) StatTask(ctx context.Context, id string) (*daemonv1.StatTaskResponse, error) {
	resp, err := c.api.StatTask(ctx, &daemonv1.StatTaskRequest{TaskId: id})
	if err != nil {
		return nil, fmt.Errorf("stat task %s via daemon at %s: %w", id, c.sock, fromStatus(ctx, err))
	}
	return resp, nil
}

// Close closes the connection.
func (c *Client) Close() error {
	if err := c.conn.Close(); err != nil {
		return fmt.Errorf("close connection to daemon at %s: %w", c.sock, err)
	}
	return nil
}

// Error is a failure the daemon reported: its gRPC code and message.
// errors.Is matches the core error kind of the code (see Kind), and
// status.Code still returns the code.
type Error struct {
	Code    codes.Code
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return e.Code.String()
	}
	return e.Message
}

// Unwrap returns the core error kind of the code, or nil.
func (e *Error) Unwrap() error { return Kind(e.Code) }

// GRPCStatus lets status.FromError and status.Code see the original status.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

// Kind maps a gRPC code to a core error kind (nil when none fits):
// NotFound→ErrNotFound, InvalidArgument→ErrInvalid, DataLoss→ErrDigestMismatch,
// Unavailable→ErrUnavailable, FailedPrecondition and Aborted→ErrOrigin,
// ResourceExhausted→ErrNoSpace, Unauthenticated→ErrDenied, DeadlineExceeded and Canceled→the context
// errors.
func Kind(c codes.Code) error {
	switch c {
	case codes.NotFound:
		return core.ErrNotFound
	case codes.InvalidArgument:
		return core.ErrInvalid
	case codes.DataLoss:
		return core.ErrDigestMismatch
	case codes.Unavailable:
		return core.ErrUnavailable
	case codes.FailedPrecondition, codes.Aborted:
		return core.ErrOrigin
	case codes.ResourceExhausted:
		return core.ErrNoSpace
	case codes.Unauthenticated:
		return core.ErrDenied
	case codes.DeadlineExceeded:
		return context.DeadlineExceeded
	case codes.Canceled:
		return context.Canceled
	}
	return nil
}

// fromStatus turns a gRPC error into an *Error, or into the context's error
// when the caller's context ended.
func fromStatus(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	return &Error{Code: st.Code(), Message: st.Message()}
}
