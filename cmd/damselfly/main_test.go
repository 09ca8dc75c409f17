package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/damselfly-io/damselfly/internal/pki"
)

func runCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageAndVersion(t *testing.T) {
	if code, _, errs := runCmd("nope"); code != 2 || !strings.Contains(errs, "unknown command") {
		t.Fatalf("unknown command: %d %q", code, errs)
	}
	if code, out, _ := runCmd("version"); code != 0 || !strings.HasPrefix(out, "damselfly ") {
		t.Fatalf("version: %d %q", code, out)
	}
	if code, out, _ := runCmd("--help"); code != 0 || !strings.Contains(out, "all-in-one") {
		t.Fatalf("help: %d %q", code, out)
	}
}

// Defaults < config file < flags.
func TestDaemonConfigLayering(t *testing.T) {
	p := filepath.Join(t.TempDir(), "d.yaml")
	os.WriteFile(p, []byte("peer_port: 1234\nupload_port: 2345\nidc: dc-file\ndownload:\n  rate_limit: 10M\n"), 0o644)
	code, out, errs := runCmd("daemon", "--config", p, "--upload-port", "9999", "--seed", "--print-config")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"peer_port: 1234", "upload_port: 9999", "idc: dc-file", "rate_limit: 10MiB", "seed: true", "metrics_port: 8000"} {
		if !strings.Contains(out, want) {
			t.Errorf("effective config lacks %q:\n%s", want, out)
		}
	}
}

func TestDaemonBadInput(t *testing.T) {
	p := filepath.Join(t.TempDir(), "d.yaml")
	os.WriteFile(p, []byte("peer_prot: 1\n"), 0o644)
	if code, _, errs := runCmd("daemon", "--config", p); code != 2 || !strings.Contains(errs, "peer_prot") {
		t.Fatalf("unknown key: %d %q", code, errs)
	}
	if code, _, errs := runCmd("daemon", "--peer-port", "99999", "--data-dir", t.TempDir()); code != 2 || !strings.Contains(errs, "peer_port") {
		t.Fatalf("bad port: %d %q", code, errs)
	}
	if code, _, _ := runCmd("daemon", "--no-such-flag"); code != 2 {
		t.Fatalf("unknown flag: %d", code)
	}
	if code, _, _ := runCmd("scheduler", "--max-parents", "0"); code != 2 {
		t.Fatalf("scheduler bad max-parents: %d", code)
	}
}

func TestSchedulerAndAllInOneConfig(t *testing.T) {
	code, out, errs := runCmd("scheduler", "--listen", "127.0.0.1:9000", "--max-back-to-source", "2", "--print-config")
	if code != 0 || !strings.Contains(out, "listen: 127.0.0.1:9000") || !strings.Contains(out, "max_back_to_source: 2") {
		t.Fatalf("scheduler print-config: %d %s %s", code, out, errs)
	}
	dir := t.TempDir()
	code, out, errs = runCmd("all-in-one", "--data-dir", dir, "--print-config")
	if code != 0 || !strings.Contains(out, filepath.Join(dir, "seed")) || !strings.Contains(out, "seed: true") {
		t.Fatalf("all-in-one print-config: %d %s %s", code, out, errs)
	}
}

func TestManagerConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m.yaml")
	os.WriteFile(p, []byte("database:\n  type: postgres\n  dsn: postgres://file/db\njobs:\n  workers: 7\n"), 0o644)
	code, out, errs := runCmd("manager", "--config", p, "--listen", "127.0.0.1:9080", "--database-dsn", "postgres://flag/db", "--print-config")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"listen: 127.0.0.1:9080", "grpc_listen: :65003", "type: postgres", "dsn: postgres://flag/db", "workers: 7"} {
		if !strings.Contains(out, want) {
			t.Errorf("effective config lacks %q:\n%s", want, out)
		}
	}
	if code, _, errs := runCmd("manager", "--database-type", "postgres", "--data-dir", t.TempDir()); code != 2 || !strings.Contains(errs, "database.dsn") {
		t.Fatalf("postgres without dsn: %d %q", code, errs)
	}
	if code, _, errs := runCmd("scheduler", "--manager", "nohostport"); code != 2 || !strings.Contains(errs, "manager") {
		t.Fatalf("scheduler bad manager: %d %q", code, errs)
	}
	if code, _, errs := runCmd("daemon", "--manager", "nohostport", "--data-dir", t.TempDir()); code != 2 || !strings.Contains(errs, "manager") {
		t.Fatalf("daemon bad manager: %d %q", code, errs)
	}
	code, out, _ = runCmd("scheduler", "--manager", "10.0.0.1:65003", "--cluster-id", "3", "--print-config")
	if code != 0 || !strings.Contains(out, "manager: 10.0.0.1:65003") || !strings.Contains(out, "cluster_id: 3") {
		t.Fatalf("scheduler manager config: %d %s", code, out)
	}
}

func TestCerts(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	code, hash, errs := runCmd("certs", "init-ca", "--dir", ca)
	if code != 0 || !strings.HasPrefix(hash, "sha256:") {
		t.Fatalf("init-ca: %d %q %s", code, hash, errs)
	}
	if code, again, _ := runCmd("certs", "hash", "--ca-dir", ca); code != 0 || again != hash {
		t.Fatalf("hash: %d %q, want %q", code, again, hash)
	}
	out := filepath.Join(dir, "seed1")
	code, uri, errs := runCmd("certs", "issue", "--ca-dir", ca, "--role", "seed", "--host-id", "node-1", "--out", out)
	if code != 0 || strings.TrimSpace(uri) != "damselfly://seed/node-1" {
		t.Fatalf("issue: %d %q %s", code, uri, errs)
	}
	c, err := pki.LoadDir(out)
	if err != nil || c.Identity().Role != "seed" || c.Identity().HostID != "node-1" {
		t.Fatalf("issued files: %v %v", c, err)
	}
	for _, f := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, st, err)
		}
	}
	for _, bad := range [][]string{
		{"certs", "issue", "--ca-dir", ca, "--role", "admin", "--host-id", "h", "--out", out},
		{"certs", "issue", "--ca-dir", ca, "--role", "peer", "--host-id", "a/b", "--out", out},
		{"certs", "issue", "--ca-dir", filepath.Join(dir, "none"), "--role", "peer", "--host-id", "h", "--out", out},
		{"certs", "init-ca"},
		{"certs", "frobnicate"},
	} {
		if code, _, _ := runCmd(bad...); code == 0 {
			t.Errorf("%v succeeded", bad)
		}
	}
	// The daemon starts only with TLS material, a token, or --insecure.
	t.Setenv(pki.TokenEnv, "")
	code, _, errs = runCmd("daemon", "--data-dir", t.TempDir(), "--sock", filepath.Join(dir, "s.sock"))
	if code != 2 || !strings.Contains(errs, "--tls-cert") || !strings.Contains(errs, "--insecure") {
		t.Fatalf("daemon without TLS material: %d %q", code, errs)
	}
	if code, _, errs := runCmd("daemon", "--insecure", "--tls-cert", "x", "--data-dir", t.TempDir()); code != 2 || !strings.Contains(errs, "insecure") {
		t.Fatalf("insecure with a certificate: %d %q", code, errs)
	}
}
