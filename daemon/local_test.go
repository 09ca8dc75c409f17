package daemon

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/client"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/fdpass"
)

func TestResolveSockGroup(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		group string
		gid   int
		mode  os.FileMode
		err   bool
	}{
		{"", -1, 0o600, false},
		{"4242", 4242, 0o660, false},
		{"-3", 0, 0, true},
		{"root", 0, 0o660, false},
		{"no-such-group-damselfly-test", 0, 0, true},
	} {
		acc, err := resolveSockGroup(tc.group, log)
		if (err != nil) != tc.err {
			t.Errorf("%q: err %v, want error %v", tc.group, err, tc.err)
			continue
		}
		if err == nil && (acc.gid != tc.gid || acc.mode != tc.mode) {
			t.Errorf("%q: gid %d mode %v, want %d %v", tc.group, acc.gid, acc.mode, tc.gid, tc.mode)
		}
	}
	// The default group missing is not an error: root only, and a log line.
	if _, err := user.LookupGroup(DefaultSockGroup); err == nil {
		t.Skipf("group %s exists here", DefaultSockGroup)
	}
	var buf bytes.Buffer
	acc, err := resolveSockGroup(DefaultSockGroup, slog.New(slog.NewTextHandler(&buf, nil)))
	if err != nil || acc.gid != -1 || acc.mode != 0o600 {
		t.Fatalf("missing default group: %v %+v, want root-only 0600", err, acc)
	}
	if !bytes.Contains(buf.Bytes(), []byte("does not exist")) {
		t.Fatalf("no log line about the missing group: %q", buf.String())
	}
}

func TestListenSockModes(t *testing.T) {
	dir := t.TempDir()
	for _, acc := range []sockAccess{{gid: -1, mode: 0o600}, {gid: os.Getegid(), mode: 0o660}} {
		path := filepath.Join(dir, "d.sock")
		l, err := listenSock(context.Background(), path, acc)
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != acc.mode || st.Mode()&os.ModeSocket == 0 {
			t.Errorf("socket mode %v, want socket %v", st.Mode(), acc.mode)
		}
		l.Close()
		os.Remove(path)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("leftovers: %v", ents)
	}
}

// The local API never takes a path from its caller: outputs, imports and
// file:// sources come as descriptors the caller opened.
func TestLocalAPIRefusesPaths(t *testing.T) {
	d := startProxyDaemon(t, func(c *Config) { c.SockGroup = "" })
	st, err := os.Stat(d.cfg.Sock)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v, want 0600", st, err)
	}
	conn, err := grpc.NewClient("unix://"+d.cfg.Sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	api := daemonv1.NewDaemonClient(conn)
	ctx := context.Background()
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other")
	if err := os.WriteFile(other, []byte("other"), 0o644); err != nil {
		t.Fatal(err)
	}
	download := func(req *daemonv1.DownloadRequest) error {
		s, err := api.Download(ctx, req)
		if err != nil {
			return err
		}
		for {
			p, err := s.Recv()
			if err != nil {
				return err
			}
			if p.GetDone() {
				return nil
			}
		}
	}
	pass := func(role string, f *os.File) string {
		tok, err := fdpass.Send(ctx, d.cfg.Sock, map[string]*os.File{role: f})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	of, _ := os.Open(other)
	defer of.Close()
	for name, req := range map[string]*daemonv1.DownloadRequest{
		"output path":          {Url: "file://" + other, Output: filepath.Join(dir, "out"), Uid: 0, OutputMode: 0o4755},
		"unknown token":        {Url: "https://example.invalid/x", FdToken: "00"},
		"file URL without src": {Url: "file://" + secret},
		"src of another file":  {Url: "file://" + secret, FdToken: pass(fdpass.RoleSrc, of)},
	} {
		if err := download(req); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s: %v, want PermissionDenied", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); err == nil {
		t.Error("the daemon wrote to a path")
	}
	if _, err := api.ImportCache(ctx, &daemonv1.ImportCacheRequest{Id: "x", Path: secret}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("import by path: %v, want PermissionDenied", err)
	}
	if s, err := api.ExportCache(ctx, &daemonv1.ExportCacheRequest{Id: "x", Output: filepath.Join(dir, "out")}); err == nil {
		if _, err = s.Recv(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("export to a path: %v, want PermissionDenied", err)
		}
	}
	// An output not open for writing is refused.
	if err := download(&daemonv1.DownloadRequest{Url: "file://" + other, FdToken: func() string {
		f, _ := os.Open(other)
		defer f.Close()
		src, _ := os.Open(other)
		defer src.Close()
		tok, err := fdpass.Send(ctx, d.cfg.Sock, map[string]*os.File{fdpass.RoleOut: f, fdpass.RoleSrc: src})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}()}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("read-only output: %v, want InvalidArgument", err)
	}

	// Through the client, which opens the files itself, it all works.
	c, err := client.Dial(ctx, d.cfg.Sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out := filepath.Join(dir, "copy")
	if _, err := c.Download(ctx, &daemonv1.DownloadRequest{Url: "file://" + secret, Output: out}, nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(out); string(b) != "secret" {
		t.Fatalf("copy holds %q", b)
	}
	// A local file is for local clients only: the upload port does not
	// serve it to peers.
	id := core.TaskID("file://"+secret, core.TaskOptions{})
	if _, ok := d.Store().Get(id); !ok {
		t.Fatal("the file:// task is not in the cache")
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/pieces/%s/0", d.Host().GetUploadPort(), id))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("upload port answered %d for a local file's piece, want 404", resp.StatusCode)
	}
	if _, err := c.ImportCache(ctx, &daemonv1.ImportCacheRequest{Id: "entry", Path: other}); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if _, err := c.ExportCache(ctx, &daemonv1.ExportCacheRequest{Id: "entry", Stream: true, LocalOnly: true}, func(p *daemonv1.DownloadProgress) {
		got.Write(p.GetData())
	}); err != nil {
		t.Fatal(err)
	}
	if got.String() != "other" {
		t.Fatalf("exported %q", got.String())
	}
}
