package pki

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/managerv1"
	"github.com/damselfly-io/damselfly/internal/identity"
)

func TestCADirAndPin(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, created, err := LoadOrCreateCA(dir, "test CA")
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	for f, want := range map[string]os.FileMode{CAKeyFile: 0o600, CACertFile: 0o644, ".": 0o700} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != want {
			t.Fatalf("%s: %v %v, want %v", f, st.Mode().Perm(), err, want)
		}
	}
	again, created, err := LoadOrCreateCA(dir, "test CA")
	if err != nil || created || again.Hash() != ca.Hash() || !strings.HasPrefix(ca.Hash(), "sha256:") || len(ca.Hash()) != 71 {
		t.Fatalf("reload: %v %v %s %s", created, err, again.Hash(), ca.Hash())
	}
}

// echo answers ListSchedulers with the caller's identity as the server's
// interceptor established it.
type echo struct {
	managerv1.UnimplementedManagerServer
}

func (echo) ListSchedulers(ctx context.Context, _ *managerv1.ListSchedulersRequest) (*managerv1.ListSchedulersResponse, error) {
	id, ok := identity.FromContext(ctx)
	if !ok || !id.Verified {
		return nil, status.Error(codes.Unauthenticated, "unverified")
	}
	return &managerv1.ListSchedulersResponse{Schedulers: []*managerv1.Scheduler{{Hostname: id.URI().String()}}}, nil
}

func creds(t *testing.T, ca *CA, role identity.Role, host string) *Creds {
	t.Helper()
	dir := t.TempDir()
	if err := ca.IssueFiles(dir, identity.Identity{Role: role, HostID: host}, time.Hour); err != nil {
		t.Fatal(err)
	}
	c, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func serve(t *testing.T, c *Creds) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(ServerOptions(c)...)
	managerv1.RegisterManagerServer(gs, echo{})
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

func call(t *testing.T, addr string, opt grpc.DialOption) (string, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := managerv1.NewManagerClient(conn).ListSchedulers(ctx, &managerv1.ListSchedulersRequest{})
	if err != nil {
		return "", err
	}
	return resp.GetSchedulers()[0].GetHostname(), nil
}

// TestMutualTLS: the server learns the client's identity from its
// certificate; the client accepts only a server of the expected role from
// its CA; a client of another CA, or without a certificate, gets nothing.
func TestMutualTLS(t *testing.T) {
	ca, err := NewCA("a")
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, creds(t, ca, identity.RoleScheduler, "s1"))
	peer := creds(t, ca, identity.RolePeer, "p1")
	got, err := call(t, addr, DialOption(peer, identity.RoleScheduler))
	if err != nil || got != "damselfly://peer/p1" {
		t.Fatalf("peer -> scheduler: %q %v", got, err)
	}
	if _, err := call(t, addr, DialOption(peer, identity.RoleManager)); err == nil || !strings.Contains(err.Error(), "want role") {
		t.Fatalf("a scheduler answering where a manager was expected: %v", err)
	}
	if _, err := call(t, addr, DialOption(nil)); status.Code(err) != codes.Unavailable {
		t.Fatalf("plaintext client: %v", err)
	}
	other, err := NewCA("b")
	if err != nil {
		t.Fatal(err)
	}
	stranger := creds(t, other, identity.RolePeer, "p1")
	cert, key, _ := stranger.PEM()
	// Trusting the server's CA does not make the stranger's certificate good.
	if err := stranger.Set(cert, key, append(append([]byte{}, other.CertPEM...), ca.CertPEM...)); err != nil {
		t.Fatal(err)
	}
	if _, err := call(t, addr, DialOption(stranger, identity.RoleScheduler)); status.Code(err) != codes.Unavailable {
		t.Fatalf("another CA's client: %v", err)
	}
	// A server of another CA is refused by the client.
	addr2 := serve(t, creds(t, other, identity.RoleScheduler, "s2"))
	if _, err := call(t, addr2, DialOption(peer, identity.RoleScheduler)); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("another CA's server: %v", err)
	}
}

// TestInsecureServer: without credentials the server is plaintext and its
// callers are insecure, not verified.
func TestInsecureServer(t *testing.T) {
	addr := serve(t, nil)
	if _, err := call(t, addr, DialOption(nil)); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("insecure caller treated as verified: %v", err)
	}
}

func TestReloadIfChanged(t *testing.T) {
	ca, err := NewCA("a")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ca.IssueFiles(dir, identity.Identity{Role: identity.RolePeer, HostID: "old"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	c, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := c.ReloadIfChanged(); ok || err != nil {
		t.Fatalf("unchanged files reloaded: %v %v", ok, err)
	}
	time.Sleep(10 * time.Millisecond)
	if err := ca.IssueFiles(dir, identity.Identity{Role: identity.RolePeer, HostID: "new"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(time.Minute)
	for _, f := range []string{CertFile, KeyFile, TrustFile} {
		_ = os.Chtimes(filepath.Join(dir, f), past, past)
	}
	if ok, err := c.ReloadIfChanged(); !ok || err != nil || c.Identity().HostID != "new" {
		t.Fatalf("rotated files: %v %v %v", ok, err, c.Identity())
	}
}

func TestConfig(t *testing.T) {
	bad := []Config{
		{Insecure: true, Cert: "c", Key: "k", CA: "a"},
		{Insecure: true, BootstrapToken: "abcdef.0123456789abcdef"},
		{Cert: "c"},
		{Cert: "c", Key: "k"},
		{BootstrapToken: "nodot"},
		{ManagerCAHash: "md5:00"},
	}
	for _, c := range bad {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	t.Setenv(TokenEnv, "")
	if err := (Config{}).Require(); err != ErrNoTLS {
		t.Fatalf("nothing configured: %v", err)
	}
	for _, c := range []Config{{Insecure: true}, {Cert: "c", Key: "k", CA: "a"}, {BootstrapToken: "abcdef.0123456789abcdef"}} {
		if err := c.Require(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte("abcdef.0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := (Config{BootstrapTokenFile: p}).Token(); err != nil || tok != "abcdef.0123456789abcdef" {
		t.Fatalf("token file: %q %v", tok, err)
	}
	t.Setenv(TokenEnv, "ghijkl.0123456789abcdef")
	if tok, err := (Config{}).Token(); err != nil || tok != "ghijkl.0123456789abcdef" {
		t.Fatalf("token env: %q %v", tok, err)
	}
	t.Setenv(TokenEnv, "bad token")
	if _, err := (Config{}).Token(); err == nil {
		t.Fatal("malformed token from the environment accepted")
	}
}

func TestRenewAfter(t *testing.T) {
	ca, err := NewCA("a")
	if err != nil {
		t.Fatal(err)
	}
	c := creds(t, ca, identity.RolePeer, "p")
	leaf := c.Leaf()
	now := leaf.NotBefore
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	if got := RenewAfter(leaf, now); got < life*2/3-time.Second || got > life*2/3+time.Second {
		t.Fatalf("renew after %v of a %v life", got, life)
	}
	if got := RenewAfter(leaf, leaf.NotAfter); got != 0 {
		t.Fatalf("expired: %v", got)
	}
}
