package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/client"
	"github.com/damselfly-io/damselfly/internal/fdpass"
)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func blob(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// origin is an httptest server serving files by path, counting requests.
type origin struct {
	*httptest.Server
	reqs    atomic.Int64
	mu      sync.Mutex
	headers []http.Header
}

func newOrigin(t *testing.T, files map[string][]byte) *origin {
	t.Helper()
	o := &origin{}
	o.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.reqs.Add(1)
		o.mu.Lock()
		o.headers = append(o.headers, r.Header.Clone())
		o.mu.Unlock()
		data, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(o.Close)
	return o
}

type out struct {
	code           int
	stdout, stderr string
}

func dfget(t *testing.T, args ...string) out {
	t.Helper()
	return dfgetCtx(t, context.Background(), args...)
}

func dfgetCtx(t *testing.T, ctx context.Context, args ...string) out {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, &stdout, &stderr)
	return out{code, stdout.String(), stderr.String()}
}

// noDaemon is a socket path nobody serves.
func noDaemon(t *testing.T) string { return filepath.Join(t.TempDir(), "none.sock") }

func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestParseArgs(t *testing.T) {
	full, err := parseArgs([]string{
		"http://o/x?sig=1", "--output", "f", "--no-progress", "-H", "Authorization: Bearer a:b", "--header=X-A:1", "-H", "X-A: 2",
		"--filter", "sig&expires", "--filter=a,b", "--tag", "t", "--application", "app", "--timeout", "30m",
		"--rate-limit", "100M", "--sock", "/s.sock", "--direct", "-q", "--digest", "sha256:ab",
	})
	if err != nil {
		t.Fatal(err)
	}
	if full.url != "http://o/x?sig=1" || full.output != "f" || !full.noProgress || !full.direct || !full.quiet ||
		full.tag != "t" || full.application != "app" || full.timeout != 30*time.Minute || full.rateLimit != 100<<20 ||
		full.sock != "/s.sock" || full.digest != "sha256:ab" {
		t.Fatalf("parsed %+v", full)
	}
	if got := full.header.Get("Authorization"); got != "Bearer a:b" {
		t.Fatalf("Authorization %q", got)
	}
	if got := full.header.Values("X-A"); !slices.Equal(got, []string{"1", "2"}) {
		t.Fatalf("X-A %q", got)
	}
	if !slices.Equal(full.filter, []string{"sig", "expires", "a", "b"}) {
		t.Fatalf("filter %q", full.filter)
	}

	cases := []struct {
		args    []string
		url     string
		output  string
		wantErr string
	}{
		{[]string{"http://o/x", "-O", "f"}, "http://o/x", "f", ""},
		{[]string{"-O", "f", "http://o/x"}, "http://o/x", "f", ""},
		{[]string{"-O=f", "--url", "http://o/x"}, "http://o/x", "f", ""},
		{[]string{"-u", "http://o/x", "http://o/x", "-O", "f"}, "http://o/x", "f", ""},
		{[]string{"-O", "f", "--", "http://o/-x"}, "http://o/-x", "f", ""},
		{[]string{"--ratelimit", "1K", "--daemon-sock", "/d", "http://o/x"}, "http://o/x", "", ""},
		{[]string{"http://o/x", "http://o/y", "-O", "f"}, "", "", "one URL expected"},
		{[]string{"-u", "http://o/x", "http://o/y"}, "", "", "both"},
		{[]string{"--nope", "http://o/x"}, "", "", "not defined"},
		{[]string{"http://o/x", "-H", "NoColon"}, "", "", "Name: value"},
		{[]string{"http://o/x", "-H", "Bad Name: v"}, "", "", "Name: value"},
		{[]string{"http://o/x", "--rate-limit", "12X"}, "", "", "unknown unit"},
		{[]string{"http://o/x", "--timeout", "soon"}, "", "", "bad duration"},
		{[]string{"http://o/x", "--timeout", "-5s"}, "", "", "bad duration"},
		{[]string{"http://o/x", "-O"}, "", "", "needs an argument"},
	}
	for _, tc := range cases {
		o, err := parseArgs(tc.args)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err %v, want %q", tc.args, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if o.url != tc.url || o.output != tc.output {
			t.Errorf("%q: url %q output %q", tc.args, o.url, o.output)
		}
	}
	d, _ := parseArgs([]string{"http://o/x"})
	if d.timeout != defaultTimeout || d.sock != client.DefaultSock || d.rateLimit != 0 {
		t.Errorf("defaults %+v", d)
	}
	if o, _ := parseArgs([]string{"--timeout", "90", "x"}); o.timeout != 90*time.Second {
		t.Errorf("plain seconds: %s", o.timeout)
	}
	if o, _ := parseArgs([]string{"--timeout", "0", "x"}); o.timeout != 0 {
		t.Errorf("zero timeout: %s", o.timeout)
	}
}

