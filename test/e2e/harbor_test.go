package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// harborJobResponse is the answer Harbor's Dragonfly preheat provider
// decodes (src/pkg/p2p/preheat/provider/dragonfly.go, Harbor 2.11+): an
// integer id, RFC 3339 times, state PENDING, SUCCESS or FAILURE, and per
// scheduler cluster the blob URLs that succeeded or failed on each peer.
type harborJobResponse struct {
	ID        int       `json:"id"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	State     string    `json:"state"`
	Result    struct {
		JobStates []struct {
			Error   string `json:"error"`
			Results []struct {
				SuccessTasks []*struct {
					URL      string `json:"url"`
					Hostname string `json:"hostname"`
					IP       string `json:"ip"`
				} `json:"success_tasks"`
				FailureTasks []*struct {
					URL         string `json:"url"`
					Hostname    string `json:"hostname"`
					IP          string `json:"ip"`
					Description string `json:"description"`
				} `json:"failure_tasks"`
				SchedulerClusterID uint `json:"scheduler_cluster_id"`
			} `json:"results"`
		} `json:"job_states"`
	} `json:"result"`
}

// harborDo sends one request the way Harbor's provider client does: JSON
// body, "Authorization: Bearer <token>" (the instance's OAuth auth mode,
// holding a personal access token), and any non-2xx answer is an error.
func harborDo(t *testing.T, method, url, token string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw
}

// TestHarborPreheatProvider plays Harbor's Dragonfly preheat provider
// against the manager, request for request:
//
//  1. TEST CONNECTION / health: GET {endpoint}/healthy with the token.
//  2. Preheat: POST {endpoint}/oapi/v1/jobs with
//     {"type":"preheat","args":{"type":"image","url":<manifest URL>,"tag":"",
//     "filtered_query_params":"","headers":{…},"scope":<policy scope>,
//     "concurrent_count":0,"timeout":0},"scheduler_cluster_ids":[…]}
//     and read id and created_at/updated_at from the answer.
//  3. CheckProgress: GET {endpoint}/oapi/v1/jobs/{id} until state is
//     SUCCESS (or FAILURE), reading result.job_states[].results[].
//
// The image is in a real docker-registry; the job must reach SUCCESS with
// every blob on every peer of the scope. Then Dragonfly's documented extras
// (filteredQueryParams, scope with count, ips, platform, username/password)
// are accepted by /oapi/v1/jobs and /api/v1/jobs alike, and a wrong token is
// refused.
func TestHarborPreheatProvider(t *testing.T) {
	reg := startRegistry(t, "", "")
	dir := t.TempDir()
	img := makeImage(t, dir, "v1", []int{200 << 10, 700 << 10}, 3)
	reg.push(t, dir, "library/harbor", "v1")
	c := startManaged(t, 1, nil)
	amd := img.blobs["linux/amd64"]

	var pat struct{ Token string }
	if code := c.mgr.call(t, "POST", "/api/v1/tokens", map[string]any{"name": "harbor"}, &pat); code != http.StatusCreated || pat.Token == "" {
		t.Fatalf("create personal access token: %d", code)
	}
	endpoint := c.mgr.api

	// 1. health check
	if code, body := harborDo(t, "GET", endpoint+"/healthy", pat.Token, nil); code != http.StatusOK {
		t.Fatalf("health check: %d %s", code, body)
	}

	// 2. create
	manifest := "http://" + reg.addr + "/v2/library/harbor/manifests/v1"
	create := map[string]any{
		"type": "preheat",
		"args": map[string]any{
			"type": "image", "url": manifest, "tag": "", "filtered_query_params": "",
			"headers": map[string]string{}, "scope": "all_peers", "concurrent_count": 0, "timeout": 0,
		},
		"scheduler_cluster_ids": []uint{1},
	}
	code, body := harborDo(t, "POST", endpoint+"/oapi/v1/jobs", pat.Token, create)
	if code/100 != 2 {
		t.Fatalf("create job: %d %s", code, body)
	}
	var created harborJobResponse
	if err := json.Unmarshal(body, &created); err != nil || created.ID == 0 || created.CreatedAt.IsZero() || created.State != "PENDING" {
		t.Fatalf("create answer %s: %+v %v", body, created, err)
	}

	// 3. poll
	var got harborJobResponse
	waitFor(t, 90*time.Second, "job to end", func() bool {
		code, body := harborDo(t, "GET", fmt.Sprintf("%s/oapi/v1/jobs/%d", endpoint, created.ID), pat.Token, nil)
		if code != http.StatusOK {
			t.Fatalf("get job: %d %s", code, body)
		}
		got = harborJobResponse{}
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("get answer %s: %v", body, err)
		}
		return got.State == "SUCCESS" || got.State == "FAILURE"
	})
	if got.State != "SUCCESS" || len(got.Result.JobStates) != 1 || len(got.Result.JobStates[0].Results) != 1 {
		t.Fatalf("job ended %s: %+v", got.State, got.Result)
	}
	res := got.Result.JobStates[0].Results[0]
	// all_peers: the seed peer and the daemon, each holding every blob
	if res.SchedulerClusterID != 1 || len(res.FailureTasks) != 0 || len(res.SuccessTasks) != 2*len(amd) {
		t.Fatalf("result: cluster %d, %d successes (want %d), failures %+v", res.SchedulerClusterID, len(res.SuccessTasks), 2*len(amd), res.FailureTasks)
	}
	for _, d := range amd {
		if complete, _ := statTask(t, c.daemons[0], contentID(t, d.Digest)); !complete {
			t.Errorf("daemon lacks blob %s after the preheat", d.Digest)
		}
	}

	// Dragonfly's documented fields, on both APIs.
	extras := map[string]any{
		"type": "image", "url": manifest, "platform": "linux/amd64", "scope": "all_peers", "count": 1,
		"filteredQueryParams": "Expires&Signature", "username": "someone", "password": "secret",
	}
	code, body = harborDo(t, "POST", endpoint+"/oapi/v1/jobs", pat.Token, map[string]any{"type": "preheat", "args": extras, "scheduler_cluster_ids": []int{1}})
	if code/100 != 2 {
		t.Fatalf("oapi create with Dragonfly's fields: %d %s", code, body)
	}
	ipArgs := map[string]any{"type": "image", "url": manifest, "scope": "all_seed_peers", "ips": []string{"127.0.0.1"}, "filtered_query_params": "X-Amz-Date"}
	var j jobView
	if code := c.mgr.call(t, "POST", "/api/v1/jobs", map[string]any{"type": "preheat", "args": ipArgs, "scheduler_cluster_ids": []int{1}}, &j); code != http.StatusCreated {
		t.Fatalf("/api/v1/jobs with Dragonfly's fields: %d", code)
	}
	j = c.mgr.waitJob(t, j.ID)
	if j.State != "SUCCESS" || len(j.Result.Tasks[0].Peers) != 1 || !j.Result.Tasks[0].Peers[0].Seed {
		t.Fatalf("ips-scoped job: %s %q %+v", j.State, j.Error, j.Result)
	}
	var stored map[string]any
	_ = json.Unmarshal(j.Args, &stored)
	if fq, _ := stored["filtered_query"].([]any); len(fq) != 1 || fq[0] != "X-Amz-Date" {
		t.Errorf("filtered_query_params not kept: %s", j.Args)
	}

	// A count out of range is refused; so is a wrong token.
	bad := map[string]any{"type": "preheat", "args": map[string]any{"type": "image", "url": manifest, "scope": "all_peers", "count": 500}}
	if code, body := harborDo(t, "POST", endpoint+"/oapi/v1/jobs", pat.Token, bad); code != http.StatusBadRequest {
		t.Errorf("count 500: %d %s", code, body)
	}
	if code, _ := harborDo(t, "POST", endpoint+"/oapi/v1/jobs", "not-a-token", create); code != http.StatusUnauthorized {
		t.Errorf("wrong token: %d, want 401", code)
	}
}
