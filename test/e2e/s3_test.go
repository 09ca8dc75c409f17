package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/test/objstore"
)

// startS3 runs a real S3 server (versitygw) behind a counting proxy.
func startS3(t testing.TB) *objstore.S3 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := objstore.StartS3(ctx, t.TempDir())
	if err != nil {
		objstore.SkipIfMissing(t, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("versitygw log:\n%s", s.Log())
		}
		s.Stop()
	})
	return s
}

// awsEnv is the environment of a dfget caller whose AWS configuration
// points at s with the given secret (no config files, no instance metadata:
// nothing leaves the machine).
func awsEnv(t testing.TB, s *objstore.S3, secret string) []string {
	home := t.TempDir()
	env := []string{"HOME=" + home, "PATH=" + os.Getenv("PATH"),
		"AWS_EC2_METADATA_DISABLED=true", "AWS_CONFIG_FILE=" + filepath.Join(home, "none"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(home, "none"),
		"AWS_ENDPOINT_URL=" + s.Endpoint, "AWS_REGION=" + s.Region, "AWS_S3_FORCE_PATH_STYLE=true"}
	if secret != "" {
		env = append(env, "AWS_ACCESS_KEY_ID="+s.AccessKey, "AWS_SECRET_ACCESS_KEY="+secret)
	}
	return env
}

// dfgetEnv runs dfget with exactly env.
func dfgetEnv(ctx context.Context, env []string, args ...string) (int, string) {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "dfget"), args...)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String()
	}
	if err != nil {
		return -1, out.String() + err.Error()
	}
	return 0, out.String()
}

// seedS3Config writes a daemon config giving the seed peer its own
// credentials for bucket.
func seedS3Config(t testing.TB, s *objstore.S3, bucket string) string {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte(s.SecretKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`source:
  s3:
    buckets:
      %s:
        endpoint: %s
        region: %s
        access_key_id: %s
        secret_access_key_file: %s
        path_style: true
`, bucket, s.Endpoint, s.Region, s.AccessKey, secret)
	p := filepath.Join(dir, "seed.yaml")
	if err := os.WriteFile(p, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestS3TwoDaemonsOneObject: two daemons fetch one private S3 object with
// the callers' AWS environment; the seed peer holds its own credentials for
// the bucket; the S3 server sends the object about once and both copies
// match. A wrong secret fails at once with exit code 7 and the server's
// refusal in the message; a changed object is a new task.
func TestS3TwoDaemonsOneObject(t *testing.T) {
	s := startS3(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := s.CreateBucket(ctx, "data"); err != nil {
		t.Fatal(err)
	}
	const size = 12 << 20
	content := make([]byte, size)
	r := rand.NewChaCha8([32]byte{7})
	_, _ = r.Read(content)
	if _, err := s.Put(ctx, "data", "models/big.bin", content); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(content)
	want := hex.EncodeToString(sum[:])

	c := &cluster{sched: startScheduler(t)}
	c.seed = startDaemon(t, daemonOpts{name: "seed", scheduler: c.sched.addr, seed: true, extra: []string{"--config", seedS3Config(t, s, "data")}})
	for i := 0; i < 2; i++ {
		c.daemons = append(c.daemons, startDaemon(t, daemonOpts{name: fmt.Sprintf("peer%d", i), scheduler: c.sched.addr}))
	}
	env := awsEnv(t, s, s.SecretKey)
	url := "s3://data/models/big.bin"
	var wg sync.WaitGroup
	outs := make([]string, len(c.daemons))
	errs := make([]string, len(c.daemons))
	for i, d := range c.daemons {
		outs[i] = filepath.Join(t.TempDir(), "big.bin")
		wg.Add(1)
		go func(i int, d *daemonProc) {
			defer wg.Done()
			if code, out := dfgetEnv(ctx, env, url, "-O", outs[i], "--sock", d.sock, "--disable-back-source"); code != 0 {
				errs[i] = fmt.Sprintf("dfget on %s exited %d: %s", d.name, code, out)
			}
		}(i, d)
	}
	wg.Wait()
	for i := range outs {
		if errs[i] != "" {
			t.Fatal(errs[i])
		}
		if got := fileSHA(t, outs[i]); got != want {
			t.Errorf("copy %d: sha256 %s, want %s", i, got, want)
		}
	}
	served := s.Served("data", "models/big.bin")
	t.Logf("S3 server sent %d bytes for a %d-byte object fetched by 2 daemons", served, size)
	if served < size || served > size*3/2 {
		t.Errorf("S3 server sent %d bytes; want about one copy (%d)", served, size)
	}

	// Without a daemon dfget reads the object itself, with the same
	// credentials and addressing.
	direct := filepath.Join(t.TempDir(), "direct.bin")
	if code, out := dfgetEnv(ctx, env, url, "-O", direct, "--direct"); code != 0 {
		t.Fatalf("--direct: exit %d: %s", code, out)
	}
	if got := fileSHA(t, direct); got != want {
		t.Errorf("--direct copy: sha256 %s, want %s", got, want)
	}

	// Wrong secret: the server verifies the signature and refuses; dfget
	// says so and exits 7, without a direct retry.
	code, out := dfgetEnv(ctx, awsEnv(t, s, "wrong-secret"), url, "-O", filepath.Join(t.TempDir(), "x"), "--sock", c.daemons[0].sock)
	if code != 7 || !strings.Contains(out, "403") {
		t.Errorf("wrong secret: exit %d, %s; want exit 7 naming the server's 403", code, out)
	}
	// No credentials at all: the private bucket refuses anonymous reads.
	code, out = dfgetEnv(ctx, awsEnv(t, s, ""), url, "-O", filepath.Join(t.TempDir(), "x"), "--sock", c.daemons[1].sock)
	if code != 7 || !strings.Contains(out, "anonymously") {
		t.Errorf("anonymous: exit %d, %s; want exit 7 after a note on anonymous reading", code, out)
	}

	// A local client of the seed peer without credentials cannot borrow
	// the seed's configured bucket credentials (they serve the swarm's
	// fetches, not whoever can reach the daemon's socket), even though the
	// seed holds the object.
	code, out = dfgetEnv(ctx, awsEnv(t, s, ""), url, "-O", filepath.Join(t.TempDir(), "x"), "--sock", c.seed.sock)
	if code != 7 {
		t.Errorf("no credentials on the seed's socket: exit %d, %s; want 7", code, out)
	}

	// A changed object is a new task: the daemon's cached copy of the old
	// one is not what it returns.
	content2 := append([]byte("changed "), content[:1<<20]...)
	if _, err := s.Put(ctx, "data", "models/big.bin", content2); err != nil {
		t.Fatal(err)
	}
	out2 := filepath.Join(t.TempDir(), "big2.bin")
	if code, out := dfgetEnv(ctx, env, url, "-O", out2, "--sock", c.daemons[0].sock); code != 0 {
		t.Fatalf("after the change: exit %d: %s", code, out)
	}
	sum2 := sha256.Sum256(content2)
	if got := fileSHA(t, out2); got != hex.EncodeToString(sum2[:]) {
		t.Errorf("after the change: got sha256 %s, want the new object's", got)
	}
}

// uploadAddr reads the daemon's piece upload address from its log.
func uploadAddr(t *testing.T, d *daemonProc) string {
	t.Helper()
	b, err := os.ReadFile(d.log)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, "daemon ready") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "upload_addr="); ok {
				return v
			}
		}
	}
	t.Fatalf("%s: no upload_addr in its log", d.name)
	return ""
}

