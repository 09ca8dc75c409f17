package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/daemon"
)

type out struct {
	code           int
	stdout, stderr string
}

func dfcache(t *testing.T, args ...string) out {
	t.Helper()
	var o, e bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, args, &o, &e)
	return out{code, o.String(), e.String()}
}

func TestParseArgs(t *testing.T) {
	good := map[string]struct {
		args []string
		cmd  string
		file string
	}{
		"import, flags after file": {[]string{"import", "f.bin", "--id", "a", "--tag", "t"}, "import", "f.bin"},
		"import, flags first":      {[]string{"import", "-i", "a", "f.bin"}, "import", "f.bin"},
		"export":                   {[]string{"export", "--id", "a", "-O", "out"}, "export", "out"},
		"export to stdout, local":  {[]string{"export", "--local", "--id", "a", "-O", "-"}, "export", "-"},
		"stat":                     {[]string{"stat", "--id", "a"}, "stat", ""},
		"delete":                   {[]string{"delete", "--id", "a", "-q"}, "delete", ""},
		"file after --":            {[]string{"import", "--id", "a", "--", "-odd"}, "import", "-odd"},
	}
	for name, tc := range good {
		o, err := parseArgs(tc.args)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if o.cmd != tc.cmd || o.file != tc.file || o.id != "a" {
			t.Errorf("%s: got cmd %q file %q id %q", name, o.cmd, o.file, o.id)
		}
	}
	bad := map[string][]string{
		"no command":          {"--id", "a"},
		"unknown command":     {"push", "--id", "a"},
		"import without file": {"import", "--id", "a"},
		"import two files":    {"import", "--id", "a", "x", "y"},
		"import with output":  {"import", "x", "--id", "a", "-O", "y"},
		"stat with argument":  {"stat", "--id", "a", "x"},
		"stat with output":    {"stat", "--id", "a", "-O", "x"},
		"local on import":     {"import", "x", "--id", "a", "--local"},
		"unknown flag":        {"stat", "--id", "a", "--bogus"},
		"bad timeout":         {"stat", "--id", "a", "--timeout", "soon"},
		"negative timeout":    {"stat", "--id", "a", "--timeout", "-1"},
	}
	for name, args := range bad {
		if _, err := parseArgs(args); err == nil {
			t.Errorf("%s: accepted %q", name, args)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for name, args := range map[string][]string{
		"nothing":          nil,
		"missing id":       {"stat"},
		"bad id":           {"stat", "--id", "has space"},
		"export no output": {"export", "--id", "a"},
		"unknown command":  {"frobnicate"},
	} {
		r := dfcache(t, args...)
		if r.code != exitUsage || r.stderr == "" {
			t.Errorf("%s: exit %d, stderr %q; want %d and a message", name, r.code, r.stderr, exitUsage)
		}
	}
	if r := dfcache(t, "--help"); r.code != 0 || !strings.Contains(r.stdout, "Exit codes:") {
		t.Errorf("--help: %d %q", r.code, r.stdout)
	}
	if r := dfcache(t, "stat", "--id", "a", "--sock", filepath.Join(t.TempDir(), "none.sock")); r.code != exitNoDaemon || !strings.Contains(r.stderr, "none.sock") {
		t.Errorf("no daemon: exit %d, %q", r.code, r.stderr)
	}
}

// startDaemon runs a real daemon in-process, without a scheduler: the local
// cache is all dfcache can use.
func startDaemon(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cfg := daemon.DefaultConfig()
	cfg.Scheduler = ""
	cfg.DataDir = filepath.Join(dir, "cache")
	cfg.Sock = filepath.Join(dir, "d.sock")
	cfg.ListenIP, cfg.AdvertiseIP = "127.0.0.1", "127.0.0.1"
	cfg.PeerPort, cfg.UploadPort, cfg.MetricsPort = 0, 0, -1
	cfg.TLS.Insecure = true
	d, err := daemon.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatalf("daemon exited: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("daemon not ready")
	}
	return cfg.Sock
}

func TestLifecycleOnOneDaemon(t *testing.T) {
	sock := startDaemon(t)
	dir := t.TempDir()
	data := bytes.Repeat([]byte("damselfly dfcache "), 300_000) // ~5 MiB, several pieces
	in := filepath.Join(dir, "in.bin")
	if err := os.WriteFile(in, data, 0o644); err != nil {
		t.Fatal(err)
	}
	s := []string{"--sock", sock}

	if r := dfcache(t, append([]string{"stat", "--id", "model"}, s...)...); r.code != exitNotFound || !strings.Contains(r.stderr, `"model"`) {
		t.Fatalf("stat of unknown id: exit %d, %q", r.code, r.stderr)
	}
	if r := dfcache(t, append([]string{"export", "--id", "model", "--local", "-O", filepath.Join(dir, "x")}, s...)...); r.code != exitNotFound {
		t.Fatalf("local export of unknown id: exit %d, %q", r.code, r.stderr)
	}
	// Without a scheduler nobody else can have it, and there is no origin.
	if r := dfcache(t, append([]string{"export", "--id", "model", "-O", filepath.Join(dir, "x")}, s...)...); r.code == 0 || !strings.Contains(r.stderr, "no origin") {
		t.Fatalf("export of unknown id without a swarm: exit %d, %q", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); !os.IsNotExist(err) {
		t.Fatal("failed export left an output file")
	}
	if r := dfcache(t, append([]string{"import", "--id", "model", "--tag", "v1", in, "--ttl", "72h"}, s...)...); r.code != 0 || !strings.Contains(r.stderr, "imported") {
		t.Fatalf("import: exit %d, %q", r.code, r.stderr)
	}
	if r := dfcache(t, append([]string{"import", "--id", "model", "--tag", "v1", in}, s...)...); r.code != exitExists {
		t.Fatalf("second import: exit %d, %q", r.code, r.stderr)
	}
	if r := dfcache(t, append([]string{"import", "--id", "other", filepath.Join(dir, "missing")}, s...)...); r.code != exitFailed || !strings.Contains(r.stderr, "missing") {
		t.Fatalf("import of a missing file: exit %d, %q", r.code, r.stderr)
	}
	// the tag is part of the name
	if r := dfcache(t, append([]string{"stat", "--id", "model"}, s...)...); r.code != exitNotFound {
		t.Fatalf("stat without the tag: exit %d", r.code)
	}
	r := dfcache(t, append([]string{"stat", "--id", "model", "--tag", "v1"}, s...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "state: complete") || !strings.Contains(r.stdout, "size: 5400000 ") || !strings.Contains(r.stdout, "ttl: 72h0m0s") {
		t.Fatalf("stat: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	outFile := filepath.Join(dir, "out.bin")
	if r := dfcache(t, append([]string{"export", "--id", "model", "--tag", "v1", "-O", outFile}, s...)...); r.code != 0 || !strings.Contains(r.stderr, "from this node's cache") {
		t.Fatalf("export: exit %d, %q", r.code, r.stderr)
	}
	if got, _ := os.ReadFile(outFile); !bytes.Equal(got, data) {
		t.Fatal("exported bytes differ from the imported file")
	}
	if r := dfcache(t, append([]string{"export", "--id", "model", "--tag", "v1", "-O", "-", "-q"}, s...)...); r.code != 0 || r.stdout != string(data) {
		t.Fatalf("export to stdout: exit %d, %d bytes, %q", r.code, len(r.stdout), r.stderr)
	}
	if r := dfcache(t, append([]string{"delete", "--id", "model", "--tag", "v1"}, s...)...); r.code != 0 {
		t.Fatalf("delete: exit %d, %q", r.code, r.stderr)
	}
	if r := dfcache(t, append([]string{"delete", "--id", "model", "--tag", "v1"}, s...)...); r.code != exitNotFound {
		t.Fatalf("second delete: exit %d, %q", r.code, r.stderr)
	}
	if r := dfcache(t, append([]string{"stat", "--id", "model", "--tag", "v1"}, s...)...); r.code != exitNotFound {
		t.Fatalf("stat after delete: exit %d", r.code)
	}
	// an empty file is an entry too
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	if r := dfcache(t, append([]string{"import", "--id", "empty", empty}, s...)...); r.code != 0 {
		t.Fatalf("import of an empty file: exit %d, %q", r.code, r.stderr)
	}
	emptyOut := filepath.Join(dir, "empty.out")
	if r := dfcache(t, append([]string{"export", "--id", "empty", "-O", emptyOut}, s...)...); r.code != 0 {
		t.Fatalf("export of an empty entry: exit %d, %q", r.code, r.stderr)
	}
	if st, err := os.Stat(emptyOut); err != nil || st.Size() != 0 {
		t.Fatalf("exported empty entry: %v", err)
	}
	// and it can be imported again
	if r := dfcache(t, append([]string{"import", "--id", "model", "--tag", "v1", in}, s...)...); r.code != 0 {
		t.Fatalf("import after delete: exit %d, %q", r.code, r.stderr)
	}
}
