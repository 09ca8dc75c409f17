package scheduler

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/identity"
	"github.com/damselfly-io/damselfly/internal/pki"
)

// step bounds every wait for a protocol step. Nothing here measures speed.
const step = 5 * time.Second

// quiet is how long a test listens to conclude that no message is coming.
const quiet = 300 * time.Millisecond

func testLogger() *slog.Logger {
	if testing.Verbose() && os.Getenv("SCHEDULER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// testConfig is DefaultConfig with fast timers: tests wait on events, and
// the timers only bound how long that takes.
//
// The protocol tests below were written for a mesh-shaped policy (several
// parents, children bounded by host slots, only peers holding data as
// candidates); TestPipelineDefaults covers the pipeline the defaults form.
func testConfig() Config {
	cfg := DefaultConfig()
	cfg.MaxParents, cfg.MaxChildren, cfg.PipelineParents = 4, 0, false
	cfg.Listen = "127.0.0.1:0"
	cfg.RefreshInterval = Duration(20 * time.Millisecond)
	cfg.GCInterval = Duration(20 * time.Millisecond)
	return cfg
}

// newTestScheduler is New with testConfig changed by mutate (when not
// nil), the test logger, reg (nil: no metrics) and opts; an error fails t.
func newTestScheduler(t testing.TB, mutate func(*Config), reg prometheus.Registerer, opts ...Option) *Scheduler {
	t.Helper()
	cfg := testConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := New(cfg, testLogger(), reg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serveGRPC serves s on a gRPC server with opts on 127.0.0.1:0 until the
// test ends and returns its address.
func serveGRPC(t *testing.T, s *Scheduler, opts ...grpc.ServerOption) string {
	t.Helper()
	gs := grpc.NewServer(opts...)
	s.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

// chainLength and chainPieceSize are the file a chain's first peer fetches from the origin.
const chainLength, chainPieceSize = 16 << 20, 256 << 10

// chain builds a pipeline on task over real streams: ids[0] goes back to
// source with a 16 MiB file in 256 KiB pieces, every next one gets the one
// before as its only parent. It returns the peers by id.
func (ts *testServer) chain(task string, ids ...string) map[string]*testPeer {
	ts.t.Helper()
	src := ts.register(task, ids[0])
	src.expectBackToSource()
	src.meta(chainLength, chainPieceSize)
	return chainUnder(ts.t, src, ids, func(id string) *testPeer { return ts.register(task, id) }, (*testPeer).expectParents)
}

// chain is testServer.chain in virtual time.
func (v *vsched) chain(task string, ids ...string) map[string]*vpeer {
	v.t.Helper()
	src := v.join(task, ids[0])
	src.decision()
	src.meta(chainLength, chainPieceSize)
	return chainUnder(v.t, src, ids, func(id string) *vpeer { return v.join(task, id) }, (*vpeer).parents)
}

// chainUnder joins ids[1:] in turn below src (ids[0]), checking that each
// gets the one before as its only parent.
func chainUnder[P any](t testing.TB, src P, ids []string, join func(id string) P, parents func(P) []string) map[string]P {
	t.Helper()
	ps := map[string]P{ids[0]: src}
	for i, id := range ids[1:] {
		p := join(id)
		if got := parents(p); !slices.Equal(got, []string{ids[i]}) {
			t.Fatalf("%s parents %v, want [%s]", id, got, ids[i])
		}
		ps[id] = p
	}
	return ps
}

type testServer struct {
	t    *testing.T
	s    *Scheduler
	reg  *prometheus.Registry
	cc   *grpc.ClientConn
	cl   schedulerv1.SchedulerClient
	stop func() error
	// role, when set, is the certificate role the next streams claim (only
	// a server from startIdentityServer reads it).
	role identity.Role
}

// startServer runs a real Scheduler with Serve on 127.0.0.1:0 and dials it.
func startServer(t *testing.T, mutate func(*Config), dialOpts ...grpc.DialOption) *testServer {
	t.Helper()
	reg := prometheus.NewRegistry()
	s := newTestScheduler(t, mutate, reg)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, lis, pki.ServerOptions(nil)...) }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(2 * stopGrace):
			return errors.New("Serve did not return after its context was cancelled")
		}
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, dialOpts...)
	cc, err := grpc.NewClient(lis.Addr().String(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return &testServer{t: t, s: s, reg: reg, cc: cc, cl: schedulerv1.NewSchedulerClient(cc), stop: stop}
}

// callCtx is the context of a new call: it names ts.role and host hostID
// to a server from startIdentityServer.
func (ts *testServer) callCtx(hostID string) context.Context {
	if ts.role == "" {
		return context.Background()
	}
	return metadata.AppendToOutgoingContext(context.Background(), testRoleKey, string(ts.role), testHostKey, hostID)
}

const testRoleKey, testHostKey = "x-test-role", "x-test-host"

// startIdentityServer runs a real Scheduler behind an interceptor that gives
// every call the verified identity whose role the call names in metadata
// (testServer.role), or an unverified one when it names none: a stand-in for
// mTLS client certificates.
func startIdentityServer(t *testing.T, mutate func(*Config)) *testServer {
	t.Helper()
	reg := prometheus.NewRegistry()
	s := newTestScheduler(t, mutate, reg)
	ident := func(ctx context.Context) context.Context {
		id := identity.Identity{}
		if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get(testRoleKey)) == 1 {
			id = identity.Identity{Role: identity.Role(md.Get(testRoleKey)[0]), HostID: md.Get(testHostKey)[0], Verified: true}
		}
		return identity.NewContext(ctx, id)
	}
	gs := grpc.NewServer(grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return h(srv, &ctxStream{ServerStream: ss, ctx: ident(ss.Context())})
	}), grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return h(ident(ctx), req)
	}))
	s.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { _ = s.Run(ctx); close(runDone) }()
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(func() {
		cancel()
		<-runDone
		gs.Stop()
	})
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return &testServer{t: t, s: s, reg: reg, cc: cc, cl: schedulerv1.NewSchedulerClient(cc), stop: func() error { return nil }}
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *ctxStream) Context() context.Context { return s.ctx }

