package manager

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/damselfly-io/damselfly/api/managerv1"
	"github.com/damselfly-io/damselfly/api/peerv1"
	"github.com/damselfly-io/damselfly/internal/config"
)

// syncBuffer is a log sink safe for concurrent handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func auditLog(t *testing.T, e *env, query string) []AuditEntry {
	t.Helper()
	var out []AuditEntry
	e.must(http.StatusOK, "GET", "/api/v1/audit?per_page=100"+query, e.admin, nil, &out)
	return out
}

func countAudit(es []AuditEntry, action, outcome, user string) int {
	n := 0
	for _, e := range es {
		if e.Action == action && e.Outcome == outcome && e.UserName == user {
			n++
		}
	}
	return n
}

// An attacker guessing one user's password (a bounded loop) is answered 429
// with Retry-After after max_failures_per_user failures; then even the
// right password is refused until the lockout ends. The audit table and the
// log record every attempt.
func TestSignInBruteForceLockedOut(t *testing.T) {
	forEachDB(t, func(t *testing.T, cfg Config) {
		var logs syncBuffer
		e := newEnvLog(t, cfg, slog.New(slog.NewTextHandler(&logs, nil)))
		var guest User
		e.must(http.StatusCreated, "POST", "/api/v1/users", e.admin, map[string]string{"name": "victim", "password": "victim-pass-1"}, &guest)
		codes := []int{}
		var retry string
		for i := range 8 {
			code, h := e.do("POST", "/api/v1/users/signin", "", map[string]string{"name": "victim", "password": fmt.Sprintf("guess-%d", i)}, nil)
			codes = append(codes, code)
			if code == http.StatusTooManyRequests && retry == "" {
				retry = h.Get("Retry-After")
			}
		}
		want := []int{401, 401, 401, 401, 429, 429, 429, 429}
		if fmt.Sprint(codes) != fmt.Sprint(want) {
			t.Fatalf("brute force answers %v, want %v", codes, want)
		}
		if s, err := strconv.Atoi(retry); err != nil || s < 1 || s > 15*60 {
			t.Fatalf("Retry-After %q: want seconds in 1..900", retry)
		}
		// Locked: the right password does not help now.
		if code, h := e.do("POST", "/api/v1/users/signin", "", map[string]string{"name": "victim", "password": "victim-pass-1"}, nil); code != http.StatusTooManyRequests || h.Get("Retry-After") == "" {
			t.Fatalf("right password while locked out: %d", code)
		}
		// Other users are not locked (the source is below its own limit).
		e.signIn("admin", cfg.AdminPassword)

		es := auditLog(t, e, "&action=signin&user=victim")
		// Every failure; refused attempts once a minute per source (each is logged).
		if f, l := countAudit(es, auditSignIn, outcomeFailure, "victim"), countAudit(es, auditSignIn, outcomeLocked, "victim"); f != 5 || l != 1 {
			t.Fatalf("audit: %d failures and %d locked sign-ins of victim, want 5 and 1: %+v", f, l, es)
		}
		if n := strings.Count(logs.String(), "outcome=locked user=victim"); n != 4 {
			t.Fatalf("%d locked sign-ins logged, want 4", n)
		}
		for _, a := range es {
			if a.Source != "127.0.0.1" || a.CreatedAt == 0 {
				t.Fatalf("audit entry without source or time: %+v", a)
			}
		}
		if countAudit(auditLog(t, e, "&action=signin"), auditSignIn, outcomeSuccess, "admin") < 2 {
			t.Fatal("successful sign-ins of admin not audited")
		}
		out := logs.String()
		if !strings.Contains(out, "msg=audit audit=true action=signin outcome=failure user=victim") ||
			!strings.Contains(out, "msg=audit audit=true action=signin outcome=locked user=victim") ||
			!strings.Contains(out, "msg=audit audit=true action=signin outcome=success user=admin") {
			t.Fatalf("audit log lines missing:\n%s", out)
		}
		if strings.Contains(out, "guess-1") || strings.Contains(out, "victim-pass-1") {
			t.Fatal("a password was logged")
		}
		// The audit log is for admins only, paged, filtered by known actions.
		gtok := ""
		e.must(http.StatusCreated, "POST", "/api/v1/users", e.admin, map[string]string{"name": "reader", "password": "reader-pass-1"}, nil)
		gtok = e.signIn("reader", "reader-pass-1")
		e.must(http.StatusForbidden, "GET", "/api/v1/audit", gtok, nil, nil)
		e.must(http.StatusUnauthorized, "GET", "/api/v1/audit", "", nil, nil)
		e.must(http.StatusBadRequest, "GET", "/api/v1/audit?action=nope", e.admin, nil, nil)
		var page []AuditEntry
		code, h := e.do("GET", "/api/v1/audit?per_page=2&page=2", e.admin, nil, &page)
		total, _ := strconv.Atoi(h.Get("X-Total-Count"))
		if code != 200 || len(page) != 2 || total < 9 || page[0].ID <= page[1].ID {
			t.Fatalf("audit page 2: %d, %d entries of %d, %+v", code, len(page), total, page)
		}
	})
}