func TestParseRate(t *testing.T) {
	cases := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"", 0, true},
		{"0", 0, true},
		{"1048576", 1 << 20, true},
		{"100B", 100, true},
		{"512K", 512 << 10, true},
		{"512k", 512 << 10, true},
		{"512KiB", 512 << 10, true},
		{"512KB", 512 << 10, true},
		{"100M", 100 << 20, true},
		{"100MiB", 100 << 20, true},
		{"100mib/s", 100 << 20, true},
		{"1.5G", 3 << 29, true},
		{"2GiB", 2 << 30, true},
		{"1T", 1 << 40, true},
		{" 10 M ", 10 << 20, true},
		{"0.1", 1, true},
		{"12X", 0, false},
		{"M", 0, false},
		{"-1M", 0, false},
		{"1..2M", 0, false},
		{"1e3", 0, false},
		{"99999999999T", 0, false},
	}
	for _, tc := range cases {
		got, err := parseRate(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseRate(%q) = %d, %v; want %d ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	outFile := filepath.Join(dir, "f")
	good := "sha256:" + strings.Repeat("0", 64)
	cases := []struct {
		name string
		args []string
		msg  string
	}{
		{"no url", []string{"-O", outFile}, "no URL"},
		{"no output", []string{"http://o/x"}, "no output"},
		{"ftp", []string{"ftp://o/x", "-O", outFile}, "unsupported scheme"},
		{"no scheme", []string{"o/x", "-O", outFile}, "no scheme"},
		{"no host", []string{"http:///x", "-O", outFile}, "no host"},
		{"relative file", []string{"file:x", "-O", outFile}, "file:///absolute/path"},
		{"bad digest", []string{"http://o/x", "-O", outFile, "--digest", "sha256:zz"}, "digest"},
		{"md5 digest", []string{"http://o/x", "-O", outFile, "--digest", "md5:" + strings.Repeat("0", 32)}, "unsupported algorithm"},
		{"missing dir", []string{"http://o/x", "-O", filepath.Join(dir, "no", "f")}, "output directory"},
		{"output is dir", []string{"http://o/x", "-O", dir}, "is a directory"},
		{"direct and no back-source", []string{"http://o/x", "-O", outFile, "--direct", "--disable-back-source", "--digest", good}, "exclude"},
		{"bad flag", []string{"http://o/x", "-O", outFile, "--bogus"}, "not defined"},
		{"bad priority", []string{"http://o/x", "-O", outFile, "--priority", "LEVEL7"}, "LEVEL0..LEVEL6"},
		{"s3 no bucket", []string{"s3:///k", "-O", outFile}, "s3://bucket/key"},
		{"recursive to a file", []string{"--recursive", "http://o/d/", "-O", outFile + "x/y"}, "parent directory"},
		{"recursive stdout", []string{"--recursive", "http://o/d/", "-O", "-"}, "-O - is not possible"},
		{"recursive file url", []string{"--recursive", "file:///tmp/", "-O", dir}, "--recursive takes"},
		{"recursive digest", []string{"--recursive", "http://o/d/", "-O", dir, "--digest", good}, "does not go with --recursive"},
		{"recursive parallel", []string{"--recursive", "http://o/d/", "-O", dir, "--parallel", "0"}, "--parallel 0"},
		{"recursive bad glob", []string{"--recursive", "http://o/d/", "-O", dir, "--include", "["}, "glob"},
		{"oci bad ref", []string{"oci://noregistry", "-O", dir}, "oci://registry/repository"},
		{"oci digest", []string{"oci://r.example/a/b:v1", "-O", dir, "--digest", good}, "own digests"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := dfget(t, tc.args...)
			if r.code != exitUsage || !strings.HasPrefix(r.stderr, "dfget: ") || !strings.Contains(r.stderr, tc.msg) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", r.code, r.stderr, tc.msg)
			}
		})
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, h := range []string{"-h", "--help"} {
		r := dfget(t, h)
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("%s: exit %d stderr %q", h, r.code, r.stderr)
		}
		for _, want := range []string{"-O, --output", "--digest", "-H, --header", "--filter", "--tag", "--application",
			"--timeout", "--rate-limit", "--disable-back-source", "--sock", "--no-progress", "--direct", "-q, --quiet",
			"--version", "-h, --help", client.DefaultSock, "Exit codes", "130"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("usage lacks %q", want)
			}
		}
		for code := range 7 {
			if !strings.Contains(r.stdout, "\n  "+string(rune('0'+code))+" ") {
				t.Errorf("usage lacks exit code %d", code)
			}
		}
	}
	if r := dfget(t); r.code != exitUsage || !strings.HasPrefix(r.stderr, "Usage: dfget") {
		t.Fatalf("no arguments: %+v", r)
	}
	if r := dfget(t, "--version"); r.code != 0 || !strings.HasPrefix(r.stdout, "dfget ") {
		t.Fatalf("version: %+v", r)
	}
}

