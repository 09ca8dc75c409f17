package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/damselfly-io/damselfly/core"
)

// The attacks of a local user on the daemon's socket (docs/security.md,
// "Local users and the daemon socket"): a real root daemon, and dfget,
// dfcache and a rogue client (./localrogue) run as the unprivileged user nobody
// with setpriv — with the socket's group where the attacker is meant to be
// an allowed but untrusted local user, without it where not.

const (
	nobody    = "65534"
	sockGroup = "61234" // a numeric gid: no /etc/group entry needed
)

type localLab struct {
	base    string // 0755, root's
	mine    string // nobody's own directory
	secret  string // root-only 0600 file
	content []byte // the secret's bytes
	d       *daemonProc
	o       *origin
	sched   *schedulerProc
}

func newLocalLab(t *testing.T) *localLab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: a root daemon and setpriv to an unprivileged user")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv (util-linux)")
	}
	base := t.TempDir()
	// The unprivileged user must reach the socket, its own directory and
	// the binaries (all in temp dirs the test made, 0700 by default).
	for _, d := range []string{filepath.Dir(base), base, binDir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	l := &localLab{base: base, mine: filepath.Join(base, "nobody"), secret: filepath.Join(base, "secret")}
	if err := os.Mkdir(l.mine, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(l.mine, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	l.content = make([]byte, 70_000)
	_, _ = rand.Read(l.content)
	if err := os.WriteFile(l.secret, l.content, 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(base, "d")
	if err := os.Mkdir(dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	l.sched = startScheduler(t)
	l.d = startDaemon(t, daemonOpts{name: "victim", scheduler: l.sched.addr, dataDir: dataDir, extra: sockGroupArgs(t)})
	l.o = newOrigin(t)
	return l
}

// sockGroupArgs gives the daemon the socket group, when its binary knows
// the flag (an older binary, run to see the attacks succeed, does not).
func sockGroupArgs(t *testing.T) []string {
	out, _ := exec.Command(filepath.Join(binDir, "damselfly"), "daemon", "--help").CombinedOutput()
	if !bytes.Contains(out, []byte("sock-group")) {
		t.Log("daemon binary has no --sock-group (an older one)")
		return nil
	}
	return []string{"--sock-group", sockGroup}
}

// asNobody runs a binary from binDir as nobody, in the socket's group when
// member is set, and returns its exit code and output.
func (l *localLab) asNobody(t *testing.T, member bool, bin string, args ...string) (int, string) {
	t.Helper()
	groups := "--clear-groups"
	if member {
		groups = "--groups=" + sockGroup
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	argv := append([]string{"--reuid=" + nobody, "--regid=" + nobody, groups, "--", filepath.Join(binDir, bin)}, args...)
	cmd := exec.CommandContext(ctx, "setpriv", argv...)
	cmd.Dir = l.mine
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + l.mine}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatalf("run %s as nobody: %v", bin, err)
	}
	return 0, string(out)
}

func statT(t *testing.T, path string) (unix.Stat_t, bool) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return st, false
	}
	return st, true
}

// TestLocalAttackSocketAccess: the socket admits its group only. On the
// old code it was 0666: anyone could drive the root daemon.
func TestLocalAttackSocketAccess(t *testing.T) {
	l := newLocalLab(t)
	st, ok := statT(t, l.d.sock)
	if !ok {
		t.Fatal("no socket")
	}
	if perm := st.Mode & 0o777; perm != 0o660 || st.Gid != 61234 {
		t.Errorf("socket mode %o gid %d, want 0660 and gid %s", perm, st.Gid, sockGroup)
	}
	if code, out := l.asNobody(t, false, "localrogue", "stat", "-sock", l.d.sock); code == 0 {
		t.Errorf("a user outside the socket's group reached the daemon: %s", out)
	}
	if code, out := l.asNobody(t, true, "localrogue", "stat", "-sock", l.d.sock); code != 0 {
		t.Errorf("a member of the socket's group could not reach the daemon: %s", out)
	}
}

// TestLocalAttackReadSecretFileURL: dfget file:///secret by a user who may
// not read it. On the old code the root daemon read it and wrote it out,
// owned by the attacker.
func TestLocalAttackReadSecretFileURL(t *testing.T) {
	l := newLocalLab(t)
	out := filepath.Join(l.mine, "got")
	code, msg := l.asNobody(t, true, "dfget", "file://"+l.secret, "-O", out, "--sock", l.d.sock)
	if b, err := os.ReadFile(out); err == nil && bytes.Equal(b, l.content) {
		t.Fatalf("nobody read the root-only file through the daemon (dfget exit %d): %s", code, msg)
	}
	if code == 0 {
		t.Fatalf("dfget of an unreadable file:// URL succeeded: %s", msg)
	}
	// A file the user may read still goes through the daemon.
	pub := filepath.Join(l.base, "public")
	if err := os.WriteFile(pub, l.content[:1000], 0o644); err != nil {
		t.Fatal(err)
	}
	code, msg = l.asNobody(t, true, "dfget", "file://"+pub, "-O", filepath.Join(l.mine, "pub"), "--sock", l.d.sock)
	if code != 0 || !strings.Contains(msg, "daemon") || strings.Contains(msg, "directly") {
		t.Fatalf("readable file:// via the daemon: exit %d: %s", code, msg)
	}
	if b, _ := os.ReadFile(filepath.Join(l.mine, "pub")); !bytes.Equal(b, l.content[:1000]) {
		t.Fatal("readable file:// via the daemon: wrong content")
	}
}

// TestLocalAttackWriteIntoRootDir: dfget -O into a 0700 root directory. On
// the old code the daemon created the file there.
func TestLocalAttackWriteIntoRootDir(t *testing.T) {
	l := newLocalLab(t)
	url, _ := l.o.add("blob", 50_000, 1)
	rootDir := filepath.Join(l.base, "root-only")
	if err := os.Mkdir(rootDir, 0o700); err != nil {
		t.Fatal(err)
	}
	code, msg := l.asNobody(t, true, "dfget", url, "-O", filepath.Join(rootDir, "planted"), "--sock", l.d.sock)
	if ents, _ := os.ReadDir(rootDir); len(ents) != 0 {
		t.Fatalf("nobody wrote into a 0700 root directory (dfget exit %d, %s): %v", code, msg, ents)
	}
	if code == 0 {
		t.Fatalf("dfget into a directory it may not write succeeded: %s", msg)
	}
	// Its own directory works, and the file is its own.
	own := filepath.Join(l.mine, "own")
	if code, msg := l.asNobody(t, true, "dfget", url, "-O", own, "--sock", l.d.sock); code != 0 || strings.Contains(msg, "directly") {
		t.Fatalf("dfget into its own directory via the daemon: exit %d: %s", code, msg)
	}
	st, ok := statT(t, own)
	if !ok || st.Uid != 65534 || st.Gid != 65534 || st.Mode&0o7000 != 0 {
		t.Fatalf("own output: exists %v uid %d gid %d mode %o", ok, st.Uid, st.Gid, st.Mode)
	}
}

// TestLocalAttackSetuidShell: a rogue client asks for a root-owned 04755
// copy of a shell in its directory. On the old code it got one.
func TestLocalAttackSetuidShell(t *testing.T) {
	l := newLocalLab(t)
	sh := filepath.Join(l.base, "sh")
	b, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sh, b, 0o755); err != nil {
		t.Fatal(err)
	}
	code1, out1 := l.asNobody(t, true, "localrogue", "download", "-sock", l.d.sock, "-url", "file://"+sh,
		"-output", filepath.Join(l.mine, "rootshell"), "-mode", "2541", "-uid", "0", "-gid", "0") // 2541 = 04755
	// The same through a descriptor it passes: the daemon ignores mode and owner.
	url, _ := l.o.add("tool", 30_000, 2)
	code2, out2 := l.asNobody(t, true, "localrogue", "download", "-sock", l.d.sock, "-url", url,
		"-pass-output", filepath.Join(l.mine, "passed"), "-mode", "2541", "-uid", "0", "-gid", "0")
	ents, _ := os.ReadDir(l.mine)
	for _, e := range ents {
		st, _ := statT(t, filepath.Join(l.mine, e.Name()))
		if st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 || st.Uid == 0 {
			t.Errorf("%s: uid %d mode %o (rogue: %d %s / %d %s)", e.Name(), st.Uid, st.Mode, code1, out1, code2, out2)
		}
	}
	if code1 == 0 {
		t.Errorf("the daemon accepted an output path: %s", out1)
	}
}