type regOpt func(*schedulerv1.Register)

func withHost(h *schedulerv1.Host) regOpt { return func(r *schedulerv1.Register) { r.Host = h } }
func withHave(n ...uint32) regOpt         { return func(r *schedulerv1.Register) { r.Have = n } }
func noBackSource() regOpt                { return func(r *schedulerv1.Register) { r.DisableBackSource = true } }
func seedRequest() regOpt                 { return func(r *schedulerv1.Register) { r.SeedRequest = true } }
func withHeaders(h map[string]string) regOpt {
	return func(r *schedulerv1.Register) { r.Task.Headers = h }
}

// testPeer is a peer speaking the proto over a real stream.
type testPeer struct {
	t      *testing.T
	id     string
	host   *schedulerv1.Host
	stream schedulerv1.Scheduler_AnnounceClient
	cancel context.CancelFunc
	msgs   chan *schedulerv1.SchedulerMessage
	access chan *schedulerv1.PieceAccess
	end    chan error
}

// spec is the spec of the test task named name: URL http://origin.test/name
// and the task ID that follows from it (tid). A name that is already a task
// ID (64 hex digits) is kept.
func spec(name string) *schedulerv1.TaskSpec {
	return &schedulerv1.TaskSpec{TaskId: tid(name), Url: "http://origin.test/" + name}
}

// tid is the task ID of the test task named name (see spec).
func tid(name string) string {
	if len(name) == 64 {
		if _, err := hex.DecodeString(name); err == nil {
			return name
		}
	}
	return core.TaskID("http://origin.test/"+name, core.TaskOptions{})
}

// newHost returns a distinct host with 16 upload slots.
func (ts *testServer) newHost(name string) *schedulerv1.Host {
	return &schedulerv1.Host{Id: "host-" + name, Hostname: name, Ip: "127.0.0.1", PeerPort: 65000, UploadPort: 65002, UploadSlots: 16}
}

// open starts a stream without sending anything.
func (ts *testServer) open(id string) *testPeer {
	ts.t.Helper()
	ctx, cancel := context.WithCancel(ts.callCtx("host-" + id))
	stream, err := ts.cl.Announce(ctx)
	if err != nil {
		cancel()
		ts.t.Fatalf("announce %s: %v", id, err)
	}
	p := &testPeer{t: ts.t, id: id, stream: stream, cancel: cancel,
		msgs: make(chan *schedulerv1.SchedulerMessage, 1<<14), access: make(chan *schedulerv1.PieceAccess, 64), end: make(chan error, 1)}
	ts.t.Cleanup(cancel)
	return p
}

func (p *testPeer) startReading() {
	go func() {
		for {
			m, err := p.stream.Recv()
			if err != nil {
				p.end <- err
				return
			}
			if a := m.GetAccess(); a != nil {
				select {
				case p.access <- a:
				default:
				}
				continue
			}
			p.msgs <- m
		}
	}()
}

