package daemon

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/source"
)

func TestAddrOnHost(t *testing.T) {
	tcp := func(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 443} }
	for _, tc := range []struct {
		a    net.Addr
		want bool
	}{
		{nil, false},
		{tcp("127.0.0.1"), true},
		{tcp("127.3.2.1"), true},
		{tcp("::1"), true},
		{tcp("::ffff:127.0.0.1"), true},
		{&net.IPAddr{IP: net.ParseIP("127.0.0.1")}, true},
		{tcp("0.0.0.0"), false},
		{&net.UnixAddr{Name: "/run/origin.sock", Net: "unix"}, false},
	} {
		if got := addrOnHost(tc.a); got != tc.want {
			t.Errorf("addrOnHost(%v) = %v, want %v", tc.a, got, tc.want)
		}
	}

	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	assigned := func(ip net.IP) bool {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
				return true
			}
		}
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() {
			if !addrOnHost(&net.TCPAddr{IP: n.IP, Port: 80}) {
				t.Errorf("addrOnHost(%s), an address of this host's interfaces, = false", n.IP)
			}
		}
	}
	// TEST-NET addresses (RFC 5737): nobody's, unless this host took one.
	for _, ip := range []string{"192.0.2.1", "198.51.100.7", "2001:db8::1"} {
		if want := assigned(net.ParseIP(ip)); addrOnHost(tcp(ip)) != want {
			t.Errorf("addrOnHost(%s) = %v, want %v", ip, !want, want)
		}
	}
}

// originScheduler pushes one task to the seed peer once gate is closed,
// sends every Announce to the origin and records the TaskMetas it gets. It
// ends the first stream when the download is done, as a scheduler restart
// would, so that the complete task is announced again (sendSource).
type originScheduler struct {
	schedulerv1.UnimplementedSchedulerServer
	task    *schedulerv1.TaskSpec
	gate    chan struct{}
	streams atomic.Int64
	metas   chan streamMeta
}

type streamMeta struct {
	stream int64
	meta   *schedulerv1.TaskMeta
}

func (f *originScheduler) SeedTasks(_ *schedulerv1.SeedTasksRequest, stream grpc.ServerStreamingServer[schedulerv1.SeedTask]) error {
	select {
	case <-f.gate:
	case <-stream.Context().Done():
		return nil
	}
	if err := stream.Send(&schedulerv1.SeedTask{Task: f.task}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (f *originScheduler) Announce(stream grpc.BidiStreamingServer[schedulerv1.PeerMessage, schedulerv1.SchedulerMessage]) error {
	n := f.streams.Add(1)
	if _, err := stream.Recv(); err != nil {
		return err
	}
	if err := stream.Send(&schedulerv1.SchedulerMessage{Msg: &schedulerv1.SchedulerMessage_BackToSource{
		BackToSource: &schedulerv1.BackToSource{Reason: "test"}}}); err != nil {
		return err
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			return nil
		}
		if meta := m.GetMeta(); meta != nil {
			select {
			case f.metas <- streamMeta{n, meta}:
			default:
			}
		}
		if m.GetDone() != nil && n == 1 {
			return nil
		}
	}
}

// remoteAs makes every answer of src look as if it came from addr.
type remoteAs struct {
	src  source.Source
	addr net.Addr
}

func (r remoteAs) Fetch(ctx context.Context, req source.Request) (*source.Response, error) {
	resp, err := r.src.Fetch(ctx, req)
	if err == nil {
		resp.Remote = r.addr
	}
	return resp, err
}

// A seed peer tells the scheduler, with the shape of what it fetches, whether
// the origin shares its uplink: an origin on this host (loopback here) does,
// one elsewhere does not unless origin_shares_uplink says so. The complete
// task's announcement to a restarted scheduler repeats it.
func TestSeedTellsOriginOnHost(t *testing.T) {
	const content = "content from the origin"
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(content))
	}))
	t.Cleanup(origin.Close)
	elsewhere := &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 443}
	if addrOnHost(elsewhere) {
		t.Skipf("this host has %s, the test's address of a remote origin", elsewhere.IP)
	}
	for _, tc := range []struct {
		name   string
		remote net.Addr // what the origin's answers say; nil: the real one
		shares bool
		want   bool
	}{
		{"origin on loopback", nil, false, true},
		{"origin elsewhere", elsewhere, false, false},
		{"origin elsewhere, uplink shared", elsewhere, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := origin.URL + "/" + t.Name()
			fake := &originScheduler{
				task:  &schedulerv1.TaskSpec{TaskId: core.TaskID(url, core.TaskOptions{}), Url: url},
				gate:  make(chan struct{}),
				metas: make(chan streamMeta, 16),
			}
			schedAddr, _ := serveScheduler(t, fake)
			d := startProxyDaemon(t, func(c *Config) {
				c.Seed = true
				c.Scheduler = schedAddr
				c.Inventory = false // the complete task keeps its own stream
				c.OriginSharesUplink = tc.shares
			})
			if tc.remote != nil {
				reg := d.src.(*source.Registry)
				h, _ := reg.Lookup("http")
				reg.Register("http", remoteAs{src: h, addr: tc.remote})
			}
			close(fake.gate)

			var fetched, announced bool
			timeout := time.After(10 * time.Second)
			for !fetched || !announced {
				select {
				case m := <-fake.metas:
					if m.meta.GetOriginOnHost() != tc.want {
						t.Fatalf("stream %d: TaskMeta %v, want origin_on_host %v", m.stream, m.meta, tc.want)
					}
					if m.meta.GetContentLength() == int64(len(content)) {
						fetched = fetched || m.stream == 1
						announced = announced || m.stream > 1
					}
				case <-timeout:
					t.Fatalf("no TaskMeta with the shape: from the download %v, from the re-announcement %v", fetched, announced)
				}
			}
		})
	}
}
