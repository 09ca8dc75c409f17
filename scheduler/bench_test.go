package scheduler

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/internal/identity"
	"github.com/damselfly-io/damselfly/internal/pki"
)

// BenchmarkDecide measures one decision for a peer joining a task that
// already has 10,000 peers, half of them holding data: register (with its
// decision) and leave, in process, without gRPC.
func BenchmarkDecide(b *testing.B) {
	const peers = 10000
	s, err := New(DefaultConfig(), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	reg := func(id string, hostN int, have []uint32) *schedulerv1.Register {
		return &schedulerv1.Register{
			PeerId: id,
			Host: &schedulerv1.Host{Id: fmt.Sprintf("host-%d", hostN), Idc: "dc1",
				Location: fmt.Sprintf("r1|z%d|k%d", hostN%4, hostN%32)},
			Task: &schedulerv1.TaskSpec{TaskId: "bench"},
			Have: have,
		}
	}
	now := time.Now()
	s.mu.Lock()
	for i := range peers {
		var have []uint32
		if i%2 == 0 {
			have = []uint32{uint32(i % 64), uint32((i + 7) % 64)}
		}
		c, _ := chanConn(8)
		s.registerLocked(reg(fmt.Sprintf("p%d", i), i, have), c, now)
		s.flushLocked(now)
	}
	s.mu.Unlock()

	durs := make([]time.Duration, 0, 1<<16)
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		r := reg(fmt.Sprintf("new%d", i), peers+i%1000, nil)
		c, out := chanConn(8)
		start := time.Now()
		s.mu.Lock()
		p := s.registerLocked(r, c, now)
		s.flushLocked(now)
		s.mu.Unlock()
		if len(durs) < cap(durs) {
			durs = append(durs, time.Since(start))
		}
		if m := <-out; m.GetParents() == nil {
			b.Fatalf("want parents, got %v", m)
		}
		s.mu.Lock()
		s.removeLocked(p, now)
		s.flushLocked(now)
		s.mu.Unlock()
		i++
	}
	slices.Sort(durs)
	b.ReportMetric(float64(durs[len(durs)*99/100].Microseconds()), "p99-µs/decision")
}

// BenchmarkSwarm10kPeers runs 10,000 peers on one task against a real server
// over gRPC on loopback: all register at once, the fetcher publishes the
// shape and 64 piece digests (each batch forwarded to every peer), every
// other peer reports two pieces and asks for a reschedule, then all leave.
// It reports the p99 of the server's decision time (histogram bucket bound),
// the client-observed p99 from sending Register to the first decision and
// from Reschedule to the new parents, and the heap with all peers joined.
func BenchmarkSwarm10kPeers(b *testing.B) {
	const (
		peers   = 10000
		clients = 16
	)
	reg := prometheus.NewRegistry()
	cfg := DefaultConfig()
	s, err := New(cfg, nil, reg)
	if err != nil {
		b.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, lis, pki.ServerOptions(nil)...) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			b.Error(err)
		}
	}()
	cls := make([]schedulerv1.SchedulerClient, clients)
	for i := range cls {
		cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer cc.Close()
		cls[i] = schedulerv1.NewSchedulerClient(cc)
	}

	var regRTT, reschedRTT []time.Duration
	var heap uint64
	round := 0
	for b.Loop() {
		r, rs, h := runSwarm(b, cls, fmt.Sprintf("swarm-%d", round), peers)
		regRTT, reschedRTT = append(regRTT, r...), append(reschedRTT, rs...)
		heap = max(heap, h)
		round++
	}
	b.ReportMetric(histogramQuantile(b, reg, "damselfly_scheduler_decision_duration_seconds", 0.99)*1e6, "p99-decision-µs")
	b.ReportMetric(p99(regRTT).Seconds()*1e3, "p99-register-ms")
	b.ReportMetric(p99(reschedRTT).Seconds()*1e3, "p99-reschedule-ms")
	b.ReportMetric(float64(heap)/(1<<20), "heap-MiB")
}

