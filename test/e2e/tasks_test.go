package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/core"
)

// TestTaskControl: two daemons download a file; the manager's task API
// lists the task and its peers (from the scheduler), DELETE evicts it from
// every daemon holding it (a delete_task job with a result per peer), the
// caches no longer hold it, the scheduler forgets it, and a new download
// works again.
func TestTaskControl(t *testing.T) {
	o := newOrigin(t)
	url, sum := o.add("shared.bin", 2<<20+3, 21)
	c := startManaged(t, 2, nil)
	fetchAll(t, c.daemons, url, sum)
	id := core.TaskID(url, core.TaskOptions{})

	type taskInfo struct {
		TaskID        string `json:"task_id"`
		URL           string `json:"url"`
		ContentLength int64  `json:"content_length"`
		Peers         int    `json:"peers"`
		DonePeers     int    `json:"done_peers"`
	}
	var list []taskInfo
	waitFor(t, 20*time.Second, "the task listed with both daemons done", func() bool {
		if code := c.mgr.call(t, "GET", "/api/v1/tasks?url=shared.bin", nil, &list); code != http.StatusOK {
			t.Fatalf("list tasks: %d", code)
		}
		return len(list) == 1 && list[0].DonePeers >= 2
	})
	if list[0].TaskID != id || list[0].ContentLength != 2<<20+3 {
		t.Fatalf("task %+v, want %s", list[0], id)
	}
	// The daemons report their cache use when they refresh their schedulers.
	waitFor(t, 20*time.Second, "d0 and d1 to report what their caches hold", func() bool {
		var peers []struct {
			Hostname   string `json:"hostname"`
			CacheBytes int64  `json:"cache_bytes"`
			CacheTasks int    `json:"cache_tasks"`
		}
		c.mgr.call(t, "GET", "/api/v1/peers", nil, &peers)
		n := 0
		for _, p := range peers {
			if (p.Hostname == "d0" || p.Hostname == "d1") && p.CacheTasks >= 1 && p.CacheBytes >= 2<<20 {
				n++
			}
		}
		return n == 2
	})
	var detail struct {
		PeerList []struct {
			Hostname string `json:"hostname"`
			Bytes    int64  `json:"bytes"`
			Done     bool   `json:"done"`
		} `json:"peer_list"`
	}
	if code := c.mgr.call(t, "GET", "/api/v1/tasks/"+id, nil, &detail); code != http.StatusOK {
		t.Fatalf("get task: %d", code)
	}
	held := map[string]bool{}
	for _, p := range detail.PeerList {
		if p.Done && p.Bytes == 2<<20+3 {
			held[p.Hostname] = true
		}
	}
	if !held["d0"] || !held["d1"] {
		t.Fatalf("task peers %+v: want d0 and d1 done", detail.PeerList)
	}

	var job struct {
		ID     int64  `json:"id"`
		Type   string `json:"type"`
		State  string `json:"state"`
		Error  string `json:"error"`
		Result struct {
			Tasks []struct {
				Peers []struct {
					Hostname string `json:"hostname"`
					State    string `json:"state"`
					Deleted  bool   `json:"deleted"`
					Error    string `json:"error"`
				} `json:"peers"`
			} `json:"tasks"`
		} `json:"result"`
	}
	if code := c.mgr.call(t, "DELETE", "/api/v1/tasks/"+id, nil, &job); code != http.StatusAccepted || job.Type != "delete_task" {
		t.Fatalf("delete task: %d %+v", code, job)
	}
	waitFor(t, 60*time.Second, "the delete_task job to end", func() bool {
		c.mgr.call(t, "GET", fmt.Sprintf("/api/v1/jobs/%d", job.ID), nil, &job)
		return job.State == "SUCCESS" || job.State == "FAILURE"
	})
	if job.State != "SUCCESS" || len(job.Result.Tasks) != 1 {
		t.Fatalf("delete_task job: %s %q %+v", job.State, job.Error, job.Result)
	}
	evicted := map[string]bool{}
	for _, p := range job.Result.Tasks[0].Peers {
		if p.State != "SUCCESS" || !p.Deleted {
			t.Fatalf("peer result %+v", p)
		}
		evicted[p.Hostname] = true
	}
	if !evicted["d0"] || !evicted["d1"] {
		t.Fatalf("evicted on %v, want d0 and d1", evicted)
	}
	for _, d := range append(c.daemons, c.seed) {
		if ok, _ := statTask(t, d, id); ok {
			t.Fatalf("%s still holds the task", d.name)
		}
	}
	waitFor(t, 20*time.Second, "the scheduler to forget the task", func() bool {
		return c.mgr.call(t, "GET", "/api/v1/tasks/"+id, nil, nil) == http.StatusNotFound
	})
	// The swarm serves it again on demand.
	fetchAll(t, c.daemons[:1], url, sum)
	if ok, _ := statTask(t, c.daemons[0], id); !ok {
		t.Fatal("download after eviction not cached")
	}
}