// A source guessing many names is locked out as a source: afterwards even a
// valid account cannot sign in from it. The lockout ends by itself. Two
// replicas on one database share the count.
func TestSignInSourceLockoutSharedByReplicas(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.MaxFailuresPerSource = 6
	cfg.Auth.Lockout = config.Duration(time.Second)
	a := newEnv(t, cfg)
	b := newEnv(t, cfg) // a second replica on the same SQLite file
	locked := -1
	for i := range 10 {
		e := a
		if i%2 == 1 {
			e = b
		}
		code, _ := e.do("POST", "/api/v1/users/signin", "", map[string]string{"name": fmt.Sprintf("user%d", i), "password": "guess-guess"}, nil)
		if code == http.StatusTooManyRequests {
			locked = i
			break
		}
		if code != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d", i, code)
		}
	}
	if locked != 5 {
		t.Fatalf("source locked out at attempt %d, want 5 (the 6th failure over two replicas)", locked)
	}
	for _, e := range []*env{a, b} {
		if code, _ := e.do("POST", "/api/v1/users/signin", "", map[string]string{"name": "admin", "password": cfg.AdminPassword}, nil); code != http.StatusTooManyRequests {
			t.Fatalf("valid sign-in from a locked source: %d", code)
		}
	}
	// The lockout (1s here) ends by itself.
	ok := false
	for range 100 {
		if code, _ := a.do("POST", "/api/v1/users/signin", "", map[string]string{"name": "admin", "password": cfg.AdminPassword}, nil); code == http.StatusOK {
			ok = true
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !ok {
		t.Fatal("sign-in still refused 5s after a 1s lockout")
	}
}

// A personal access token of 100 years is refused with the cap named; one
// within the cap is made and audited.
func TestTokenTTLCapped(t *testing.T) {
	forEachDB(t, func(t *testing.T, cfg Config) {
		e := newEnv(t, cfg)
		var msg map[string]string
		code, _ := e.do("POST", "/api/v1/tokens", e.admin, map[string]string{"name": "forever", "ttl": "876000h"}, &msg)
		if code != http.StatusBadRequest || !strings.Contains(msg["message"], "auth.max_token_ttl") || !strings.Contains(msg["message"], "8760h") {
			t.Fatalf("100-year token: %d %v", code, msg)
		}
		var tok struct {
			ID        int64 `json:"id"`
			ExpiresAt int64 `json:"expires_at"`
		}
		e.must(http.StatusCreated, "POST", "/api/v1/tokens", e.admin, map[string]string{"name": "year", "ttl": "8760h"}, &tok)
		if d := time.Until(time.UnixMilli(tok.ExpiresAt)); d > 8761*time.Hour {
			t.Fatalf("token expires in %s", d)
		}
		es := auditLog(t, e, "&action=token_create")
		if len(es) != 1 || es[0].UserName != "admin" || !strings.Contains(es[0].Detail, `"year"`) {
			t.Fatalf("token creation audit: %+v", es)
		}
	})
	cfg := testConfig(t)
	cfg.Auth.MaxTokenTTL = config.Duration(48 * time.Hour)
	e := newEnv(t, cfg)
	var tok struct {
		ExpiresAt int64 `json:"expires_at"`
	}
	e.must(http.StatusCreated, "POST", "/api/v1/tokens", e.admin, map[string]string{"name": "dflt"}, &tok)
	if d := time.Until(time.UnixMilli(tok.ExpiresAt)); d > 48*time.Hour {
		t.Fatalf("default token lifetime %s above a 48h cap", d)
	}
	bad := testConfig(t)
	bad.Auth.MaxTokenTTL = 0
	if err := bad.Validate(); err == nil {
		t.Fatal("max_token_ttl 0 accepted")
	}
}

// The data directory is 0700 and the database, its companions and the
// credentials key 0600, also when an older version left them open.
func TestDataDirModes(t *testing.T) {
	cfg := testConfig(t)
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, cfg)
	check := func(when string) {
		t.Helper()
		want := map[string]os.FileMode{cfg.DataDir: 0o700, cfg.DSN(): 0o600, cfg.CredentialsKeyFile(): 0o600}
		for p, w := range want {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			if fi.Mode().Perm() != w {
				t.Errorf("%s: %s mode %o, want %o", when, p, fi.Mode().Perm(), w)
			}
		}
	}
	check("first start")
	e.stop()
	for p, m := range map[string]os.FileMode{cfg.DataDir: 0o755, cfg.DSN(): 0o644, cfg.CredentialsKeyFile(): 0o644} {
		if err := os.Chmod(p, m); err != nil {
			t.Fatal(err)
		}
	}
	newEnv(t, cfg)
	check("restart on 0644 files")
}

