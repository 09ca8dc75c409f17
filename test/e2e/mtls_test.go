package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	rogueOnce sync.Once
	rogueErr  error
)

// buildRogue builds the attacker (./rogue) into binDir once.
func buildRogue(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(binDir, "rogue")
	rogueOnce.Do(func() {
		out, err := exec.Command("go", "build", "-o", bin, "./rogue").CombinedOutput()
		if err != nil {
			rogueErr = fmt.Errorf("build rogue: %w: %s", err, out)
		}
	})
	if rogueErr != nil {
		t.Fatal(rogueErr)
	}
	return bin
}

// rogue runs one attack to its end and returns its verdict line.
func rogue(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, buildRogue(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("rogue %v: %v: %s", args, err, out)
	}
	t.Logf("rogue %s -> %s", strings.Join(args, " "), strings.TrimSpace(string(out)))
	return strings.TrimSpace(string(out))
}

// peerRecord is what the manager knows of a daemon.
type peerRecord struct {
	HostID   string `json:"host_id"`
	Hostname string `json:"hostname"`
	IP       string `json:"ip"`
	Port     int    `json:"port"`
}

func (m *managerProc) peer(t *testing.T, hostname string) peerRecord {
	t.Helper()
	var ps []peerRecord
	if code := m.call(t, "GET", "/api/v1/peers", nil, &ps); code != 200 {
		t.Fatalf("list peers: %d", code)
	}
	for _, p := range ps {
		if p.Hostname == hostname {
			return p
		}
	}
	t.Fatalf("manager knows no peer %q: %+v", hostname, ps)
	return peerRecord{}
}

type attack struct {
	name   string
	target string
	args   []string
}

// TestMTLSAttacks: with mutual TLS (the default) a rogue process is refused
// by the real manager, scheduler and daemon whatever it holds: no
// certificate, a valid peer certificate used beyond its role or host, or a
// certificate from another CA. Each attack is first shown to work on a
// cluster in explicit --insecure mode (the behaviour before mTLS), so a
// refusal is the certificate checks' doing.
func TestMTLSAttacks(t *testing.T) {
	// The same attacks against a plaintext cluster succeed.
	t.Run("insecure-control", func(t *testing.T) {
		c := startManaged(t, 1, func(int) []string { return []string{"--insecure"} }, "--insecure")
		for _, a := range attacks(t, c) {
			got := rogue(t, append([]string{"-transport", "plaintext"}, a.args...)...)
			if !strings.HasPrefix(got, "ACCEPTED") {
				t.Errorf("%s on an insecure cluster: %s (the attack should work without mTLS)", a.name, got)
			}
		}
	})
	t.Run("mtls", func(t *testing.T) {
		c := startManaged(t, 1, nil)
		dir := t.TempDir()
		peerCert := append([]string{"-transport", "mtls"}, issue(t, "peer", "rogue", filepath.Join(dir, "peer"))...)
		// Another CA's certificates, for roles that would be allowed.
		otherCA := filepath.Join(dir, "other-ca")
		if out, err := exec.Command(filepath.Join(binDir, "damselfly"), "certs", "init-ca", "--dir", otherCA).CombinedOutput(); err != nil {
			t.Fatalf("init-ca: %v: %s", err, out)
		}
		foreign := func(role, host string) []string {
			out := filepath.Join(dir, "foreign-"+role)
			b, err := exec.Command(filepath.Join(binDir, "damselfly"), "certs", "issue", "--ca-dir", otherCA, "--role", role, "--host-id", host, "--out", out).CombinedOutput()
			if err != nil {
				t.Fatalf("issue: %v: %s", err, b)
			}
			return []string{"-transport", "mtls", "--tls-cert", filepath.Join(out, "tls.crt"), "--tls-key", filepath.Join(out, "tls.key"), "--tls-ca", filepath.Join(out, "ca.crt")}
		}
		as := attacks(t, c)
		for _, a := range as {
			for _, tr := range [][]string{{"-transport", "plaintext"}, {"-transport", "tls"}} {
				got := rogue(t, append(tr, a.args...)...)
				if !strings.HasPrefix(got, "REFUSED") {
					t.Errorf("%s with no certificate (%s): %s", a.name, tr[1], got)
				}
			}
		}
		byName := map[string]attack{}
		for _, a := range as {
			byName[a.name] = a
		}
		// A valid peer certificate, used for what peers may not do.
		for _, name := range []string{"register-seed", "register-scheduler", "announce-as-victim", "seed-tasks", "preheat"} {
			got := rogue(t, append(append([]string{}, peerCert...), byName[name].args...)...)
			if !strings.HasPrefix(got, "REFUSED PermissionDenied") {
				t.Errorf("%s with a peer certificate: %s", name, got)
			}
		}
		// Control: the same certificate may announce as itself.
		if got := rogue(t, append(append([]string{}, peerCert...), "-attack", "announce", "-target", c.sched.addr, "-host-id", "rogue")...); !strings.HasPrefix(got, "ACCEPTED") {
			t.Errorf("a peer announcing as its own host was refused: %s", got)
		}
		// Certificates from another CA, for the roles each attack needs.
		for _, f := range []struct {
			attack, role string
		}{{"register-seed", "seed"}, {"register-scheduler", "scheduler"}, {"seed-tasks", "seed"}, {"preheat", "manager"}, {"announce-as-victim", "peer"}} {
			a := byName[f.attack]
			host := "foreign"
			if f.attack == "announce-as-victim" || f.attack == "seed-tasks" {
				host = hostArg(a.args)
			}
			got := rogue(t, append(foreign(f.role, host), a.args...)...)
			if !strings.HasPrefix(got, "REFUSED") {
				t.Errorf("%s with a %s certificate from another CA: %s", f.attack, f.role, got)
			}
		}
	})
}

