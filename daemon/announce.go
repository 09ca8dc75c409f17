package daemon

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
)

// announce opens a fresh Announce stream and registers, with the task's
// scheduler or, when it is unreachable, the next one in hash order.
func (c *conductor) announce(ctx context.Context) error {
	c.closeStream()
	spec := c.req.spec
	reg := &schedulerv1.Register{
		PeerId:            c.peerID,
		Host:              c.d.Host(),
		Task:              spec,
		Have:              c.task.Pieces(),
		DisableBackSource: c.req.disableBackSource || c.cache,
		SeedRequest:       c.req.seed && !c.cache,
		Imported:          c.cache && c.task.Complete(),
		OriginVerified:    c.req.verified,
		Priority:          c.req.priority,
	}
	cands := c.d.schedulersFor(c.id)
	if len(cands) == 0 {
		return errNoScheduler
	}
	var errs []error
	for _, sc := range cands {
		sctx, cancel := context.WithCancel(ctx)
		stream, err := sc.client.Announce(sctx)
		if err == nil {
			err = stream.Send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Register{Register: reg}})
		}
		if err != nil {
			cancel()
			errs = append(errs, fmt.Errorf("announce to scheduler %s: %w", sc.addr, err))
			continue
		}
		c.listen(sctx, stream, cancel)
		c.schedAddr = sc.addr
		return nil
	}
	return errors.Join(errs...)
}

// listen makes stream the conductor's and forwards what it receives.
func (c *conductor) listen(sctx context.Context, stream grpc.BidiStreamingClient[schedulerv1.PeerMessage, schedulerv1.SchedulerMessage], cancel context.CancelFunc) {
	c.stream, c.streamCancel = stream, cancel
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				c.post(sctx, evSchedErr{err})
				return
			}
			if !c.post(sctx, evSched{m}) {
				return
			}
		}
	}()
}