// register opens a stream for peer id in task and sends Register.
func (ts *testServer) register(task, id string, opts ...regOpt) *testPeer {
	ts.t.Helper()
	p := ts.open(id)
	r := &schedulerv1.Register{PeerId: id, Host: ts.newHost(id), Task: spec(task)}
	for _, o := range opts {
		o(r)
	}
	p.host = r.Host
	p.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Register{Register: r}})
	p.startReading()
	return p
}

func (p *testPeer) send(m *schedulerv1.PeerMessage) {
	p.t.Helper()
	if err := p.stream.Send(m); err != nil {
		// Send reports only io.EOF; the status is on the receiving side.
		select {
		case end := <-p.end:
			err = fmt.Errorf("%w (stream ended: %v)", err, end)
		case <-time.After(step):
		}
		p.t.Fatalf("peer %s send: %v", p.id, err)
	}
}

func (p *testPeer) next() *schedulerv1.SchedulerMessage {
	p.t.Helper()
	select {
	case m := <-p.msgs:
		return m
	case err := <-p.end:
		// The reader queues every message before it reports the end, and
		// select picks among ready cases at random: drain what came first.
		select {
		case m := <-p.msgs:
			p.end <- err // p.end is buffered: keep the end for expectEnd
			return m
		default:
		}
		p.t.Fatalf("peer %s: stream ended while waiting for a message: %v", p.id, err)
	case <-time.After(step):
		p.t.Fatalf("peer %s: no message within %v", p.id, step)
	}
	return nil
}

// nextDecision skips TaskInfo messages and returns the next decision.
func (p *testPeer) nextDecision() *schedulerv1.SchedulerMessage {
	p.t.Helper()
	for {
		m := p.next()
		if m.GetTaskInfo() == nil {
			return m
		}
	}
}

func (p *testPeer) expectBackToSource() {
	p.t.Helper()
	if m := p.nextDecision(); m.GetBackToSource() == nil {
		p.t.Fatalf("peer %s: want BackToSource, got %v", p.id, m)
	}
}

func (p *testPeer) expectWait() {
	p.t.Helper()
	if m := p.nextDecision(); m.GetWait() == nil {
		p.t.Fatalf("peer %s: want Wait, got %v", p.id, m)
	}
}

func (p *testPeer) expectFail() {
	p.t.Helper()
	if m := p.nextDecision(); m.GetFail() == nil {
		p.t.Fatalf("peer %s: want Fail, got %v", p.id, m)
	}
}

// expectParents returns the peer IDs of the next Parents message, sorted.
func (p *testPeer) expectParents() []string {
	p.t.Helper()
	m := p.nextDecision()
	if m.GetParents() == nil {
		p.t.Fatalf("peer %s: want Parents, got %v", p.id, m)
	}
	return parentIDs(m)
}

func parentIDs(m *schedulerv1.SchedulerMessage) []string {
	var ids []string
	for _, pi := range m.GetParents().GetParents() {
		ids = append(ids, pi.GetPeerId())
	}
	slices.Sort(ids)
	return ids
}

func (p *testPeer) expectTaskInfo() *schedulerv1.TaskInfo {
	p.t.Helper()
	m := p.next()
	if m.GetTaskInfo() == nil {
		p.t.Fatalf("peer %s: want TaskInfo, got %v", p.id, m)
	}
	return m.GetTaskInfo()
}

// expectQuiet asserts that no message arrives for a short while.
func (p *testPeer) expectQuiet() {
	p.t.Helper()
	select {
	case m := <-p.msgs:
		p.t.Fatalf("peer %s: unexpected message %v", p.id, m)
	case <-time.After(quiet):
	}
}

// expectEnd waits for the stream to end and returns its status code.
func (p *testPeer) expectEnd() codes.Code {
	p.t.Helper()
	deadline := time.After(step)
	for {
		select {
		case <-p.msgs:
		case err := <-p.end:
			if errors.Is(err, io.EOF) {
				return codes.OK
			}
			return status.Code(err)
		case <-deadline:
			p.t.Fatalf("peer %s: stream did not end within %v", p.id, step)
		}
	}
}

// leave ends the stream the way a crashed or finished peer does.
func (p *testPeer) leave() { p.cancel() }

// meta reports the content's shape as a fetcher whose origin shares its
// uplink (as vpeer.meta).
func (p *testPeer) meta(length int64, pieceSize uint32) {
	p.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Meta{Meta: &schedulerv1.TaskMeta{ContentLength: length, PieceSize: pieceSize, OriginOnHost: true}}})
}

func (p *testPeer) pieces(rs ...*schedulerv1.PieceResult) {
	p.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Pieces{Pieces: &schedulerv1.PiecesDone{Pieces: rs}}})
}

