package daemon

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/peerv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
)

// TestPreheatRPC: the daemon fetches a preheated task with the given
// headers, answers once it is complete (and at once, from the cache, the
// second time), keeps the headers out of its cache, and refuses a task ID
// that does not belong to the URL or digest.
func TestPreheatRPC(t *testing.T) {
	blob := randomBytes(1<<20+5, 9)
	var authOK, gets atomic.Int64
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer preheat-secret" {
			gets.Add(1)
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		authOK.Add(1)
		gets.Add(1)
		http.ServeContent(w, r, "", time.Time{}, strings.NewReader(string(blob)))
	}))
	defer origin.Close()
	d := startProxyDaemon(t, nil)
	h := d.Host()
	conn, err := grpc.NewClient(net.JoinHostPort(h.GetIp(), strconv.Itoa(int(h.GetPeerPort()))), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pc := peerv1.NewPeerClient(conn)
	ctx := context.Background()

	url := origin.URL + "/model.bin"
	spec := &schedulerv1.TaskSpec{TaskId: core.TaskID(url, core.TaskOptions{}), Url: url, Headers: map[string]string{"Authorization": "Bearer preheat-secret"}}
	resp, err := pc.Preheat(ctx, &peerv1.PreheatRequest{Task: spec})
	if err != nil || resp.GetContentLength() != int64(len(blob)) || resp.GetCached() {
		t.Fatalf("preheat: %v %v", resp, err)
	}
	if tk, ok := d.Store().Get(spec.TaskId); !ok || !tk.Complete() {
		t.Fatal("the task is not complete in the cache")
	}
	resp, err = pc.Preheat(ctx, &peerv1.PreheatRequest{Task: spec})
	if err != nil || !resp.GetCached() {
		t.Fatalf("second preheat: %v %v", resp, err)
	}
	if g, a := gets.Load(), authOK.Load(); g == 0 || a != g {
		t.Fatalf("origin requests %d, with the header %d", g, a)
	}
	_ = filepath.Walk(d.cfg.DataDir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && fi.Size() < 1<<20 {
			if b, _ := os.ReadFile(p); strings.Contains(string(b), "preheat-secret") {
				t.Errorf("%s holds the preheat header", p)
			}
		}
		return nil
	})

	// without the header the origin refuses: the RPC fails with the reason
	bad := &schedulerv1.TaskSpec{TaskId: core.TaskID(url+"?x=1", core.TaskOptions{}), Url: url + "?x=1"}
	if _, err := pc.Preheat(ctx, &peerv1.PreheatRequest{Task: bad}); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("preheat refused by the origin: %v", err)
	}
	for i, s := range []*schedulerv1.TaskSpec{
		{TaskId: "not-the-url-task", Url: url},
		{TaskId: strings.Repeat("a", 64), Url: url, Digest: "sha256:" + strings.Repeat("b", 64)},
		{TaskId: "x", Url: "file:///etc/passwd"},
	} {
		if _, err := pc.Preheat(ctx, &peerv1.PreheatRequest{Task: s}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("case %d: %v, want InvalidArgument", i, err)
		}
	}
}