// TestLocalAttackImportSecret: dfcache import of a root-only file. On the
// old code the daemon read it and made it exportable on every node.
func TestLocalAttackImportSecret(t *testing.T) {
	l := newLocalLab(t)
	code, msg := l.asNobody(t, true, "dfcache", "import", l.secret, "--id", "stolen", "--sock", l.d.sock)
	if code == 0 {
		t.Errorf("dfcache import of an unreadable file succeeded: %s", msg)
	}
	rcode, rmsg := l.asNobody(t, true, "localrogue", "import", "-sock", l.d.sock, "-path", l.secret, "-id", "stolen2")
	if rcode == 0 {
		t.Errorf("the daemon imported a path for the rogue: %s", rmsg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, id := range []string{"stolen", "stolen2"} {
		if c, _, e := dfcache(ctx, "stat", "--id", id, "--sock", l.d.sock); c != 3 {
			t.Errorf("entry %s: dfcache stat exit %d (%s), want 3 (not in the cache)", id, c, e)
		}
	}
	// A file the user may read imports fine.
	pub := filepath.Join(l.mine, "mine.bin")
	if err := os.WriteFile(pub, l.content[:5000], 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Chown(pub, 65534, 65534)
	if code, msg := l.asNobody(t, true, "dfcache", "import", pub, "--id", "mine", "--sock", l.d.sock); code != 0 {
		t.Fatalf("import of its own file: exit %d: %s", code, msg)
	}
}

// TestLocalDeviceOutputWrittenThrough: dfget -O <a character device> as
// root. On the old code the node was replaced by a regular file.
func TestLocalDeviceOutputWrittenThrough(t *testing.T) {
	l := newLocalLab(t)
	url, _ := l.o.add("dev", 40_000, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, how := range []string{"daemon", "direct"} {
		node := filepath.Join(l.base, "null-"+how)
		if err := unix.Mknod(node, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
			t.Fatalf("mknod: %v", err)
		}
		args := []string{url, "-O", node, "--sock", l.d.sock}
		if how == "direct" {
			args = append(args, "--direct")
		}
		code, msg := dfget(ctx, args...)
		st, ok := statT(t, node)
		if !ok || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 3) {
			t.Errorf("%s: %s is no longer the device (mode %o, rdev %d): dfget exit %d %s", how, node, st.Mode, st.Rdev, code, msg)
		}
		if code != 0 {
			t.Errorf("%s: dfget into a device: exit %d: %s", how, code, msg)
		}
		if ents, _ := filepath.Glob(filepath.Join(l.base, ".null-*")); len(ents) != 0 {
			t.Errorf("%s: temp files left: %v", how, ents)
		}
	}
}

// TestCorruptCachedPieceNotServed: a piece of a cached task corrupted on
// disk with its mtime set back (size and mtime as before) is neither
// copied to a local dfget from the cache nor sent to a peer that asks the
// upload port for it. On the old code both got the corrupt bytes.
func TestCorruptCachedPieceNotServed(t *testing.T) {
	sched := startScheduler(t)
	up := freePort(t)
	d := startDaemon(t, daemonOpts{name: "a", scheduler: sched.addr, extra: []string{"--upload-port", strconv.Itoa(up)}})
	o := newOrigin(t)
	const size = 600_000
	url, sum := o.add("cached", size, 7)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out := filepath.Join(t.TempDir(), "out")
	if code, msg := dfget(ctx, url, "-O", out, "--sock", d.sock); code != 0 {
		t.Fatalf("first download: exit %d: %s", code, msg)
	}
	id := core.TaskID(url, core.TaskOptions{})
	data := filepath.Join(d.dataDir, "cache", id, "data")
	ps := core.PieceSize(size)
	pieceURL := fmt.Sprintf("http://127.0.0.1:%d/pieces/%s/1", up, id)
	good, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	off, n := core.PieceRange(1, size, ps)
	want := good[off : off+n]

	// A peer asking for the piece.
	corruptKeepingMtime(t, data, off+100)
	resp, err := http.Get(pieceURL)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK && !bytes.Equal(got, want) {
		t.Fatalf("the upload port served the corrupt piece (%d bytes)", len(got))
	}

	// The local client: fetch again (the daemon has dropped the bad piece
	// or must notice now), corrupting again first if it re-fetched already.
	for i := 0; i < 2; i++ {
		if i == 1 {
			corruptKeepingMtime(t, data, off+200)
		}
		out2 := filepath.Join(t.TempDir(), "again")
		if code, msg := dfget(ctx, url, "-O", out2, "--sock", d.sock); code != 0 {
			t.Fatalf("download %d after the corruption: exit %d: %s", i, code, msg)
		}
		if s := fileSHA(t, out2); s != sum {
			t.Fatalf("download %d after the corruption: got the corrupt content", i)
		}
	}
}

// corruptKeepingMtime flips bytes of path in place and sets its mtime
// back: size and mtime are as before, only the inode change time shows it.
func corruptKeepingMtime(t *testing.T, path string, off int64) {
	t.Helper()
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// Wait for the file system's ctime clock to move past the file's.
	var ref unix.Stat_t
	_ = unix.Stat(path, &ref)
	probe := path + ".probe"
	for i := 0; ; i++ {
		if err := os.WriteFile(probe, []byte{byte(i)}, 0o600); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		_ = unix.Stat(probe, &st)
		if st.Ctim != ref.Ctim {
			break
		}
		if i > 2000 {
			t.Fatal("the file system's ctime did not move")
		}
		time.Sleep(time.Millisecond)
	}
	os.Remove(probe)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = ^b[i]
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Chtimes(path, before.ModTime(), before.ModTime()); err != nil {
		t.Fatal(err)
	}
}
