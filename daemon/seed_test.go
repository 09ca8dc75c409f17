package daemon

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/client"
	"github.com/damselfly-io/damselfly/core"
)

// fakeSeedScheduler pushes the given tasks on every SeedTasks stream and
// refuses announces (the seed then fetches on its own).
type fakeSeedScheduler struct {
	schedulerv1.UnimplementedSchedulerServer
	tasks []*schedulerv1.TaskSpec
}

func (f *fakeSeedScheduler) SeedTasks(_ *schedulerv1.SeedTasksRequest, stream grpc.ServerStreamingServer[schedulerv1.SeedTask]) error {
	for _, t := range f.tasks {
		if err := stream.Send(&schedulerv1.SeedTask{Task: t}); err != nil {
			return err
		}
	}
	<-stream.Context().Done()
	return nil
}

// A seed peer fetches only what a task says, from a swarm scheme: a seed
// task with a file:// URL (under a victim task's ID or its own) or under an
// ID that does not follow from its URL is refused; the valid one pushed
// after them is fetched.
func TestSeedRefusesTasksThatDoNotHold(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("root-only secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("public content"))
	}))
	t.Cleanup(origin.Close)
	good := origin.URL + "/good"
	victim := core.TaskID(origin.URL+"/victim", core.TaskOptions{})
	fileURL := "file://" + secret
	bad := []*schedulerv1.TaskSpec{
		{TaskId: victim, Url: fileURL},
		{TaskId: core.TaskID(fileURL, core.TaskOptions{}), Url: fileURL},
		{TaskId: victim, Url: origin.URL + "/other"},
	}
	fake := &fakeSeedScheduler{tasks: append(bad, &schedulerv1.TaskSpec{TaskId: core.TaskID(good, core.TaskOptions{}), Url: good})}
	schedAddr, _ := serveScheduler(t, fake)

	d := startProxyDaemon(t, func(c *Config) {
		c.Seed = true
		c.Scheduler = schedAddr
	})
	goodID := core.TaskID(good, core.TaskOptions{})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if tk, ok := d.Store().Get(goodID); ok && tk.Complete() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the valid seed task was not fetched")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, s := range bad {
		if _, ok := d.Store().Get(s.GetTaskId()); ok {
			t.Errorf("seed task %s (%s) was started", s.GetTaskId(), s.GetUrl())
		}
	}
}

// The headers of a task's spec (which seed peers fetch with) cannot choose
// a part, an encoding or another resource.
func TestSpecHeadersDropRepresentationHeaders(t *testing.T) {
	h := specHeaders(map[string]string{
		"range": "bytes=0-9", "Accept-Encoding": "gzip", "Host": "evil.test", "if-none-match": `"x"`,
		"X-Custom": "kept", "User-Agent": "kept-too",
	})
	if len(h) != 2 || h.Get("X-Custom") != "kept" || h.Get("User-Agent") != "kept-too" {
		t.Fatalf("spec headers %v, want only X-Custom and User-Agent", h)
	}
}

// refusingScheduler answers every Register with the Fail a scheduler sends
// for a spec that does not hold, and refuses every inventory entry for that
// reason, then ends the stream; it counts registers and entries offered.
type refusingScheduler struct {
	schedulerv1.UnimplementedSchedulerServer
	registers atomic.Int64
	offered   atomic.Int64
	streams   atomic.Int64
}

func (f *refusingScheduler) Inventory(stream grpc.BidiStreamingServer[schedulerv1.InventoryMessage, schedulerv1.InventoryReply]) error {
	f.streams.Add(1)
	if m, err := stream.Recv(); err != nil || m.GetHello() == nil {
		return status.Error(codes.InvalidArgument, "want hello")
	}
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	r := &schedulerv1.InventoryReply{Applied: m.GetBatch().GetVersion()}
	for _, e := range m.GetBatch().GetAdded() {
		f.offered.Add(1)
		r.Refused = append(r.Refused, &schedulerv1.InventoryRefused{TaskId: e.GetTask().GetTaskId(), Reason: core.TaskRefused + "test"})
	}
	if err := stream.Send(r); err != nil {
		return err
	}
	time.Sleep(100 * time.Millisecond) // the reply goes out before the end
	return status.Error(codes.Unavailable, "going away")
}

