package client

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/fdpass"
)

// daemon is a real gRPC server whose Download behaviour each test sets.
type daemon struct {
	daemonv1.UnimplementedDaemonServer
	reg      *fdpass.Registry
	download func(*daemonv1.DownloadRequest, grpc.ServerStreamingServer[daemonv1.DownloadProgress]) error
	tasks    map[string]*daemonv1.StatTaskResponse
}

func (d *daemon) Download(req *daemonv1.DownloadRequest, s grpc.ServerStreamingServer[daemonv1.DownloadProgress]) error {
	return d.download(req, s)
}

func (d *daemon) StatTask(_ context.Context, req *daemonv1.StatTaskRequest) (*daemonv1.StatTaskResponse, error) {
	if t, ok := d.tasks[req.GetTaskId()]; ok {
		return t, nil
	}
	return nil, status.Errorf(codes.NotFound, "task %q not found", req.GetTaskId())
}

// serve starts d on a unix socket in a fresh directory and returns its path.
func serve(t *testing.T, d *daemon) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	d.reg = fdpass.NewRegistry(0)
	lis := fdpass.NewListener(ul, d.reg, slog.New(slog.DiscardHandler))
	s := grpc.NewServer(grpc.Creds(fdpass.Creds()))
	daemonv1.RegisterDaemonServer(s, d)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return sock
}

func dial(t *testing.T, sock string) *Client {
	t.Helper()
	c, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestDownloadStreamsProgress(t *testing.T) {
	var got *daemonv1.DownloadRequest
	var d *daemon
	d = &daemon{download: func(req *daemonv1.DownloadRequest, s grpc.ServerStreamingServer[daemonv1.DownloadProgress]) error {
		got = req
		fs, err := d.reg.Take(s.Context(), req.GetFdToken())
		if err != nil {
			return status.Error(codes.PermissionDenied, err.Error())
		}
		defer fs.Close()
		if _, err := fs[fdpass.RoleOut].WriteString(strings.Repeat("x", 30)); err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		for _, n := range []int64{0, 10, 20} {
			if err := s.Send(&daemonv1.DownloadProgress{TaskId: "t", ContentLength: 30, CompletedLength: n}); err != nil {
				return err
			}
		}
		return s.Send(&daemonv1.DownloadProgress{TaskId: "t", ContentLength: 30, CompletedLength: 30, Done: true, PeerBytes: 20, OriginBytes: 10})
	}}
	c := dial(t, serve(t, d))
	out := filepath.Join(t.TempDir(), "x")
	req := &daemonv1.DownloadRequest{
		Url: "https://o/x?sig=1", Output: out, Digest: "sha256:" + strings.Repeat("a", 64),
		Headers: map[string]string{"Authorization": "Bearer x"}, FilteredQuery: []string{"sig"},
		Tag: "tag", Application: "app", RateLimit: 1 << 20, DisableBackSource: true, OutputMode: 0o644, Uid: 1000, Gid: 1000,
	}
	var seen []int64
	final, err := c.Download(context.Background(), req, func(p *daemonv1.DownloadProgress) { seen = append(seen, p.GetCompletedLength()) })
	if err != nil {
		t.Fatal(err)
	}
	if !final.GetDone() || final.GetCompletedLength() != 30 || final.GetPeerBytes() != 20 {
		t.Fatalf("final %v", final)
	}
	if len(seen) != 4 || seen[3] != 30 {
		t.Fatalf("progress %v", seen)
	}
	// The daemon gets the output as a descriptor, never a path, owner or mode.
	if got.GetFdToken() == "" {
		t.Fatal("no fd token")
	}
	want := proto.CloneOf(req)
	want.Output, want.OutputMode, want.Uid, want.Gid, want.FdToken = "", 0, 0, 0, got.GetFdToken()
	if !proto.Equal(got, want) {
		t.Fatalf("daemon got %v, want %v", got, want)
	}
	st, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(out); string(b) != strings.Repeat("x", 30) {
		t.Fatalf("output holds %q", b)
	}
	if wantMode := 0o644 &^ umask(); st.Mode().Perm() != wantMode {
		t.Fatalf("output mode %v, want %v", st.Mode().Perm(), wantMode)
	}
	if ents, _ := os.ReadDir(filepath.Dir(out)); len(ents) != 1 {
		t.Fatalf("leftovers next to the output: %v", ents)
	}
}

func TestDownloadErrorKinds(t *testing.T) {
	cases := []struct {
		code codes.Code
		kind error
	}{
		{codes.NotFound, core.ErrNotFound},
		{codes.InvalidArgument, core.ErrInvalid},
		{codes.DataLoss, core.ErrDigestMismatch},
		{codes.Unavailable, core.ErrUnavailable},
		{codes.FailedPrecondition, core.ErrOrigin},
		{codes.Aborted, core.ErrOrigin},
		{codes.DeadlineExceeded, context.DeadlineExceeded},
		{codes.Internal, nil},
		{codes.PermissionDenied, nil},
	}
	for _, tc := range cases {
		t.Run(tc.code.String(), func(t *testing.T) {
			d := &daemon{download: func(_ *daemonv1.DownloadRequest, s grpc.ServerStreamingServer[daemonv1.DownloadProgress]) error {
				_ = s.Send(&daemonv1.DownloadProgress{ContentLength: -1})
				return status.Error(tc.code, "origin said 404 for https://o/x")
			}}
			c := dial(t, serve(t, d))
			_, err := c.Download(context.Background(), &daemonv1.DownloadRequest{Url: "https://o/x"}, nil)
			if err == nil {
				t.Fatal("no error")
			}
			if tc.kind != nil && !errors.Is(err, tc.kind) {
				t.Fatalf("err %v, want kind %v", err, tc.kind)
			}
			for _, k := range []error{core.ErrNotFound, core.ErrInvalid, core.ErrDigestMismatch, core.ErrUnavailable, core.ErrOrigin} {
				if k != tc.kind && errors.Is(err, k) {
					t.Fatalf("err %v also matches %v", err, k)
				}
			}
			if !strings.Contains(err.Error(), "origin said 404 for https://o/x") {
				t.Fatalf("message lost: %v", err)
			}
			if status.Code(err) != tc.code {
				t.Fatalf("status.Code %v, want %v", status.Code(err), tc.code)
			}
		})
	}
}

func TestDownloadStreamEndsEarly(t *testing.T) {
	d := &daemon{download: func(_ *daemonv1.DownloadRequest, s grpc.ServerStreamingServer[daemonv1.DownloadProgress]) error {
		return s.Send(&daemonv1.DownloadProgress{CompletedLength: 1})
	}}
	c := dial(t, serve(t, d))
	if _, err := c.Download(context.Background(), &daemonv1.DownloadRequest{}, nil); !errors.Is(err, core.ErrUnavailable) {
		t.Fatalf("err %v", err)
	}
}

func TestDownloadCanceled(t *testing.T) {
	d := &daemon{download: func(_ *daemonv1.DownloadRequest, s grpc.ServerStreamingServer[daemonv1.DownloadProgress]) error {
		_ = s.Send(&daemonv1.DownloadProgress{CompletedLength: 1})
		<-s.Context().Done()
		return s.Context().Err()
	}}
	c := dial(t, serve(t, d))
	ctx, cancel := context.WithCancel(context.Background())
	_, err := c.Download(ctx, &daemonv1.DownloadRequest{}, func(*daemonv1.DownloadProgress) { cancel() })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
}

func TestStatTask(t *testing.T) {
	d := &daemon{tasks: map[string]*daemonv1.StatTaskResponse{"t1": {TaskId: "t1", ContentLength: 5, Complete: true}}}
	c := dial(t, serve(t, d))
	resp, err := c.StatTask(context.Background(), "t1")
	if err != nil || !resp.GetComplete() || resp.GetContentLength() != 5 {
		t.Fatalf("%v, %v", resp, err)
	}
	if _, err := c.StatTask(context.Background(), "nope"); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("unknown task: %v", err)
	}
}