func (p *testPeer) reschedule(bad ...string) {
	p.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Reschedule{Reschedule: &schedulerv1.Reschedule{BadParents: bad, Reason: "test"}}})
}

func (p *testPeer) done(length int64) {
	p.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: length}}})
}

func (p *testPeer) pieceFailed(n uint32, parent string, corrupt bool) {
	p.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_PieceFailed{PieceFailed: &schedulerv1.PieceFailed{
		Number: n, ParentId: parent, Reason: "test", Corrupt: corrupt,
	}}})
}

// originPiece is a piece fetched from the origin, with its true digest.
func originPiece(n uint32) *schedulerv1.PieceResult {
	return &schedulerv1.PieceResult{Number: n, Digest: pieceDigest(n), Length: 1 << 18, CostNs: int64(time.Millisecond)}
}

// piecesFrom is pieces 0..n-1 reported as got from parent, without
// digests.
func piecesFrom(parent string, n uint32) []*schedulerv1.PieceResult {
	var rs []*schedulerv1.PieceResult
	for i := range n {
		r := originPiece(i)
		r.Digest, r.ParentId = nil, parent
		rs = append(rs, r)
	}
	return rs
}

func pieceDigest(n uint32) []byte { return core.PieceDigest(fmt.Appendf(nil, "piece-%d", n)) }

// eventually polls cond until it holds or step passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(step)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, step)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// inspect runs f on the scheduler's state under its lock.
func (ts *testServer) inspect(f func(s *Scheduler)) {
	ts.s.mu.Lock()
	defer ts.s.mu.Unlock()
	f(ts.s)
}

// waitPeer waits until peer id of task satisfies cond: a sync point for
// messages sent on one stream before a step on another.
func (ts *testServer) waitPeer(task, id string, cond func(p *peer) bool) {
	ts.t.Helper()
	eventually(ts.t, "peer "+id+" reached the expected state", func() bool {
		ok := false
		ts.inspect(func(s *Scheduler) {
			if t := s.tasks[tid(task)]; t != nil {
				if p := t.peers[id]; p != nil {
					ok = cond(p)
				}
			}
		})
		return ok
	})
}

// waitGone waits until the scheduler no longer has peer id in task.
func (ts *testServer) waitGone(task, id string) {
	ts.t.Helper()
	eventually(ts.t, "peer "+id+" removed", func() bool {
		gone := true
		ts.inspect(func(s *Scheduler) {
			if t := s.tasks[tid(task)]; t != nil && t.peers[id] != nil {
				gone = false
			}
		})
		return gone
	})
}

// metric returns the value of a counter or gauge with the given labels.
func (ts *testServer) metric(name string, labels ...string) float64 {
	ts.t.Helper()
	mfs, err := ts.reg.Gather()
	if err != nil {
		ts.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if matchLabels(m, labels) {
				switch {
				case m.Counter != nil:
					return m.GetCounter().GetValue()
				case m.Gauge != nil:
					return m.GetGauge().GetValue()
				case m.Histogram != nil:
					return float64(m.GetHistogram().GetSampleCount())
				}
			}
		}
	}
	return 0
}

