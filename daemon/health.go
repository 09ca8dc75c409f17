package daemon

import (
	"context"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	"github.com/damselfly-io/damselfly/internal/obs"
)

// schedulerGrace is how long a daemon waits at start for a scheduler to
// answer before it says that none does.
const schedulerGrace = 5 * time.Second

// watchScheduler follows one scheduler connection's state: Ready means the
// scheduler is reachable, TransientFailure that it is not. An idle
// connection (after a lost one, or idle for long) is asked to connect, so
// a scheduler that went away is noticed without waiting for a download.
func (d *Daemon) watchScheduler(ctx context.Context, addr string, conn *grpc.ClientConn) {
	for {
		st := conn.GetState()
		switch st {
		case connectivity.Idle:
			conn.Connect()
		case connectivity.Ready:
			d.setSchedulerUp(addr, true)
		case connectivity.TransientFailure:
			d.setSchedulerUp(addr, false)
		case connectivity.Shutdown:
			return
		}
		if !conn.WaitForStateChange(ctx, st) {
			return
		}
	}
}

func (d *Daemon) setSchedulerUp(addr string, up bool) {
	s := &d.scheds
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.Contains(s.addrs, addr) {
		return
	}
	if s.up == nil {
		s.up = map[string]bool{}
	}
	was, known := s.up[addr]
	s.up[addr] = up
	d.schedulersChangedLocked(false)
	if !known || was != up {
		// The inventory's tasks fall back to the next scheduler while
		// their home is unreachable, and go home when it is back.
		d.inv.kick()
	}
}

// schedulersChangedLocked recomputes whether any scheduler is reachable,
// sets the gauge and logs a change. Before the start grace ends, an
// unknown state is not yet "down" unless every scheduler was tried.
func (d *Daemon) schedulersChangedLocked(graceOver bool) {
	s := &d.scheds
	if !s.watching {
		return
	}
	anyUp, allKnown := false, true
	for _, a := range s.addrs {
		up, known := s.up[a]
		anyUp = anyUp || up
		allKnown = allKnown && known
	}
	var down bool
	switch {
	case anyUp:
		down = false
	case allKnown || graceOver || s.judged:
		down = true
	default:
		return // still connecting at start
	}
	if s.judged && down == s.down {
		return
	}
	first := !s.judged
	s.judged, s.down = true, down
	if d.metrics.schedulerUp != nil {
		if down {
			d.metrics.schedulerUp.Set(0)
		} else {
			d.metrics.schedulerUp.Set(1)
		}
	}
	switch {
	case down && len(s.addrs) == 0:
		d.log.Warn("no scheduler known: downloads go straight to the origin until the manager names one")
	case down:
		d.log.Warn("no scheduler reachable: downloads go straight to the origin until one answers", "schedulers", strings.Join(s.addrs, ","))
	case !first:
		d.log.Info("scheduler reachable again: downloads use the swarm", "schedulers", strings.Join(s.addrs, ","))
	}
}

// startWatching turns on the scheduler watch for the connections made so
// far and the ones setSchedulers makes later, and judges the state once the
// start grace is over.
func (d *Daemon) startWatching(ctx context.Context) {
	s := &d.scheds
	s.mu.Lock()
	s.watching, s.watchCtx = true, ctx
	for a, c := range s.conns {
		go d.watchScheduler(ctx, a, c)
	}
	d.schedulersChangedLocked(false)
	s.mu.Unlock()
	go func() {
		t := time.NewTimer(schedulerGrace)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
			s.mu.Lock()
			d.schedulersChangedLocked(true)
			s.mu.Unlock()
		}
	}()
}

// Health is the daemon's /healthy answer: degraded (still 200) when it is
// configured for P2P and no scheduler is reachable, because downloads then
// fall back to the origin and still work.
func (d *Daemon) Health() obs.Health {
	if !d.p2p() {
		return obs.Health{Status: obs.StatusOK}
	}
	s := &d.scheds
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.down {
		return obs.Health{Status: obs.StatusOK}
	}
	why := "no scheduler known (the manager named none): downloads go to the origin"
	if len(s.addrs) > 0 {
		why = "no scheduler reachable (" + strings.Join(s.addrs, ", ") + "): downloads go to the origin"
	}
	return obs.Health{Status: obs.StatusDegraded, Reasons: []string{why}}
}
