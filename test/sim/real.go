package sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	schedulerv1 "github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/scheduler"
)

// realSched drives the real scheduler (package scheduler) through its
// transport-free sessions, on the simulator's virtual clock and seeded
// randomness. Callers are trusted as they claim (explicit insecure mode):
// the simulator is not a security test.
type realSched struct {
	s     *scheduler.Scheduler
	clock time.Time
	ctx   context.Context
	seed  *scheduler.SeedSession
}

func newRealScheduler(env SchedulerEnv) (Scheduler, error) {
	cfg := scheduler.DefaultConfig()
	if env.Config != nil {
		cfg = *env.Config
	}
	rs := &realSched{clock: epoch, ctx: scheduler.InsecureContext(context.Background())}
	var log *slog.Logger
	if os.Getenv("SIM_SCHEDULER_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug,
			ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
				if a.Key == slog.TimeKey {
					return slog.Float64("t", rs.clock.Sub(epoch).Seconds())
				}
				return a
			}}))
	}
	s, err := scheduler.New(cfg, log, prometheus.NewRegistry(),
		scheduler.WithClock(func() time.Time { return rs.clock }),
		scheduler.WithRand(mrand.New(mrand.NewPCG(env.Seed, env.Seed^0x5c4ed))))
	if err != nil {
		return nil, fmt.Errorf("real scheduler: %w", err)
	}
	rs.s = s
	if env.SeedHost != nil {
		ss, err := s.OpenSeed(rs.ctx, &schedulerv1.SeedTasksRequest{Host: env.SeedHost}, func(t *schedulerv1.SeedTask) error {
			env.TriggerSeed(t.GetTask())
			return nil
		}, rs.clock)
		if err != nil {
			return nil, fmt.Errorf("real scheduler: seed session: %w", err)
		}
		rs.seed = ss
	}
	return rs, nil
}

func (rs *realSched) Tick(now time.Time) {
	rs.clock = now
	rs.s.Tick(now)
}

func (rs *realSched) Open(now time.Time, peerID string, host *schedulerv1.Host, deliver func(*schedulerv1.SchedulerMessage)) (Session, error) {
	return &realSess{rs: rs, host: host, deliver: deliver}, nil
}

// realSess opens the scheduler's session with the peer's first message,
// which must be its Register, as on the gRPC stream.
type realSess struct {
	rs      *realSched
	host    *schedulerv1.Host
	deliver func(*schedulerv1.SchedulerMessage)
	sess    *scheduler.Session
	closed  bool
}

func (r *realSess) Send(now time.Time, m *schedulerv1.PeerMessage) error {
	if r.closed {
		return errSessionClosed
	}
	r.rs.clock = now
	if r.sess == nil {
		reg := m.GetRegister()
		if reg == nil {
			return errors.New("first message is not Register")
		}
		if reg.Host == nil {
			reg.Host = r.host
		}
		sess, err := r.rs.s.Open(r.rs.ctx, reg, func(sm *schedulerv1.SchedulerMessage) error {
			r.deliver(sm)
			return nil
		}, now)
		if err != nil {
			return fmt.Errorf("register: %w", err)
		}
		r.sess = sess
		return nil
	}
	select {
	case <-r.sess.Done():
		return errSessionClosed
	default:
	}
	return r.sess.Handle(m, now)
}

func (r *realSess) Close(now time.Time) {
	if r.closed {
		return
	}
	r.closed = true
	r.rs.clock = now
	if r.sess != nil {
		r.sess.Close(now)
	}
}
