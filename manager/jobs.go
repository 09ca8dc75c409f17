package manager

import (
	"context"
	"database/sql"
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
	"time"

	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/peerv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/manager/db"
	"github.com/damselfly-io/damselfly/manager/job"
)

// Job states.
const (
	StatePending = "PENDING"
	StateRunning = "RUNNING"
	StateSuccess = "SUCCESS"
	StateFailure = "FAILURE"
)

// Preheat scopes.
const (
	ScopeSingleSeedPeer = "single_seed_peer"
	ScopeAllSeedPeers   = "all_seed_peers"
	ScopeAllPeers       = "all_peers"
)

const redacted = "[redacted]"

// PreheatArgs are a preheat job's arguments.
type PreheatArgs struct {
	// Type is image or file.
	Type string `json:"type"`
	// URL is an image's manifest URL or plain reference, or a file's URL.
	URL string `json:"url"`
	// Platform picks a manifest from an index ("linux/amd64" by default).
	Platform string            `json:"platform,omitempty"`
	Headers  map[string]string `json:"headers,omitempty"`
	Username string            `json:"username,omitempty"`
	Password string            `json:"password,omitempty"`
	Scope    string            `json:"scope"`
	// ClusterIDs restricts the peers to these scheduler clusters (all when empty).
	ClusterIDs []int64 `json:"cluster_ids,omitempty"`
	// Tag and Application enter a file's task ID, as with dfget.
	Tag         string   `json:"tag,omitempty"`
	Application string   `json:"application,omitempty"`
	FilterQuery []string `json:"filtered_query,omitempty"`
	// IPs, Count and Percentage narrow an all_seed_peers or all_peers scope
	// as Dragonfly's open API does: the peers with these IPs; else the
	// first Count (1..200); else Percentage (1..100) of them, at least one.
	IPs        []string `json:"ips,omitempty"`
	Count      int      `json:"count,omitempty"`
	Percentage int      `json:"percentage,omitempty"`
}

// secret is what is kept apart from the visible args.
type secret struct {
	Headers  map[string]string `json:"headers,omitempty"`
	Username string            `json:"username,omitempty"`
	Password string            `json:"password,omitempty"`
}

// Job as the API shows it.
type Job struct {
	ID        int64           `json:"id"`
	Type      string          `json:"type"`
	State     string          `json:"state"`
	Args      json.RawMessage `json:"args"`
	Result    *JobResult      `json:"result,omitempty"`
	Error     string          `json:"error,omitempty"`
	UserID    int64           `json:"user_id"`
	Attempts  int             `json:"attempts"`
	CreatedAt int64           `json:"created_at"`
	UpdatedAt int64           `json:"updated_at"`
}

// JobResult is the per-task (layer or file) and per-peer detail.
type JobResult struct {
	Manifest string       `json:"manifest_digest,omitempty"`
	Tasks    []TaskResult `json:"tasks"`
}

// TaskResult is one layer (or the file) of a preheat.
type TaskResult struct {
	TaskID string       `json:"task_id"`
	URL    string       `json:"url"`
	Digest string       `json:"digest,omitempty"`
	Size   int64        `json:"size,omitempty"`
	State  string       `json:"state"`
	Peers  []PeerResult `json:"peers"`
}

// PeerResult is one peer fetching one task.
type PeerResult struct {
	Hostname      string `json:"hostname"`
	Addr          string `json:"addr"`
	Seed          bool   `json:"seed"`
	State         string `json:"state"`
	ContentLength int64  `json:"content_length,omitempty"`
	Cached        bool   `json:"cached,omitempty"`
	ClusterID     int64  `json:"cluster_id,omitempty"`
	Error         string `json:"error,omitempty"`
	// get_task and delete_task: the peer as its scheduler knows it, and
	// (delete_task) whether the daemon held the task when asked to evict it.
	HostID      string `json:"host_id,omitempty"`
	PeerID      string `json:"peer_id,omitempty"`
	PeerState   string `json:"peer_state,omitempty"`
	Bytes       int64  `json:"bytes,omitempty"`
	Done        bool   `json:"done,omitempty"`
	Deleted     bool   `json:"deleted,omitempty"`
	SchedulerID int64  `json:"scheduler_id,omitempty"`
}

