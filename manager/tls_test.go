package manager

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/managerv1"
	"github.com/damselfly-io/damselfly/internal/config"
	"github.com/damselfly-io/damselfly/internal/identity"
	"github.com/damselfly-io/damselfly/internal/obs"
	"github.com/damselfly-io/damselfly/internal/pki"
)

// tlsEnv is a manager serving gRPC with mutual TLS from its own CA.
type tlsEnv struct {
	m    *Manager
	addr string
}

func newTLSEnv(t *testing.T, mutate func(*Config)) *tlsEnv {
	t.Helper()
	cfg := testConfig(t)
	cfg.TLS.Insecure = false
	if mutate != nil {
		mutate(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m, err := New(ctx, cfg, nil, obs.NewRegistry())
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(m.GRPCServerOptions()...)
	m.RegisterGRPC(gs)
	go func() { _ = gs.Serve(lis) }()
	go m.renewSelf(ctx)
	t.Cleanup(func() { cancel(); gs.Stop(); m.Close() })
	return &tlsEnv{m: m, addr: lis.Addr().String()}
}

// client dials the manager as id, with a certificate from ca (the
// manager's own when nil).
func (e *tlsEnv) client(t *testing.T, ca *pki.CA, role identity.Role, host string) managerv1.ManagerClient {
	t.Helper()
	if ca == nil {
		ca = e.m.ca
	}
	dir := t.TempDir()
	if err := ca.IssueFiles(dir, identity.Identity{Role: role, HostID: host}, time.Hour); err != nil {
		t.Fatal(err)
	}
	c, err := pki.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	// The manager's CA vouches for the server even when the client's
	// certificate comes from elsewhere.
	if ca != e.m.ca {
		cert, key, _ := c.PEM()
		if err := c.Set(cert, key, append(append([]byte{}, ca.CertPEM...), e.m.ca.CertPEM...)); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := grpc.NewClient(e.addr, pki.DialOption(c, identity.RoleManager))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return managerv1.NewManagerClient(conn)
}

// noCertClient speaks TLS to the manager (trusting its CA) without a
// client certificate: what a stranger on the network can do.
func (e *tlsEnv) noCertClient(t *testing.T) managerv1.ManagerClient {
	t.Helper()
	j := pki.Join{CAHash: e.m.CAHash()}
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(j.PinnedConfig())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return managerv1.NewManagerClient(conn)
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: got %v, want %v", what, err, code)
	}
}

func register(c managerv1.ManagerClient, typ managerv1.ComponentType, host, ip string, port int32) (*managerv1.RegisterResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Register(ctx, &managerv1.RegisterRequest{Type: typ, HostId: host, Hostname: host, Ip: ip, Port: port})
}

const (
	typSched = managerv1.ComponentType_COMPONENT_TYPE_SCHEDULER
	typSeed  = managerv1.ComponentType_COMPONENT_TYPE_SEED_PEER
)

// TestManagerRoleChecks: every registration is bound to the caller's
// certificate — its role decides what it may register as, its host what it
// may register and keep alive; callers without a certificate get nothing
// but IssueCertificate.
func TestManagerRoleChecks(t *testing.T) {
	e := newTLSEnv(t, nil)
	ctx := context.Background()

	anon := e.noCertClient(t)
	_, err := register(anon, typSeed, "rogue", "127.0.0.1", 4000)
	wantCode(t, "register without a certificate", err, codes.Unauthenticated)
	_, err = anon.ListSchedulers(ctx, &managerv1.ListSchedulersRequest{Ip: "127.0.0.1"})
	wantCode(t, "list schedulers without a certificate", err, codes.Unauthenticated)
	_, err = anon.KeepAlive(ctx, &managerv1.KeepAliveRequest{Type: typSeed, Id: 1})
	wantCode(t, "keepalive without a certificate", err, codes.Unauthenticated)

	peer := e.client(t, nil, identity.RolePeer, "p1")
	_, err = register(peer, typSeed, "p1", "127.0.0.1", 4001)
	wantCode(t, "peer registers as seed peer", err, codes.PermissionDenied)
	_, err = register(peer, typSched, "p1", "127.0.0.1", 4002)
	wantCode(t, "peer registers as scheduler", err, codes.PermissionDenied)
	if _, err := peer.ListSchedulers(ctx, &managerv1.ListSchedulersRequest{Ip: "127.0.0.1", HostId: "p1", PeerPort: 9}); err != nil {
		t.Fatalf("a peer lists its schedulers: %v", err)
	}
	_, err = peer.ListSchedulers(ctx, &managerv1.ListSchedulersRequest{Ip: "127.0.0.1", HostId: "p2", PeerPort: 9})
	wantCode(t, "peer records another host", err, codes.PermissionDenied)

	seedA := e.client(t, nil, identity.RoleSeed, "seed-a")
	seedB := e.client(t, nil, identity.RoleSeed, "seed-b")
	ra, err := register(seedA, typSeed, "seed-a", "127.0.0.1", 4010)
	if err != nil {
		t.Fatalf("seed registers: %v", err)
	}
	if _, err := register(seedA, typSeed, "", "127.0.0.1", 4010); err != nil {
		t.Fatalf("seed re-registers without naming its host: %v", err)
	}
	_, err = register(seedB, typSeed, "seed-a", "127.0.0.1", 4011)
	wantCode(t, "seed registers under another host id", err, codes.PermissionDenied)
	_, err = register(seedB, typSeed, "seed-b", "127.0.0.1", 4010)
	wantCode(t, "seed takes over another seed's address", err, codes.PermissionDenied)
	_, err = seedB.KeepAlive(ctx, &managerv1.KeepAliveRequest{Type: typSeed, Id: ra.GetId()})
	wantCode(t, "seed keeps another seed's record alive", err, codes.PermissionDenied)
	if _, err := seedA.KeepAlive(ctx, &managerv1.KeepAliveRequest{Type: typSeed, Id: ra.GetId()}); err != nil {
		t.Fatalf("seed keeps itself alive: %v", err)
	}
	_, err = register(seedA, typSched, "seed-a", "127.0.0.1", 4012)
	wantCode(t, "seed registers as scheduler", err, codes.PermissionDenied)

	sched := e.client(t, nil, identity.RoleScheduler, "sched-1")
	if _, err := register(sched, typSched, "sched-1", "127.0.0.1", 8002); err != nil {
		t.Fatalf("scheduler registers: %v", err)
	}

	other, err := pki.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	stranger := e.client(t, other, identity.RoleScheduler, "sched-x")
	_, err = register(stranger, typSched, "sched-x", "127.0.0.1", 8003)
	if err == nil {
		t.Fatal("a certificate from another CA registered a scheduler")
	}
	if c := status.Code(err); c != codes.Unauthenticated && c != codes.Unavailable {
		t.Fatalf("another CA's certificate: %v", err)
	}
}

// TestBootstrapJoin: the token gets a certificate whose key stays with the
// joiner (kept 0600 in its dir, reused at the next start); a wrong token, a
// wrong pin, no pin, and a role the token may not ask for are refused with
// errors that say so.
func TestBootstrapJoin(t *testing.T) {
	e := newTLSEnv(t, nil)
	ctx := context.Background()
	dir := t.TempDir()
	j := pki.Join{Manager: e.addr, Token: e.m.BootstrapToken(), CAHash: e.m.CAHash(), Role: identity.RoleSeed, HostID: "seed-1", Dir: dir, Log: testLog()}
	c, err := j.Creds(ctx)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	if id := c.Identity(); id.Role != identity.RoleSeed || id.HostID != "seed-1" {
		t.Fatalf("joined as %v", id)
	}
	for _, f := range []string{pki.CertFile, pki.KeyFile, pki.TrustFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, st, err)
		}
	}
	conn, err := grpc.NewClient(e.addr, pki.DialOption(c, identity.RoleManager))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := register(managerv1.NewManagerClient(conn), typSeed, "seed-1", "127.0.0.1", 5000); err != nil {
		t.Fatalf("joined seed registers: %v", err)
	}
	again, err := j.Creds(ctx)
	if err != nil || again.Leaf().SerialNumber.Cmp(c.Leaf().SerialNumber) != 0 {
		t.Fatalf("second start did not reuse the kept certificate: %v", err)
	}

	fresh := func(mut func(*pki.Join)) error {
		jj := j
		jj.Dir = t.TempDir()
		mut(&jj)
		_, err := jj.Creds(ctx)
		return err
	}
	if err := fresh(func(j *pki.Join) { j.Token = "abcdef.0123456789abcdef0123" }); err == nil || !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), "bootstrap token") {
		t.Fatalf("wrong token: %v", err)
	}
	if err := fresh(func(j *pki.Join) { j.CAHash = "sha256:" + strings.Repeat("ab", 32) }); err == nil || !strings.Contains(err.Error(), "manager-ca-hash") {
		t.Fatalf("wrong pin: %v", err)
	}
	if err := fresh(func(j *pki.Join) { j.CAHash = "" }); err == nil || !strings.Contains(err.Error(), "pinned") {
		t.Fatalf("no pin: %v", err)
	}
	if err := fresh(func(j *pki.Join) { j.Role = identity.RoleScheduler }); err == nil || !strings.Contains(err.Error(), "may not ask for role scheduler") {
		t.Fatalf("scheduler role with the default token: %v", err)
	}
	// A certificate renews only itself.
	peer := e.client(t, nil, identity.RolePeer, "p1")
	key, _ := pki.NewKey()
	_, err = peer.IssueCertificate(ctx, &managerv1.IssueCertificateRequest{Role: "seed", HostId: "p1", Csr: csrFor(t, key)})
	wantCode(t, "peer certificate asks for a seed certificate", err, codes.PermissionDenied)
}