func matchLabels(m *dto.Metric, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == kv[i] && l.GetValue() == kv[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// checkInvariants verifies the scheduler's state: symmetric edges, slot
// accounting, pool and counters, and above all an acyclic parent graph.
func checkInvariants(s *Scheduler) error {
	used := map[*host]int{}
	peersOn := map[*host]int{}
	for id, t := range s.tasks {
		b2s := 0
		for pid, p := range t.peers {
			if p.id != pid || p.task != t || p.state == stateLeft {
				return fmt.Errorf("task %s: bad peer entry %s (state %v)", id, pid, p.state)
			}
			peersOn[p.host]++
			if p.state == stateBackToSource {
				b2s++
			}
			if w := p.waitIdx >= 0 && p.waitIdx < len(t.waitList) && t.waitList[p.waitIdx] == p; w != (p.state == stateWaiting) {
				return fmt.Errorf("peer %s: waiting set disagrees with state %v", pid, p.state)
			}
			if p.listIdx < 0 || p.listIdx >= len(t.list) || t.list[p.listIdx] != p {
				return fmt.Errorf("peer %s: list index %d wrong", pid, p.listIdx)
			}
			if isSource(p, s.cfg.PipelineParents) != (p.poolIdx >= 0) || (p.poolIdx >= 0 && t.pool[p.poolIdx] != p) {
				return fmt.Errorf("peer %s: pool index %d wrong (state %v, pieces %d)", pid, p.poolIdx, p.state, p.pieces.count)
			}
			if len(p.parents) > 0 && (p.state == stateSucceeded || p.state == stateBackToSource) {
				return fmt.Errorf("peer %s in state %v has parents", pid, p.state)
			}
			seen := map[*peer]bool{}
			for _, l := range p.parents {
				par := l.peer
				if par == p || seen[par] {
					return fmt.Errorf("peer %s: self or duplicate parent %s", pid, par.id)
				}
				seen[par] = true
				if t.peers[par.id] != par {
					return fmt.Errorf("peer %s: parent %s not in task", pid, par.id)
				}
				if l.at >= len(par.children) || par.children[l.at] != p {
					return fmt.Errorf("peer %s: parent %s lacks the child edge at %d", pid, par.id, l.at)
				}
				if l.share == 0 && par.ord >= p.ord {
					return fmt.Errorf("peer %s (ord %d): parent %s has ord %d", pid, p.ord, par.id, par.ord)
				}
				if _, bad := p.bad[par.id]; bad {
					return fmt.Errorf("peer %s: has parent %s it reported bad", pid, par.id)
				}
			}
			for _, c := range p.children {
				if !slices.ContainsFunc(c.parents, func(l link) bool { return l.peer == p }) {
					return fmt.Errorf("peer %s: child %s lacks the parent edge", pid, c.id)
				}
				used[p.host]++
			}
		}
		for i, p := range t.open {
			if p.openIdx != i || p.poolIdx < 0 || t.peers[p.id] != p {
				return fmt.Errorf("task %s: open[%d] = %s has index %d, pool index %d", id, i, p.id, p.openIdx, p.poolIdx)
			}
		}
		if len(t.list) != len(t.peers) {
			return fmt.Errorf("task %s: list holds %d peers, map %d", id, len(t.list), len(t.peers))
		}
		if t.listIdx >= len(s.taskList) || s.taskList[t.listIdx] != t {
			return fmt.Errorf("task %s: task list index %d wrong", id, t.listIdx)
		}
		if b2s != t.backToSource {
			return fmt.Errorf("task %s: back_to_source count %d, peers in that state %d", id, t.backToSource, b2s)
		}
		for i, p := range t.pool {
			if p.poolIdx != i {
				return fmt.Errorf("task %s: pool[%d] has index %d", id, i, p.poolIdx)
			}
		}
		ords := map[uint64]string{}
		for _, p := range t.peers {
			if o, dup := ords[p.ord]; dup {
				return fmt.Errorf("task %s: peers %s and %s share ord %d", id, o, p.id, p.ord)
			}
			ords[p.ord] = p.id
		}
		if err := acyclic(t); err != nil {
			return fmt.Errorf("task %s: %w", id, err)
		}
	}
	for hid, h := range s.hosts {
		if h.used != used[h] || h.peers != peersOn[h] {
			return fmt.Errorf("host %s: used %d (edges %d), peers %d (counted %d)", hid, h.used, used[h], h.peers, peersOn[h])
		}
	}
	return nil
}

// acyclic checks that the full-rate (unpaced) edges form no cycle.
func acyclic(t *task) error {
	const (
		white = iota
		grey
		black
	)
	color := map[*peer]int{}
	var visit func(p *peer) error
	visit = func(p *peer) error {
		color[p] = grey
		for _, c := range p.children {
			if pacedChild(p, c) {
				continue // paced edges are no part of the pipeline (linkShareLocked)
			}
			switch color[c] {
			case grey:
				return fmt.Errorf("cycle through %s -> %s", p.id, c.id)
			case white:
				if err := visit(c); err != nil {
					return err
				}
			}
		}
		color[p] = black
		return nil
	}
	for _, p := range t.peers {
		if color[p] == white {
			if err := visit(p); err != nil {
				return err
			}
		}
	}
	return nil
}

func (ts *testServer) mustInvariants() {
	ts.t.Helper()
	var err error
	ts.inspect(func(s *Scheduler) { err = checkInvariants(s) })
	if err != nil {
		ts.t.Fatal(err)
	}
}

// chanConn is a conn that queues on a buffered channel, as a gRPC session's
// send does, and reports a full buffer.
func chanConn(n int) (*conn, chan *schedulerv1.SchedulerMessage) {
	out := make(chan *schedulerv1.SchedulerMessage, n)
	return &conn{send: func(m *schedulerv1.SchedulerMessage) error {
		select {
		case out <- m:
			return nil
		default:
			return errSendFull
		}
	}, cancel: func(error) {}}, out
}
