package manager

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// TestPreheatArgsDragonflyFields: Dragonfly's spellings are read into ours;
// unknown fields are still refused; more than one URL is refused.
func TestPreheatArgsDragonflyFields(t *testing.T) {
	var a PreheatArgs
	in := `{"type":"file","urls":["https://o.example/f"],"filteredQueryParams":"Expires&Signature","filtered_query_params":"X-Amz-Date,Expires",
		"scheduler_cluster_ids":[2,3],"cluster_ids":[3],"scope":"all_peers","count":2,"ips":["10.0.0.1"],"percentage":50,
		"concurrent_count":8,"timeout":0,"piece_length":4194304,"load_to_cache":true,"tag":"t","application":"a"}`
	if err := json.Unmarshal([]byte(in), &a); err != nil {
		t.Fatal(err)
	}
	if a.URL != "https://o.example/f" || strings.Join(a.FilterQuery, ",") != "Expires,Signature,X-Amz-Date" ||
		!slices.Equal(a.ClusterIDs, []int64{3, 2}) || a.Count != 2 || a.Percentage != 50 || !slices.Equal(a.IPs, []string{"10.0.0.1"}) || a.Tag != "t" {
		t.Fatalf("args %+v", a)
	}
	if err := a.validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{`{"type":"file","url":"https://o/f","bogus":1}`, `{"type":"file","urls":["https://o/a","https://o/b"]}`} {
		if err := json.Unmarshal([]byte(bad), &a); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	// What the manager stores reads back the same.
	b, _ := json.Marshal(PreheatArgs{Type: "file", URL: "s3://b/k", FilterQuery: []string{"x"}, IPs: []string{"127.0.0.1"}, Scope: ScopeAllPeers})
	var back PreheatArgs
	if err := json.Unmarshal(b, &back); err != nil || back.URL != "s3://b/k" || back.IPs[0] != "127.0.0.1" {
		t.Fatalf("round trip %s: %+v %v", b, back, err)
	}
	if err := back.validate(); err != nil {
		t.Errorf("s3 file preheat: %v", err)
	}
	for _, bad := range []PreheatArgs{
		{Type: "file", URL: "https://o/f", Scope: ScopeAllPeers, Count: 201},
		{Type: "file", URL: "https://o/f", Scope: ScopeAllPeers, Percentage: 101},
		{Type: "file", URL: "https://o/f", Scope: ScopeSingleSeedPeer, Count: 1},
		{Type: "file", URL: "https://o/f", Scope: ScopeAllPeers, IPs: []string{"host"}},
	} {
		if err := bad.validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestNarrow(t *testing.T) {
	ts := []target{{addr: "10.0.0.1:65000"}, {addr: "10.0.0.2:65000"}, {addr: "10.0.0.3:65000"}, {addr: "10.0.0.4:65000"}}
	addrs := func(ts []target) string {
		var s []string
		for _, t := range ts {
			s = append(s, t.addr)
		}
		return strings.Join(s, " ")
	}
	cases := []struct {
		a    PreheatArgs
		want string
	}{
		{PreheatArgs{}, "10.0.0.1:65000 10.0.0.2:65000 10.0.0.3:65000 10.0.0.4:65000"},
		{PreheatArgs{IPs: []string{"10.0.0.3"}, Count: 1}, "10.0.0.3:65000"},
		{PreheatArgs{Count: 2, Percentage: 100}, "10.0.0.1:65000 10.0.0.2:65000"},
		{PreheatArgs{Count: 9}, "10.0.0.1:65000 10.0.0.2:65000 10.0.0.3:65000 10.0.0.4:65000"},
		{PreheatArgs{Percentage: 50}, "10.0.0.1:65000 10.0.0.2:65000"},
		{PreheatArgs{Percentage: 1}, "10.0.0.1:65000"},
	}
	for _, c := range cases {
		got, err := narrow(ts, c.a)
		if err != nil || addrs(got) != c.want {
			t.Errorf("narrow(%+v) = %s, %v; want %s", c.a, addrs(got), err, c.want)
		}
	}
	if _, err := narrow(ts, PreheatArgs{IPs: []string{"10.9.9.9"}}); err == nil {
		t.Error("IPs matching no peer: want an error")
	}
}

// TestToOAPI: RUNNING shows as PENDING; results group per cluster.
func TestToOAPI(t *testing.T) {
	j := Job{ID: 4, Type: "preheat", State: StateRunning, CreatedAt: 1000, UpdatedAt: 2000, Result: &JobResult{Tasks: []TaskResult{{
		URL: "http://r/v2/a/blobs/sha256:1", Peers: []PeerResult{
			{Hostname: "s", Addr: "10.0.0.1:65000", State: StateSuccess, ClusterID: 1},
			{Hostname: "p", Addr: "10.0.0.2:65000", State: StateFailure, Error: "boom", ClusterID: 2},
			{Hostname: "q", Addr: "10.0.0.3:65000", State: StatePending, ClusterID: 1},
		}}}}}
	o := toOAPI(j)
	if o.State != StatePending || o.CreatedAt.UnixMilli() != 1000 || o.Result == nil || len(o.Result.JobStates[0].Results) != 2 {
		t.Fatalf("%+v", o)
	}
	g1, g2 := o.Result.JobStates[0].Results[0], o.Result.JobStates[0].Results[1]
	if g1.SchedulerClusterID != 1 || len(g1.SuccessTasks) != 1 || g1.SuccessTasks[0].IP != "10.0.0.1" || len(g1.FailureTasks) != 0 ||
		g2.SchedulerClusterID != 2 || len(g2.FailureTasks) != 1 || g2.FailureTasks[0].Description != "boom" {
		t.Fatalf("groups %+v %+v", g1, g2)
	}
}
