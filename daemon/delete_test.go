package daemon

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/peerv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon/store"
	"github.com/damselfly-io/damselfly/internal/identity"
)

// TestDeleteTaskRPC: the manager evicts a cached task; a second eviction
// finds nothing, and a bad request is refused.
func TestDeleteTaskRPC(t *testing.T) {
	blob := randomBytes(300<<10, 3)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
	url := origin.URL + "/f.bin"
	id := core.TaskID(url, core.TaskOptions{})
	if _, err := pc.Preheat(ctx, &peerv1.PreheatRequest{Task: &schedulerv1.TaskSpec{TaskId: id, Url: url}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Store().Get(id); !ok {
		t.Fatal("preheated task not cached")
	}
	resp, err := pc.DeleteTask(ctx, &peerv1.DeleteTaskRequest{TaskId: id})
	if err != nil || !resp.GetDeleted() || resp.GetContentLength() != int64(len(blob)) {
		t.Fatalf("delete: %v %v", resp, err)
	}
	if _, ok := d.Store().Get(id); ok {
		t.Fatal("task still in the cache after DeleteTask")
	}
	resp, err = pc.DeleteTask(ctx, &peerv1.DeleteTaskRequest{TaskId: id})
	if err != nil || resp.GetDeleted() {
		t.Fatalf("second delete: %v %v", resp, err)
	}
	if _, err := pc.DeleteTask(ctx, &peerv1.DeleteTaskRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("empty id: %v", err)
	}
}

// TestDeleteTaskManagerOnly: a peer server that verifies callers refuses an
// eviction from a caller that is not the manager, and keeps the task.
func TestDeleteTaskManagerOnly(t *testing.T) {
	d := startProxyDaemon(t, nil)
	if _, _, err := d.Store().GetOrCreate(store.Meta{TaskID: "victim", ContentLength: -1}); err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(identity.UnaryServerInterceptor(false)))
	peerv1.RegisterPeerServer(gs, &peerService{d: d})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = peerv1.NewPeerClient(conn).DeleteTask(context.Background(), &peerv1.DeleteTaskRequest{TaskId: "victim"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("unverified caller: %v, want PermissionDenied", err)
	}
	if _, ok := d.Store().Get("victim"); !ok {
		t.Fatal("the task was deleted for an unverified caller")
	}
}

// TestDeleteTaskWhileDownloading: a task still being fetched is not evicted
// under the download's feet; the refusal says why, and the download goes on.
func TestDeleteTaskWhileDownloading(t *testing.T) {
	blob := randomBytes(256<<10, 5)
	release := make(chan struct{})
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		http.ServeContent(w, r, "", time.Time{}, strings.NewReader(string(blob)))
	}))
	defer origin.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	d := startProxyDaemon(t, nil)
	h := d.Host()
	conn, err := grpc.NewClient(net.JoinHostPort(h.GetIp(), strconv.Itoa(int(h.GetPeerPort()))), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pc := peerv1.NewPeerClient(conn)
	url := origin.URL + "/slow.bin"
	id := core.TaskID(url, core.TaskOptions{})
	done := make(chan error, 1)
	go func() {
		_, err := pc.Preheat(context.Background(), &peerv1.PreheatRequest{Task: &schedulerv1.TaskSpec{TaskId: id, Url: url}})
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !d.downloading(id) {
		if time.Now().After(deadline) {
			t.Fatal("the download did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, err = pc.DeleteTask(context.Background(), &peerv1.DeleteTaskRequest{TaskId: id})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "being downloaded") {
		t.Fatalf("delete during download: %v, want FailedPrecondition", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("the download failed after the refused eviction: %v", err)
	}
	if tk, ok := d.Store().Get(id); !ok || !tk.Complete() {
		t.Fatal("the task is not complete in the cache")
	}
}
