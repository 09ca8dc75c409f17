package manager

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/damselfly-io/damselfly/api/managerv1"
	"github.com/damselfly-io/damselfly/internal/config"
	"github.com/damselfly-io/damselfly/internal/obs"
	"github.com/damselfly-io/damselfly/internal/pgtest"
)

var (
	pgSrv *pgtest.Server
	pgErr error
)

// TestMain starts one throwaway PostgreSQL for the package (each test gets
// its own database) and stops it at the end.
func TestMain(m *testing.M) {
	bcryptCost = bcrypt.MinCost // the hash is checked, not its cost
	pgSrv, pgErr = pgtest.Start()
	if pgErr != nil {
		fmt.Fprintln(os.Stderr, "PostgreSQL tests will be skipped:", pgErr)
	}
	code := m.Run()
	if pgSrv != nil {
		pgSrv.Stop()
	}
	os.Exit(code)
}

// forEachDB runs fn against SQLite and against PostgreSQL.
func forEachDB(t *testing.T, fn func(t *testing.T, base Config)) {
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		cfg := testConfig(t)
		fn(t, cfg)
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		if pgSrv == nil {
			t.Skipf("no PostgreSQL: %v", pgErr)
		}
		dsn, err := pgSrv.NewDatabase(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		cfg := testConfig(t)
		cfg.Database = DatabaseConfig{Type: "postgres", DSN: dsn}
		fn(t, cfg)
	})
}

func testConfig(t *testing.T) Config {
	cfg := DefaultConfig()
	cfg.DataDir = filepath.Join(t.TempDir(), "manager")
	cfg.Listen, cfg.GRPCListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.AdminPassword = "admin-secret-1"
	cfg.TLS.Insecure = true
	cfg.Jobs.PollInterval = config.Duration(50 * time.Millisecond)
	cfg.Jobs.Lease = config.Duration(3 * time.Second)
	return cfg
}

// env is one manager replica serving REST and gRPC on loopback.
type env struct {
	t     *testing.T
	m     *Manager
	url   string
	grpc  managerv1.ManagerClient
	admin string
	// stop shuts the replica down as on SIGTERM (idempotent).
	stop func()
}

func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	return newEnvLog(t, cfg, nil)
}

// newEnvLog is newEnv with the replica logging to log.
func newEnvLog(t *testing.T, cfg Config, log *slog.Logger) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	m, err := New(ctx, cfg, log, obs.NewRegistry())
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	srv := httptest.NewServer(m.Handler())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(m.GRPCServerOptions()...)
	m.RegisterGRPC(gs)
	go func() { _ = gs.Serve(lis) }()
	done := make(chan struct{})
	go func() { _ = m.Run(ctx); close(done) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			<-done
			conn.Close()
			gs.Stop()
			srv.Close()
			m.Close()
		})
	}
	t.Cleanup(stop)
	e := &env{t: t, m: m, url: srv.URL, grpc: managerv1.NewManagerClient(conn), stop: stop}
	e.admin = e.signIn("admin", cfg.AdminPassword)
	return e
}

// do sends a request and decodes the JSON answer into out (if not nil).
func (e *env) do(method, path, token string, body any, out any) (int, http.Header) {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = bytes.NewBufferString(b)
	default:
		buf, _ := json.Marshal(b)
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			e.t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode, resp.Header
}

// must is do that fails the test on a status other than want.
func (e *env) must(want int, method, path, token string, body any, out any) {
	e.t.Helper()
	var raw json.RawMessage
	code, _ := e.do(method, path, token, body, &raw)
	if code != want {
		e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, code, want, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			e.t.Fatalf("%s %s: %v", method, path, err)
		}
	}
}

func (e *env) signIn(name, pass string) string {
	e.t.Helper()
	var out struct {
		Token string `json:"token"`
	}
	e.must(http.StatusOK, "POST", "/api/v1/users/signin", "", map[string]string{"name": name, "password": pass}, &out)
	if out.Token == "" {
		e.t.Fatal("sign-in returned no token")
	}
	return out.Token
}

// waitJob polls the job until it leaves PENDING and RUNNING (bounded).
func (e *env) waitJob(id int64) Job {
	e.t.Helper()
	var j Job
	for range 600 {
		e.must(http.StatusOK, "GET", fmt.Sprintf("/api/v1/jobs/%d", id), e.admin, nil, &j)
		if j.State == StateSuccess || j.State == StateFailure {
			return j
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("job %d still %s", id, j.State)
	return j
}