func TestDirectFallbackWithoutDaemon(t *testing.T) {
	data := blob(3<<20 + 5)
	o := newOrigin(t, map[string][]byte{"/blob": data})
	dir := t.TempDir()
	outFile := filepath.Join(dir, "blob")
	r := dfget(t, o.URL+"/blob?sig=secret", "-O", outFile, "--digest", sha(data), "--sock", noDaemon(t), "-H", "X-Token: t1")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	got, err := os.ReadFile(outFile)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("file: %d bytes, %v", len(got), err)
	}
	if !strings.Contains(r.stderr, "daemon not reachable at") || !strings.Contains(r.stderr, "downloading directly") {
		t.Fatalf("stderr %q", r.stderr)
	}
	if !strings.Contains(r.stderr, "dfget: downloaded 3.0 MiB to "+outFile) {
		t.Fatalf("no summary line: %q", r.stderr)
	}
	if o.headers[0].Get("X-Token") != "t1" {
		t.Fatalf("header did not reach the origin: %v", o.headers[0])
	}
	if names := entries(t, dir); len(names) != 1 {
		t.Fatalf("leftovers %v", names)
	}
}

func TestRelativeOutputAndQuiet(t *testing.T) {
	o := newOrigin(t, map[string][]byte{"/x": []byte("hello")})
	dir := t.TempDir()
	t.Chdir(dir)
	r := dfget(t, "-q", "--direct", o.URL+"/x", "-O", "x.txt")
	if r.code != 0 || r.stderr != "" || r.stdout != "" {
		t.Fatalf("quiet run: %+v", r)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "x.txt")); string(got) != "hello" {
		t.Fatalf("got %q", got)
	}
}

func TestExitNotFound(t *testing.T) {
	o := newOrigin(t, nil)
	dir := t.TempDir()
	r := dfget(t, o.URL+"/missing", "-O", filepath.Join(dir, "f"), "--sock", noDaemon(t))
	if r.code != exitNotFound || !strings.Contains(r.stderr, "dfget: download "+o.URL+"/missing to ") || !strings.Contains(r.stderr, "404") {
		t.Fatalf("exit %d: %q", r.code, r.stderr)
	}
	if names := entries(t, dir); len(names) != 0 {
		t.Fatalf("leftovers %v", names)
	}
}

func TestExitDigestMismatch(t *testing.T) {
	o := newOrigin(t, map[string][]byte{"/x": blob(100_000)})
	dir := t.TempDir()
	r := dfget(t, o.URL+"/x", "-O", filepath.Join(dir, "f"), "--digest", sha([]byte("other")), "--direct")
	if r.code != exitDigest || !strings.Contains(r.stderr, "digest mismatch") {
		t.Fatalf("exit %d: %q", r.code, r.stderr)
	}
	if names := entries(t, dir); len(names) != 0 {
		t.Fatalf("leftovers %v", names)
	}
}

