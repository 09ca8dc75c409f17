package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/peerv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/identity"
	"github.com/damselfly-io/damselfly/internal/pki"
)

// Job types beyond preheat: Dragonfly's get_task and delete_task.
const (
	JobPreheat    = "preheat"
	JobGetTask    = "get_task"
	JobDeleteTask = "delete_task"
)

// schedRef is an active scheduler the manager can ask.
type schedRef struct {
	ID        int64
	ClusterID int64
	Hostname  string
	Addr      string
}

// activeSchedulers lists the schedulers whose keepalives arrive, in the
// given clusters (all when none).
func (m *Manager) activeSchedulers(ctx context.Context, clusters []int64) ([]schedRef, error) {
	q, args := "SELECT id, cluster_id, hostname, ip, port FROM schedulers WHERE last_keepalive >= ?", []any{m.activeSince()}
	if len(clusters) > 0 {
		q += " AND cluster_id IN (?" + strings.Repeat(", ?", len(clusters)-1) + ")"
		for _, c := range clusters {
			args = append(args, c)
		}
	}
	rows, err := m.db.Query(ctx, q+" ORDER BY id", args...)
	if err != nil {
		return nil, fmt.Errorf("list active schedulers: %w", err)
	}
	defer rows.Close()
	var out []schedRef
	for rows.Next() {
		var (
			s    schedRef
			ip   string
			port int
		)
		if err := rows.Scan(&s.ID, &s.ClusterID, &s.Hostname, &ip, &port); err != nil {
			return nil, fmt.Errorf("list active schedulers: %w", err)
		}
		s.Addr = net.JoinHostPort(ip, strconv.Itoa(port))
		out = append(out, s)
	}
	return out, rows.Err()
}

// errUnavailable: no scheduler answered (503).
var errUnavailable = errors.New("no scheduler answered")

// schedulerConn returns a shared client connection to a scheduler (kept
// apart from the daemons' connections: with mutual TLS the server's expected
// role differs).
func (m *Manager) schedulerConn(addr string) (*grpc.ClientConn, error) {
	m.connMu.Lock()
	defer m.connMu.Unlock()
	key := "scheduler " + addr
	if c, ok := m.conns[key]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, pki.DialOption(m.creds, identity.RoleScheduler))
	if err != nil {
		return nil, fmt.Errorf("scheduler client for %s: %w", addr, err)
	}
	m.conns[key] = c
	return c, nil
}

// schedErr is a scheduler that did not answer.
type schedErr struct {
	SchedulerID int64  `json:"scheduler_id"`
	Addr        string `json:"addr"`
	Error       string `json:"error"`
}

// fanOut calls fn on every scheduler at once, each bounded by the console's
// scheduler timeout, and returns the answers in scheduler order and the
// schedulers that failed. fn's NOT_FOUND counts as no answer, not a failure.
func fanOut[T any](ctx context.Context, m *Manager, scheds []schedRef, fn func(context.Context, schedulerv1.SchedulerClient) (T, error)) ([]T, []schedRef, []schedErr) {
	type res struct {
		v   T
		ok  bool
		err error
	}
	out := make([]res, len(scheds))
	var wg sync.WaitGroup
	for i, s := range scheds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := m.schedulerConn(s.Addr)
			if err != nil {
				out[i].err = err
				return
			}
			cctx, cancel := context.WithTimeout(ctx, m.cfg.Console.SchedulerTimeout.D())
			defer cancel()
			v, err := fn(cctx, schedulerv1.NewSchedulerClient(conn))
			switch {
			case status.Code(err) == codes.NotFound:
			case err != nil:
				out[i].err = err
			default:
				out[i].v, out[i].ok = v, true
			}
		}()
	}
	wg.Wait()
	var (
		vals []T
		refs []schedRef
		errs []schedErr
	)
	for i, r := range out {
		if r.err != nil {
			msg := r.err.Error()
			if st, ok := status.FromError(r.err); ok {
				msg = st.Code().String() + ": " + st.Message()
			}
			errs = append(errs, schedErr{SchedulerID: scheds[i].ID, Addr: scheds[i].Addr, Error: msg})
			m.log.Warn("scheduler did not answer", "scheduler_id", scheds[i].ID, "addr", scheds[i].Addr, "err", r.err)
			continue
		}
		if r.ok {
			vals, refs = append(vals, r.v), append(refs, scheds[i])
		}
	}
	return vals, refs, errs
}