const jobCols = "id, type, state, args, result, error, user_id, attempts, created_at, updated_at"

func scanJob(s interface{ Scan(...any) error }) (Job, error) {
	var (
		j         Job
		args, res string
	)
	if err := s.Scan(&j.ID, &j.Type, &j.State, &args, &res, &j.Error, &j.UserID, &j.Attempts, &j.CreatedAt, &j.UpdatedAt); err != nil {
		return j, err
	}
	j.Args = json.RawMessage(args)
	if res != "" {
		var r JobResult
		if json.Unmarshal([]byte(res), &r) == nil {
			j.Result = &r
		}
	}
	return j, nil
}

func (m *Manager) handleListJobs(w http.ResponseWriter, r *http.Request) {
	where, args := "", []any(nil)
	if st := r.URL.Query().Get("state"); st != "" {
		switch st {
		case StatePending, StateRunning, StateSuccess, StateFailure:
		default:
			fail(w, badRequest("state %q: want PENDING, RUNNING, SUCCESS or FAILURE", st))
			return
		}
		where, args = "state = ?", []any{st}
	}
	if typ := r.URL.Query().Get("type"); typ != "" {
		switch typ {
		case JobPreheat, JobGetTask, JobDeleteTask:
		default:
			fail(w, badRequest("type %q: want preheat, get_task or delete_task", typ))
			return
		}
		if where != "" {
			where += " AND "
		}
		where, args = where+"type = ?", append(args, typ)
	}
	listRows(m, w, r, "jobs", jobCols, where, args, scanJob)
}

func (m *Manager) handleGetJob(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err == nil {
		var j Job
		if j, err = scanJob(m.db.QueryRow(r.Context(), "SELECT "+jobCols+" FROM jobs WHERE id = ?", id)); err == nil {
			writeJSON(w, http.StatusOK, j)
			return
		}
	}
	fail(w, err)
}

// validate checks and normalises the args.
func (a *PreheatArgs) validate() error {
	if a.Scope == "" {
		a.Scope = ScopeSingleSeedPeer
	}
	switch a.Scope {
	case ScopeSingleSeedPeer, ScopeAllSeedPeers, ScopeAllPeers:
	default:
		return badRequest("args.scope %q: want single_seed_peer, all_seed_peers or all_peers", a.Scope)
	}
	for _, id := range a.ClusterIDs {
		if id < 1 {
			return badRequest("args.cluster_ids: %d is not a cluster id", id)
		}
	}
	switch {
	case a.Count < 0 || a.Count > 200:
		return badRequest("args.count %d: want 1..200", a.Count)
	case a.Percentage < 0 || a.Percentage > 100:
		return badRequest("args.percentage %d: want 1..100", a.Percentage)
	case (len(a.IPs) > 0 || a.Count > 0 || a.Percentage > 0) && a.Scope == ScopeSingleSeedPeer:
		return badRequest("args.ips, count and percentage apply to the all_seed_peers and all_peers scopes")
	}
	for _, ip := range a.IPs {
		if net.ParseIP(ip) == nil {
			return badRequest("args.ips: %q is not an IP address", ip)
		}
	}
	if len(a.Headers) > 0 && a.Username != "" {
		return badRequest("args: give headers or username and password, not both")
	}
	if a.Password != "" && a.Username == "" {
		return badRequest("args.password without args.username")
	}
	switch a.Type {
	case "image":
		if _, err := job.ParseImage(a.URL); err != nil {
			return badRequest("args.url: %v", err)
		}
		if a.Platform != "" {
			p := strings.Split(a.Platform, "/")
			if len(p) < 2 || len(p) > 3 || p[0] == "" || p[1] == "" {
				return badRequest("args.platform %q: want os/arch[/variant]", a.Platform)
			}
		}
	case "file":
		u, err := url.Parse(a.URL)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "s3") {
			return badRequest("args.url %q: want an absolute http, https or s3 URL", a.URL)
		}
	default:
		return badRequest("args.type %q: want image or file", a.Type)
	}
	return nil
}

