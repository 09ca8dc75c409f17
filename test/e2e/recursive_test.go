package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/test/objstore"
)

// treeFiles makes n files of 1..48 KiB in nested directories: relative
// path → content.
func treeFiles(n int, seed uint64) map[string][]byte {
	r := rand.New(rand.NewPCG(seed, 99))
	out := map[string][]byte{}
	for i := range n {
		rel := fmt.Sprintf("f%03d.bin", i)
		switch i % 4 {
		case 1:
			rel = "sub/" + rel
		case 2:
			rel = "sub/deeper/" + rel
		case 3:
			rel = fmt.Sprintf("d%d/%s", i%7, rel)
		}
		b := make([]byte, 1<<10+r.IntN(47<<10))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		out[rel] = b
	}
	return out
}

// checkTree compares every file under dir with want (and that nothing else
// is there).
func checkTree(t *testing.T, dir string, want map[string][]byte) {
	t.Helper()
	n := 0
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		w, ok := want[filepath.ToSlash(rel)]
		if !ok {
			t.Errorf("%s: not in the source tree", rel)
			return nil
		}
		n++
		sw := sha256.Sum256(w)
		if got := fileSHA(t, p); got != hex.EncodeToString(sw[:]) {
			t.Errorf("%s: sha256 %s, want %s", rel, got, hex.EncodeToString(sw[:]))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != len(want) {
		t.Errorf("%s holds %d files, want %d", dir, n, len(want))
	}
}

// recursiveOnAll runs one dfget --recursive per daemon at once.
func recursiveOnAll(t *testing.T, ds []*daemonProc, env []string, url string, extra ...string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	outs := make([]string, len(ds))
	errs := make([]string, len(ds))
	var wg sync.WaitGroup
	for i, d := range ds {
		outs[i] = filepath.Join(t.TempDir(), "tree")
		wg.Add(1)
		go func(i int, d *daemonProc) {
			defer wg.Done()
			args := append([]string{"--recursive", url, "-O", outs[i], "--sock", d.sock, "--disable-back-source"}, extra...)
			var code int
			var out string
			if env != nil {
				code, out = dfgetEnv(ctx, env, args...)
			} else {
				code, out = dfget(ctx, args...)
			}
			if code != 0 {
				errs[i] = fmt.Sprintf("dfget --recursive on %s exited %d: %s", d.name, code, out)
			}
		}(i, d)
	}
	wg.Wait()
	for _, e := range errs {
		if e != "" {
			t.Fatal(e)
		}
	}
	return outs
}

// TestRecursiveNginx: two daemons fetch a 100-file tree from a real nginx
// autoindex with dfget --recursive; every copy matches and nginx sends
// each file about once. Then --include/--exclude pick files, and a tree
// with a missing file reports the failure with a non-zero exit code.
func TestRecursiveNginx(t *testing.T) {
	root := filepath.Join(t.TempDir(), "www")
	files := treeFiles(100, 1)
	var total int64
	for rel, b := range files {
		p := filepath.Join(root, "pub", filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		total += int64(len(b))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ng, err := objstore.StartNginx(ctx, t.TempDir(), root)
	if err != nil {
		objstore.SkipIfMissing(t, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nginx error log:\n%s", ng.ErrorLog())
		}
		ng.Stop()
	})
	c := startCluster(t, 2)
	outs := recursiveOnAll(t, c.daemons, nil, ng.URL+"/pub/")
	for _, o := range outs {
		checkTree(t, o, files)
	}
	served, err := ng.Served()
	if err != nil {
		t.Fatal(err)
	}
	var sent int64
	for rel, b := range files {
		n := served["/pub/"+rel]
		sent += n
		if n < int64(len(b)) || n > 2*int64(len(b)) {
			t.Errorf("nginx sent %d bytes of %s (%d bytes)", n, rel, len(b))
		}
	}
	t.Logf("nginx sent %d file bytes for a %d-byte tree fetched by 2 daemons", sent, total)
	if sent > total*5/4 {
		t.Errorf("nginx sent %d bytes, want about one copy of %d", sent, total)
	}

	// Globs: only sub/deeper, minus one file.
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	out := filepath.Join(t.TempDir(), "picked")
	code, msg := dfget(ctx2, "--recursive", ng.URL+"/pub/", "-O", out, "--sock", c.daemons[0].sock,
		"--include", "sub/deeper/*", "--exclude", "f002.bin", "--parallel", "2")
	if code != 0 {
		t.Fatalf("globs: exit %d: %s", code, msg)
	}
	want := map[string][]byte{}
	for rel, b := range files {
		if strings.HasPrefix(rel, "sub/deeper/") && rel != "sub/deeper/f002.bin" {
			want[rel] = b
		}
	}
	checkTree(t, out, want)

	// A listed file the server cannot send (a dangling symlink: listed,
	// then 404): exit 3 (not found), the summary names it, the others
	// arrive.
	if err := os.Symlink("/nonexistent/damselfly-test", filepath.Join(root, "pub", "d5", "gone.bin")); err != nil {
		t.Fatal(err)
	}
	out = filepath.Join(t.TempDir(), "broken")
	code, msg = dfget(ctx2, "--recursive", ng.URL+"/pub/d5/", "-O", out, "--sock", c.daemons[1].sock)
	if code != 3 || !strings.Contains(msg, "1 files failed") || !strings.Contains(msg, "gone.bin") {
		t.Fatalf("tree with a missing file: exit %d: %s", code, msg)
	}
	want = map[string][]byte{}
	for rel, b := range files {
		if strings.HasPrefix(rel, "d5/") {
			want[strings.TrimPrefix(rel, "d5/")] = b
		}
	}
	checkTree(t, out, want)
}

// TestRecursiveS3: two daemons fetch a 100-object prefix from the S3 server
// with dfget --recursive and the callers' AWS environment; the seed peer
// has its own credentials for the bucket; the server sends each object
// about once and every copy matches.
func TestRecursiveS3(t *testing.T) {
	s := startS3(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.CreateBucket(ctx, "tree"); err != nil {
		t.Fatal(err)
	}
	files := treeFiles(100, 2)
	var total int64
	for rel, b := range files {
		if _, err := s.Put(ctx, "tree", "set/"+rel, b); err != nil {
			t.Fatal(err)
		}
		total += int64(len(b))
	}
	if _, err := s.Put(ctx, "tree", "other/x.bin", []byte("not under the prefix")); err != nil {
		t.Fatal(err)
	}
	c := &cluster{sched: startScheduler(t)}
	c.seed = startDaemon(t, daemonOpts{name: "seed", scheduler: c.sched.addr, seed: true, extra: []string{"--config", seedS3Config(t, s, "tree")}})
	for i := range 2 {
		c.daemons = append(c.daemons, startDaemon(t, daemonOpts{name: fmt.Sprintf("peer%d", i), scheduler: c.sched.addr}))
	}
	outs := recursiveOnAll(t, c.daemons, awsEnv(t, s, s.SecretKey), "s3://tree/set")
	for _, o := range outs {
		checkTree(t, o, files)
	}
	var sent int64
	for rel, b := range files {
		n := s.Served("tree", "set/"+rel)
		sent += n
		if n < int64(len(b)) || n > 2*int64(len(b)) {
			t.Errorf("S3 sent %d bytes of %s (%d bytes)", n, rel, len(b))
		}
	}
	t.Logf("S3 sent %d object bytes for a %d-byte prefix fetched by 2 daemons", sent, total)
	if sent > total*5/4 {
		t.Errorf("S3 sent %d bytes, want about one copy of %d", sent, total)
	}
}