func TestExitNoDaemonWithoutBackSource(t *testing.T) {
	o := newOrigin(t, map[string][]byte{"/x": []byte("x")})
	dir := t.TempDir()
	sock := noDaemon(t)
	r := dfget(t, o.URL+"/x", "-O", filepath.Join(dir, "f"), "--sock", sock, "--disable-back-source")
	if r.code != exitNoDaemon || !strings.Contains(r.stderr, sock) {
		t.Fatalf("exit %d: %q", r.code, r.stderr)
	}
	if o.reqs.Load() != 0 {
		t.Fatal("went to the origin with back-source disabled")
	}
	if names := entries(t, dir); len(names) != 0 {
		t.Fatalf("leftovers %v", names)
	}
}

func TestZeroByteFile(t *testing.T) {
	o := newOrigin(t, map[string][]byte{"/empty": {}})
	dir := t.TempDir()
	outFile := filepath.Join(dir, "empty")
	r := dfget(t, o.URL+"/empty", "-O", outFile, "--digest", sha(nil), "--sock", noDaemon(t))
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if st, err := os.Stat(outFile); err != nil || st.Size() != 0 {
		t.Fatalf("stat %v %v", st, err)
	}
}

func TestFileURL(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("local"), 0o600); err != nil {
		t.Fatal(err)
	}
	outFile := filepath.Join(dir, "dst")
	if r := dfget(t, "file://"+src, "-O", outFile, "--direct"); r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if got, _ := os.ReadFile(outFile); string(got) != "local" {
		t.Fatalf("got %q", got)
	}
	if r := dfget(t, "file://"+filepath.Join(dir, "nope"), "-O", outFile+"2", "--direct"); r.code != exitNotFound {
		t.Fatalf("missing file: exit %d: %s", r.code, r.stderr)
	}
}

// stalling serves the first bytes of a big body and then nothing.
func stalling(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000000")
		_, _ = w.Write(make([]byte, 64<<10))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestExitTimeout(t *testing.T) {
	srv := stalling(t)
	dir := t.TempDir()
	r := dfget(t, srv.URL, "-O", filepath.Join(dir, "f"), "--direct", "--timeout", "300ms")
	if r.code != exitTimeout || !strings.Contains(r.stderr, "timed out after 300ms") {
		t.Fatalf("exit %d: %q", r.code, r.stderr)
	}
	if names := entries(t, dir); len(names) != 0 {
		t.Fatalf("leftovers %v", names)
	}
}

func TestInterrupted(t *testing.T) {
	srv := stalling(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	r := dfgetCtx(t, ctx, srv.URL, "-O", filepath.Join(dir, "f"), "--sock", noDaemon(t))
	if r.code != exitInterrupted || !strings.Contains(r.stderr, "interrupted") {
		t.Fatalf("exit %d: %q", r.code, r.stderr)
	}
	if names := entries(t, dir); len(names) != 0 {
		t.Fatalf("leftovers %v", names)
	}
}

func TestRateLimitDirect(t *testing.T) {
	data := blob(512 << 10)
	o := newOrigin(t, map[string][]byte{"/x": data})
	dir := t.TempDir()
	start := time.Now()
	// 1 MiB/s with a 256 KiB burst: the second 256 KiB takes at least 250ms.
	r := dfget(t, o.URL+"/x", "-O", filepath.Join(dir, "f"), "--direct", "--rate-limit", "1M")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("512 KiB at 1 MiB/s took only %s", d)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "f")); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
}

// daemon is a real gRPC server on a unix socket standing in for the
// Damselfly daemon; each test sets what Download does.
type daemon struct {
	daemonv1.UnimplementedDaemonServer
	reg      *fdpass.Registry
	mu       sync.Mutex
	reqs     []*daemonv1.DownloadRequest
	download func(*daemonv1.DownloadRequest, grpc.ServerStreamingServer[daemonv1.DownloadProgress]) error
}