func (m *Manager) handleCreateJob(w http.ResponseWriter, r *http.Request) {
	j, err := m.createJob(r)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, j)
}

// createJob reads a job request (ours or Dragonfly's open-API shape: the
// scheduler clusters may come beside the args), stores the job and returns
// it.
func (m *Manager) createJob(r *http.Request) (Job, error) {
	var in jobRequest
	if err := readJSON(r, &in); err != nil {
		return Job{}, err
	}
	strict := func(v any) error {
		if len(in.Args) == 0 {
			return badRequest("args are required")
		}
		dec := json.NewDecoder(strings.NewReader(string(in.Args)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			return badRequest("args: %v", err)
		}
		return nil
	}
	switch in.Type {
	case JobPreheat:
		var a PreheatArgs
		if err := strict(&a); err != nil {
			return Job{}, err
		}
		for _, id := range in.SchedulerClusterIDs {
			if !containsInt(a.ClusterIDs, id) {
				a.ClusterIDs = append(a.ClusterIDs, id)
			}
		}
		if err := a.validate(); err != nil {
			return Job{}, err
		}
		return m.createPreheat(r, a)
	case JobGetTask, JobDeleteTask:
		var a TaskArgs
		if err := strict(&a); err != nil {
			return Job{}, err
		}
		for _, id := range in.SchedulerClusterIDs {
			if !containsInt(a.ClusterIDs, id) {
				a.ClusterIDs = append(a.ClusterIDs, id)
			}
		}
		if err := a.validate(); err != nil {
			return Job{}, err
		}
		return m.insertJob(r, in.Type, a, "")
	}
	return Job{}, badRequest("type %q: want preheat, get_task or delete_task", in.Type)
}

// createPreheat stores a preheat job. Credentials are kept apart, encrypted
// with a key that is not in the database, and wiped when the job ends; the
// args everyone can read show only that they were given.
func (m *Manager) createPreheat(r *http.Request, a PreheatArgs) (Job, error) {
	sec := secret{Headers: a.Headers, Username: a.Username, Password: a.Password}
	visible := a
	if len(visible.Headers) > 0 {
		visible.Headers = map[string]string{}
		for k := range a.Headers {
			visible.Headers[k] = redacted
		}
	}
	if visible.Password != "" {
		visible.Password = redacted
	}
	if visible.Username != "" {
		visible.Username = redacted
	}
	secCol := ""
	if len(sec.Headers) > 0 || sec.Username != "" || sec.Password != "" {
		b, _ := json.Marshal(sec)
		var err error
		if secCol, err = m.sealer.seal(b); err != nil {
			return Job{}, err
		}
	}
	return m.insertJob(r, JobPreheat, visible, secCol)
}

// insertJob stores a pending job (secCol: its sealed credentials, if any),
// audits its creation, wakes a worker and returns the job.
func (m *Manager) insertJob(r *http.Request, typ string, args any, secCol string) (Job, error) {
	argsJSON, err := json.Marshal(args)
	if err != nil {
		return Job{}, err
	}
	now := nowMs()
	u := userFrom(r)
	id, err := m.db.Insert(r.Context(), "INSERT INTO jobs (type, state, args, secret, user_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
		typ, StatePending, string(argsJSON), secCol, u.ID, now, now)
	if err != nil {
		return Job{}, err
	}
	m.audit(r.Context(), auditEntry{Action: auditJobCreate, Outcome: outcomeSuccess, UserID: u.ID, UserName: u.Name, Source: sourceOf(r),
		Detail: fmt.Sprintf("job %d: %s %s", id, typ, auditArgs(args))})
	m.poke()
	return scanJob(m.db.QueryRow(r.Context(), "SELECT "+jobCols+" FROM jobs WHERE id = ?", id))
}

// ---- execution ----

// worker claims and runs jobs until ctx ends.
func (m *Manager) worker(ctx context.Context) {
	t := time.NewTicker(m.cfg.Jobs.PollInterval.D())
	defer t.Stop()
	for {
		for ctx.Err() == nil {
			id, ok, err := m.claim(ctx)
			if err != nil {
				if ctx.Err() == nil {
					m.log.Warn("claim job", "err", err)
				}
				break
			}
			if !ok {
				break
			}
			m.runJob(ctx, id)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.wake:
		}
	}
}

// claim takes one pending job, or a running one whose lease expired (its
// replica died), for this replica. The conditional UPDATE is atomic on both
// databases: of two replicas racing for a row, one updates it and the
// other's re-checked WHERE no longer matches.
func (m *Manager) claim(ctx context.Context) (int64, bool, error) {
	now := nowMs()
	lease := now + m.cfg.Jobs.Lease.D().Milliseconds()
	if m.db.Type == db.MySQL {
		return m.claimLocked(ctx, now, lease)
	}
	var id int64
	// On PostgreSQL, SKIP LOCKED lets racing replicas take different jobs
	// instead of queueing on the same row.
	lock := ""
	if m.db.Type == db.Postgres {
		lock = " FOR UPDATE SKIP LOCKED"
	}
	err := m.db.QueryRow(ctx, `UPDATE jobs SET state = ?, owner = ?, lease_until = ?, attempts = attempts + 1, updated_at = ?
		WHERE id = (SELECT id FROM jobs WHERE state = ? OR (state = ? AND lease_until < ?) ORDER BY id LIMIT 1`+lock+`)
		AND (state = ? OR (state = ? AND lease_until < ?)) RETURNING id`,
		StateRunning, m.owner, lease, now, StatePending, StateRunning, now, StatePending, StateRunning, now).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return id, true, nil
}

// claimLocked is claim for MySQL/MariaDB, which has no UPDATE … RETURNING
// and cannot update a table it reads in a subquery: a transaction locks the
// oldest claimable row (SKIP LOCKED: racing replicas take different rows,
// MariaDB 10.6+ and MySQL 8) and updates it.
func (m *Manager) claimLocked(ctx context.Context, now, lease int64) (int64, bool, error) {
	tx, err := m.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, false, err
	}
	defer func() { _ = tx.Rollback() }()
	var id int64
	err = tx.QueryRowContext(ctx, `SELECT id FROM jobs WHERE state = ? OR (state = ? AND lease_until < ?) ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED`,
		StatePending, StateRunning, now).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE jobs SET state = ?, owner = ?, lease_until = ?, attempts = attempts + 1, updated_at = ? WHERE id = ?`,
		StateRunning, m.owner, lease, now, id); err != nil {
		return 0, false, err
	}
	if err := tx.Commit(); err != nil {
		return 0, false, err
	}
	return id, true, nil
}

// runJob runs a claimed job, renewing its lease; losing the lease (another
// replica took over) cancels it without writing anything more.
func (m *Manager) runJob(ctx context.Context, id int64) {
	jctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(m.cfg.Jobs.Lease.D() / 3)
		defer t.Stop()
		for {
			select {
			case <-jctx.Done():
				return
			case <-t.C:
				res, err := m.db.Exec(jctx, "UPDATE jobs SET lease_until = ? WHERE id = ? AND owner = ? AND state = ?",
					nowMs()+m.cfg.Jobs.Lease.D().Milliseconds(), id, m.owner, StateRunning)
				if err != nil {
					continue // the lease has some slack; try again
				}
				if n, _ := res.RowsAffected(); n == 0 {
					m.log.Warn("job lease lost", "job_id", id)
					cancel()
					return
				}
			}
		}
	}()
	defer wg.Wait()
	defer cancel()

	var (
		typ, args, sec, res string
	)
	if err := m.db.QueryRow(jctx, "SELECT type, args, secret, result FROM jobs WHERE id = ?", id).Scan(&typ, &args, &sec, &res); err != nil {
		m.log.Warn("load job", "job_id", id, "err", err)
		return
	}
	log := m.log.With("job_id", id, "type", typ)
	log.Info("job started")
	var (
		result *JobResult
		jerr   error
	)
	switch typ {
	case JobGetTask, JobDeleteTask:
		var a TaskArgs
		_ = json.Unmarshal([]byte(args), &a)
		result, jerr = m.runTaskJob(jctx, id, typ, a)
	default:
		var a PreheatArgs
		_ = json.Unmarshal([]byte(args), &a)
		var s secret
		plain, serr := m.sealer.open(sec)
		if serr == nil && len(plain) > 0 {
			serr = json.Unmarshal(plain, &s)
		}
		clear(plain)
		a.Headers, a.Password = s.Headers, s.Password
		if s.Username != "" {
			a.Username = s.Username
		}
		var prev JobResult
		if res != "" {
			_ = json.Unmarshal([]byte(res), &prev)
		}
		p := &preheat{m: m, id: id, args: a}
		if serr != nil {
			// Running without the credentials would only fail at the registry.
			result, jerr = &JobResult{}, fmt.Errorf("job credentials: %w", serr)
		} else {
			result, jerr = p.run(jctx, &prev)
		}
	}
	if ctx.Err() != nil || jctx.Err() != nil {
		// Shutting down or lease lost: the job stays RUNNING with its
		// progress saved. On a shutdown the lease is given back so that a
		// replica (or this one, restarted) takes the job over at once; a
		// replica that died leaves it to expire.
		if ctx.Err() != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
			_, _ = m.db.Exec(rctx, "UPDATE jobs SET lease_until = 0 WHERE id = ? AND owner = ? AND state = ?", id, m.owner, StateRunning)
			cancel()
		}
		log.Info("job interrupted; another run takes it over")
		return
	}
	state, msg := StateSuccess, ""
	if jerr != nil {
		state, msg = StateFailure, jerr.Error()
	}
	b, _ := json.Marshal(result)
	wctx := context.WithoutCancel(ctx)
	if _, err := m.db.Exec(wctx, "UPDATE jobs SET state = ?, result = ?, error = ?, secret = '', lease_until = 0, updated_at = ? WHERE id = ? AND owner = ?",
		state, string(b), msg, nowMs(), id, m.owner); err != nil {
		log.Warn("save job result", "err", err)
		return
	}
	m.m.jobs.WithLabelValues(typ, state).Inc()
	log.Info("job finished", "state", state, "error", msg)
}

// preheat runs one preheat job.
type preheat struct {
	m    *Manager
	id   int64
	args PreheatArgs

	mu  sync.Mutex
	res *JobResult
}

// target is a daemon that fetches.
type target struct {
	hostname, addr string
	seed           bool
	cluster        int64
}

func (p *preheat) save(ctx context.Context) {
	p.mu.Lock()
	b, _ := json.Marshal(p.res)
	p.mu.Unlock()
	if _, err := p.m.db.Exec(ctx, "UPDATE jobs SET result = ?, updated_at = ? WHERE id = ? AND owner = ?", string(b), nowMs(), p.id, p.m.owner); err != nil && ctx.Err() == nil {
		p.m.log.Warn("save job progress", "job_id", p.id, "err", err)
	}
}

// run resolves the tasks, picks the peers and has each peer fetch each task.
// Tasks and peers already done in prev (a resumed job) are not redone.
func (p *preheat) run(ctx context.Context, prev *JobResult) (*JobResult, error) {
	a := p.args
	res := &JobResult{}
	var header map[string]string
	switch a.Type {
	case "image":
		img, err := job.ParseImage(a.URL)
		if err != nil {
			return res, err
		}
		r, err := p.m.resolver.Resolve(ctx, img, a.Platform, job.Credentials{Headers: a.Headers, Username: a.Username, Password: a.Password})
		if err != nil {
			return res, fmt.Errorf("resolve image %s: %w", a.URL, err)
		}
		res.Manifest, header = r.Manifest, r.Header
		for _, b := range r.Blobs {
			tid, err := core.ContentTaskID(b.Digest)
			if err != nil {
				return res, fmt.Errorf("resolve image %s: %w", a.URL, err)
			}
			res.Tasks = append(res.Tasks, TaskResult{TaskID: tid, URL: b.URL, Digest: b.Digest, Size: b.Size, State: StatePending})
		}
	case "file":
		header = a.Headers
		res.Tasks = []TaskResult{{
			TaskID: core.TaskID(a.URL, core.TaskOptions{Tag: a.Tag, Application: a.Application, FilteredQuery: a.FilterQuery}),
			URL:    a.URL, State: StatePending,
		}}
	default:
		return res, fmt.Errorf("unknown preheat type %q", a.Type)
	}
	targets, err := p.m.targets(ctx, a.Scope, a.ClusterIDs)
	if err != nil {
		return res, err
	}
	if targets, err = narrow(targets, a); err != nil {
		return res, err
	}
	done := map[string]PeerResult{} // task_id/addr → a finished peer result
	for _, t := range prev.Tasks {
		for _, pr := range t.Peers {
			if pr.State == StateSuccess {
				done[t.TaskID+"/"+pr.Addr] = pr
			}
		}
	}
	for i := range res.Tasks {
		t := &res.Tasks[i]
		for _, tg := range targets {
			pr := PeerResult{Hostname: tg.hostname, Addr: tg.addr, Seed: tg.seed, ClusterID: tg.cluster, State: StatePending}
			if d, ok := done[t.TaskID+"/"+tg.addr]; ok {
				pr = d
			}
			t.Peers = append(t.Peers, pr)
		}
	}
	p.res = res
	p.save(ctx)

	// Seed peers first, then the others, who then fetch from the seeds.
	for _, seeds := range []bool{true, false} {
		sem := make(chan struct{}, p.m.cfg.Jobs.Concurrency)
		var wg sync.WaitGroup
		for i := range res.Tasks {
			for j := range res.Tasks[i].Peers {
				pr := &res.Tasks[i].Peers[j]
				if pr.Seed != seeds || pr.State == StateSuccess {
					continue
				}
				spec := &schedulerv1.TaskSpec{TaskId: res.Tasks[i].TaskID, Url: res.Tasks[i].URL, Headers: header, Digest: res.Tasks[i].Digest}
				if a.Type == "file" {
					spec.Tag, spec.Application, spec.FilteredQuery = a.Tag, a.Application, a.FilterQuery
				}
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					p.fetch(ctx, spec, pr)
				}()
			}
		}
		wg.Wait()
	}
	var failed []string
	for i := range res.Tasks {
		t := &res.Tasks[i]
		t.State = StateSuccess
		for _, pr := range t.Peers {
			if pr.State != StateSuccess {
				t.State = StateFailure
				failed = append(failed, fmt.Sprintf("%s on %s: %s", shortTask(t), pr.Addr, pr.Error))
			}
		}
	}
	if len(failed) > 0 {
		sort.Strings(failed)
		if len(failed) > 5 {
			failed = append(failed[:5], fmt.Sprintf("and %d more", len(failed)-5))
		}
		return res, fmt.Errorf("preheat failed: %s", strings.Join(failed, "; "))
	}
	return res, nil
}

func shortTask(t *TaskResult) string {
	if t.Digest != "" {
		return t.Digest
	}
	return t.URL
}

// fetch has one peer fetch one task and records the outcome.
func (p *preheat) fetch(ctx context.Context, spec *schedulerv1.TaskSpec, pr *PeerResult) {
	p.mu.Lock()
	pr.State = StateRunning
	p.mu.Unlock()
	p.save(ctx)
	resp, err := p.m.peerPreheat(ctx, pr.Addr, spec)
	if ctx.Err() != nil {
		return // interrupted: stays RUNNING, redone on resume
	}
	p.mu.Lock()
	if err != nil {
		pr.State, pr.Error = StateFailure, err.Error()
	} else {
		pr.State, pr.Error, pr.ContentLength, pr.Cached = StateSuccess, "", resp.GetContentLength(), resp.GetCached()
	}
	p.mu.Unlock()
	p.save(ctx)
}

func (m *Manager) peerPreheat(ctx context.Context, addr string, spec *schedulerv1.TaskSpec) (*peerv1.PreheatResponse, error) {
	conn, err := m.peerConn(addr)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, m.cfg.Jobs.TaskTimeout.D())
	defer cancel()
	resp, err := peerv1.NewPeerClient(conn).Preheat(cctx, &peerv1.PreheatRequest{Task: spec})
	if err != nil {
		if s, ok := status.FromError(err); ok {
			return nil, fmt.Errorf("%s: %s", s.Code(), s.Message())
		}
		return nil, err
	}
	return resp, nil
}

// targets lists the daemons a scope covers: active seed peers (one for
// single_seed_peer), plus, for all_peers, every daemon seen lately.
func (m *Manager) targets(ctx context.Context, scope string, clusters []int64) ([]target, error) {
	inClusters, cargs := "", []any{}
	if len(clusters) > 0 {
		inClusters = " AND cluster_id IN (?" + strings.Repeat(", ?", len(clusters)-1) + ")"
		for _, c := range clusters {
			cargs = append(cargs, c)
		}
	}
	rows, err := m.db.Query(ctx, "SELECT hostname, ip, port, cluster_id FROM seed_peers WHERE last_keepalive >= ?"+inClusters+" ORDER BY id", append([]any{m.activeSince()}, cargs...)...)
	if err != nil {
		return nil, fmt.Errorf("list seed peers: %w", err)
	}
	var ts []target
	seen := map[string]bool{}
	for rows.Next() {
		var (
			h, ip   string
			port    int
			cluster int64
		)
		if err := rows.Scan(&h, &ip, &port, &cluster); err != nil {
			rows.Close()
			return nil, err
		}
		addr := net.JoinHostPort(ip, strconv.Itoa(port))
		if !seen[addr] {
			seen[addr] = true
			ts = append(ts, target{hostname: h, addr: addr, seed: true, cluster: cluster})
		}
	}
	rows.Close()
	if scope != ScopeAllPeers && len(ts) == 0 {
		return nil, errors.New("no active seed peer")
	}
	if scope == ScopeSingleSeedPeer {
		return ts[:1], nil
	}
	if scope == ScopeAllSeedPeers {
		return ts, nil
	}
	rows, err = m.db.Query(ctx, "SELECT hostname, ip, port, cluster_id FROM peers WHERE last_seen >= ?"+inClusters+" ORDER BY id", append([]any{nowMs() - m.cfg.PeerTTL.D().Milliseconds()}, cargs...)...)
	if err != nil {
		return nil, fmt.Errorf("list peers: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			h, ip   string
			port    int
			cluster int64
		)
		if err := rows.Scan(&h, &ip, &port, &cluster); err != nil {
			return nil, err
		}
		addr := net.JoinHostPort(ip, strconv.Itoa(port))
		if !seen[addr] {
			seen[addr] = true
			ts = append(ts, target{hostname: h, addr: addr, cluster: cluster})
		}
	}
	if len(ts) == 0 {
		return nil, errors.New("no active peer")
	}
	return ts, rows.Err()
}

// auditURL is u without what may be a secret: userinfo, query and fragment
// (presigned URLs carry their signature in the query).
func auditURL(u string) string {
	p, err := url.Parse(u)
	if err != nil || p.Host == "" {
		return u
	}
	p.User, p.RawQuery, p.Fragment, p.RawFragment = nil, "", "", ""
	return p.String()
}

// auditArgs describes a job's args for the audit log without secrets.
func auditArgs(args any) string {
	switch a := args.(type) {
	case PreheatArgs:
		return a.Type + " " + auditURL(a.URL)
	case TaskArgs:
		if a.TaskID != "" {
			return a.TaskID
		}
		return auditURL(a.URL)
	}
	return ""
}
