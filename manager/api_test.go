package manager

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/managerv1"
	"github.com/damselfly-io/damselfly/internal/config"
)

func TestAuthAndUsers(t *testing.T) {
	forEachDB(t, func(t *testing.T, cfg Config) {
		e := newEnv(t, cfg)
		if code, _ := e.do("GET", "/healthy", "", nil, nil); code != http.StatusOK {
			t.Fatalf("healthy without auth: %d", code)
		}
		var msg map[string]string
		if code, h := e.do("GET", "/api/v1/clusters", "", nil, &msg); code != http.StatusUnauthorized || msg["message"] == "" || h.Get("WWW-Authenticate") == "" {
			t.Fatalf("no token: %d %v", code, msg)
		}
		if code, _ := e.do("GET", "/api/v1/clusters", "dfs_forged", nil, nil); code != http.StatusUnauthorized {
			t.Fatalf("forged token: %d", code)
		}
		if code, _ := e.do("POST", "/api/v1/users/signin", "", map[string]string{"name": "admin", "password": "wrong-password"}, nil); code != http.StatusUnauthorized {
			t.Fatalf("wrong password: %d", code)
		}
		if code, _ := e.do("POST", "/api/v1/users/signin", "", map[string]string{"name": "nobody", "password": "whatever1"}, nil); code != http.StatusUnauthorized {
			t.Fatalf("unknown user: %d", code)
		}
		if code, _ := e.do("POST", "/api/v1/users/signin", "", `{"name":`, &msg); code != http.StatusBadRequest || msg["message"] == "" {
			t.Fatalf("broken JSON: %d %v", code, msg)
		}
		if code, _ := e.do("POST", "/api/v1/users/signin", "", map[string]string{"name": "admin"}, nil); code != http.StatusBadRequest {
			t.Fatalf("no password: %d", code)
		}

		// users
		var guest User
		e.must(http.StatusCreated, "POST", "/api/v1/users", e.admin, map[string]string{"name": "ops", "password": "guest-pass-1"}, &guest)
		if guest.Role != RoleGuest {
			t.Fatalf("default role %q", guest.Role)
		}
		e.must(http.StatusConflict, "POST", "/api/v1/users", e.admin, map[string]string{"name": "ops", "password": "guest-pass-1"}, nil)
		e.must(http.StatusBadRequest, "POST", "/api/v1/users", e.admin, map[string]string{"name": "x", "password": "guest-pass-1", "role": "root"}, nil)
		e.must(http.StatusBadRequest, "POST", "/api/v1/users", e.admin, map[string]string{"name": "y", "password": "short"}, nil)
		e.must(http.StatusBadRequest, "POST", "/api/v1/users", e.admin, map[string]any{"name": "z", "password": "long-enough", "admin": true}, nil)
		gtok := e.signIn("ops", "guest-pass-1")
		var me User
		e.must(http.StatusOK, "GET", "/api/v1/users/me", gtok, nil, &me)
		if me.Name != "ops" || me.ID != guest.ID {
			t.Fatalf("me: %+v", me)
		}
		// a guest reads but does not change
		e.must(http.StatusOK, "GET", "/api/v1/clusters", gtok, nil, nil)
		e.must(http.StatusOK, "GET", "/api/v1/jobs", gtok, nil, nil)
		e.must(http.StatusForbidden, "POST", "/api/v1/clusters", gtok, map[string]string{"name": "c"}, nil)
		e.must(http.StatusForbidden, "POST", "/api/v1/jobs", gtok, map[string]any{"type": "preheat"}, nil)
		e.must(http.StatusForbidden, "GET", "/api/v1/users", gtok, nil, nil)
		e.must(http.StatusForbidden, "PUT", "/api/v1/users/1/password", gtok, map[string]string{"password": "taken-over"}, nil)

		// 404 and 400 on paths
		e.must(http.StatusNotFound, "GET", "/api/v1/clusters/9999", e.admin, nil, nil)
		e.must(http.StatusNotFound, "GET", "/api/v1/users/9999", e.admin, nil, nil)
		e.must(http.StatusNotFound, "GET", "/api/v1/nothing", e.admin, nil, nil)
		e.must(http.StatusBadRequest, "GET", "/api/v1/jobs/abc", e.admin, nil, nil)
		e.must(http.StatusBadRequest, "GET", "/api/v1/jobs?per_page=1000", e.admin, nil, nil)

		// personal access tokens: shown once, stored hashed, revocable
		var pat struct {
			ID    int64  `json:"id"`
			Token string `json:"token"`
		}
		e.must(http.StatusCreated, "POST", "/api/v1/tokens", gtok, map[string]string{"name": "ci", "ttl": "720h"}, &pat)
		e.must(http.StatusBadRequest, "POST", "/api/v1/tokens", gtok, map[string]string{"name": "ci2", "ttl": "soon"}, nil)
		e.must(http.StatusOK, "GET", "/api/v1/users/me", pat.Token, nil, &me)
		if me.Name != "ops" {
			t.Fatalf("PAT user %+v", me)
		}
		var toks []map[string]any
		e.must(http.StatusOK, "GET", "/api/v1/tokens", gtok, nil, &toks)
		if len(toks) != 1 || toks[0]["token"] != nil || toks[0]["name"] != "ci" {
			t.Fatalf("token list %v", toks)
		}
		var n int
		if err := e.m.db.QueryRow(context.Background(), "SELECT COUNT(*) FROM tokens WHERE hash = ? OR hash = ?", pat.Token, gtok).Scan(&n); err != nil || n != 0 {
			t.Fatalf("a token is stored in plain text (%d rows, %v)", n, err)
		}
		var hash string
		if err := e.m.db.QueryRow(context.Background(), "SELECT password_hash FROM users WHERE name = ?", "ops").Scan(&hash); err != nil || !strings.HasPrefix(hash, "$2") {
			t.Fatalf("password not bcrypt-hashed: %q %v", hash, err)
		}
		e.must(http.StatusNoContent, "DELETE", fmt.Sprintf("/api/v1/tokens/%d", pat.ID), gtok, nil, nil)
		e.must(http.StatusUnauthorized, "GET", "/api/v1/users/me", pat.Token, nil, nil)
		e.must(http.StatusNotFound, "DELETE", fmt.Sprintf("/api/v1/tokens/%d", pat.ID), gtok, nil, nil)

		// a password change ends sessions
		e.must(http.StatusNoContent, "PUT", fmt.Sprintf("/api/v1/users/%d/password", guest.ID), gtok, map[string]string{"password": "guest-pass-2"}, nil)
		e.must(http.StatusUnauthorized, "GET", "/api/v1/users/me", gtok, nil, nil)
		e.signIn("ops", "guest-pass-2")

		var users []User
		_, h := e.do("GET", "/api/v1/users?per_page=1", e.admin, nil, &users)
		if len(users) != 1 || h.Get("X-Total-Count") != "2" {
			t.Fatalf("users page: %v total %s", users, h.Get("X-Total-Count"))
		}
		e.must(http.StatusBadRequest, "DELETE", "/api/v1/users/1", e.admin, nil, nil)
		e.must(http.StatusNoContent, "DELETE", fmt.Sprintf("/api/v1/users/%d", guest.ID), e.admin, nil, nil)
		e.must(http.StatusNotFound, "GET", fmt.Sprintf("/api/v1/users/%d", guest.ID), e.admin, nil, nil)

		resp, err := http.Get(e.url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{`damselfly_manager_http_requests_total{code="401",method="GET"}`, `damselfly_manager_http_requests_total{code="403",method="POST"}`} {
			if !strings.Contains(string(b), want) {
				t.Errorf("metrics lack %s", want)
			}
		}
	})
}

func TestFirstAdminRandomPassword(t *testing.T) {
	cfg := testConfig(t)
	cfg.AdminPassword = ""
	t.Setenv("DAMSELFLY_ADMIN_PASSWORD", "")
	m, err := New(context.Background(), cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	pass := m.InitialPassword()
	m.Close()
	if len(pass) < 16 {
		t.Fatalf("random admin password %q", pass)
	}
	// The second start finds the admin and prints nothing.
	m, err = New(context.Background(), cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.InitialPassword() != "" {
		t.Fatal("the admin password was made again on restart")
	}
	if _, _, _, err := m.signIn(context.Background(), "admin", pass); err != nil {
		t.Fatalf("sign in with the printed password: %v", err)
	}

	// The environment variable wins over the configuration.
	cfg = testConfig(t)
	t.Setenv("DAMSELFLY_ADMIN_PASSWORD", "from-the-environment")
	m2, err := New(context.Background(), cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if m2.InitialPassword() != "" {
		t.Fatal("a configured password was printed")
	}
	if _, _, _, err := m2.signIn(context.Background(), "admin", "from-the-environment"); err != nil {
		t.Fatalf("sign in with the environment's password: %v", err)
	}
	if _, _, _, err := m2.signIn(context.Background(), "admin", cfg.AdminPassword); err == nil {
		t.Fatal("the configured password works though the environment overrides it")
	}
}

func TestApplications(t *testing.T) {
	forEachDB(t, func(t *testing.T, cfg Config) {
		e := newEnv(t, cfg)
		var a Application
		e.must(http.StatusCreated, "POST", "/api/v1/applications", e.admin, map[string]any{"name": "ml", "url": "https://ml.example", "priority": 3}, &a)
		e.must(http.StatusBadRequest, "POST", "/api/v1/applications", e.admin, map[string]any{"name": "bad name!"}, nil)
		e.must(http.StatusBadRequest, "POST", "/api/v1/applications", e.admin, map[string]any{"name": "p", "priority": 11}, nil)
		e.must(http.StatusConflict, "POST", "/api/v1/applications", e.admin, map[string]any{"name": "ml"}, nil)
		e.must(http.StatusOK, "PATCH", fmt.Sprintf("/api/v1/applications/%d", a.ID), e.admin, map[string]any{"description": "models"}, &a)
		if a.Description != "models" || a.Priority != 3 || a.URL != "https://ml.example" {
			t.Fatalf("patched %+v", a)
		}
		e.must(http.StatusNoContent, "DELETE", fmt.Sprintf("/api/v1/applications/%d", a.ID), e.admin, nil, nil)
		e.must(http.StatusNotFound, "GET", fmt.Sprintf("/api/v1/applications/%d", a.ID), e.admin, nil, nil)
		e.must(http.StatusNotFound, "PATCH", fmt.Sprintf("/api/v1/applications/%d", a.ID), e.admin, map[string]any{"description": "x"}, nil)
	})
}

func TestClustersRegistrationAndDiscovery(t *testing.T) {
	forEachDB(t, func(t *testing.T, cfg Config) {
		cfg.KeepAliveInterval = config.Duration(100 * time.Millisecond)
		cfg.KeepAliveTimeout = config.Duration(1500 * time.Millisecond)
		e := newEnv(t, cfg)
		ctx := context.Background()

		var c Cluster
		e.must(http.StatusCreated, "POST", "/api/v1/clusters", e.admin, map[string]any{"name": "dc2", "scopes": map[string]any{"idc": "dc2|dc2b", "cidrs": []string{"10.2.0.0/16"}}}, &c)
		e.must(http.StatusBadRequest, "POST", "/api/v1/clusters", e.admin, map[string]any{"name": "bad", "scopes": map[string]any{"cidrs": []string{"10.2.0.0"}}}, nil)
		e.must(http.StatusBadRequest, "PATCH", "/api/v1/clusters/1", e.admin, map[string]any{"is_default": false}, nil)
		e.must(http.StatusBadRequest, "DELETE", "/api/v1/clusters/1", e.admin, nil, nil)
		e.must(http.StatusOK, "PATCH", fmt.Sprintf("/api/v1/clusters/%d", c.ID), e.admin, map[string]any{"scopes": map[string]any{"idc": "dc2|dc2b", "location": "eu|west", "cidrs": []string{"10.2.0.0/16"}}}, &c)
		if c.Scopes.Location != "eu|west" || len(c.Scopes.CIDRs) != 1 {
			t.Fatalf("patched %+v", c)
		}

		reg := func(ip string, port int32, cluster int64) int64 {
			resp, err := e.grpc.Register(ctx, &managerv1.RegisterRequest{Type: managerv1.ComponentType_COMPONENT_TYPE_SCHEDULER, Hostname: "s-" + ip, Ip: ip, Port: port, ClusterId: cluster})
			if err != nil {
				t.Fatal(err)
			}
			return resp.GetId()
		}
		a := reg("127.0.0.1", 8002, 0)
		b := reg("127.0.0.2", 8002, c.ID)
		if again := reg("127.0.0.1", 8002, 0); again != a {
			t.Fatalf("re-register made a new record %d (was %d)", again, a)
		}
		if _, err := e.grpc.Register(ctx, &managerv1.RegisterRequest{Type: managerv1.ComponentType_COMPONENT_TYPE_SCHEDULER, Ip: "nope", Port: 1}); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("bad IP: %v", err)
		}
		if _, err := e.grpc.Register(ctx, &managerv1.RegisterRequest{Type: managerv1.ComponentType_COMPONENT_TYPE_SCHEDULER, Ip: "127.0.0.9", Port: 1, ClusterId: 999}); status.Code(err) != codes.NotFound {
			t.Fatalf("unknown cluster: %v", err)
		}
		keep := []int64{a, b}
		list := func(ip, idc, location, host string) []string {
			// Both stay alive while scopes are checked (a loaded machine
			// may take longer than the short keepalive timeout between two
			// lists); A stops below.
			for _, id := range keep {
				if _, err := e.grpc.KeepAlive(ctx, &managerv1.KeepAliveRequest{Type: managerv1.ComponentType_COMPONENT_TYPE_SCHEDULER, Id: id}); err != nil {
					t.Fatal(err)
				}
			}
			resp, err := e.grpc.ListSchedulers(ctx, &managerv1.ListSchedulersRequest{Ip: ip, Idc: idc, Location: location, HostId: host, Hostname: host, PeerPort: 65000})
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, s := range resp.GetSchedulers() {
				out = append(out, net.JoinHostPort(s.GetIp(), strconv.Itoa(int(s.GetPort()))))
			}
			return out
		}
		for _, tc := range []struct {
			ip, idc, loc, want string
		}{
			{"192.168.1.5", "", "", "127.0.0.1:8002"},
			{"192.168.1.5", "dc2b", "", "127.0.0.2:8002"},
			{"10.2.9.9", "", "", "127.0.0.2:8002"},
			{"192.168.1.5", "", "eu|west|rack1", "127.0.0.2:8002"},
			{"192.168.1.5", "", "eu|westish", "127.0.0.1:8002"},
		} {
			if got := list(tc.ip, tc.idc, tc.loc, "host-"+tc.ip); len(got) != 1 || got[0] != tc.want {
				t.Fatalf("daemon %s idc %q location %q: schedulers %v, want %s", tc.ip, tc.idc, tc.loc, got, tc.want)
			}
		}
		var peers []Peer
		e.must(http.StatusOK, "GET", "/api/v1/peers", e.admin, nil, &peers)
		if len(peers) != 2 {
			t.Fatalf("known peers %+v", peers)
		}

		// keepalive: B stays, A stops and goes inactive
		keep = []int64{b}
		var sa Component
		for i := 0; ; i++ {
			if _, err := e.grpc.KeepAlive(ctx, &managerv1.KeepAliveRequest{Type: managerv1.ComponentType_COMPONENT_TYPE_SCHEDULER, Id: b}); err != nil {
				t.Fatal(err)
			}
			e.must(http.StatusOK, "GET", fmt.Sprintf("/api/v1/schedulers/%d", a), e.admin, nil, &sa)
			if sa.State == "inactive" {
				break
			}
			if i > 400 {
				t.Fatal("a scheduler without keepalives stays active")
			}
			time.Sleep(50 * time.Millisecond)
		}
		var sb Component
		if _, err := e.grpc.KeepAlive(ctx, &managerv1.KeepAliveRequest{Type: managerv1.ComponentType_COMPONENT_TYPE_SCHEDULER, Id: b}); err != nil {
			t.Fatal(err)
		}
		e.must(http.StatusOK, "GET", fmt.Sprintf("/api/v1/schedulers/%d", b), e.admin, nil, &sb)
		if sb.State != "active" {
			t.Fatalf("kept-alive scheduler is %s", sb.State)
		}
		if got := list("192.168.1.5", "", "", "h1"); len(got) != 0 {
			t.Fatalf("inactive scheduler still handed out: %v", got)
		}
		var active []Component
		e.must(http.StatusOK, "GET", "/api/v1/schedulers?state=active", e.admin, nil, &active)
		if len(active) != 1 || active[0].ID != b {
			t.Fatalf("active schedulers %+v", active)
		}
		if _, err := e.grpc.KeepAlive(ctx, &managerv1.KeepAliveRequest{Type: managerv1.ComponentType_COMPONENT_TYPE_SCHEDULER, Id: 4242}); status.Code(err) != codes.NotFound {
			t.Fatalf("keepalive of an unknown id: %v", err)
		}
		// seed peers have their own table
		if _, err := e.grpc.Register(ctx, &managerv1.RegisterRequest{Type: managerv1.ComponentType_COMPONENT_TYPE_SEED_PEER, Hostname: "seed", Ip: "127.0.0.3", Port: 65010, UploadPort: 65012}); err != nil {
			t.Fatal(err)
		}
		var seeds []Component
		e.must(http.StatusOK, "GET", "/api/v1/seed-peers", e.admin, nil, &seeds)
		if len(seeds) != 1 || seeds[0].UploadPort != 65012 || seeds[0].State != "active" {
			t.Fatalf("seed peers %+v", seeds)
		}
		e.must(http.StatusNoContent, "DELETE", fmt.Sprintf("/api/v1/seed-peers/%d", seeds[0].ID), e.admin, nil, nil)
		e.must(http.StatusNotFound, "GET", fmt.Sprintf("/api/v1/seed-peers/%d", seeds[0].ID), e.admin, nil, nil)
	})
}

func TestJobValidationAndFailures(t *testing.T) {
	forEachDB(t, func(t *testing.T, cfg Config) {
		e := newEnv(t, cfg)
		for _, body := range []string{
			`{"type":"nope","args":{"type":"file","url":"http://127.0.0.1/x"}}`,
			`{"type":"preheat","args":{"type":"zip","url":"http://127.0.0.1/x"}}`,
			`{"type":"preheat","args":{"type":"file","url":"not a url"}}`,
			`{"type":"preheat","args":{"type":"file","url":"ftp://h/x"}}`,
			`{"type":"preheat","args":{"type":"image","url":"https://reg.example/v2/repo/tags/list"}}`,
			`{"type":"preheat","args":{"type":"image","url":"just-a-name"}}`,
			`{"type":"preheat","args":{"type":"image","url":"reg.example/Repo:tag"}}`,
			`{"type":"preheat","args":{"type":"image","url":"reg.example/repo:tag","platform":"linux"}}`,
			`{"type":"preheat","args":{"type":"image","url":"reg.example/repo:tag","scope":"everyone"}}`,
			`{"type":"preheat","args":{"type":"image","url":"reg.example/repo:tag","username":"u","password":"p","headers":{"a":"b"}}}`,
			`{"type":"preheat","args":{"type":"image","url":"reg.example/repo:tag","password":"p"}}`,
			`{"type":"preheat","args":{"type":"image","url":"reg.example/repo:tag"},"extra":1}`,
		} {
			var msg map[string]string
			if code, _ := e.do("POST", "/api/v1/jobs", e.admin, body, &msg); code != http.StatusBadRequest || msg["message"] == "" {
				t.Errorf("%s: %d %v, want 400 with a message", body, code, msg)
			}
		}

		// a closed port: the registry is unreachable
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		dead := l.Addr().String()
		l.Close()
		var j Job
		e.must(http.StatusCreated, "POST", "/api/v1/jobs", e.admin, map[string]any{"type": "preheat", "args": map[string]any{
			"type": "image", "url": "http://" + dead + "/v2/library/app/manifests/v1", "headers": map[string]string{"Authorization": "Bearer top-secret-token"}}}, &j)
		if j.State == StateSuccess || strings.Contains(string(j.Args), "top-secret-token") || !strings.Contains(string(j.Args), redacted) {
			t.Fatalf("created job %+v", j)
		}
		j = e.waitJob(j.ID)
		if j.State != StateFailure || !strings.Contains(j.Error, "unreachable") {
			t.Fatalf("unreachable registry: %s %q", j.State, j.Error)
		}
		var args, sec string
		if err := e.m.db.QueryRow(context.Background(), "SELECT args, secret FROM jobs WHERE id = ?", j.ID).Scan(&args, &sec); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(args, "top-secret-token") || sec != "" {
			t.Fatalf("credentials left in the job row: args %s secret %q", args, sec)
		}

		// a file preheat with no seed peer registered
		e.must(http.StatusCreated, "POST", "/api/v1/jobs", e.admin, map[string]any{"type": "preheat", "args": map[string]any{"type": "file", "url": "http://127.0.0.1:1/f"}}, &j)
		j = e.waitJob(j.ID)
		if j.State != StateFailure || !strings.Contains(j.Error, "no active seed peer") {
			t.Fatalf("no seed peer: %s %q", j.State, j.Error)
		}

		var jobs []Job
		_, h := e.do("GET", "/api/v1/jobs?per_page=1&page=2", e.admin, nil, &jobs)
		if len(jobs) != 1 || jobs[0].ID != j.ID || h.Get("X-Total-Count") != "2" {
			t.Fatalf("page 2: %+v total %s", jobs, h.Get("X-Total-Count"))
		}
		e.must(http.StatusOK, "GET", "/api/v1/jobs?state=FAILURE", e.admin, nil, &jobs)
		if len(jobs) != 2 {
			t.Fatalf("failed jobs %d", len(jobs))
		}
		e.must(http.StatusBadRequest, "GET", "/api/v1/jobs?state=DONE", e.admin, nil, nil)
	})
}

// Two replicas on one database: every job is claimed and run once.
func TestReplicasClaimEachJobOnce(t *testing.T) {
	forEachDB(t, func(t *testing.T, cfg Config) {
		a := newEnv(t, cfg)
		b := newEnv(t, cfg)
		// a session made on one replica works on the other
		var me User
		b.must(http.StatusOK, "GET", "/api/v1/users/me", a.admin, nil, &me)
		if me.Name != "admin" {
			t.Fatalf("cross-replica session: %+v", me)
		}
		const n = 12
		var wg sync.WaitGroup
		ids := make([]int64, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				e := a
				if i%2 == 1 {
					e = b
				}
				var j Job
				e.must(http.StatusCreated, "POST", "/api/v1/jobs", e.admin, map[string]any{"type": "preheat", "args": map[string]any{"type": "file", "url": fmt.Sprintf("http://127.0.0.1:1/f%d", i)}}, &j)
				ids[i] = j.ID
			}()
		}
		wg.Wait()
		for _, id := range ids {
			j := b.waitJob(id)
			if j.State != StateFailure || j.Attempts != 1 {
				t.Fatalf("job %d: %s after %d attempts, want FAILURE after exactly 1", id, j.State, j.Attempts)
			}
		}
		var owners int
		if err := a.m.db.QueryRow(context.Background(), "SELECT COUNT(DISTINCT owner) FROM jobs").Scan(&owners); err != nil {
			t.Fatal(err)
		}
		t.Logf("%d jobs run by %d replicas", n, owners)
	})
}

// TestShutdownGivesTheLeaseBack: a replica stopped in the middle of a job
// (its peer hangs) leaves the job RUNNING with its lease given back, and
// another replica takes it over at once instead of after the lease.
func TestShutdownGivesTheLeaseBack(t *testing.T) {
	cfg := testConfig(t)
	cfg.Jobs.Lease = config.Duration(time.Hour) // a takeover before expiry proves the release
	// A seed peer that accepts connections and never answers.
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := hung.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		hung.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	a := newEnv(t, cfg)
	port := hung.Addr().(*net.TCPAddr).Port
	if _, err := a.grpc.Register(context.Background(), &managerv1.RegisterRequest{Type: managerv1.ComponentType_COMPONENT_TYPE_SEED_PEER, Hostname: "hung", Ip: "127.0.0.1", Port: int32(port)}); err != nil {
		t.Fatal(err)
	}
	var j Job
	a.must(http.StatusCreated, "POST", "/api/v1/jobs", a.admin, map[string]any{"type": "preheat", "args": map[string]any{"type": "file", "url": "http://127.0.0.1:1/f"}}, &j)
	for i := 0; ; i++ {
		a.must(http.StatusOK, "GET", fmt.Sprintf("/api/v1/jobs/%d", j.ID), a.admin, nil, &j)
		if j.State == StateRunning && j.Result != nil && j.Result.Tasks[0].Peers[0].State == StateRunning {
			break
		}
		if i > 400 {
			t.Fatalf("job never reached its peer: %+v", j)
		}
		time.Sleep(25 * time.Millisecond)
	}
	a.stop()
	b := newEnv(t, cfg)
	for i := 0; ; i++ {
		b.must(http.StatusOK, "GET", fmt.Sprintf("/api/v1/jobs/%d", j.ID), b.admin, nil, &j)
		if j.Attempts == 2 && j.State == StateRunning {
			break
		}
		if i > 400 {
			t.Fatalf("the job was not taken over: %+v", j)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// TestPreheatTargetsByScopeAndCluster: the peers a job reaches follow its
// scope and cluster_ids (the peers here refuse connections, so each fails
// with its reason and the job with a summary).
func TestPreheatTargetsByScopeAndCluster(t *testing.T) {
	forEachDB(t, func(t *testing.T, cfg Config) {
		e := newEnv(t, cfg)
		ctx := context.Background()
		var c2 Cluster
		e.must(http.StatusCreated, "POST", "/api/v1/clusters", e.admin, map[string]any{"name": "c2"}, &c2)
		for i, cid := range []int64{0, 0, c2.ID} {
			if _, err := e.grpc.Register(ctx, &managerv1.RegisterRequest{Type: managerv1.ComponentType_COMPONENT_TYPE_SEED_PEER, Hostname: fmt.Sprintf("seed%d", i), Ip: "127.0.0.1", Port: int32(1 + i), ClusterId: cid}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := e.grpc.ListSchedulers(ctx, &managerv1.ListSchedulersRequest{HostId: "h1", Hostname: "daemon1", Ip: "127.0.0.1", PeerPort: 9}); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			args  map[string]any
			peers []string
		}{
			{map[string]any{}, []string{"seed0"}},
			{map[string]any{"scope": "all_seed_peers"}, []string{"seed0", "seed1", "seed2"}},
			{map[string]any{"scope": "all_seed_peers", "cluster_ids": []int64{c2.ID}}, []string{"seed2"}},
			{map[string]any{"scope": "all_peers"}, []string{"seed0", "seed1", "seed2", "daemon1"}},
		} {
			tc.args["type"], tc.args["url"] = "file", "http://127.0.0.1:1/f"
			var j Job
			e.must(http.StatusCreated, "POST", "/api/v1/jobs", e.admin, map[string]any{"type": "preheat", "args": tc.args}, &j)
			j = e.waitJob(j.ID)
			var got []string
			for _, p := range j.Result.Tasks[0].Peers {
				got = append(got, p.Hostname)
				if p.State != StateFailure || p.Error == "" {
					t.Errorf("peer %+v: want FAILURE with a reason", p)
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.peers, ",") || j.State != StateFailure || !strings.Contains(j.Error, "127.0.0.1:1") {
				t.Fatalf("%v: peers %v (want %v), %s %q", tc.args, got, tc.peers, j.State, j.Error)
			}
		}
		e.must(http.StatusBadRequest, "POST", "/api/v1/jobs", e.admin, map[string]any{"type": "preheat", "args": map[string]any{"type": "file", "url": "http://h/f", "cluster_ids": []int{0}}}, nil)
	})
}
