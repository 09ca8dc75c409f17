package scheduler

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/identity"
)

// A Session is one peer's announce session in one task, without transport:
// the gRPC Announce handler runs one per stream, and a simulator drives them
// directly in virtual time. Open, Handle and Close do all their work
// synchronously under the scheduler's lock, start no goroutine and never
// sleep; every message they cause (to this peer or any other) has gone
// through the send functions when they return.
type Session struct {
	s      *Scheduler
	p      *peer // nil when the register was refused
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// InsecureContext returns ctx carrying the identity of explicit insecure
// mode, in which every caller is trusted as it claims (as on a server its
// operator runs without TLS). It is for in-process drivers such as a
// simulator, which may live outside this module and cannot build an
// identity themselves; a gRPC server never uses it.
func InsecureContext(ctx context.Context) context.Context {
	return identity.NewContext(ctx, identity.Identity{Insecure: true})
}

// errRefused ends a session whose register was refused with a Fail message:
// the stream itself ends normally.
var errRefused = errors.New("register refused")

// Open starts the session of the peer that sent reg, checking it exactly as
// the gRPC handler does: the caller's identity (identity.FromContext(ctx):
// a peer or seed certificate naming reg's host; explicit insecure mode trusts
// the claim), seed_request only from a seed, and the task spec
// (core.CheckSpec). An invalid or unauthorised register returns a gRPC status
// error and no session. A spec that does not hold is answered with a Fail
// message through send and a session that has already ended (Err nil).
//
// send queues one message for the peer. It must not block nor call back
// into the Scheduler — it is called with the scheduler's lock held (a
// simulator queues the message and delivers it after the call returns) —
// and an error from it (a full buffer)
// drops the peer at the end of the current event. now is the current time
// on the scheduler's clock (WithClock). ctx bounds the session: when it is
// done the session counts as ended, and the caller still calls Close.
func (s *Scheduler) Open(ctx context.Context, reg *schedulerv1.Register, send func(*schedulerv1.SchedulerMessage) error, now time.Time) (*Session, error) {
	if reg == nil {
		return nil, status.Error(codes.InvalidArgument, "first message must be Register")
	}
	if err := validateRegister(reg); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := authorizeHost(ctx, reg.GetHost()); err != nil {
		return nil, err
	}
	if err := s.authorizeRegister(ctx, reg); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancelCause(ctx)
	sess := &Session{s: s, ctx: sctx, cancel: cancel}
	if err := checkSpec(reg.GetTask()); err != nil {
		// Refused, not registered: the peer may still fetch what it asked
		// for itself, but the scheduler sends nobody anywhere for it.
		s.m.specRefused.Inc()
		s.log.Warn("register refused: task spec does not hold", "task_id", reg.GetTask().GetTaskId(),
			"peer_id", reg.GetPeerId(), "host_id", reg.GetHost().GetId(), "err", err)
		_ = send(&schedulerv1.SchedulerMessage{Msg: &schedulerv1.SchedulerMessage_Fail{
			Fail: &schedulerv1.Fail{Reason: core.TaskRefused + err.Error()}}})
		cancel(errRefused)
		return sess, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		cancel(errShutdown)
		return nil, errShutdown
	}
	if sctx.Err() != nil {
		// The peer hung up already; registering it now could replace a
		// newer registration of the same id.
		return nil, status.FromContextError(sctx.Err()).Err()
	}
	sess.p = s.registerLocked(reg, &conn{send: send, cancel: cancel}, now)
	s.flushLocked(now)
	return sess, nil
}

// Handle applies one message from the peer at now. A message that breaks
// the protocol ends the session and is returned as a gRPC status error. A
// PeerFailed message ends the session normally (Err nil). Messages after
// the end are ignored.
func (ss *Session) Handle(m *schedulerv1.PeerMessage, now time.Time) error {
	if ss.p == nil {
		return nil
	}
	s := ss.s
	s.mu.Lock()
	err := s.handleLocked(ss.p, m, now)
	s.flushLocked(now)
	s.mu.Unlock()
	switch {
	case errors.Is(err, errPeerFinished):
		ss.cancel(errPeerFinished)
		return nil
	case err != nil:
		ss.cancel(err)
		return err
	}
	return nil
}

// Close removes the peer from its task, however its session ended (the
// stream closed, the peer vanished, the scheduler ended it). Its children
// get new parents at once. Close may be called more than once.
func (ss *Session) Close(now time.Time) {
	defer ss.cancel(nil)
	if ss.p == nil {
		return
	}
	s, p := ss.s, ss.p
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.state != stateLeft {
		if s.debug() {
			s.log.Debug("peer left", "task_id", p.task.id, "peer_id", p.id)
		}
		s.removeLocked(p, now)
		s.flushLocked(now)
	}
}

// Done is closed when the session ended: by the peer (PeerFailed, a
// protocol error), by the scheduler (replaced by a newer registration of the
// same peer ID, dropped after a failed send, shutting down) or by Open's ctx.
func (ss *Session) Done() <-chan struct{} { return ss.ctx.Done() }

// Err is the gRPC status the session's stream ends with: nil while it runs
// and after a normal end, else why the scheduler or the peer ended it.
func (ss *Session) Err() error {
	if ss.ctx.Err() == nil {
		return nil
	}
	return statusFromCause(ss.ctx)
}

// PeerID is the session's peer ID ("" when its register was refused).
func (ss *Session) PeerID() string {
	if ss.p == nil {
		return ""
	}
	return ss.p.id
}

// Announce serves one peer in one task for the life of the stream, through
// a Session: this goroutine sends what the session queues, a second one
// receives and hands the peer's messages to the session.
func (svc *service) Announce(stream schedulerv1.Scheduler_AnnounceServer) error {
	s := svc.s
	first, err := stream.Recv()
	if err != nil {
		return firstRecv(err)
	}
	out, send := sendQueue[*schedulerv1.SchedulerMessage](s.cfg.SendBuffer)
	sess, err := s.Open(stream.Context(), first.GetRegister(), send, s.now())
	if err != nil {
		return err
	}
	defer func() { sess.Close(s.now()) }()
	s.m.announceStreams.Inc()
	defer s.m.announceStreams.Dec()
	return pump(stream, out, func(m *schedulerv1.PeerMessage) error { return sess.Handle(m, s.now()) }, sess.Done(), sess.Err)
}

// errSendFull is a gRPC session's send buffer overflowing.
var errSendFull = errors.New("send buffer full")

// firstRecv is the status of a stream whose first message did not come: nil
// when the caller closed its side at once.
func firstRecv(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// sendQueue is a session's send buffer of n messages and its send
// function, which never blocks: a full buffer is errSendFull (the session
// then drops the slow receiver).
func sendQueue[Out any](n int) (chan Out, func(Out) error) {
	out := make(chan Out, n)
	return out, func(m Out) error {
		select {
		case out <- m:
			return nil
		default:
			return errSendFull
		}
	}
}

// pump runs a bidirectional stream for a session: a second goroutine hands
// every message received to handle, this one sends what the session queues
// on out, until the caller's side ends (its status: streamEnd) or the
// session does (done; what was queued before the end still goes out, as far
// as the buffer holds it, e.g. a Fail or the last parents).
func pump[In, Out any](stream interface {
	Recv() (In, error)
	Send(Out) error
}, out <-chan Out, handle func(In) error, done <-chan struct{}, sessErr func() error) error {
	recvDone := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err == nil {
				err = handle(m)
			}
			if err != nil {
				recvDone <- err
				return
			}
		}
	}()
	for {
		select {
		case m := <-out:
			if err := stream.Send(m); err != nil {
				return err
			}
		case err := <-recvDone:
			return streamEnd(err)
		case <-done:
			for {
				select {
				case m := <-out:
					if err := stream.Send(m); err != nil {
						return sessErr()
					}
				default:
					return sessErr()
				}
			}
		}
	}
}