// TestS3PrivateObjectNotServed: an object fetched with credentials is the
// fetching node's private business. A node without credentials cannot get
// it through its daemon (the HEAD that names the task is refused: exit 7),
// and a rogue peer that knows the task ID (URL and ETag are no secret)
// asking the holder's upload port for a piece gets nothing.
func TestS3PrivateObjectNotServed(t *testing.T) {
	s := startS3(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := s.CreateBucket(ctx, "secret"); err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("private payload "), 64<<10) // 1 MiB
	etag, err := s.Put(ctx, "secret", "plans.bin", content)
	if err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, 2)
	url := "s3://secret/plans.bin"
	if code, out := dfgetEnv(ctx, awsEnv(t, s, s.SecretKey), url, "-O", filepath.Join(t.TempDir(), "p"), "--sock", c.daemons[0].sock); code != 0 {
		t.Fatalf("owner: exit %d: %s", code, out)
	}
	if code, out := dfgetEnv(ctx, awsEnv(t, s, ""), url, "-O", filepath.Join(t.TempDir(), "p"), "--sock", c.daemons[1].sock); code != 7 {
		t.Fatalf("node without credentials: exit %d, want 7: %s", code, out)
	}
	id := core.TaskID(url, core.TaskOptions{Version: etag})
	resp, err := http.Get("http://" + uploadAddr(t, c.daemons[0]) + "/pieces/" + id + "/0")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK || bytes.Contains(content, body[:min(len(body), 64)]) && len(body) > 0 {
		t.Fatalf("a rogue peer got %d bytes of the private object from its holder (%s)", len(body), resp.Status)
	}
}

// TestS3Preheat: the manager preheats an s3:// file on the seed peer, which
// reads it with its own bucket credentials and names the task after the
// object's ETag; a later dfget with the caller's credentials finds it in
// the swarm: the S3 server sends the object once in all.
func TestS3Preheat(t *testing.T) {
	s := startS3(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := s.CreateBucket(ctx, "pre"); err != nil {
		t.Fatal(err)
	}
	content := make([]byte, 2<<20+5)
	r := rand.NewChaCha8([32]byte{9})
	_, _ = r.Read(content)
	if _, err := s.Put(ctx, "pre", "warm.bin", content); err != nil {
		t.Fatal(err)
	}
	c := startManaged(t, 1, nil, "--config", seedS3Config(t, s, "pre"))
	j := c.mgr.waitJob(t, c.mgr.preheat(t, map[string]any{"type": "file", "url": "s3://pre/warm.bin", "scope": "single_seed_peer"}))
	if j.State != "SUCCESS" {
		t.Fatalf("s3 preheat: %s %q", j.State, j.Error)
	}
	if n := s.Served("pre", "warm.bin"); n != int64(len(content)) {
		t.Fatalf("after the preheat the S3 server sent %d bytes, want %d", n, len(content))
	}
	out := filepath.Join(t.TempDir(), "warm.bin")
	if code, msg := dfgetEnv(ctx, awsEnv(t, s, s.SecretKey), "s3://pre/warm.bin", "-O", out, "--sock", c.daemons[0].sock, "--disable-back-source"); code != 0 {
		t.Fatalf("dfget after the preheat: exit %d: %s", code, msg)
	}
	sum := sha256.Sum256(content)
	if got := fileSHA(t, out); got != hex.EncodeToString(sum[:]) {
		t.Fatalf("copy sha256 %s", got)
	}
	if n := s.Served("pre", "warm.bin"); n != int64(len(content)) {
		t.Errorf("the S3 server sent %d bytes in all, want one copy (%d): the dfget did not find the preheated task", n, len(content))
	}
}
