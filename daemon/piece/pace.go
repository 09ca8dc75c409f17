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

// pace counts the upload serving r in and sets the pacing rate of its
// connection, and of every other upload's, to the budget shared by the
// uploads in progress; the function it returns counts it out and gives the
// others its part. Uploads start and end at every piece, so each
// connection follows the count, and together they keep to the budget. Set
// only at each upload's own start, a piece begun alone kept the whole
// budget while a second one beside it took half (1.5 times the budget
// together, the queue the pacing is there to keep empty), and a piece
// begun beside another kept half after the other had ended (on a
// 2.5 Mbit/s uplink a 256 KiB piece takes about a second). Connections of
// other kinds than TCP are left alone.
func (s *Server) pace(r *http.Request) (done func()) {
	f := s.budget.Load()
	if f == nil || *f == nil {
		return func() {}
	}
	tc, ok := r.Context().Value(connKey{}).(*net.TCPConn)
	if !ok {
		return func() {}
	}
	s.pacedMu.Lock()
	if s.paced == nil {
		s.paced = map[*net.TCPConn]*pacedConn{}
	}
	pc := s.paced[tc]
	if pc == nil {
		pc = &pacedConn{}
		s.paced[tc] = pc
	}
	pc.uploads++
	s.repaceLocked((*f)())
	s.pacedMu.Unlock()
	return func() {
		s.pacedMu.Lock()
		if pc.uploads--; pc.uploads <= 0 {
			delete(s.paced, tc)
		}
		s.repaceLocked((*f)())
		s.pacedMu.Unlock()
	}
}

// pacedConn is a connection with uploads in progress whose rate pace sets.
type pacedConn struct {
	uploads int64
	rate    uint64 // the rate last set; 0 before the first
}

// repaceLocked sets every paced connection's rate to its part of budget
// (0: unpaced), skipping those already at it: on a host that is not paced
// (budget 0) every upload's start and end would otherwise cost a system
// call per upload in progress. s.pacedMu is held.
func (s *Server) repaceLocked(budget int64) {
	var n int64
	for _, pc := range s.paced {
		n += pc.uploads
	}
	for tc, pc := range s.paced {
		rate := ^uint64(0) // unpaced: the kernel's default
		if budget > 0 {
			rate = uint64(max(budget*pc.uploads/n, 1))
		}
		if rate == pc.rate {
			continue
		}
		if err := setPacing(tc, rate); err != nil {
			s.log.Debug("upload pacing not set", "remote", tc.RemoteAddr(), "err", err)
			continue
		}
		pc.rate = rate
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
