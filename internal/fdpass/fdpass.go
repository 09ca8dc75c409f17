// Package fdpass lets a local client hand open files to the daemon over the
// daemon's unix socket, so that the daemon reads and writes with the rights
// the client had when it opened them, never with its own; and it tells the
// daemon who a local caller is (SO_PEERCRED).
//
// The protocol lives beside the gRPC API on the same socket. A connection
// whose first bytes are the magic "DFFD1 " is an fd-passing connection: the
// client sends, in one sendmsg, the magic, the comma-separated roles of the
// files ("out", "in", "src") and a newline, with the files attached as
// SCM_RIGHTS in the same order. The daemon answers one line, "OK <token>" or
// "ERR <reason>", and closes the connection. The token names the files for
// one later gRPC call (DownloadRequest.fd_token, ...) made by the same
// process (same pid and uid on both connections); it is used once and
// expires after a minute. Any other connection is handed to gRPC unchanged.
package fdpass

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Magic starts an fd-passing connection (gRPC's start with "PRI * HTTP/2.0").
const Magic = "DFFD1 "

// Roles of passed files.
const (
	// RoleOut is the file the daemon writes the content to.
	RoleOut = "out"
	// RoleIn is the file dfcache import reads.
	RoleIn = "in"
	// RoleSrc is the file a file:// URL names, opened by the caller.
	RoleSrc = "src"
)

// MaxFiles is the most files one token carries.
const MaxFiles = 3

var validRoles = []string{RoleOut, RoleIn, RoleSrc}

// Cred is who is at the other end of a unix socket connection, as the kernel
// recorded it when the connection was made.
type Cred struct {
	PID int32
	UID uint32
	GID uint32
}

func (c Cred) String() string { return fmt.Sprintf("pid %d uid %d gid %d", c.PID, c.UID, c.GID) }

// PeerCred returns the credentials of the process at the other end of c.
func PeerCred(c *net.UnixConn) (Cred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	var uc *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		uc, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	if serr != nil {
		return Cred{}, fmt.Errorf("peer credentials: SO_PEERCRED: %w", serr)
	}
	return Cred{PID: uc.Pid, UID: uc.Uid, GID: uc.Gid}, nil
}

// Send opens a connection to the daemon's socket, passes files (role →
// file) and returns the token that names them for the next call. The files
// stay open on the caller's side too.
func Send(ctx context.Context, sock string, files map[string]*os.File) (string, error) {
	if len(files) == 0 || len(files) > MaxFiles {
		return "", fmt.Errorf("pass files to daemon at %s: %d files, want 1 to %d", sock, len(files), MaxFiles)
	}
	roles := make([]string, 0, len(files))
	for r := range files {
		if !slices.Contains(validRoles, r) {
			return "", fmt.Errorf("pass files to daemon at %s: unknown role %q", sock, r)
		}
		roles = append(roles, r)
	}
	slices.Sort(roles)
	fds := make([]int, len(roles))
	for i, r := range roles {
		fds[i] = int(files[r].Fd())
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return "", fmt.Errorf("pass files to daemon at %s: %w", sock, err)
	}
	c := nc.(*net.UnixConn)
	defer c.Close()
	// The answer is immediate; a daemon that does not know the protocol
	// never answers.
	dl := time.Now().Add(5 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	_ = c.SetDeadline(dl)
	msg := []byte(Magic + strings.Join(roles, ",") + "\n")
	n, oobn, err := c.WriteMsgUnix(msg, unix.UnixRights(fds...), nil)
	if err != nil {
		return "", fmt.Errorf("pass files to daemon at %s: %w", sock, err)
	}
	if n != len(msg) || oobn == 0 {
		return "", fmt.Errorf("pass files to daemon at %s: short write", sock)
	}
	line, err := bufio.NewReaderSize(c, 256).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("pass files to daemon at %s: read answer: %w", sock, err)
	}
	line = strings.TrimSuffix(line, "\n")
	switch {
	case strings.HasPrefix(line, "OK "):
		return strings.TrimPrefix(line, "OK "), nil
	case strings.HasPrefix(line, "ERR "):
		return "", fmt.Errorf("pass files to daemon at %s: refused: %s", sock, strings.TrimPrefix(line, "ERR "))
	}
	return "", fmt.Errorf("pass files to daemon at %s: unexpected answer %q", sock, line)
}

// Files are the files one token names, by role. The receiver closes them.
type Files map[string]*os.File

// Close closes every file.
func (f Files) Close() {
	for _, x := range f {
		_ = x.Close()
	}
}

// Registry holds passed files until the call that names their token takes them.
type Registry struct {
	ttl     time.Duration
	now     func() time.Time
	mu      sync.Mutex
	entries map[string]*entry
}

type entry struct {
	cred    Cred
	files   Files
	expires time.Time
}

// DefaultTTL is how long passed files wait for their call.
const DefaultTTL = time.Minute

// MaxPending bounds the tokens waiting for their call, so that a local
// client cannot make the daemon hold descriptors without end.
const MaxPending = 1024

// NewRegistry returns an empty registry whose tokens live ttl (0: DefaultTTL).
func NewRegistry(ttl time.Duration) *Registry {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	return &Registry{ttl: ttl, now: time.Now, entries: map[string]*entry{}}
}

// Errors of Take.
var (
	ErrUnknownToken = errors.New("unknown or expired file token")
	ErrNotCaller    = errors.New("file token was passed by another process")
	ErrNoCred       = errors.New("caller's credentials unknown (not a local unix socket connection)")
)

// put stores files for cred and returns their token.
func (r *Registry) put(cred Cred, files Files) (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	tok := hex.EncodeToString(b[:])
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sweepLocked()
	if len(r.entries) >= MaxPending {
		return "", fmt.Errorf("too many passed files waiting for their call (%d)", MaxPending)
	}
	r.entries[tok] = &entry{cred: cred, files: files, expires: r.now().Add(r.ttl)}
	return tok, nil
}

func (r *Registry) sweepLocked() {
	now := r.now()
	for k, e := range r.entries {
		if now.After(e.expires) {
			e.files.Close()
			delete(r.entries, k)
		}
	}
}

// Take returns the files of token if the caller of ctx's gRPC call (see
// Creds) is the process that passed them, and forgets the token. A token
// taken by another process is dropped too (its files closed): it leaked.
func (r *Registry) Take(ctx context.Context, token string) (Files, error) {
	cred, ok := CallerCred(ctx)
	if !ok {
		return nil, ErrNoCred
	}
	return r.take(cred, token)
}

func (r *Registry) take(cred Cred, token string) (Files, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sweepLocked()
	e, ok := r.entries[token]
	if !ok {
		return nil, ErrUnknownToken
	}
	delete(r.entries, token)
	if e.cred.PID != cred.PID || e.cred.UID != cred.UID {
		e.files.Close()
		return nil, fmt.Errorf("%w (passed by %s, used by %s)", ErrNotCaller, e.cred, cred)
	}
	return e.files, nil
}

// Pending reports how many tokens wait for their call.
func (r *Registry) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.entries)
}

// Close drops every pending token and closes its files.
func (r *Registry) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, e := range r.entries {
		e.files.Close()
		delete(r.entries, k)
	}
}