func (d *daemon) Download(req *daemonv1.DownloadRequest, s grpc.ServerStreamingServer[daemonv1.DownloadProgress]) error {
	d.mu.Lock()
	d.reqs = append(d.reqs, req)
	d.mu.Unlock()
	return d.download(req, s)
}

func startDaemon(t *testing.T, d *daemon) string {
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

func TestDaemonDownload(t *testing.T) {
	data := []byte("from the swarm")
	var d *daemon
	d = &daemon{download: func(req *daemonv1.DownloadRequest, s grpc.ServerStreamingServer[daemonv1.DownloadProgress]) error {
		_ = s.Send(&daemonv1.DownloadProgress{TaskId: "t", ContentLength: -1})
		fs, err := d.reg.Take(s.Context(), req.GetFdToken())
		if err != nil {
			return status.Error(codes.PermissionDenied, err.Error())
		}
		defer fs.Close()
		if _, err := fs[fdpass.RoleOut].Write(data); err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		return s.Send(&daemonv1.DownloadProgress{TaskId: "t", ContentLength: int64(len(data)), CompletedLength: int64(len(data)),
			Done: true, PeerBytes: 10, OriginBytes: 4})
	}}
	sock := startDaemon(t, d)
	o := newOrigin(t, nil)
	dir := t.TempDir()
	t.Chdir(dir)
	r := dfget(t, "https://registry.example/blob?sig=1&exp=2&keep=3", "-O", "rel.bin", "--sock", sock,
		"-H", "Authorization: Bearer x", "--filter", "sig&exp", "--tag", "tg", "--application", "ap", "--rate-limit", "10M",
		"--digest", sha(data))
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "rel.bin")); !bytes.Equal(got, data) {
		t.Fatalf("got %q", got)
	}
	if o.reqs.Load() != 0 {
		t.Fatal("dfget went to the origin")
	}
	req := d.reqs[0]
	// The output goes as a descriptor dfget opened, with no path, mode or owner.
	want := &daemonv1.DownloadRequest{
		Url: "https://registry.example/blob?sig=1&exp=2&keep=3", Digest: sha(data),
		Headers: map[string]string{"Authorization": "Bearer x"}, FilteredQuery: []string{"sig", "exp"}, Tag: "tg", Application: "ap",
		RateLimit: 10 << 20, FdToken: req.GetFdToken(),
	}
	if req.GetFdToken() == "" {
		t.Fatal("no fd token")
	}
	if req.String() != want.String() {
		t.Fatalf("daemon got\n%v\nwant\n%v", req, want)
	}
	if !strings.Contains(r.stderr, "via the daemon: 10 B from peers, 4 B from the origin") {
		t.Fatalf("summary %q", r.stderr)
	}
}

func TestDaemonFailures(t *testing.T) {
	data := blob(200_000)
	cases := []struct {
		name        string
		code        codes.Code
		progress    bool
		extra       []string
		wantExit    int
		wantDirect  bool
		wantMessage string
	}{
		{"origin not found", codes.NotFound, true, nil, exitNotFound, false, "404 from origin"},
		{"digest mismatch", codes.DataLoss, true, nil, exitDigest, false, "digest"},
		{"origin error", codes.FailedPrecondition, true, nil, exitFailed, false, "origin"},
		{"credentials refused", codes.Unauthenticated, false, nil, exitDenied, false, "refused"},
		{"internal after start", codes.Internal, true, nil, 0, true, "daemon download failed"},
		{"unavailable before start", codes.Unavailable, false, nil, 0, true, "daemon not reachable"},
		{"unavailable, no back-source", codes.Unavailable, true, []string{"--disable-back-source"}, exitNoDaemon, false, "unavailable"},
		{"internal, no back-source", codes.Internal, true, []string{"--disable-back-source"}, exitFailed, false, "boom"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := &daemon{download: func(_ *daemonv1.DownloadRequest, s grpc.ServerStreamingServer[daemonv1.DownloadProgress]) error {
				if tc.progress {
					_ = s.Send(&daemonv1.DownloadProgress{ContentLength: 200_000, CompletedLength: 1000})
				}
				msg := "boom"
				switch tc.code {
				case codes.NotFound:
					msg = "404 from origin"
				case codes.DataLoss:
					msg = "digest mismatch"
				case codes.FailedPrecondition:
					msg = "origin answered 403"
				case codes.Unauthenticated:
					msg = "HEAD s3://b/k: origin answered 403 Forbidden: the origin refused the credentials"
				case codes.Unavailable:
					msg = "scheduler unavailable"
				}
				return status.Error(tc.code, msg)
			}}
			sock := startDaemon(t, d)
			o := newOrigin(t, map[string][]byte{"/x": data})
			dir := t.TempDir()
			outFile := filepath.Join(dir, "f")
			r := dfget(t, append([]string{o.URL + "/x", "-O", outFile, "--sock", sock}, tc.extra...)...)
			if r.code != tc.wantExit || !strings.Contains(r.stderr, tc.wantMessage) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", r.code, r.stderr, tc.wantExit, tc.wantMessage)
			}
			if direct := o.reqs.Load() > 0; direct != tc.wantDirect {
				t.Fatalf("went direct: %v, want %v", direct, tc.wantDirect)
			}
			names := entries(t, dir)
			if tc.wantExit == 0 {
				if got, _ := os.ReadFile(outFile); !bytes.Equal(got, data) || len(names) != 1 {
					t.Fatalf("fallback file: %d bytes, dir %v", len(got), names)
				}
			} else if len(names) != 0 {
				t.Fatalf("leftovers %v", names)
			}
		})
	}
}