// TestCertificateRenewal: with a short TTL the joiner renews before expiry
// over mutual TLS, the running client keeps working with the new
// certificate, and the file on disk is replaced.
func TestCertificateRenewal(t *testing.T) {
	e := newTLSEnv(t, func(c *Config) { c.CA.CertTTL = config.Duration(3 * time.Second) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	j := pki.Join{Manager: e.addr, Token: e.m.BootstrapToken(), CAHash: e.m.CAHash(), Role: identity.RoleSeed, HostID: "seed-r", Dir: dir, Log: testLog()}
	c, err := j.Creds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := c.Leaf()
	go j.Maintain(ctx, c)
	conn, err := grpc.NewClient(e.addr, pki.DialOption(c, identity.RoleManager))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	mc := managerv1.NewManagerClient(conn)
	if _, err := register(mc, typSeed, "seed-r", "127.0.0.1", 5001); err != nil {
		t.Fatalf("register: %v", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for c.Leaf().SerialNumber.Cmp(first.SerialNumber) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("certificate not renewed")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if id := c.Identity(); !c.Leaf().NotAfter.After(first.NotAfter) || id.Role != identity.RoleSeed || id.HostID != "seed-r" {
		t.Fatalf("renewed certificate: %v until %v", c.Identity(), c.Leaf().NotAfter)
	}
	onDisk, err := pki.LoadDir(dir)
	if err != nil || onDisk.Leaf().SerialNumber.Cmp(c.Leaf().SerialNumber) != 0 {
		t.Fatalf("renewed certificate not saved: %v", err)
	}
	// Past the first certificate's expiry, new connections still work.
	time.Sleep(time.Until(first.NotAfter) + 100*time.Millisecond)
	conn2, err := grpc.NewClient(e.addr, pki.DialOption(c, identity.RoleManager))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	if _, err := register(managerv1.NewManagerClient(conn2), typSeed, "seed-r", "127.0.0.1", 5001); err != nil {
		t.Fatalf("register with the renewed certificate: %v", err)
	}
}

func testLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

func csrFor(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
