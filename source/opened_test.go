package source

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/damselfly-io/damselfly/core"
)

// Opened reads ranges of a file that is already open, whatever the URL
// says, and leaves the file open.
func TestOpenedFetch(t *testing.T) {
	data := content(5000)
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	o := &Opened{F: f}
	for _, tc := range []struct{ off, n int64 }{{0, -1}, {100, 50}, {4990, -1}} {
		resp, err := o.Fetch(context.Background(), Request{URL: "file:///elsewhere", Offset: tc.off, Length: tc.n})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		end := int64(len(data))
		if tc.n >= 0 {
			end = tc.off + tc.n
		}
		if !bytes.Equal(b, data[tc.off:end]) || resp.ContentLength != int64(len(data)) {
			t.Fatalf("range %d+%d: %d bytes, length %d", tc.off, tc.n, len(b), resp.ContentLength)
		}
	}
	if _, err := f.Stat(); err != nil {
		t.Fatalf("Opened closed its file: %v", err)
	}
	if _, err := o.Fetch(context.Background(), Request{Offset: 6000, Length: -1}); !errors.Is(err, core.ErrInvalid) {
		t.Fatalf("past the end: %v, want ErrInvalid", err)
	}
	if _, err := FilePath("file://host/x"); err == nil {
		t.Fatal("FilePath accepted another host")
	}
}

// A direct download into an existing fifo writes through it and leaves the
// node in place; a digest mismatch is still reported.
func TestDownloadWritesThroughFifo(t *testing.T) {
	data := content(200_000)
	srv, _ := newOrigin(t, serveRanges(data))
	r, err := New(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, digest := range []string{sha(data), sha([]byte("other"))} {
		got := make(chan []byte, 1)
		go func() {
			b, _ := os.ReadFile(fifo)
			got <- b
		}()
		_, err := Download(context.Background(), r, Request{URL: srv.URL, Length: -1}, fifo, digest, 0o644, nil)
		b := <-got
		if digest == sha(data) && (err != nil || !bytes.Equal(b, data)) {
			t.Fatalf("through the fifo: %v, %d bytes", err, len(b))
		}
		if digest != sha(data) && !errors.Is(err, core.ErrDigestMismatch) {
			t.Fatalf("wrong digest through the fifo: %v", err)
		}
		var st unix.Stat_t
		if err := unix.Lstat(fifo, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
			t.Fatalf("the fifo was replaced: mode %o %v", st.Mode, err)
		}
		if names := dirEntries(t, dir); len(names) != 1 {
			t.Fatalf("directory holds %v", names)
		}
	}
}
