package client

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/damselfly-io/damselfly/core"
)

func TestOpenOutputRegular(t *testing.T) {
	dir := t.TempDir()
	final := filepath.Join(dir, "out")
	if err := os.WriteFile(final, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Set-id and sticky bits never survive; the umask applies.
	o, err := openOutput(final, 0o7777)
	if err != nil {
		t.Fatal(err)
	}
	if o.tmp == "" || filepath.Dir(o.tmp) != dir {
		t.Fatalf("temp file %q, want one next to the output", o.tmp)
	}
	if _, err := o.f.WriteString("new"); err != nil {
		t.Fatal(err)
	}
	// Until commit the old content stays.
	if b, _ := os.ReadFile(final); string(b) != "old" {
		t.Fatalf("output before commit: %q", b)
	}
	if err := o.commit(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(final)
	if err != nil {
		t.Fatal(err)
	}
	if want := os.FileMode(0o777) &^ umask(); st.Mode() != want {
		t.Fatalf("mode %v, want %v", st.Mode(), want)
	}
	if b, _ := os.ReadFile(final); string(b) != "new" {
		t.Fatalf("output %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("leftovers: %v", ents)
	}
}

func TestOpenOutputAbortLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	o, err := openOutput(filepath.Join(dir, "out"), 0)
	if err != nil {
		t.Fatal(err)
	}
	o.abort()
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("leftovers: %v", ents)
	}
}

// A fifo (like a device) is written through, never replaced.
func TestOpenOutputFifoWrittenThrough(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := os.ReadFile(fifo)
		got <- b
	}()
	o, err := openOutput(fifo, 0)
	if err != nil {
		t.Fatal(err)
	}
	if o.tmp != "" {
		t.Fatalf("a fifo got a temp file %q", o.tmp)
	}
	if _, err := o.f.WriteString("through"); err != nil {
		t.Fatal(err)
	}
	if err := o.commit(); err != nil {
		t.Fatal(err)
	}
	if b := <-got; string(b) != "through" {
		t.Fatalf("reader got %q", b)
	}
	var st unix.Stat_t
	if err := unix.Lstat(fifo, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Fatalf("fifo replaced: mode %o, %v", st.Mode, err)
	}
}

func TestOpenOutputFailures(t *testing.T) {
	dir := t.TempDir()
	if _, err := openOutput(dir, 0); !errors.Is(err, core.ErrInvalid) {
		t.Fatalf("directory output: %v, want ErrInvalid", err)
	}
	if _, err := openOutput(filepath.Join(dir, "missing", "out"), 0); err == nil {
		t.Fatal("output in a missing directory opened")
	}
	if _, err := openSource("file://" + filepath.Join(dir, "none")); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("missing file:// source: %v, want ErrNotFound", err)
	}
	if f, err := openSource("https://example.org/x"); f != nil || err != nil {
		t.Fatalf("http URL: %v %v, want nothing to open", f, err)
	}
}