// TaskInfo is a task as the clusters' schedulers know it, merged.
type TaskInfo struct {
	TaskID        string `json:"task_id"`
	URL           string `json:"url"`
	Tag           string `json:"tag,omitempty"`
	Application   string `json:"application,omitempty"`
	ContentLength int64  `json:"content_length"`
	PieceSize     uint32 `json:"piece_size"`
	PieceCount    uint32 `json:"piece_count"`
	// Peers in the task (on every scheduler), those done, and seed peers.
	Peers      int     `json:"peers"`
	DonePeers  int     `json:"done_peers"`
	SeedPeers  int     `json:"seed_peers"`
	Schedulers []int64 `json:"scheduler_ids"`
}

// TaskPeer is one peer of a task.
type TaskPeer struct {
	PeerID      string `json:"peer_id"`
	HostID      string `json:"host_id"`
	Hostname    string `json:"hostname"`
	IP          string `json:"ip"`
	Port        int32  `json:"port"`
	Seed        bool   `json:"seed"`
	State       string `json:"state"`
	Pieces      uint32 `json:"pieces"`
	PieceCount  uint32 `json:"piece_count"`
	Bytes       int64  `json:"bytes"`
	Done        bool   `json:"done"`
	SchedulerID int64  `json:"scheduler_id"`
	ClusterID   int64  `json:"cluster_id"`
}

// TaskDetail is a task with its peers.
type TaskDetail struct {
	TaskInfo
	PeerList []TaskPeer `json:"peer_list"`
	// Unreachable lists the schedulers that did not answer (the view may
	// then be incomplete).
	Unreachable []schedErr `json:"unreachable,omitempty"`
}

func (t *TaskInfo) merge(s *schedulerv1.TaskSummary, schedID int64) {
	if t.TaskID == "" {
		t.TaskID, t.URL, t.Tag, t.Application = s.GetTaskId(), s.GetUrl(), s.GetTag(), s.GetApplication()
		t.ContentLength = -1
	}
	if s.GetContentLength() >= 0 && t.ContentLength < 0 {
		t.ContentLength, t.PieceSize, t.PieceCount = s.GetContentLength(), s.GetPieceSize(), s.GetPieceCount()
	}
	t.Peers += int(s.GetPeers())
	t.DonePeers += int(s.GetDonePeers())
	t.SeedPeers += int(s.GetSeedPeers())
	t.Schedulers = append(t.Schedulers, schedID)
}

// listTasks merges the task lists of every active scheduler.
func (m *Manager) listTasks(ctx context.Context, req *schedulerv1.ListTasksRequest, clusters []int64) ([]TaskInfo, []schedErr, error) {
	scheds, err := m.activeSchedulers(ctx, clusters)
	if err != nil {
		return nil, nil, err
	}
	lists, refs, errs := fanOut(ctx, m, scheds, func(ctx context.Context, c schedulerv1.SchedulerClient) (*schedulerv1.ListTasksResponse, error) {
		return c.ListTasks(ctx, req)
	})
	if len(scheds) > 0 && len(errs) == len(scheds) {
		return nil, errs, fmt.Errorf("list tasks: %w: %s", errUnavailable, errs[0].Error)
	}
	byID := map[string]*TaskInfo{}
	for i, l := range lists {
		for _, s := range l.GetTasks() {
			t := byID[s.GetTaskId()]
			if t == nil {
				t = &TaskInfo{}
				byID[s.GetTaskId()] = t
			}
			t.merge(s, refs[i].ID)
		}
	}
	out := make([]TaskInfo, 0, len(byID))
	for _, t := range byID {
		out = append(out, *t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TaskID < out[j].TaskID })
	return out, errs, nil
}