// streamEnd turns the error that ended a peer's receive loop into the
// stream's status: nil for a peer that closed its side or finished.
func streamEnd(err error) error {
	switch {
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, errPeerFinished):
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.FromContextError(err).Err()
}

// A SeedSession is one seed host's session (the SeedTasks stream) without
// transport: it receives the tasks the scheduler wants seeded.
type SeedSession struct {
	s      *Scheduler
	sc     *seedConn
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// OpenSeed connects the seed host req names, which must be the caller's
// (a seed certificate; explicit insecure mode trusts the claim). send queues
// one task to seed; like a Session's it must not block, and an error from
// it drops the seed host. now is the scheduler clock's reading.
func (s *Scheduler) OpenSeed(ctx context.Context, req *schedulerv1.SeedTasksRequest, send func(*schedulerv1.SeedTask) error, now time.Time) (*SeedSession, error) {
	info := req.GetHost()
	if info.GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "seed tasks: host.id is empty")
	}
	if !identity.Allows(ctx, identity.RoleSeed) {
		return nil, status.Error(codes.PermissionDenied, "seed tasks: only a seed peer's certificate may open this stream")
	}
	if err := authorizeHost(ctx, info); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancelCause(ctx)
	sc := &seedConn{send: send, cancel: cancel}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		cancel(errShutdown)
		return nil, errShutdown
	}
	sc.host = s.hostLocked(info, now)
	if old := s.seeds[info.GetId()]; old != nil {
		old.dead = true
		old.cancel(errReplaced)
	}
	s.seeds[info.GetId()] = sc
	sc.host.seed = sc
	// A seed peer may unblock peers that were waiting without one.
	for _, t := range s.taskList {
		if len(t.waitList) > 0 {
			s.markDirty(t)
		}
	}
	s.flushLocked(now)
	s.log.Info("seed host connected", "host_id", info.GetId())
	return &SeedSession{s: s, sc: sc, ctx: sctx, cancel: cancel}, nil
}