func (c *conductor) post(ctx context.Context, ev any) bool {
	select {
	case c.events <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

// endStream ends the stream gracefully: it half-closes it and waits, at
// most d, for the scheduler to end it too, before closeStream cancels it.
// Cancelling at once may drop what was sent last and still sits in the
// transport (the final pieces' digests, PeerDone): the scheduler then never
// learns the last digests, and every peer after this one stalls on those
// pieces until its swarm timeout sends it to the origin.
func (c *conductor) endStream(ctx context.Context, d time.Duration) {
	if c.stream == nil {
		return
	}
	_ = c.stream.CloseSend()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for done := false; !done; {
		select {
		case ev := <-c.events:
			_, done = ev.(evSchedErr) // the scheduler ended it (EOF)
		case <-timer.C:
			done = true
		case <-ctx.Done():
			done = true
		}
	}
	c.closeStream()
}

func (c *conductor) closeStream() {
	if c.streamCancel != nil {
		if c.stream != nil {
			_ = c.stream.CloseSend()
		}
		c.streamCancel()
	}
	c.stream, c.streamCancel, c.schedAddr = nil, nil, ""
}

func (c *conductor) send(m *schedulerv1.PeerMessage) {
	if c.stream == nil {
		return
	}
	c.sendMu.Lock()
	err := c.stream.Send(m)
	c.sendMu.Unlock()
	if err != nil {
		c.log.Debug("send to scheduler failed", "err", err)
	}
}

// onAccess keeps a private task's key (for the upload port to check
// children's tokens) and this peer's own token (for its parents).
func (c *conductor) onAccess(a *schedulerv1.PieceAccess) {
	if len(a.GetKey()) > 0 {
		c.d.setTaskKey(c.id, a.GetKey())
	}
	if a.GetToken() != "" {
		c.token.Store(a.GetToken())
	}
}

func (c *conductor) pieceToken() string {
	s, _ := c.token.Load().(string)
	return s
}

// reconnectDelay returns a random delay in [d/2, d): the jitter that keeps
// the re-registrations of many cached tasks on many daemons, after a
// scheduler restart, from arriving in step.
func reconnectDelay(r *rand.Rand, d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + time.Duration(r.Int64N(int64(d/2)))
}

// serve keeps a complete task announced so the scheduler can hand this
// daemon out as a parent; it re-registers when the stream breaks (e.g. the
// scheduler restarted) or the task's scheduler changes (the hash ring), until
// ctx ends or the task leaves the cache. Every re-registration carries the
// task's shape and piece digests, so that a scheduler that does not know the
// task can trust them by its rules (a seed host, a content digest, two hosts
// agreeing) instead of leaving the task's next peers without digests.
// Re-registrations wait a random delay first (reconnectDelay): after a
// scheduler restart, thousands of streams must not come back in step.
func (c *conductor) serve(ctx context.Context) {
	backoff := 500 * time.Millisecond
	var wait time.Duration // before the next re-announce; 0 on the first
	var announced time.Time
	for ctx.Err() == nil {
		if t, ok := c.d.store.Get(c.id); !ok || t != c.task {
			return // deleted (perhaps already imported or fetched anew)
		}
		if c.stream == nil {
			if wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
			announced = time.Now()
			if err := c.announce(ctx); err != nil {
				c.log.Debug("re-announce failed", "err", err)
				wait = reconnectDelay(c.rnd, backoff)
				backoff = min(2*backoff, 30*time.Second)
				continue
			}
			c.sendSource()
			l, _ := c.task.Shape()
			c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: l}}})
		}
		select {
		case <-ctx.Done():
			return
		case <-c.d.ringChanged():
			// The scheduler list changed: when this task's home is another
			// scheduler now, register there (the old one forgets us).
			if home := c.d.schedulersFor(c.id); len(home) > 0 && home[0].addr != c.schedAddr {
				c.log.Info("task moved to another scheduler; re-announcing", "scheduler", home[0].addr)
				c.closeStream()
				wait = reconnectDelay(c.rnd, time.Second)
			}
		case ev := <-c.events:
			switch e := ev.(type) {
			case evSchedErr:
				c.closeStream()
				wait = reconnectDelay(c.rnd, backoff)
				if time.Since(announced) < time.Second {
					// Ended at once (refused, say): do not hammer the
					// scheduler; back off further each time. A stream that
					// lived a while (the scheduler restarted) comes back
					// after the first, jittered, delay.
					c.log.Debug("announce stream ended at once; backing off", "err", e.err, "backoff", backoff)
					backoff = min(2*backoff, 30*time.Second)
				}
			case evSched:
				if a := e.m.GetAccess(); a != nil {
					c.onAccess(a)
				}
				if f := e.m.GetFail(); f != nil && strings.HasPrefix(f.GetReason(), core.TaskRefused) {
					// The scheduler will not have this task (its spec does
					// not hold there): asking again changes nothing.
					c.log.Warn("scheduler refused the task; no longer announcing it", "reason", f.GetReason())
					c.closeStream()
					return
				}
				backoff = 500 * time.Millisecond
			default:
				backoff = 500 * time.Millisecond
			}
		case <-c.task.Changed():
			// task deleted or changed: loop re-checks the store
		}
	}
}

// sendSource tells the scheduler the task's shape and piece digests: as
// the source of a dfcache entry (it registered as imported), or as a holder
// re-announcing a complete task (a claim the scheduler trusts only by its
// rules; see docs/architecture.md, "Scheduler restarts"). origin_on_host
// repeats what this conductor's own origin fetch found, so that a
// restarted scheduler goes on sparing the origin's uplink; a task this
// daemon got from peers, imported or reloaded from its cache has no origin
// answer behind it and says false.
func (c *conductor) sendSource() {
	m := c.task.Meta()
	c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Meta{Meta: &schedulerv1.TaskMeta{
		ContentLength: m.ContentLength, PieceSize: m.PieceSize, OriginOnHost: c.originOnHost.Load()}}})
	var batch []*schedulerv1.PieceResult
	for _, n := range m.Pieces {
		if int(n) >= len(m.PieceDigests) {
			continue
		}
		_, size := core.PieceRange(n, m.ContentLength, m.PieceSize)
		batch = append(batch, &schedulerv1.PieceResult{Number: n, Digest: m.PieceDigests[n], Length: uint32(size)})
		if len(batch) == 1024 {
			c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Pieces{Pieces: &schedulerv1.PiecesDone{Pieces: batch}}})
			batch = nil
		}
	}
	if len(batch) > 0 {
		c.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Pieces{Pieces: &schedulerv1.PiecesDone{Pieces: batch}}})
	}
}