// getTask asks every active scheduler for the task and merges the answers;
// errNotFound when none knows it.
func (m *Manager) getTask(ctx context.Context, id string, clusters []int64) (*TaskDetail, error) {
	scheds, err := m.activeSchedulers(ctx, clusters)
	if err != nil {
		return nil, err
	}
	ds, refs, errs := fanOut(ctx, m, scheds, func(ctx context.Context, c schedulerv1.SchedulerClient) (*schedulerv1.TaskDetail, error) {
		return c.GetTask(ctx, &schedulerv1.GetTaskRequest{TaskId: id})
	})
	if len(ds) == 0 {
		if len(errs) > 0 && len(errs) == len(scheds) {
			return nil, fmt.Errorf("task %s: %w: %s", id, errUnavailable, errs[0].Error)
		}
		return nil, fmt.Errorf("task %s: %w", id, errNotFound)
	}
	d := &TaskDetail{PeerList: []TaskPeer{}, Unreachable: errs}
	for i, td := range ds {
		d.merge(td.GetTask(), refs[i].ID)
		for _, p := range td.GetPeers() {
			d.PeerList = append(d.PeerList, TaskPeer{
				PeerID: p.GetPeerId(), HostID: p.GetHostId(), Hostname: p.GetHostname(), IP: p.GetIp(), Port: p.GetPeerPort(),
				Seed: p.GetSeed(), State: p.GetState(), Pieces: p.GetPieces(), PieceCount: p.GetPieceCount(), Bytes: p.GetBytes(),
				Done: p.GetDone(), SchedulerID: refs[i].ID, ClusterID: refs[i].ClusterID,
			})
		}
	}
	sort.Slice(d.PeerList, func(i, j int) bool {
		a, b := d.PeerList[i], d.PeerList[j]
		if a.Seed != b.Seed {
			return a.Seed
		}
		return a.Hostname+a.PeerID < b.Hostname+b.PeerID
	})
	return d, nil
}

func (m *Manager) handleListTasks(w http.ResponseWriter, r *http.Request) {
	limit, offset, err := paging(r)
	if err != nil {
		fail(w, err)
		return
	}
	q := r.URL.Query()
	req := &schedulerv1.ListTasksRequest{UrlContains: q.Get("url"), TaskId: q.Get("task_id"), Application: q.Get("application")}
	clusters, err := clusterFilter(q.Get("cluster_id"))
	if err != nil {
		fail(w, err)
		return
	}
	all, errs, err := m.listTasks(r.Context(), req, clusters)
	if err != nil {
		fail(w, err)
		return
	}
	if len(errs) > 0 {
		b, _ := json.Marshal(errs)
		w.Header().Set("X-Unreachable-Schedulers", string(b))
	}
	page := all[min(offset, len(all)):min(offset+limit, len(all))]
	writeList(w, page, len(all))
}

func clusterFilter(s string) ([]int64, error) {
	if s == "" {
		return nil, nil
	}
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id < 1 {
		return nil, badRequest("cluster_id %q is not a positive integer", s)
	}
	return []int64{id}, nil
}

func (m *Manager) handleGetTask(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !validTaskID(id) {
		fail(w, badRequest("task id %q: want 64 hex digits", id))
		return
	}
	d, err := m.getTask(r.Context(), id, nil)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// handleDeleteTask starts a delete_task job and answers with it (202).
func (m *Manager) handleDeleteTask(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !validTaskID(id) {
		fail(w, badRequest("task id %q: want 64 hex digits", id))
		return
	}
	args := TaskArgs{TaskID: id}
	j, err := m.insertJob(r, JobDeleteTask, args, "")
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, j)
}

func validTaskID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// TaskArgs are a get_task or delete_task job's arguments: a task ID, or a
// URL (with the tag, application and filtered query that enter its ID, as
// with dfget).
type TaskArgs struct {
	TaskID      string   `json:"task_id,omitempty"`
	URL         string   `json:"url,omitempty"`
	Tag         string   `json:"tag,omitempty"`
	Application string   `json:"application,omitempty"`
	FilterQuery []string `json:"filtered_query,omitempty"`
	// ClusterIDs restricts the job to these clusters' schedulers (all when empty).
	ClusterIDs []int64 `json:"cluster_ids,omitempty"`
}