// blockingPeer is a daemon's peer API whose Preheat waits until released,
// so that a job stays RUNNING while the test looks at the database.
type blockingPeer struct {
	peerv1.UnimplementedPeerServer
	got     chan map[string]string
	release chan struct{}
}

func (p *blockingPeer) Preheat(ctx context.Context, r *peerv1.PreheatRequest) (*peerv1.PreheatResponse, error) {
	p.got <- r.GetTask().GetHeaders()
	select {
	case <-p.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &peerv1.PreheatResponse{ContentLength: 1}, nil
}

// dirHolds reports the files under dir that contain any of needles.
func dirHolds(t *testing.T, dir string, needles ...string) []string {
	t.Helper()
	var hits []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, n := range needles {
			if bytes.Contains(b, []byte(n)) {
				hits = append(hits, fmt.Sprintf("%s holds %q", filepath.Base(p), n))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

// A job's registry credentials are never in the SQLite files in plaintext:
// not while it waits, not while it runs (the peer still gets them), not
// after it ended; and the sealed copy is gone once it ended.
func TestJobCredentialsNeverInDatabaseFiles(t *testing.T) {
	cfg := testConfig(t)
	e := newEnv(t, cfg)
	peer := &blockingPeer{got: make(chan map[string]string, 4), release: make(chan struct{})}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	peerv1.RegisterPeerServer(gs, peer)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	port := lis.Addr().(*net.TCPAddr).Port
	if _, err := e.grpc.Register(context.Background(), &managerv1.RegisterRequest{Type: managerv1.ComponentType_COMPONENT_TYPE_SEED_PEER, Hostname: "seed", Ip: "127.0.0.1", Port: int32(port)}); err != nil {
		t.Fatal(err)
	}
	const secretHeader = "Bearer registry-token-Zq8Xw2"
	const user, pass = "puller-Kd93", "pull-pass-Hh27Lm"
	var j Job
	e.must(http.StatusCreated, "POST", "/api/v1/jobs", e.admin, map[string]any{"type": "preheat", "args": map[string]any{
		"type": "file", "url": "http://127.0.0.1:1/blob", "headers": map[string]string{"Authorization": secretHeader}}}, &j)
	var hdr map[string]string
	select {
	case hdr = <-peer.got:
	case <-time.After(20 * time.Second):
		t.Fatal("the job never reached the peer")
	}
	if hdr["Authorization"] != secretHeader {
		t.Fatalf("peer got headers %v: the credentials did not survive sealing", hdr)
	}
	// Running now, with its sealed credentials in the row.
	var sec string
	if err := e.m.db.QueryRow(context.Background(), "SELECT secret FROM jobs WHERE id = ?", j.ID).Scan(&sec); err != nil || !strings.HasPrefix(sec, sealedPrefix) {
		t.Fatalf("secret column while running: %q %v", sec, err)
	}
	if hits := dirHolds(t, cfg.DataDir, secretHeader, "registry-token-Zq8Xw2"); len(hits) > 0 {
		t.Fatalf("while the job runs: %v", hits)
	}
	close(peer.release)
	if j = e.waitJob(j.ID); j.State != StateSuccess {
		t.Fatalf("job %s %q", j.State, j.Error)
	}
	// A job that fails (wrong credentials make no difference here: no seed
	// answers) also drops them.
	if _, err := e.grpc.Register(context.Background(), &managerv1.RegisterRequest{Type: managerv1.ComponentType_COMPONENT_TYPE_SEED_PEER, Hostname: "gone", Ip: "127.0.0.1", Port: 1}); err != nil {
		t.Fatal(err)
	}
	var j2 Job
	e.must(http.StatusCreated, "POST", "/api/v1/jobs", e.admin, map[string]any{"type": "preheat", "args": map[string]any{
		"type": "image", "url": "http://127.0.0.1:1/v2/team/app/manifests/v1", "username": user, "password": pass}}, &j2)
	if strings.Contains(string(j2.Args), user) || strings.Contains(string(j2.Args), pass) {
		t.Fatalf("job args show the credentials: %s", j2.Args)
	}
	es := auditLog(t, e, "&action=job_create")
	if len(es) != 2 || es[0].UserName != "admin" || !strings.Contains(es[0].Detail, fmt.Sprintf("job %d", j2.ID)) || !strings.Contains(es[1].Detail, "http://127.0.0.1:1/blob") {
		t.Fatalf("job creation audit: %+v", es)
	}
	for _, a := range es {
		if strings.Contains(a.Detail, pass) || strings.Contains(a.Detail, "Zq8Xw2") {
			t.Fatalf("audit shows credentials: %+v", a)
		}
	}
	if got := auditURL("https://u:pw@h.example/f?X-Amz-Signature=s#x"); got != "https://h.example/f" {
		t.Fatalf("auditURL: %q", got)
	}
	if j2 = e.waitJob(j2.ID); j2.State != StateFailure {
		t.Fatalf("job 2: %s", j2.State)
	}
	var n int
	if err := e.m.db.QueryRow(context.Background(), "SELECT COUNT(*) FROM jobs WHERE secret <> ''").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d ended jobs keep their sealed credentials (%v)", n, err)
	}
	e.stop()
	if hits := dirHolds(t, cfg.DataDir, secretHeader, "registry-token-Zq8Xw2", pass, user); len(hits) > 0 {
		t.Fatalf("after the jobs ended: %v", hits)
	}
}

// Secrets stored in plaintext by an older version are sealed at start; a
// sealed secret opens only with its key; a job whose key is gone fails with
// a clear error instead of running without credentials.
func TestCredentialsKey(t *testing.T) {
	cfg := testConfig(t)
	e := newEnv(t, cfg)
	e.stop()
	// Simulate a pending job written by an older version.
	e2 := newEnvNoWorkers(t, cfg)
	id, err := e2.m.db.Insert(context.Background(), "INSERT INTO jobs (type, state, args, secret, user_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
		"preheat", StateFailure, `{"type":"file","url":"http://h/f"}`, `{"password":"legacy-pass-77"}`, 1, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	e2.m.Close()
	e3 := newEnvNoWorkers(t, cfg)
	var sec string
	if err := e3.m.db.QueryRow(context.Background(), "SELECT secret FROM jobs WHERE id = ?", id).Scan(&sec); err != nil || !strings.HasPrefix(sec, sealedPrefix) {
		t.Fatalf("legacy secret not sealed at start: %q %v", sec, err)
	}
	plain, err := e3.m.sealer.open(sec)
	if err != nil || string(plain) != `{"password":"legacy-pass-77"}` {
		t.Fatalf("open: %q %v", plain, err)
	}
	other, _, err := loadSealer(filepath.Join(t.TempDir(), "other.key"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.open(sec); err == nil {
		t.Fatal("a sealed secret opened with another key")
	}
	// A pending job sealed under the data dir's key, run by a replica given
	// another key: it fails saying so.
	sealed, err := e3.m.sealer.seal([]byte(`{"password":"p"}`))
	if err != nil {
		t.Fatal(err)
	}
	jid, err := e3.m.db.Insert(context.Background(), "INSERT INTO jobs (type, state, args, secret, user_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
		"preheat", StatePending, `{"type":"file","url":"http://127.0.0.1:1/f","scope":"single_seed_peer"}`, sealed, 1, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	e3.m.Close()
	t.Setenv(credentialsKeyEnv, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
	e4 := newEnv(t, cfg)
	if j := e4.waitJob(jid); j.State != StateFailure || !strings.Contains(j.Error, "credentials key differs") {
		t.Fatalf("job sealed under another key: %s %q", j.State, j.Error)
	}
	e4.stop()
	for _, bad := range []string{"c2hvcnQ=", "!!!"} {
		t.Setenv(credentialsKeyEnv, bad)
		if _, _, err := loadSealer(filepath.Join(t.TempDir(), "k")); err == nil {
			t.Fatalf("key %q accepted", bad)
		}
	}
}

// newEnvNoWorkers opens a replica without job workers or servers.
func newEnvNoWorkers(t *testing.T, cfg Config) *env {
	t.Helper()
	m, err := New(context.Background(), cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return &env{t: t, m: m}
}