// TestProgressBarOnTerminal drives the bar code (a failed daemon bar, then a
// direct one) as on a terminal, writing into a buffer.
func TestProgressBarOnTerminal(t *testing.T) {
	data := blob(1 << 20)
	d := &daemon{download: func(_ *daemonv1.DownloadRequest, s grpc.ServerStreamingServer[daemonv1.DownloadProgress]) error {
		_ = s.Send(&daemonv1.DownloadProgress{ContentLength: -1})
		_ = s.Send(&daemonv1.DownloadProgress{ContentLength: 1 << 20, CompletedLength: 1000})
		return status.Error(codes.Internal, "boom")
	}}
	sock := startDaemon(t, d)
	o := newOrigin(t, map[string][]byte{"/x": data})
	outFile := filepath.Join(t.TempDir(), "f")
	opts, err := parseArgs([]string{o.URL + "/x", "-O", outFile, "--sock", sock})
	if err != nil {
		t.Fatal(err)
	}
	if err := opts.validate(); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	dl := &downloader{opts: opts, stderr: &stderr, tty: true}
	res, err := dl.download(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !dl.barShown || res.bytes != 1<<20 || !res.fellBack {
		t.Fatalf("bar shown %v, result %+v", dl.barShown, res)
	}
	if !strings.Contains(stderr.String(), "daemon download failed") {
		t.Fatalf("stderr %q", stderr.String())
	}
}

func TestSummaryAndSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 3 << 29: "1.5 GiB", 5 << 40: "5.0 TiB"} {
		if got := size(n); got != want {
			t.Errorf("size(%d) = %q, want %q", n, got, want)
		}
	}
	r := &result{bytes: 2048, elapsed: time.Second, final: &daemonv1.DownloadProgress{Done: true, FromCache: true}}
	if s := r.summary("/o"); s != "dfget: downloaded 2.0 KiB to /o in 1s (2.0 KiB/s), from the daemon's cache" {
		t.Errorf("summary %q", s)
	}
	if got := redactURL("https://u:pw@h/p?sig=s#f"); got != "https://u@h/p" {
		t.Errorf("redactURL %q", got)
	}
}