func (a *TaskArgs) validate() error {
	switch {
	case a.TaskID != "" && a.URL != "":
		return badRequest("args: give task_id or url, not both")
	case a.TaskID != "":
		if !validTaskID(a.TaskID) {
			return badRequest("args.task_id %q: want 64 hex digits", a.TaskID)
		}
	case a.URL != "":
		u, err := url.Parse(a.URL)
		if err != nil || u.Scheme == "" || (u.Host == "" && u.Scheme != "dfcache") {
			return badRequest("args.url %q: want an absolute URL", a.URL)
		}
		if id, ok := core.ParseCacheURL(a.URL); ok {
			a.TaskID = core.CacheTaskID(id, a.Tag) // a dfcache entry
		} else {
			a.TaskID = core.TaskID(a.URL, core.TaskOptions{Tag: a.Tag, Application: a.Application, FilteredQuery: a.FilterQuery})
		}
	default:
		return badRequest("args: task_id or url is required")
	}
	for _, id := range a.ClusterIDs {
		if id < 1 {
			return badRequest("args.cluster_ids: %d is not a cluster id", id)
		}
	}
	return nil
}

// runTaskJob runs a get_task or delete_task job. get_task lists the peers
// holding the task; delete_task has each of them evict it (Peer.DeleteTask)
// and records each one's outcome.
func (m *Manager) runTaskJob(ctx context.Context, id int64, typ string, a TaskArgs) (*JobResult, error) {
	d, err := m.getTask(ctx, a.TaskID, a.ClusterIDs)
	res := &JobResult{Tasks: []TaskResult{{TaskID: a.TaskID, URL: a.URL, State: StateSuccess, Peers: []PeerResult{}}}}
	if err != nil {
		res.Tasks[0].State = StateFailure
		return res, err
	}
	t := &res.Tasks[0]
	t.URL, t.Size = d.URL, d.ContentLength
	for _, p := range d.PeerList {
		state := StateSuccess
		if typ == JobDeleteTask {
			state = StatePending
		}
		t.Peers = append(t.Peers, PeerResult{
			Hostname: p.Hostname, Addr: net.JoinHostPort(p.IP, strconv.Itoa(int(p.Port))), Seed: p.Seed, State: state,
			HostID: p.HostID, PeerID: p.PeerID, PeerState: p.State, Bytes: p.Bytes, Done: p.Done,
			SchedulerID: p.SchedulerID, ClusterID: p.ClusterID,
		})
	}
	if typ == JobGetTask {
		return res, nil
	}
	// One eviction per daemon (a host may hold a task on two schedulers
	// after a failover), all at once within the job concurrency.
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		sem = make(chan struct{}, m.cfg.Jobs.Concurrency)
	)
	seen := map[string]bool{}
	for i := range t.Peers {
		pr := &t.Peers[i]
		if seen[pr.Addr] {
			pr.State = StateSuccess // the same daemon, evicted through its other entry
			continue
		}
		seen[pr.Addr] = true
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			conn, err := m.peerConn(pr.Addr)
			var resp *peerv1.DeleteTaskResponse
			if err == nil {
				cctx, cancel := context.WithTimeout(ctx, m.cfg.Console.SchedulerTimeout.D()*2)
				resp, err = peerv1.NewPeerClient(conn).DeleteTask(cctx, &peerv1.DeleteTaskRequest{TaskId: a.TaskID})
				cancel()
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if st, ok := status.FromError(err); ok {
					err = fmt.Errorf("%s: %s", st.Code(), st.Message())
				}
				pr.State, pr.Error = StateFailure, err.Error()
				return
			}
			pr.State, pr.Deleted = StateSuccess, resp.GetDeleted()
		}()
	}
	wg.Wait()
	var failed []string
	for _, pr := range t.Peers {
		if pr.State != StateSuccess {
			failed = append(failed, fmt.Sprintf("%s: %s", pr.Addr, pr.Error))
		}
	}
	if len(failed) > 0 {
		t.State = StateFailure
		sort.Strings(failed)
		if len(failed) > 5 {
			failed = append(failed[:5], fmt.Sprintf("and %d more", len(failed)-5))
		}
		return res, fmt.Errorf("evict task %s: %s", a.TaskID, strings.Join(failed, "; "))
	}
	m.log.Info("task evicted", "job_id", id, "task_id", a.TaskID, "peers", len(t.Peers))
	return res, nil
}
