package fdpass

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// serve starts a Listener on a fresh socket and returns its path, the
// registry and the connections it hands on (as gRPC would get them).
func serve(t *testing.T) (string, *Registry, *Listener) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	reg := NewRegistry(0)
	l := NewListener(ln, reg, slog.New(slog.DiscardHandler))
	t.Cleanup(func() { l.Close(); reg.Close() })
	return sock, reg, l
}

func self() Cred {
	return Cred{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
}

func TestPassAndTake(t *testing.T) {
	sock, reg, _ := serve(t)
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	if err := os.WriteFile(in, []byte("secret bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	fin, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer fin.Close()
	fout, err := os.Create(filepath.Join(dir, "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer fout.Close()
	tok, err := Send(context.Background(), sock, map[string]*os.File{RoleIn: fin, RoleOut: fout})
	if err != nil {
		t.Fatal(err)
	}
	if reg.Pending() != 1 {
		t.Fatalf("pending %d, want 1", reg.Pending())
	}
	fs, err := reg.take(self(), tok)
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	// The received descriptors are the same open files.
	b, err := io.ReadAll(fs[RoleIn])
	if err != nil || string(b) != "secret bytes" {
		t.Fatalf("read passed in: %q %v", b, err)
	}
	if _, err := fs[RoleOut].WriteString("written by the receiver"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(fout.Name())
	if string(got) != "written by the receiver" {
		t.Fatalf("out holds %q", got)
	}
	// Used once.
	if _, err := reg.take(self(), tok); !errors.Is(err, ErrUnknownToken) {
		t.Fatalf("second take: %v, want ErrUnknownToken", err)
	}
}

func TestTakeByAnotherProcessFails(t *testing.T) {
	sock, reg, _ := serve(t)
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tok, err := Send(context.Background(), sock, map[string]*os.File{RoleSrc: f})
	if err != nil {
		t.Fatal(err)
	}
	other := self()
	other.PID++
	if _, err := reg.take(other, tok); !errors.Is(err, ErrNotCaller) {
		t.Fatalf("take by another pid: %v, want ErrNotCaller", err)
	}
	// A leaked token is dropped: not even the passer may use it now.
	if _, err := reg.take(self(), tok); !errors.Is(err, ErrUnknownToken) {
		t.Fatalf("take after a leak: %v, want ErrUnknownToken", err)
	}
	// No gRPC peer in the context: no credentials.
	if _, err := reg.Take(context.Background(), "x"); !errors.Is(err, ErrNoCred) {
		t.Fatalf("Take without peer: %v, want ErrNoCred", err)
	}
}

func TestTokenExpires(t *testing.T) {
	reg := NewRegistry(time.Minute)
	now := time.Unix(1000, 0)
	reg.now = func() time.Time { return now }
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := reg.put(self(), Files{RoleIn: f})
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Minute)
	if _, err := reg.take(self(), tok); !errors.Is(err, ErrUnknownToken) {
		t.Fatalf("expired token: %v, want ErrUnknownToken", err)
	}
	// Its file was closed by the sweep.
	if _, err := f.Stat(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("expired file still open: %v", err)
	}
}

// raw sends msg with fds on a fresh connection and returns the answer line.
func raw(t *testing.T, sock, msg string, fds ...int) string {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix([]byte(msg), oob, nil); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(c)
	return strings.TrimSpace(string(b))
}

func TestBadPasses(t *testing.T) {
	sock, reg, _ := serve(t)
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	for _, tc := range []struct{ name, msg string }{
		{"no files", Magic + "out\n"},
		{"unknown role", Magic + "etc\n"},
		{"role twice", Magic + "out,out\n"},
		{"more roles than files", Magic + "out,in\n"},
		{"no newline", Magic + "out"},
	} {
		var fds []int
		if tc.name != "no files" {
			fds = []int{fd}
			if tc.name == "role twice" {
				fds = []int{fd, fd}
			}
		}
		if ans := raw(t, sock, tc.msg, fds...); !strings.HasPrefix(ans, "ERR ") {
			t.Errorf("%s: answer %q, want ERR", tc.name, ans)
		}
	}
	if reg.Pending() != 0 {
		t.Fatalf("bad passes left %d tokens", reg.Pending())
	}
	// The client side refuses nonsense before sending.
	if _, err := Send(context.Background(), sock, nil); err == nil {
		t.Error("Send of no files succeeded")
	}
	if _, err := Send(context.Background(), sock, map[string]*os.File{"etc": f}); err == nil {
		t.Error("Send with an unknown role succeeded")
	}
	if _, err := Send(context.Background(), filepath.Join(t.TempDir(), "none.sock"), map[string]*os.File{RoleOut: f}); err == nil {
		t.Error("Send to a missing socket succeeded")
	}
}

func TestOtherConnectionsPassThroughWithCred(t *testing.T) {
	sock, _, l := serve(t)
	got := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			got <- c
		}
	}()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	if _, err := c.Write([]byte(preface)); err != nil {
		t.Fatal(err)
	}
	var sc net.Conn
	select {
	case sc = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("connection not handed on")
	}
	defer sc.Close()
	pc, ok := sc.(*Conn)
	if !ok {
		t.Fatalf("accepted %T, want *Conn", sc)
	}
	if pc.Cred != self() {
		t.Fatalf("cred %v, want %v", pc.Cred, self())
	}
	b := make([]byte, len(preface))
	if _, err := io.ReadFull(sc, b); err != nil || string(b) != preface {
		t.Fatalf("read %q %v, want the preface back", b, err)
	}
	_, ai, err := Creds().ServerHandshake(sc)
	if err != nil {
		t.Fatal(err)
	}
	if ai.(AuthInfo).Cred != self() {
		t.Fatalf("auth info %v", ai)
	}
	// A connection that is not a unix socket has no credentials.
	a, b2 := net.Pipe()
	defer a.Close()
	defer b2.Close()
	if _, _, err := Creds().ServerHandshake(a); err == nil {
		t.Fatal("handshake over a pipe succeeded")
	}
}
