package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/damselfly-io/damselfly/api/managerv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/client"
	"github.com/damselfly-io/damselfly/internal/config"
	"github.com/damselfly-io/damselfly/internal/identity"
	"github.com/damselfly-io/damselfly/internal/pki"
)

// schedulersFile keeps the manager's last answer, so that a daemon restarted
// while the manager is down still finds its schedulers.
const schedulersFile = "schedulers.json"

// errNoScheduler: P2P is configured but no scheduler is known right now.
var errNoScheduler = errors.New("no scheduler known")

// schedSet is the schedulers the daemon may use: the static --scheduler, or
// the list the manager gives. Each task goes to one of them by rendezvous
// (consistent) hashing, so every daemon sends a task to the same scheduler
// and a scheduler joining or leaving moves only its share of tasks.
type schedSet struct {
	mu    sync.Mutex
	addrs []string
	conns map[string]*grpc.ClientConn
	// seed loops by scheduler address (seed peers hold a SeedTasks stream
	// to every scheduler that may trigger them)
	seedLoops map[string]context.CancelFunc
	seedWG    sync.WaitGroup

	// Reachability (health.go): watching is set by Run; up holds each
	// scheduler's last known state; down is the verdict last reported
	// (judged once a verdict was reached).
	watching bool
	watchCtx context.Context
	up       map[string]bool
	judged   bool
	down     bool
	// changed is closed (and replaced) whenever addrs changes: the cached
	// tasks' announcers then check whether their task moved (the hash ring).
	changed chan struct{}
}

// ringChanged returns a channel closed at the next change of the scheduler
// list.
func (d *Daemon) ringChanged() <-chan struct{} {
	s := &d.scheds
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.changed == nil {
		s.changed = make(chan struct{})
	}
	return s.changed
}

type schedTarget struct {
	addr   string
	client schedulerv1.SchedulerClient
}

// p2p reports whether the daemon is configured to use schedulers at all.
func (d *Daemon) p2p() bool { return d.cfg.Scheduler != "" || d.cfg.Manager != "" }

// schedulersFor returns the schedulers for a task, best first: the first is
// the task's home, the others are fallbacks when it is unreachable.
func (d *Daemon) schedulersFor(taskID string) []schedTarget {
	s := &d.scheds
	s.mu.Lock()
	defer s.mu.Unlock()
	type scored struct {
		t     schedTarget
		score uint64
	}
	out := make([]scored, 0, len(s.addrs))
	for _, a := range s.addrs {
		out = append(out, scored{schedTarget{a, schedulerv1.NewSchedulerClient(s.conns[a])}, ringScore(taskID, a)})
	}
	slices.SortFunc(out, func(a, b scored) int {
		switch {
		case a.score > b.score:
			return -1
		case a.score < b.score:
			return 1
		}
		return 0
	})
	ts := make([]schedTarget, len(out))
	for i, o := range out {
		ts[i] = o.t
	}
	return ts
}

// ringScore is scheduler addr's rendezvous score for task id: the highest
// is the task's home.
func ringScore(id, addr string) uint64 {
	h := sha256.Sum256([]byte(id + "\x00" + addr))
	return binary.BigEndian.Uint64(h[:8])
}

func (d *Daemon) dialScheduler(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr,
		pki.DialOption(d.creds, identity.RoleScheduler),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
}

// setSchedulers replaces the scheduler list (keeping connections to the
// schedulers that stay) and, on a seed peer, the SeedTasks streams.
func (d *Daemon) setSchedulers(ctx context.Context, addrs []string) error {
	addrs = slices.Clone(addrs)
	slices.Sort(addrs)
	addrs = slices.Compact(addrs)
	s := &d.scheds
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Equal(addrs, s.addrs) {
		return nil
	}
	if s.conns == nil {
		s.conns = map[string]*grpc.ClientConn{}
		s.seedLoops = map[string]context.CancelFunc{}
	}
	var errs []error
	keep := addrs[:0:0]
	for _, a := range addrs {
		if s.conns[a] == nil {
			c, err := d.dialScheduler(a)
			if err != nil {
				errs = append(errs, fmt.Errorf("scheduler client for %s: %w", a, err))
				continue
			}
			s.conns[a] = c
			if s.watching {
				go d.watchScheduler(s.watchCtx, a, c)
			}
		}
		keep = append(keep, a)
	}
	for a, c := range s.conns {
		if !slices.Contains(keep, a) {
			if cancel := s.seedLoops[a]; cancel != nil {
				cancel()
				delete(s.seedLoops, a)
			}
			c.Close()
			delete(s.conns, a)
			delete(s.up, a)
		}
	}
	if !slices.Equal(keep, s.addrs) && s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
	s.addrs = keep
	d.schedulersChangedLocked(false)
	if d.cfg.Seed {
		for _, a := range keep {
			if s.seedLoops[a] == nil {
				lctx, cancel := context.WithCancel(ctx)
				s.seedLoops[a] = cancel
				cl := schedulerv1.NewSchedulerClient(s.conns[a])
				s.seedWG.Add(1)
				go func() {
					defer s.seedWG.Done()
					d.seedLoop(lctx, cl)
				}()
			}
		}
	}
	d.log.Info("schedulers", "addrs", keep)
	return errors.Join(errs...)
}