// A download the daemon had to take from the origin because P2P was
// unavailable ends with one warning line saying why; -q silences it, and a
// normal P2P download has none.
func TestWarnsWhenP2PUnavailable(t *testing.T) {
	data := []byte("from the origin, via the daemon")
	var reason atomic.Value
	reason.Store("scheduler_unreachable")
	var d *daemon
	d = &daemon{download: func(req *daemonv1.DownloadRequest, s grpc.ServerStreamingServer[daemonv1.DownloadProgress]) error {
		fs, err := d.reg.Take(s.Context(), req.GetFdToken())
		if err != nil {
			return status.Error(codes.PermissionDenied, err.Error())
		}
		defer fs.Close()
		if _, err := fs[fdpass.RoleOut].Write(data); err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		return s.Send(&daemonv1.DownloadProgress{TaskId: "t", ContentLength: int64(len(data)), CompletedLength: int64(len(data)),
			Done: true, OriginBytes: int64(len(data)), BackSourceReason: reason.Load().(string)})
	}}
	sock := startDaemon(t, d)
	out := filepath.Join(t.TempDir(), "o")
	// The origin is never contacted (the fake daemon answers); a loopback
	// address keeps any mistake on this machine.
	r := dfget(t, "http://127.0.0.1:1/f", "-O", out, "--sock", sock)
	warn := "dfget: warning: peer-to-peer was unavailable (no scheduler could be reached); the daemon downloaded from the origin\n"
	if r.code != 0 || strings.Count(r.stderr, "warning") != 1 || !strings.HasSuffix(r.stderr, warn) {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if r := dfget(t, "http://127.0.0.1:1/f", "-O", out, "--sock", sock, "-q"); r.code != 0 || r.stderr != "" {
		t.Fatalf("-q: exit %d, stderr %q", r.code, r.stderr)
	}
	reason.Store("")
	if r := dfget(t, "http://127.0.0.1:1/f", "-O", out, "--sock", sock); r.code != 0 || strings.Contains(r.stderr, "warning") {
		t.Fatalf("P2P download warned: %q", r.stderr)
	}
}

func TestPriorityFlag(t *testing.T) {
	for in, want := range map[string]int32{"LEVEL0": 0, "level3": 3, "6": 6, " Level2 ": 2} {
		o, err := parseArgs([]string{"http://o/x", "--priority", in})
		if err != nil || o.priority != want {
			t.Errorf("--priority %q: %v, %v; want %d", in, o, err, want)
		}
	}
	for _, in := range []string{"LEVEL7", "-1", "high", ""} {
		if _, err := parseArgs([]string{"http://o/x", "--priority", in}); err == nil {
			t.Errorf("--priority %q accepted", in)
		}
	}
}

func TestSelectedGlobs(t *testing.T) {
	o := &options{include: []string{"*.bin", "docs/*"}, exclude: []string{"skip.bin", "sub/*.tmp.bin"}}
	for rel, want := range map[string]bool{
		"a.bin": true, "sub/deep/a.bin": true, "docs/x.md": true, "docs/more/x.md": false,
		"x.md": false, "skip.bin": false, "sub/skip.bin": false, "sub/y.tmp.bin": false,
	} {
		if got := o.selected(rel); got != want {
			t.Errorf("selected(%q) = %v, want %v", rel, got, want)
		}
	}
	if !(&options{}).selected("anything/at/all") {
		t.Error("no globs: everything is selected")
	}
}

// TestRecursiveDirectWithoutDaemon: a listing is fetched file by file
// straight from the origin when no daemon answers; a 404 among them is
// reported in the summary and sets exit code 3.
func TestRecursiveDirectWithoutDaemon(t *testing.T) {
	files := map[string]string{"/d/a.txt": "alpha", "/d/s/b.txt": "beta"}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/d/":
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprint(w, `<a href="../">../</a><a href="a.txt">a.txt</a><a href="s/">s/</a><a href="gone.txt">gone.txt</a>`)
		case "/d/s/":
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprint(w, `<a href="../">../</a><a href="b.txt">b.txt</a>`)
		default:
			if c, ok := files[r.URL.Path]; ok {
				fmt.Fprint(w, c)
				return
			}
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	out := filepath.Join(t.TempDir(), "tree")
	r := dfget(t, "--recursive", srv.URL+"/d/", "-O", out, "--sock", noDaemon(t), "--exclude", "nothing")
	if r.code != exitNotFound || !strings.Contains(r.stderr, "downloaded 2 of 3 files") || !strings.Contains(r.stderr, "gone.txt") {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for p, c := range map[string]string{"a.txt": "alpha", "s/b.txt": "beta"} {
		if b, err := os.ReadFile(filepath.Join(out, p)); err != nil || string(b) != c {
			t.Errorf("%s: %q %v", p, b, err)
		}
	}
}