func (f *refusingScheduler) Announce(stream grpc.BidiStreamingServer[schedulerv1.PeerMessage, schedulerv1.SchedulerMessage]) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	f.registers.Add(1)
	return stream.Send(&schedulerv1.SchedulerMessage{Msg: &schedulerv1.SchedulerMessage_Fail{
		Fail: &schedulerv1.Fail{Reason: core.TaskRefused + "test"}}})
}

// A daemon holding a task its scheduler refuses (the spec does not hold
// there) fetches it itself and then stops announcing it, instead of asking
// again and again.
func TestRefusedTaskIsNotAnnouncedAgain(t *testing.T) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("content the scheduler refuses"))
	}))
	t.Cleanup(origin.Close)
	fake := &refusingScheduler{}
	schedAddr, _ := serveScheduler(t, fake)
	d := startProxyDaemon(t, func(c *Config) { c.Scheduler = schedAddr })
	c, err := client.Dial(t.Context(), d.cfg.Sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out := filepath.Join(t.TempDir(), "out")
	if _, err := c.Download(t.Context(), &daemonv1.DownloadRequest{Url: origin.URL + "/f", Output: out, Uid: -1, Gid: -1}, nil); err != nil {
		t.Fatal(err)
	}
	// The download's register, then the complete task in the inventory.
	deadline := time.Now().Add(10 * time.Second)
	for fake.offered.Load() < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("inventory entries offered %d, want the complete task offered once", fake.offered.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // a daemon that kept asking would have asked again by now
	if n := fake.offered.Load(); n != 1 {
		t.Fatalf("the refused task was offered %d times, want once", n)
	}
	if n := fake.registers.Load(); n != 1 {
		t.Fatalf("%d registers, want the download's only (no Announce stream for a complete task)", n)
	}
	if n := fake.streams.Load(); n != 1 {
		t.Fatalf("%d inventory streams, want 1: with nothing left to offer none is opened again", n)
	}
}

// deniedScheduler ends every Announce and Inventory stream at once with
// PermissionDenied (a certificate the scheduler does not accept for this)
// and counts them.
type deniedScheduler struct {
	schedulerv1.UnimplementedSchedulerServer
	announces   atomic.Int64
	inventories atomic.Int64
}

func (f *deniedScheduler) Inventory(grpc.BidiStreamingServer[schedulerv1.InventoryMessage, schedulerv1.InventoryReply]) error {
	f.inventories.Add(1)
	return status.Error(codes.PermissionDenied, "not for you")
}

func (f *deniedScheduler) Announce(stream grpc.BidiStreamingServer[schedulerv1.PeerMessage, schedulerv1.SchedulerMessage]) error {
	f.announces.Add(1)
	return status.Error(codes.PermissionDenied, "not for you")
}

// A complete task whose inventory stream the scheduler ends at once is
// offered again with backoff, not in a tight loop.
func TestAnnounceRefusedAtOnceBacksOff(t *testing.T) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("some content"))
	}))
	t.Cleanup(origin.Close)
	fake := &deniedScheduler{}
	schedAddr, _ := serveScheduler(t, fake)
	d := startProxyDaemon(t, func(c *Config) { c.Scheduler = schedAddr })
	c, err := client.Dial(t.Context(), d.cfg.Sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Download(t.Context(), &daemonv1.DownloadRequest{Url: origin.URL + "/f", Output: filepath.Join(t.TempDir(), "out"), Uid: -1, Gid: -1}, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	// 0.5 s, 1 s, 2 s of backoff: a handful within two seconds, not thousands.
	if n := fake.inventories.Load(); n > 6 || n == 0 {
		t.Fatalf("%d inventory streams within 2 s of a scheduler that refuses at once, want a few", n)
	}
	if n := fake.announces.Load(); n > 2 {
		t.Fatalf("%d announces: the complete task went on Announce streams", n)
	}
}
