package piece

import (
	"context"
	"net"
	"net/http"

	"golang.org/x/sys/unix"
)

// Pacing of uploads on a link much slower up than down
// (core.UsableUplink). Such a host's uploads, sent as fast as TCP may,
// keep its uplink's buffer full, and the ACKs of its own download wait
// behind them: the download collapses to a fraction of the downlink. The
// kernel paces each upload connection instead (SO_MAX_PACING_RATE: its
// packets leave evenly spaced), at the budget shared by the uploads in
// progress, so the buffer stays near empty and the ACKs pass.

type connKey struct{}

// ConnContext keeps each connection in its requests' context, for pacing;
// set it as the upload http.Server's ConnContext.
func (s *Server) ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// SetPacing sets how the upload budget is found: budget returns the bytes/s
// all uploads together may take now (0: no pacing). nil turns pacing off.
func (s *Server) SetPacing(budget func() int64) { s.budget.Store(&budget) }

// pace sets the pacing rate of the connection serving r to the budget
// shared by the uploads in progress (this one counted in active). It is set
// again at every piece, so a connection follows the count as uploads start
// and end. Connections of other kinds than TCP are left alone.
func (s *Server) pace(r *http.Request, active int64) {
	f := s.budget.Load()
	if f == nil || *f == nil {
		return
	}
	budget := (*f)()
	tc, ok := r.Context().Value(connKey{}).(*net.TCPConn)
	if !ok {
		return
	}
	rate := ^uint64(0) // unpaced: the kernel's default
	if budget > 0 {
		rate = uint64(max(budget/max(active, 1), 1))
	}
	if err := setPacing(tc, rate); err != nil {
		s.log.Debug("upload pacing not set", "remote", r.RemoteAddr, "err", err)
	}
}

func setPacing(tc *net.TCPConn, rate uint64) error {
	rc, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE, rate)
	}); err != nil {
		return err
	}
	return serr
}