func runSwarm(b *testing.B, cls []schedulerv1.SchedulerClient, task string, peers int) (reg, resched []time.Duration, heap uint64) {
	const pieces = 64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu       sync.Mutex
		failed   error
		joined   sync.WaitGroup
		reported sync.WaitGroup
		release  = make(chan struct{})
		finish   = make(chan struct{})
		all      sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		if failed == nil {
			failed = err
		}
		mu.Unlock()
	}
	reg = make([]time.Duration, peers)
	resched = make([]time.Duration, peers)
	joined.Add(peers)
	reported.Add(peers)
	all.Add(peers)
	for i := range peers {
		go func() {
			defer all.Done()
			id := fmt.Sprintf("%s-p%d", task, i)
			stream, err := cls[i%len(cls)].Announce(ctx)
			if err != nil {
				fail(err)
				joined.Done()
				reported.Done()
				return
			}
			decision := func() (*schedulerv1.SchedulerMessage, error) {
				for {
					m, err := stream.Recv()
					if err != nil || m.GetTaskInfo() == nil {
						return m, err
					}
				}
			}
			start := time.Now()
			err = stream.Send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Register{Register: &schedulerv1.Register{
				PeerId: id,
				Host:   &schedulerv1.Host{Id: "host-" + id, Idc: "dc1", Location: fmt.Sprintf("r1|z%d|k%d", i%4, i%32), UploadSlots: 8},
				Task:   &schedulerv1.TaskSpec{TaskId: task},
			}}})
			var m *schedulerv1.SchedulerMessage
			if err == nil {
				m, err = decision()
			}
			reg[i] = time.Since(start)
			joined.Done()
			if err != nil {
				fail(fmt.Errorf("peer %d register: %w", i, err))
				reported.Done()
				return
			}
			<-release
			if m.GetBackToSource() != nil {
				// The fetcher publishes the shape and the digests in batches.
				err = stream.Send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Meta{Meta: &schedulerv1.TaskMeta{
					ContentLength: pieces << 18, PieceSize: 1 << 18}}})
				for n := uint32(0); n < pieces && err == nil; n += 8 {
					var rs []*schedulerv1.PieceResult
					for k := n; k < n+8; k++ {
						rs = append(rs, originPiece(k))
					}
					err = stream.Send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Pieces{Pieces: &schedulerv1.PiecesDone{Pieces: rs}}})
				}
			} else if parents := m.GetParents().GetParents(); len(parents) > 0 {
				par := parents[0].GetPeerId()
				err = stream.Send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Pieces{Pieces: &schedulerv1.PiecesDone{Pieces: []*schedulerv1.PieceResult{
					{Number: uint32(i % pieces), ParentId: par, Length: 1 << 18, CostNs: int64(time.Millisecond)},
					{Number: uint32((i + 1) % pieces), ParentId: par, Length: 1 << 18, CostNs: int64(time.Millisecond)},
				}}}})
				if err == nil {
					start = time.Now()
					err = stream.Send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Reschedule{Reschedule: &schedulerv1.Reschedule{Reason: "bench"}}})
				}
				if err == nil {
					_, err = decision()
					resched[i] = time.Since(start)
				}
			}
			reported.Done()
			if err != nil {
				fail(fmt.Errorf("peer %d: %w", i, err))
				return
			}
			// Keep reading (refresh pushes, digests) until told to leave.
			go func() {
				for {
					if _, err := stream.Recv(); err != nil {
						return
					}
				}
			}()
			<-finish
			_ = stream.CloseSend()
		}()
	}
	joined.Wait()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heap = ms.HeapInuse
	close(release)
	reported.Wait()
	close(finish)
	all.Wait()
	if failed != nil {
		b.Fatal(failed)
	}
	resched = slices.DeleteFunc(resched, func(d time.Duration) bool { return d == 0 })
	return reg, resched, heap
}

func p99(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ds[len(ds)*99/100]
}

// histogramQuantile returns the upper bound of the bucket holding quantile q.
func histogramQuantile(b *testing.B, reg *prometheus.Registry, name string, q float64) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		target := uint64(math.Ceil(q * float64(h.GetSampleCount())))
		for _, bk := range h.GetBucket() {
			if bk.GetCumulativeCount() >= target {
				return bk.GetUpperBound()
			}
		}
		return math.Inf(1)
	}
	return math.NaN()
}

// BenchmarkPipeline measures the scheduler's work per event in one task of
// N peers under the pipeline defaults, in process and in virtual time
// through the session API (what a simulator drives): the N peers join one
// by one and each reports a piece from its parent; then every op is one
// newcomer's register and decision, a piece report and its leave, with a
// Tick every 100 ops. Compare N = 1,000 and 10,000: the cost per op must
// not grow with N. heap-B/peer is the live heap per joined peer.
func BenchmarkPipeline(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) { benchPipeline(b, n) })
	}
}

func benchPipeline(b *testing.B, n int) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s, err := New(DefaultConfig(), nil, nil, WithClock(func() time.Time { return now }), WithRand(rand.New(rand.NewPCG(1, 1))))
	if err != nil {
		b.Fatal(err)
	}
	ctx := identity.NewContext(context.Background(), identity.Identity{Insecure: true})
	var last *schedulerv1.SchedulerMessage
	send := func(m *schedulerv1.SchedulerMessage) error { last = m; return nil }
	ts := spec("bench")
	join := func(id string) *Session {
		last = nil
		sess, err := s.Open(ctx, &schedulerv1.Register{PeerId: id, Task: ts,
			Host: &schedulerv1.Host{Id: "host-" + id, UploadBps: 125e6, DownloadBps: 125e6}}, send, now)
		if err != nil {
			b.Fatal(err)
		}
		return sess
	}
	report := func(sess *Session, piece uint32) {
		parent := ""
		if ps := last.GetParents().GetParents(); len(ps) > 0 {
			parent = ps[0].GetPeerId()
		}
		err := sess.Handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Pieces{Pieces: &schedulerv1.PiecesDone{
			Pieces: []*schedulerv1.PieceResult{{Number: piece, ParentId: parent, Length: 4 << 20, CostNs: 3e8,
				Digest: benchDigest(parent, piece)}}}}}, now)
		if err != nil {
			b.Fatal(err)
		}
	}
	src := join("src")
	if err := src.Handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Meta{Meta: &schedulerv1.TaskMeta{
		ContentLength: 125 << 22, PieceSize: 4 << 20}}}, now); err != nil {
		b.Fatal(err)
	}
	report(src, 0)
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		sess := join(fmt.Sprintf("p%d", i))
		report(sess, uint32(i%125))
		if i%1000 == 999 {
			now = now.Add(time.Second)
			s.Tick(now)
		}
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	perPeer := float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
	i := 0
	for b.Loop() {
		sess := join(fmt.Sprintf("new%d", i))
		if last.GetParents() == nil {
			b.Fatalf("newcomer got %v, want parents", last)
		}
		report(sess, uint32(i%125))
		sess.Close(now)
		if i++; i%100 == 0 {
			now = now.Add(time.Second)
			s.Tick(now)
		}
	}
	b.ReportMetric(perPeer, "heap-B/peer")
}

// benchDigest is a digest for an origin piece (parent ""), nil otherwise.
func benchDigest(parent string, n uint32) []byte {
	if parent != "" {
		return nil
	}
	return pieceDigest(n)
}
