package scheduler

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/internal/identity"
)

// TestInspectTasksAndStats: the manager-only calls describe the tasks, their
// peers and the traffic the scheduler saw (origin vs peers, latency).
func TestInspectTasksAndStats(t *testing.T) {
	ts := startServer(t, nil)
	ctx := context.Background()
	const size = 3 << 18 // three pieces of 256 KiB
	src := ts.register("task-a", "src")
	src.expectBackToSource()
	src.meta(size, 1<<18)
	src.pieces(originPiece(0), originPiece(1), originPiece(2))
	src.done(size)
	ts.waitPeer("task-a", "src", func(p *peer) bool { return p.state == stateSucceeded })
	child := ts.register("task-a", "child")
	if got := child.expectParents(); len(got) != 1 || got[0] != "src" {
		t.Fatalf("child parents %v", got)
	}
	child.pieces(&schedulerv1.PieceResult{Number: 0, ParentId: "src", Length: 1 << 18, CostNs: int64(4 * time.Millisecond)})
	ts.waitPeer("task-a", "child", func(p *peer) bool { return p.pieces.count == 1 })
	other := ts.register("task-b", "other", withHeaders(map[string]string{"Authorization": "Bearer x"}))
	other.expectBackToSource()

	list, err := ts.cl.ListTasks(ctx, &schedulerv1.ListTasksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetTasks()) != 2 {
		t.Fatalf("tasks %v", list.GetTasks())
	}
	a := list.GetTasks()[0]
	if a.GetTaskId() != tid("task-a") {
		a = list.GetTasks()[1]
	}
	if a.GetTaskId() != tid("task-a") || a.GetPeers() != 2 || a.GetDonePeers() != 1 || a.GetContentLength() != size || a.GetPieceCount() != 3 {
		t.Fatalf("task-a summary %v", a)
	}
	for _, f := range []*schedulerv1.ListTasksRequest{{TaskId: tid("task-b")}, {UrlContains: "/task-b"}} {
		l, err := ts.cl.ListTasks(ctx, f)
		if err != nil || len(l.GetTasks()) != 1 || l.GetTasks()[0].GetTaskId() != tid("task-b") {
			t.Fatalf("filter %v: %v %v", f, l, err)
		}
	}
	if l, _ := ts.cl.ListTasks(ctx, &schedulerv1.ListTasksRequest{Application: "nope"}); len(l.GetTasks()) != 0 {
		t.Fatalf("application filter: %v", l)
	}

	d, err := ts.cl.GetTask(ctx, &schedulerv1.GetTaskRequest{TaskId: tid("task-a")})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.GetPeers()) != 2 {
		t.Fatalf("peers %v", d.GetPeers())
	}
	c, s := d.GetPeers()[0], d.GetPeers()[1] // sorted: child, src
	if c.GetPeerId() != "child" || c.GetPieces() != 1 || c.GetBytes() != 1<<18 || c.GetDone() || c.GetState() != "running" {
		t.Fatalf("child %v", c)
	}
	if s.GetPeerId() != "src" || s.GetPieces() != 3 || s.GetBytes() != size || !s.GetDone() || s.GetHostname() != "src" {
		t.Fatalf("src %v", s)
	}
	if _, err := ts.cl.GetTask(ctx, &schedulerv1.GetTaskRequest{TaskId: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown task: %v", err)
	}

	st, err := ts.cl.Stats(ctx, &schedulerv1.StatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetOriginBytes() != size || st.GetPeerBytes() != 1<<18 || st.GetBackToSource() != 2 || st.GetRegistrations() != 3 {
		t.Fatalf("traffic %v", st)
	}
	if st.GetActivePeers() != 3 || st.GetActiveDownloads() != 2 || st.GetTasks() != 2 {
		t.Fatalf("peers %v", st)
	}
	if st.GetPieceLatencySamples() != 1 || st.GetPieceLatencyP99() != 0.004 {
		t.Fatalf("latency %v", st)
	}
	var srcUp int64
	for _, h := range st.GetHostTraffic() {
		if h.GetHostId() == "host-src" {
			srcUp = h.GetUploadBytes()
		}
	}
	if srcUp != 1<<18 {
		t.Fatalf("src host upload %d: %v", srcUp, st.GetHostTraffic())
	}

	// A peer that leaves is forgotten in its task.
	child.leave()
	ts.waitGone("task-a", "child")
	d, err = ts.cl.GetTask(ctx, &schedulerv1.GetTaskRequest{TaskId: tid("task-a")})
	if err != nil || len(d.GetPeers()) != 1 {
		t.Fatalf("after leave: %v %v", d, err)
	}
}

// TestInspectManagerOnly: on a server that is not in insecure mode, a
// caller without a manager certificate (here: plaintext, unverified) is
// refused every inspection call, while Announce stays open to peers.
func TestInspectManagerOnly(t *testing.T) {
	addr := serveGRPC(t, newTestScheduler(t, nil, nil), grpc.ChainUnaryInterceptor(identity.UnaryServerInterceptor(false)))
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cl := schedulerv1.NewSchedulerClient(cc)
	ctx := context.Background()
	_, err1 := cl.ListTasks(ctx, &schedulerv1.ListTasksRequest{})
	_, err2 := cl.GetTask(ctx, &schedulerv1.GetTaskRequest{TaskId: "x"})
	_, err3 := cl.Stats(ctx, &schedulerv1.StatsRequest{})
	for i, err := range []error{err1, err2, err3} {
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("call %d: %v, want PermissionDenied", i, err)
		}
	}
}

// testCA issues certificates carrying damselfly:// identities.
type testCA struct {
	t    *testing.T
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{t: t, cert: cert, key: key, pool: pool}
}

// issue returns a certificate for id (damselfly://role/host) valid for
// 127.0.0.1, for servers and clients alike.
func (ca *testCA) issue(id string, serial int64) tls.Certificate {
	ca.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		ca.t.Fatal(err)
	}
	u, _ := url.Parse(id)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: id}, URIs: []*url.URL{u},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestInspectRolesOverMTLS: with verified identities, a peer's certificate
// (a daemon asking what the swarm holds) is refused and the manager's is
// served.
func TestInspectRolesOverMTLS(t *testing.T) {
	ca := newTestCA(t)
	srvCreds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{ca.issue("damselfly://scheduler/sched-1", 2)},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.pool})
	addr := serveGRPC(t, newTestScheduler(t, nil, nil), grpc.Creds(srvCreds), grpc.ChainUnaryInterceptor(identity.UnaryServerInterceptor(false)))
	call := func(id string, serial int64) error {
		creds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{ca.issue(id, serial)}, RootCAs: ca.pool})
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		_, err = schedulerv1.NewSchedulerClient(cc).Stats(context.Background(), &schedulerv1.StatsRequest{})
		return err
	}
	if err := call("damselfly://peer/node-7", 3); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("peer certificate: %v, want PermissionDenied", err)
	}
	if err := call("damselfly://seed/seed-1", 4); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("seed certificate: %v, want PermissionDenied", err)
	}
	if err := call("damselfly://manager/mgr-1", 5); err != nil {
		t.Fatalf("manager certificate: %v", err)
	}
}
