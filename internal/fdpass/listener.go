package fdpass

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// classifyTimeout bounds how long a new connection may take to send its
// first bytes before it is dropped.
const classifyTimeout = 10 * time.Second

// Listener wraps the daemon's unix socket listener: fd-passing connections
// are answered here (their files go to the Registry), every other connection
// is returned by Accept as a *Conn that knows its peer's credentials.
type Listener struct {
	ln    *net.UnixListener
	reg   *Registry
	log   *slog.Logger
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	err   error
	wg    sync.WaitGroup
}

// NewListener starts accepting on ln.
func NewListener(ln *net.UnixListener, reg *Registry, log *slog.Logger) *Listener {
	l := &Listener{ln: ln, reg: reg, log: log, conns: make(chan net.Conn), done: make(chan struct{})}
	l.wg.Add(1)
	go l.loop()
	return l
}

func (l *Listener) loop() {
	defer l.wg.Done()
	for {
		c, err := l.ln.AcceptUnix()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			l.closeWith(err)
			return
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.classify(c)
		}()
	}
}

// classify reads the connection's first bytes (with any files attached to
// them) and either serves an fd pass or hands the connection to Accept.
func (l *Listener) classify(c *net.UnixConn) {
	cred, err := PeerCred(c)
	if err != nil {
		l.log.Warn("local connection without credentials; closing it", "err", err)
		c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(classifyTimeout))
	buf := make([]byte, 512)
	oob := make([]byte, unix.CmsgSpace(MaxFiles*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	files, ferr := parseRights(oob[:oobn])
	if err != nil || n == 0 {
		closeFiles(files)
		c.Close()
		return
	}
	got := buf[:n]
	// A short first read: read until the magic is decided.
	for len(got) < len(Magic) && bytes.HasPrefix([]byte(Magic), got) {
		k, rerr := c.Read(buf[n:])
		if rerr != nil {
			closeFiles(files)
			c.Close()
			return
		}
		n += k
		got = buf[:n]
	}
	if !bytes.HasPrefix(got, []byte(Magic)) {
		closeFiles(files) // nothing but fd passing may carry files
		_ = c.SetReadDeadline(time.Time{})
		select {
		case l.conns <- &Conn{UnixConn: c, pre: slices.Clone(got), Cred: cred}:
		case <-l.done:
			c.Close()
		}
		return
	}
	defer c.Close()
	answer := func(format string, args ...any) {
		_ = c.SetWriteDeadline(time.Now().Add(classifyTimeout))
		_, _ = fmt.Fprintf(c, format+"\n", args...)
	}
	if ferr != nil || flags&unix.MSG_CTRUNC != 0 {
		closeFiles(files)
		answer("ERR bad ancillary data (at most %d files)", MaxFiles)
		return
	}
	line, ok := bytes.CutSuffix(got[len(Magic):], []byte("\n"))
	if !ok {
		closeFiles(files)
		answer("ERR the roles line must come in one message with the files")
		return
	}
	roles := strings.Split(string(line), ",")
	if err := checkRoles(roles, len(files)); err != nil {
		closeFiles(files)
		answer("ERR %v", err)
		return
	}
	fs := Files{}
	for i, r := range roles {
		fs[r] = files[i]
	}
	tok, err := l.reg.put(cred, fs)
	if err != nil {
		fs.Close()
		answer("ERR %v", err)
		return
	}
	answer("OK %s", tok)
}

func checkRoles(roles []string, nfiles int) error {
	if len(roles) != nfiles {
		return fmt.Errorf("%d roles for %d files", len(roles), nfiles)
	}
	if nfiles == 0 || nfiles > MaxFiles {
		return fmt.Errorf("%d files, want 1 to %d", nfiles, MaxFiles)
	}
	seen := map[string]bool{}
	for _, r := range roles {
		if !slices.Contains(validRoles, r) {
			return fmt.Errorf("unknown role %q", r)
		}
		if seen[r] {
			return fmt.Errorf("role %q twice", r)
		}
		seen[r] = true
	}
	return nil
}

// parseRights turns SCM_RIGHTS messages into files (closing anything else).
func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	var files []*os.File
	var bad error
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			bad = fmt.Errorf("parse control message: %w", err)
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), fmt.Sprintf("passed-fd-%d", fd)))
		}
	}
	return files, bad
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		_ = f.Close()
	}
}

// Accept returns the next connection that is not an fd pass.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		if l.err != nil {
			return nil, l.err
		}
		return nil, net.ErrClosed
	}
}

// Close stops accepting; connections being classified are dropped.
func (l *Listener) Close() error { return l.closeWith(nil) }

// closeWith closes once; cause (nil: closed by Close) is what Accept returns.
func (l *Listener) closeWith(cause error) error {
	var err error
	l.once.Do(func() {
		l.err = cause
		close(l.done)
		err = l.ln.Close()
	})
	return err
}

// Addr is the socket's address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Conn is a local API connection with its peer's credentials; it first
// returns the bytes the classification read.
type Conn struct {
	*net.UnixConn
	pre  []byte
	Cred Cred
}

func (c *Conn) Read(b []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(b, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.UnixConn.Read(b)
}

// AuthInfo is the gRPC auth info of a local API call: the caller's
// credentials from SO_PEERCRED.
type AuthInfo struct {
	credentials.CommonAuthInfo
	Cred Cred
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "unix-peercred" }

// Creds returns gRPC transport credentials for a server on a Listener: no
// encryption (the socket is local), the caller's SO_PEERCRED as auth info.
func Creds() credentials.TransportCredentials { return peerCreds{} }

type peerCreds struct{}

func (peerCreds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("fdpass credentials are for the server side")
}

func (peerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	var cred Cred
	switch x := c.(type) {
	case *Conn:
		cred = x.Cred
	case *net.UnixConn:
		var err error
		if cred, err = PeerCred(x); err != nil {
			return nil, nil, err
		}
	default:
		return nil, nil, fmt.Errorf("local API: %T is not a unix socket connection", c)
	}
	return c, AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}, Cred: cred}, nil
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peercred"}
}

func (p peerCreds) Clone() credentials.TransportCredentials { return p }

func (peerCreds) OverrideServerName(string) error { return nil }

// CallerCred returns the credentials of the local caller of ctx's gRPC call.
func CallerCred(ctx context.Context) (Cred, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Cred{}, false
	}
	ai, ok := p.AuthInfo.(AuthInfo)
	if !ok {
		return Cred{}, false
	}
	return ai.Cred, true
}