// Done is closed when the seed session ended (replaced, dropped, shutdown,
// or OpenSeed's ctx done).
func (ss *SeedSession) Done() <-chan struct{} { return ss.ctx.Done() }

// Err is the gRPC status the seed stream ends with (see Session.Err).
func (ss *SeedSession) Err() error {
	if ss.ctx.Err() == nil {
		return nil
	}
	return statusFromCause(ss.ctx)
}

// Close forgets the seed host's session: tasks still waiting for its seed
// peer may trigger another seed or go to the origin. Close may be called
// more than once.
func (ss *SeedSession) Close(now time.Time) {
	defer ss.cancel(nil)
	s, sc := ss.s, ss.sc
	s.mu.Lock()
	defer s.mu.Unlock()
	sc.dead = true
	id := sc.host.id
	if s.seeds[id] != sc {
		return
	}
	delete(s.seeds, id)
	sc.host.seed = nil
	if sc.host.peers == 0 {
		sc.host.idleSince = now
	}
	for _, t := range s.taskList {
		if t.seedPhase == seedTriggered && t.seedHost == id {
			s.seedFailedLocked(t, id)
		}
	}
	s.flushLocked(now)
	s.log.Info("seed host disconnected", "host_id", id)
}

// SeedTasks keeps a seed host connected and pushes it the tasks to seed.
func (svc *service) SeedTasks(req *schedulerv1.SeedTasksRequest, stream schedulerv1.Scheduler_SeedTasksServer) error {
	s := svc.s
	out := make(chan *schedulerv1.SeedTask, s.cfg.SendBuffer)
	send := func(m *schedulerv1.SeedTask) error {
		select {
		case out <- m:
			return nil
		default:
			return errSendFull
		}
	}
	ss, err := s.OpenSeed(stream.Context(), req, send, s.now())
	if err != nil {
		return err
	}
	defer func() { ss.Close(s.now()) }()
	for {
		select {
		case m := <-out:
			if err := stream.Send(m); err != nil {
				return err
			}
		case <-ss.Done():
			return ss.Err()
		}
	}
}
