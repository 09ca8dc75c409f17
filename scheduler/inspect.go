package scheduler

import (
	"context"
	"net/url"
	"slices"
	"sort"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/internal/identity"
)

// latencyWindow is how many recent piece transfer times Stats' quantiles
// cover.
const latencyWindow = 2048

// maxListedTasks bounds one ListTasks answer; the manager pages over the
// merged lists of all schedulers.
const maxListedTasks = 10000

// counters are the totals Stats reports (under Scheduler.mu).
type counters struct {
	peerBytes, originBytes int64
	backToSource           int64
	registrations          int64
	lat                    [latencyWindow]float64 // seconds, a ring
	latN                   int64                  // samples ever taken
}

func (c *counters) observeLatency(costNs int64) {
	if costNs <= 0 {
		return
	}
	c.lat[c.latN%latencyWindow] = float64(costNs) / 1e9
	c.latN++
}

// errNotManager refuses the inspection RPCs to anyone but the manager.
var errNotManager = status.Error(codes.PermissionDenied, "only the manager may call this")

func managerOnly(ctx context.Context) error {
	if !identity.Allows(ctx, identity.RoleManager) {
		return errNotManager
	}
	return nil
}

// publicURL drops the query (it may carry signatures or tokens) and any
// user info.
func publicURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}

func (s *Scheduler) summaryLocked(t *task) *schedulerv1.TaskSummary {
	ts := &schedulerv1.TaskSummary{
		TaskId: t.id, ContentLength: t.contentLength, PieceSize: t.pieceSize, PieceCount: t.pieceCount(),
		Peers: int32(len(t.peers)),
	}
	if t.spec != nil {
		ts.Url, ts.Tag, ts.Application = publicURL(t.spec.GetUrl()), t.spec.GetTag(), t.spec.GetApplication()
	}
	for _, p := range t.peers {
		if p.state == stateSucceeded {
			ts.DonePeers++
		}
		if p.host.info.GetSeed() {
			ts.SeedPeers++
		}
	}
	return ts
}

func (svc *service) ListTasks(ctx context.Context, req *schedulerv1.ListTasksRequest) (*schedulerv1.ListTasksResponse, error) {
	if err := managerOnly(ctx); err != nil {
		return nil, err
	}
	s := svc.s
	resp := &schedulerv1.ListTasksResponse{}
	s.mu.Lock()
	for _, t := range s.tasks {
		if len(resp.Tasks) >= maxListedTasks {
			break
		}
		if id := req.GetTaskId(); id != "" && t.id != id {
			continue
		}
		if len(t.peers) == 0 {
			continue // forgotten soon: nobody holds it
		}
		ts := s.summaryLocked(t)
		if a := req.GetApplication(); a != "" && ts.Application != a {
			continue
		}
		if sub := req.GetUrlContains(); sub != "" && !strings.Contains(ts.Url, sub) {
			continue
		}
		resp.Tasks = append(resp.Tasks, ts)
	}
	s.mu.Unlock()
	sort.Slice(resp.Tasks, func(i, j int) bool { return resp.Tasks[i].TaskId < resp.Tasks[j].TaskId })
	return resp, nil
}

func (svc *service) GetTask(ctx context.Context, req *schedulerv1.GetTaskRequest) (*schedulerv1.TaskDetail, error) {
	if err := managerOnly(ctx); err != nil {
		return nil, err
	}
	s := svc.s
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tasks[req.GetTaskId()]
	if t == nil || len(t.peers) == 0 {
		return nil, status.Errorf(codes.NotFound, "task %q is not known here", req.GetTaskId())
	}
	d := &schedulerv1.TaskDetail{Task: s.summaryLocked(t)}
	total := t.pieceCount()
	for _, p := range t.peers {
		held := p.pieces.count
		if p.state == stateSucceeded && total > 0 {
			// A peer reports done only with every piece verified and
			// stored; its last piece reports may still be on the way.
			held = total
		}
		var bytes int64
		if t.pieceSize > 0 {
			bytes = int64(held) * int64(t.pieceSize)
			if t.contentLength >= 0 {
				bytes = min(bytes, t.contentLength)
			}
		}
		h := p.host.info
		d.Peers = append(d.Peers, &schedulerv1.TaskPeer{
			PeerId: p.id, HostId: p.host.id, Hostname: h.GetHostname(), Ip: h.GetIp(), PeerPort: h.GetPeerPort(),
			Seed: h.GetSeed(), State: p.state.String(), Pieces: held, PieceCount: total, Bytes: bytes,
			Done: p.state == stateSucceeded,
		})
	}
	slices.SortFunc(d.Peers, func(a, b *schedulerv1.TaskPeer) int { return strings.Compare(a.PeerId, b.PeerId) })
	return d, nil
}

func (svc *service) Stats(ctx context.Context, _ *schedulerv1.StatsRequest) (*schedulerv1.StatsResponse, error) {
	if err := managerOnly(ctx); err != nil {
		return nil, err
	}
	return svc.s.stats(), nil
}

func (s *Scheduler) stats() *schedulerv1.StatsResponse {
	s.mu.Lock()
	c := &s.counters
	r := &schedulerv1.StatsResponse{
		PeerBytes: c.peerBytes, OriginBytes: c.originBytes, BackToSource: c.backToSource,
		Registrations: c.registrations, Tasks: int32(len(s.tasks)), Hosts: int32(len(s.hosts)),
		PieceLatencySamples: c.latN, StartedAtMs: s.started.UnixMilli(),
	}
	n := int(min(c.latN, latencyWindow))
	lat := slices.Clone(c.lat[:n])
	for _, t := range s.tasks {
		for _, p := range t.peers {
			r.ActivePeers++
			switch p.state {
			case statePending, stateWaiting, stateBackToSource, stateRunning:
				r.ActiveDownloads++
			}
		}
	}
	for _, h := range s.hosts {
		r.HostTraffic = append(r.HostTraffic, &schedulerv1.HostTraffic{
			HostId: h.id, Hostname: h.info.GetHostname(), Ip: h.info.GetIp(), Seed: h.info.GetSeed(),
			UploadBytes: h.uploadBytes, DownloadBytes: h.downloadBytes, Peers: int32(h.peers),
		})
	}
	s.mu.Unlock()
	slices.SortFunc(r.HostTraffic, func(a, b *schedulerv1.HostTraffic) int { return strings.Compare(a.HostId, b.HostId) })
	if len(lat) > 0 {
		slices.Sort(lat)
		r.PieceLatencyP50, r.PieceLatencyP90, r.PieceLatencyP99 = quantile(lat, 0.5), quantile(lat, 0.9), quantile(lat, 0.99)
	}
	return r
}

// quantile of sorted xs (nearest rank).
func quantile(xs []float64, q float64) float64 {
	i := int(q*float64(len(xs))+0.5) - 1
	return xs[max(0, min(i, len(xs)-1))]
}

// Stats returns the same summary as the Stats RPC (for the all-in-one node
// and tests).
func (s *Scheduler) Stats() *schedulerv1.StatsResponse { return s.stats() }