// attacks are the rogue's attempts against cluster c.
func attacks(t *testing.T, c *managedCluster) []attack {
	victim := c.mgr.peer(t, "d0")
	peerAddr := fmt.Sprintf("%s:%d", victim.IP, victim.Port)
	return []attack{
		{"register-seed", c.mgr.grpc, []string{"-attack", "register-seed", "-target", c.mgr.grpc, "-host-id", "rogue"}},
		{"register-scheduler", c.mgr.grpc, []string{"-attack", "register-scheduler", "-target", c.mgr.grpc, "-host-id", "rogue"}},
		{"announce-as-victim", c.sched.addr, []string{"-attack", "announce", "-target", c.sched.addr, "-host-id", victim.HostID}},
		{"seed-tasks", c.sched.addr, []string{"-attack", "seed-tasks", "-target", c.sched.addr, "-host-id", "rogue"}},
		{"preheat", peerAddr, []string{"-attack", "preheat", "-target", peerAddr}},
	}
}

func hostArg(args []string) string {
	for i, a := range args {
		if a == "-host-id" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// TestPreheatSecretStaysWithVerifiedPeers: a rogue that registers as a
// seed peer got the preheat job's Authorization header before mTLS (shown
// on an --insecure cluster); with mTLS its registration is refused and the
// header reaches only the real, certified seed peer.
func TestPreheatSecretStaysWithVerifiedPeers(t *testing.T) {
	const secret = "Bearer preheat-secret-e2e"
	for _, mode := range []string{"insecure", "mtls"} {
		t.Run(mode, func(t *testing.T) {
			var c *managedCluster
			tr := []string{"-transport", "tls"}
			if mode == "insecure" {
				c = startManaged(t, 0, nil, "--insecure")
				tr = []string{"-transport", "plaintext"}
			} else {
				c = startManaged(t, 0, nil)
			}
			o := newOrigin(t)
			url, _ := o.add("secret.bin", 64<<10, 11)
			log := filepath.Join(t.TempDir(), "rogue.log")
			f, err := os.Create(log)
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(buildRogue(t), append(tr, "-attack", "seed-listener", "-target", c.mgr.grpc, "-host-id", "rogue-seed")...)
			cmd.Stdout, cmd.Stderr = f, f
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); f.Close() })
			lines := func() []string {
				b, _ := os.ReadFile(log)
				var out []string
				sc := bufio.NewScanner(strings.NewReader(string(b)))
				for sc.Scan() {
					out = append(out, sc.Text())
				}
				return out
			}
			has := func(prefix string) bool {
				for _, l := range lines() {
					if strings.HasPrefix(l, prefix) {
						return true
					}
				}
				return false
			}
			waitFor(t, 20*time.Second, "the rogue's registration attempt", func() bool { return has("ACCEPTED") || has("REFUSED") })
			wantSeeds := 1
			if mode == "insecure" {
				wantSeeds = 2
				waitFor(t, 20*time.Second, "the rogue registered", func() bool { return c.mgr.count(t, "/api/v1/seed-peers?state=active") == 2 })
			} else if has("ACCEPTED") {
				t.Fatalf("the manager accepted the rogue's registration:\n%s", strings.Join(lines(), "\n"))
			}
			id := c.mgr.preheat(t, map[string]any{"type": "file", "url": url, "scope": "all_seed_peers", "headers": map[string]string{"Authorization": secret}})
			j := c.mgr.waitJob(t, id)
			if n := c.mgr.count(t, "/api/v1/seed-peers?state=active"); n != wantSeeds {
				t.Fatalf("%d active seed peers, want %d", n, wantSeeds)
			}
			got := has("PREHEAT")
			switch {
			case mode == "insecure" && !got:
				t.Fatalf("control: the rogue seed got no preheat on an insecure cluster (job %s)\n%s", j.State, strings.Join(lines(), "\n"))
			case mode == "insecure" && !strings.Contains(strings.Join(lines(), "\n"), secret):
				t.Fatalf("control: the rogue's preheat lacked the header:\n%s", strings.Join(lines(), "\n"))
			case mode == "mtls" && got:
				t.Fatalf("the rogue seed was sent the preheat:\n%s", strings.Join(lines(), "\n"))
			case mode == "mtls" && j.State != "SUCCESS":
				t.Fatalf("preheat to the certified seed peer: %s %s", j.State, j.Error)
			}
		})
	}
}

