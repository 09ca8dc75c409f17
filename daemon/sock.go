package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
)

// DefaultSockGroup is the group allowed to use the local API by default.
const DefaultSockGroup = "damselfly"

// sockAccess is who may connect to the local API socket: mode 0660 and
// group gid, or mode 0600 (root only) when gid is -1.
type sockAccess struct {
	gid  int
	mode os.FileMode
}

// resolveSockGroup turns sock_group into the socket's group and mode. A
// missing default group is not an error: the socket is then root-only, and
// the daemon says so in its log.
func resolveSockGroup(group string, log *slog.Logger) (sockAccess, error) {
	if group == "" {
		return sockAccess{gid: -1, mode: 0o600}, nil
	}
	if n, err := strconv.Atoi(group); err == nil {
		if n < 0 {
			return sockAccess{}, fmt.Errorf("sock_group %q: a gid must be ≥ 0", group)
		}
		return sockAccess{gid: n, mode: 0o660}, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		var unknown user.UnknownGroupError
		if errors.As(err, &unknown) && group == DefaultSockGroup {
			log.Warn("the local API's group does not exist: only root may use the daemon socket; create the group (groupadd damselfly) or set sock_group",
				"sock_group", group)
			return sockAccess{gid: -1, mode: 0o600}, nil
		}
		return sockAccess{}, fmt.Errorf("sock_group %q: %w", group, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return sockAccess{}, fmt.Errorf("sock_group %q: gid %q: %w", group, g.Gid, err)
	}
	return sockAccess{gid: gid, mode: 0o660}, nil
}

// listenSock creates the local API socket with its final owner and mode
// before it appears at path: it is made in a private directory next to
// path and renamed into place, so no one can connect while it is still
// open to more users than it should be.
func listenSock(ctx context.Context, path string, acc sockAccess) (*net.UnixListener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create socket dir %s: %w", dir, err)
	}
	priv, err := os.MkdirTemp(dir, ".sock-")
	if err != nil {
		return nil, fmt.Errorf("create socket in %s: %w", dir, err)
	}
	defer os.RemoveAll(priv)
	tmp := filepath.Join(priv, "s")
	lc := net.ListenConfig{}
	l, err := lc.Listen(ctx, "unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	fail := func(err error) (*net.UnixListener, error) {
		ul.Close()
		return nil, err
	}
	if acc.gid >= 0 {
		if err := os.Chown(tmp, -1, acc.gid); err != nil {
			return fail(fmt.Errorf("give socket %s to gid %d: %w", path, acc.gid, err))
		}
	}
	if err := os.Chmod(tmp, acc.mode); err != nil {
		return fail(fmt.Errorf("chmod socket %s: %w", path, err))
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("move socket into %s: %w", path, err))
	}
	return ul, nil
}
