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

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/core"
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
func (c *Client) Download(ctx context.Context, req *daemonv1.DownloadRequest, progress func(*daemonv1.DownloadProgress)) (*daemonv1.DownloadProgress, error) {
	// Cancelling on return releases the stream whatever way we leave.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
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

// ImportCache imports the file req.Path (absolute; the daemon reads it) as
// the dfcache entry (req.Id, req.Tag).
func (c *Client) ImportCache(ctx context.Context, req *daemonv1.ImportCacheRequest) (*daemonv1.StatTaskResponse, error) {
	resp, err := c.api.ImportCache(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("import %s as %q via daemon at %s: %w", req.GetPath(), req.GetId(), c.sock, fromStatus(ctx, err))
	}
	return resp, nil
}

// ExportCache asks the daemon to write the dfcache entry req names, calling
// progress (when not nil) for every progress message, and returns the
// final message (Done set).
func (c *Client) ExportCache(ctx context.Context, req *daemonv1.ExportCacheRequest, progress func(*daemonv1.DownloadProgress)) (*daemonv1.DownloadProgress, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
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