func TestDialFailsFast(t *testing.T) {
	dir := t.TempDir()
	// A socket file nobody listens on any more (a daemon that died).
	stale := filepath.Join(dir, "stale.sock")
	lis, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = lis.Close()
	// A socket that accepts but never speaks gRPC.
	mute := filepath.Join(dir, "mute.sock")
	ml, err := net.Listen("unix", mute)
	if err != nil {
		t.Fatal(err)
	}
	defer ml.Close()
	go func() {
		for {
			c, err := ml.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, sock := range []string{filepath.Join(dir, "missing.sock"), stale, mute, plain} {
		start := time.Now()
		c, err := Dial(context.Background(), sock)
		if err == nil {
			_ = c.Close()
			t.Fatalf("%s: dial succeeded", sock)
		}
		if !errors.Is(err, core.ErrUnavailable) || !strings.Contains(err.Error(), sock) {
			t.Fatalf("%s: err %v", sock, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("%s: took %s to give up", sock, d)
		}
	}
}

func TestDialHonoursContext(t *testing.T) {
	dir := t.TempDir()
	mute := filepath.Join(dir, "mute.sock")
	ml, err := net.Listen("unix", mute)
	if err != nil {
		t.Fatal(err)
	}
	defer ml.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Dial(ctx, mute); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
}

func TestDialRelativePath(t *testing.T) {
	d := &daemon{tasks: map[string]*daemonv1.StatTaskResponse{"t": {TaskId: "t"}}}
	sock := serve(t, d)
	t.Chdir(filepath.Dir(sock))
	c := dial(t, "d.sock")
	if c.Sock() != sock {
		// t.TempDir may sit behind a symlink; compare resolved paths.
		a, _ := filepath.EvalSymlinks(c.Sock())
		b, _ := filepath.EvalSymlinks(sock)
		if a != b {
			t.Fatalf("Sock %q, want %q", c.Sock(), sock)
		}
	}
	if _, err := c.StatTask(context.Background(), "t"); err != nil {
		t.Fatal(err)
	}
}
