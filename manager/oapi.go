package manager

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"
)

// Dragonfly's open API, as Harbor's Dragonfly preheat provider calls it:
//
//	GET  /healthy                 the instance's health check
//	POST /oapi/v1/jobs            create a preheat job
//	GET  /oapi/v1/jobs/{id}       poll it (state PENDING, SUCCESS, FAILURE)
//
// authenticated by a personal access token ("Authorization: Bearer …",
// Harbor's OAuth auth mode) of an admin user. The job requests are the same
// as /api/v1/jobs takes; the answers have the shape Harbor reads.

// jobRequest is a job creation request. Dragonfly puts the scheduler
// clusters outside args; both places are accepted.
type jobRequest struct {
	Type string `json:"type"`
	// Args are decoded by type: PreheatArgs or TaskArgs.
	Args                json.RawMessage `json:"args"`
	SchedulerClusterIDs []int64         `json:"scheduler_cluster_ids"`
	// Accepted for compatibility; the manager keeps no description.
	Bio string `json:"bio"`
}

// UnmarshalJSON reads preheat args in our shape and in Dragonfly's:
// filteredQueryParams / filtered_query_params ("a&b"), scheduler_cluster_ids
// inside args, urls (one URL per job), and the tuning fields Dragonfly
// documents (concurrent_count, timeout, piece_length, load_to_cache), which
// are accepted and left to the manager's own limits. Unknown fields are
// still refused.
func (a *PreheatArgs) UnmarshalJSON(b []byte) error {
	type plain PreheatArgs
	var in struct {
		plain
		URLs                []string        `json:"urls"`
		FilteredQueryParams string          `json:"filteredQueryParams"`
		FilteredQuerySnake  string          `json:"filtered_query_params"`
		SchedulerClusterIDs []int64         `json:"scheduler_cluster_ids"`
		ConcurrentCount     int64           `json:"concurrent_count"`
		Timeout             json.RawMessage `json:"timeout"`
		PieceLength         json.RawMessage `json:"piece_length"`
		LoadToCache         bool            `json:"load_to_cache"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return err
	}
	*a = PreheatArgs(in.plain)
	switch {
	case len(in.URLs) > 1:
		return fmt.Errorf("args.urls: %d URLs; one job preheats one URL", len(in.URLs))
	case len(in.URLs) == 1 && a.URL != "" && a.URL != in.URLs[0]:
		return fmt.Errorf("args.url and args.urls disagree")
	case len(in.URLs) == 1:
		a.URL = in.URLs[0]
	}
	for _, q := range []string{in.FilteredQueryParams, in.FilteredQuerySnake} {
		for _, f := range strings.FieldsFunc(q, func(r rune) bool { return r == '&' || r == ',' }) {
			if f = strings.TrimSpace(f); f != "" && !containsString(a.FilterQuery, f) {
				a.FilterQuery = append(a.FilterQuery, f)
			}
		}
	}
	for _, id := range in.SchedulerClusterIDs {
		if !containsInt(a.ClusterIDs, id) {
			a.ClusterIDs = append(a.ClusterIDs, id)
		}
	}
	return nil
}

func containsString(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func containsInt(l []int64, n int64) bool {
	for _, x := range l {
		if x == n {
			return true
		}
	}
	return false
}

// narrow applies args.ips, args.count and args.percentage to the peers a
// scope covers: IPs first, then count, then percentage (at least one peer).
func narrow(ts []target, a PreheatArgs) ([]target, error) {
	switch {
	case len(a.IPs) > 0:
		var out []target
		for _, t := range ts {
			host, _, _ := net.SplitHostPort(t.addr)
			if containsString(a.IPs, host) {
				out = append(out, t)
			}
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("no active peer of the scope has one of the IPs %s", strings.Join(a.IPs, ", "))
		}
		return out, nil
	case a.Count > 0:
		return ts[:min(a.Count, len(ts))], nil
	case a.Percentage > 0:
		n := max(1, len(ts)*a.Percentage/100)
		return ts[:min(n, len(ts))], nil
	}
	return ts, nil
}

// oapiJob is a job as Dragonfly's open API answers it.
type oapiJob struct {
	ID        int64           `json:"id"`
	CreatedAt time.Time       `json:"created_at"`
	UpdatedAt time.Time       `json:"updated_at"`
	TaskID    string          `json:"task_id"`
	Type      string          `json:"type"`
	State     string          `json:"state"`
	Args      json.RawMessage `json:"args"`
	Result    *oapiResult     `json:"result"`
}

type oapiResult struct {
	JobStates []oapiJobState `json:"job_states"`
}

type oapiJobState struct {
	Error   string      `json:"error"`
	Results []oapiGroup `json:"results"`
}

// oapiGroup is one scheduler cluster's outcome.
type oapiGroup struct {
	SuccessTasks       []oapiTask `json:"success_tasks"`
	FailureTasks       []oapiTask `json:"failure_tasks"`
	SchedulerClusterID int64      `json:"scheduler_cluster_id"`
}

type oapiTask struct {
	URL         string `json:"url"`
	Hostname    string `json:"hostname"`
	IP          string `json:"ip"`
	Description string `json:"description,omitempty"`
}

// toOAPI renders j for the open API. RUNNING is PENDING there (Dragonfly's
// states are PENDING, SUCCESS and FAILURE).
func toOAPI(j Job) oapiJob {
	o := oapiJob{
		ID: j.ID, CreatedAt: time.UnixMilli(j.CreatedAt).UTC(), UpdatedAt: time.UnixMilli(j.UpdatedAt).UTC(),
		TaskID: fmt.Sprintf("job_%d", j.ID), Type: j.Type, State: j.State, Args: j.Args,
	}
	if o.State == StateRunning {
		o.State = StatePending
	}
	if j.Result == nil && j.Error == "" {
		return o
	}
	st := oapiJobState{Error: j.Error}
	groups := map[int64]*oapiGroup{}
	var order []int64
	if j.Result != nil {
		for _, t := range j.Result.Tasks {
			for _, p := range t.Peers {
				g := groups[p.ClusterID]
				if g == nil {
					g = &oapiGroup{SchedulerClusterID: p.ClusterID, SuccessTasks: []oapiTask{}, FailureTasks: []oapiTask{}}
					groups[p.ClusterID] = g
					order = append(order, p.ClusterID)
				}
				ip, _, err := net.SplitHostPort(p.Addr)
				if err != nil {
					ip = p.Addr
				}
				ot := oapiTask{URL: t.URL, Hostname: p.Hostname, IP: ip}
				switch p.State {
				case StateSuccess:
					g.SuccessTasks = append(g.SuccessTasks, ot)
				case StateFailure:
					ot.Description = p.Error
					g.FailureTasks = append(g.FailureTasks, ot)
				}
			}
		}
	}
	for _, id := range order {
		st.Results = append(st.Results, *groups[id])
	}
	o.Result = &oapiResult{JobStates: []oapiJobState{st}}
	return o
}

func (m *Manager) handleOAPICreateJob(w http.ResponseWriter, r *http.Request) {
	j, err := m.createJob(r)
	if err != nil {
		fail(w, err)
		return
	}
	// Dragonfly answers a created job with 200.
	writeJSON(w, http.StatusOK, toOAPI(j))
}

func (m *Manager) handleOAPIGetJob(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err == nil {
		var j Job
		if j, err = scanJob(m.db.QueryRow(r.Context(), "SELECT "+jobCols+" FROM jobs WHERE id = ?", id)); err == nil {
			writeJSON(w, http.StatusOK, toOAPI(j))
			return
		}
	}
	fail(w, err)
}