// TestBootstrapTokenJoin: manager, scheduler, seed peer and daemons start
// with nothing but the manager's address, the bootstrap token (one file, as
// from a Kubernetes Secret) and the CA pin; each gets its certificate from
// the manager's CA, keeps it 0600 in its data dir, and a dfget through the
// swarm works. Certificates live 4 s here: after every first certificate has
// expired, each component has renewed its own, and a daemon started then
// (new connections everywhere) downloads through the swarm too. A daemon
// with a wrong token exits with an error that says so.
func TestBootstrapTokenJoin(t *testing.T) {
	const ttl = 4 * time.Second
	mgr := startManager(t, t.TempDir(), "--token-roles", "peer,seed,scheduler", "--cert-ttl", ttl.String())
	tok, err := os.ReadFile(filepath.Join(caDir, "bootstrap-token"))
	if err != nil {
		t.Fatalf("the manager keeps its token in its CA dir: %v", err)
	}
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, tok, 0o600); err != nil {
		t.Fatal(err)
	}
	hash, err := exec.Command(filepath.Join(binDir, "damselfly"), "certs", "hash", "--ca-dir", caDir).Output()
	if err != nil {
		t.Fatal(err)
	}
	join := []string{"--manager", mgr.grpc, "--bootstrap-token-file", tokFile, "--manager-ca-hash", strings.TrimSpace(string(hash))}

	schedDir := t.TempDir()
	sched := startScheduler(t, append([]string{"--advertise-ip", "127.0.0.1", "--data-dir", schedDir}, join...)...)
	waitFor(t, 20*time.Second, "scheduler registered", func() bool { return mgr.count(t, "/api/v1/schedulers?state=active") == 1 })
	seed := startDaemon(t, daemonOpts{name: "seed", seed: true, extra: join})
	var ds []*daemonProc
	for i := range 2 {
		ds = append(ds, startDaemon(t, daemonOpts{name: fmt.Sprintf("j%d", i), extra: join}))
	}
	waitFor(t, 20*time.Second, "seed peer registered", func() bool { return mgr.count(t, "/api/v1/seed-peers?state=active") == 1 })
	for _, dir := range []string{filepath.Join(schedDir, "tls"), filepath.Join(seed.dataDir, "cache", "tls"), filepath.Join(ds[0].dataDir, "cache", "tls")} {
		for _, f := range []string{"tls.key", "tls.crt"} {
			st, err := os.Stat(filepath.Join(dir, f))
			if err != nil || st.Mode().Perm() != 0o600 {
				t.Fatalf("%s/%s: %v %v", dir, f, st, err)
			}
		}
	}
	o := newOrigin(t)
	url, sum := o.add("joined.bin", 3<<20, 21)
	fetchAll(t, ds, url, sum)
	// Through the swarm, not around it: the origin served the file about
	// once (the seed peer's fetch), not once per daemon.
	if served := o.served.Load(); served > (3<<20)*3/2 {
		t.Fatalf("origin served %d bytes for a 3 MiB file and 2 daemons: the swarm (scheduler over mTLS) was not used", served)
	}

	// Renewal: wait out the first certificates, then check each was replaced
	// and that fresh connections still work.
	certs := map[string]string{"scheduler": filepath.Join(schedDir, "tls", "tls.crt"), "seed": filepath.Join(seed.dataDir, "cache", "tls", "tls.crt"), "j0": filepath.Join(ds[0].dataDir, "cache", "tls", "tls.crt")}
	first := map[string][]byte{}
	for name, p := range certs {
		if first[name], err = os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(ttl + 500*time.Millisecond)
	for name, p := range certs {
		if now, err := os.ReadFile(p); err != nil || string(now) == string(first[name]) {
			t.Fatalf("%s's certificate not renewed after %s: %v", name, ttl, err)
		}
	}
	ds = append(ds, startDaemon(t, daemonOpts{name: "late", extra: join}))
	url2, sum2 := o.add("after-renewal.bin", 3<<20, 22)
	served := o.served.Load()
	fetchAll(t, ds, url2, sum2)
	if n := o.served.Load() - served; n > (3<<20)*3/2 {
		t.Fatalf("after renewal the origin served %d bytes for a 3 MiB file and 3 daemons: the swarm was not used", n)
	}
	_ = sched

	// A wrong token: the daemon refuses to start and says why.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	wrong := []string{"daemon", "--manager", mgr.grpc, "--scheduler", "", "--bootstrap-token", "abcdef.0123456789abcdefghij",
		"--manager-ca-hash", strings.TrimSpace(string(hash)), "--data-dir", filepath.Join(dir, "cache"), "--sock", filepath.Join(dir, "d.sock"),
		"--listen-ip", "127.0.0.1", "--advertise-ip", "127.0.0.1", "--peer-port", "0", "--upload-port", "0", "--proxy-port", "-1", "--metrics-port", "-1"}
	out, err := exec.CommandContext(ctx, filepath.Join(binDir, "damselfly"), wrong...).CombinedOutput()
	if err == nil || ctx.Err() != nil || !strings.Contains(string(out), "bootstrap token refused") {
		t.Fatalf("daemon with a wrong token: %v\n%s", err, out)
	}
}

// TestNoTLSMaterialRefused: a standalone component with no certificate, no
// token and no --insecure does not start, and its error names the flags.
func TestNoTLSMaterialRefused(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"scheduler", "--listen", "127.0.0.1:0", "--metrics-port", "-1"},
		{"daemon", "--scheduler", "127.0.0.1:1", "--data-dir", filepath.Join(dir, "c"), "--sock", filepath.Join(dir, "d.sock"), "--peer-port", "0", "--upload-port", "0", "--proxy-port", "-1", "--metrics-port", "-1"},
	} {
		cmd := exec.Command(filepath.Join(binDir, "damselfly"), args...)
		cmd.Env = append(os.Environ(), "DAMSELFLY_BOOTSTRAP_TOKEN=")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--tls-cert") || !strings.Contains(string(out), "--bootstrap-token") || !strings.Contains(string(out), "--insecure") {
			t.Errorf("%s without TLS material: %v\n%s", args[0], err, out)
		}
	}
}