// closeSchedulers stops the seed loops and closes the connections.
func (d *Daemon) closeSchedulers() {
	s := &d.scheds
	s.mu.Lock()
	for _, cancel := range s.seedLoops {
		cancel()
	}
	s.mu.Unlock()
	s.seedWG.Wait()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns, s.addrs, s.seedLoops = nil, nil, nil
	s.mu.Unlock()
}

type savedSchedulers struct {
	Schedulers []string `json:"schedulers"`
}

// fetchSchedulers asks the manager for this daemon's schedulers and keeps
// the answer on disk. It returns the refresh interval the manager wants.
func (d *Daemon) fetchSchedulers(ctx context.Context, m managerv1.ManagerClient) ([]string, time.Duration, error) {
	h := d.Host()
	cacheBytes, cacheTasks := d.store.Usage()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := m.ListSchedulers(cctx, &managerv1.ListSchedulersRequest{
		Hostname: h.GetHostname(), Ip: h.GetIp(), Idc: h.GetIdc(), Location: h.GetLocation(),
		HostId: h.GetId(), PeerPort: h.GetPeerPort(), UploadPort: h.GetUploadPort(), Seed: h.GetSeed(),
		CacheBytes: cacheBytes, CacheTasks: int32(cacheTasks),
	})
	if err != nil {
		return nil, 0, fmt.Errorf("ask the manager %s for schedulers: %w", d.cfg.Manager, err)
	}
	var addrs []string
	for _, s := range resp.GetSchedulers() {
		addrs = append(addrs, net.JoinHostPort(s.GetIp(), strconv.Itoa(int(s.GetPort()))))
	}
	b, _ := json.Marshal(savedSchedulers{Schedulers: addrs})
	tmp := filepath.Join(d.cfg.DataDir, schedulersFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err == nil {
		_ = os.Rename(tmp, filepath.Join(d.cfg.DataDir, schedulersFile))
	}
	return addrs, time.Duration(resp.GetRefreshIntervalMs()) * time.Millisecond, nil
}

func (d *Daemon) savedSchedulers() []string {
	b, err := os.ReadFile(filepath.Join(d.cfg.DataDir, schedulersFile))
	if err != nil {
		return nil
	}
	var s savedSchedulers
	if json.Unmarshal(b, &s) != nil {
		return nil
	}
	return s.Schedulers
}

// withFallback is the manager's list, or the static scheduler when the list
// is empty.
func (d *Daemon) withFallback(addrs []string) []string {
	if len(addrs) == 0 && d.cfg.Scheduler != "" {
		return []string{d.cfg.Scheduler}
	}
	return addrs
}

// startSchedulers sets the first scheduler list: the static one, or the
// manager's answer (the copy on disk when the manager does not answer).
// With a manager it returns the loop that keeps the list fresh.
func (d *Daemon) startSchedulers(ctx context.Context) (func(context.Context), error) {
	if d.cfg.Manager == "" {
		if d.cfg.Scheduler == "" {
			return nil, nil
		}
		return nil, d.setSchedulers(ctx, []string{d.cfg.Scheduler})
	}
	m, conn, err := client.DialManager(d.cfg.Manager, pki.DialOption(d.creds, identity.RoleManager))
	if err != nil {
		return nil, err
	}
	addrs, every, err := d.fetchSchedulers(ctx, m)
	if err != nil {
		addrs = d.savedSchedulers()
		d.log.Warn("manager unreachable; using the schedulers saved on disk", "err", err, "saved", addrs)
	}
	if err := d.setSchedulers(ctx, d.withFallback(addrs)); err != nil {
		conn.Close()
		return nil, err
	}
	if every <= 0 {
		every = 30 * time.Second
	}
	return func(ctx context.Context) {
		defer conn.Close()
		if d.cfg.Seed {
			h := d.Host()
			// The effective configuration, secrets redacted, for the console.
			shown, err := config.RenderRedacted(d.cfg)
			if err != nil {
				d.log.Warn("render config for the manager", "err", err)
			}
			go client.KeepRegistered(ctx, m, &managerv1.RegisterRequest{
				Type: managerv1.ComponentType_COMPONENT_TYPE_SEED_PEER, HostId: h.GetId(), Hostname: h.GetHostname(), Ip: h.GetIp(),
				Port: h.GetPeerPort(), UploadPort: h.GetUploadPort(), Idc: h.GetIdc(), Location: h.GetLocation(),
				Config: string(shown),
			}, d.log)
		}
		t := time.NewTimer(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			addrs, next, err := d.fetchSchedulers(ctx, m)
			if err != nil {
				// Keep the list we have: the schedulers may well be up.
				d.log.Warn("refresh schedulers", "err", err)
			} else if err := d.setSchedulers(ctx, d.withFallback(addrs)); err != nil {
				d.log.Warn("refresh schedulers", "err", err)
			}
			if next > 0 {
				every = next
			}
			t.Reset(every)
		}
	}, nil
}
