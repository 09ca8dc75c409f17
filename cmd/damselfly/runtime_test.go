package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The command's contract on a scratch root: --dry-run prints a diff and
// writes nothing, --reload-file names what must restart (nothing on a
// second run), --undo puts the files back, bad input exits 2.
func TestConfigureRuntimeCLI(t *testing.T) {
	root := t.TempDir()
	cfg := filepath.Join(root, "etc", "containerd", "config.toml")
	os.MkdirAll(filepath.Dir(cfg), 0o755)
	orig := "version = 2\n"
	os.WriteFile(cfg, []byte(orig), 0o644)
	base := []string{"configure-runtime", "--root", root, "--restart", "never", "--registries", "docker.io,http://10.77.0.5:5000"}

	code, out, errs := runCmd(append(base, "--dry-run")...)
	if code != 0 || !strings.Contains(out, "--- a/etc/containerd/config.toml") || !strings.Contains(out, "+++ b/etc/containerd/certs.d/10.77.0.5:5000/hosts.toml") ||
		!strings.Contains(out, "# then containerd: systemctl restart containerd") {
		t.Fatalf("dry run: exit %d\n%s%s", code, out, errs)
	}
	if b, _ := os.ReadFile(cfg); string(b) != orig {
		t.Fatal("dry run changed the config")
	}
	if _, err := os.Stat(filepath.Join(root, "etc", "containerd", "certs.d")); err == nil {
		t.Fatal("dry run created certs.d")
	}

	reload := filepath.Join(t.TempDir(), "reload")
	code, out, errs = runCmd(append(base, "--reload-file", reload)...)
	if code != 0 || !strings.Contains(out, "containerd must re-read its configuration") {
		t.Fatalf("apply: exit %d\n%s%s", code, out, errs)
	}
	if b, _ := os.ReadFile(reload); string(b) != "containerd\n" {
		t.Fatalf("reload file %q", b)
	}
	code, out, _ = runCmd(append(base, "--reload-file", reload)...)
	if b, _ := os.ReadFile(reload); code != 0 || !strings.Contains(out, "already configured") || len(b) != 0 {
		t.Fatalf("second run: exit %d, %q, reload file %q", code, out, b)
	}

	code, out, _ = runCmd("configure-runtime", "--root", root, "--undo", "--restart", "never")
	if b, _ := os.ReadFile(cfg); code != 0 || string(b) != orig || !strings.Contains(out, "restored") {
		t.Fatalf("undo: exit %d, %q, config %q", code, out, b)
	}
	if code, out, _ := runCmd("configure-runtime", "--root", root, "--undo"); code != 0 || !strings.Contains(out, "nothing to undo") {
		t.Fatalf("second undo: %d %q", code, out)
	}

	for _, bad := range [][]string{{"--runtimes", "rkt"}, {"--mirror", "127.0.0.1:65001"}, {"--restart", "sometimes"}, {"extra"}} {
		if code, _, _ := runCmd(append([]string{"configure-runtime", "--root", root}, bad...)...); code != 2 {
			t.Errorf("%v: exit %d, want 2", bad, code)
		}
	}
	// Nothing to wire under an empty root: a clear error, exit 1.
	if code, _, errs := runCmd("configure-runtime", "--root", t.TempDir()); code != 1 || !strings.Contains(errs, "no container runtime found") {
		t.Errorf("empty root: %d %q", code, errs)
	}
}
