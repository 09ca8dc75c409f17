package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/core"
)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// dirEntries lists names in dir, to catch leftover temporary files.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestDownload(t *testing.T) {
	data := content(1<<20 + 3)
	srv, _ := newOrigin(t, serveRanges(data))
	r, err := New(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "out.bin")
	var last, calls int64
	var total int64 = -2
	n, err := Download(context.Background(), r, Request{URL: srv.URL, Length: -1}, out, sha(data), 0o640,
		func(done, tot int64) { last, total = done, tot; calls++ })
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(data)) || !bytes.Equal(got, data) {
		t.Fatalf("wrote %d bytes, file has %d", n, len(got))
	}
	if last != n || total != n || calls < 2 {
		t.Fatalf("progress: last %d total %d calls %d", last, total, calls)
	}
	st, _ := os.Stat(out)
	if st.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v", st.Mode())
	}
	if names := dirEntries(t, dir); len(names) != 1 {
		t.Fatalf("directory holds %v", names)
	}
}

func TestDownloadRangeAndEmpty(t *testing.T) {
	data := content(5000)
	srv, _ := newOrigin(t, serveRanges(data))
	emptySrv, _ := newOrigin(t, serveRanges(nil))
	r, _ := New(testConfig())
	dir := t.TempDir()

	out := filepath.Join(dir, "part")
	if _, err := Download(context.Background(), r, Request{URL: srv.URL, Offset: 1000, Length: 500}, out, sha(data[1000:1500]), 0, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data[1000:1500]) {
		t.Fatalf("range: got %d bytes", len(got))
	}
	if st, _ := os.Stat(out); st.Mode().Perm() != 0o644 {
		t.Fatalf("default mode %v", st.Mode())
	}

	empty := filepath.Join(dir, "empty")
	n, err := Download(context.Background(), r, Request{URL: emptySrv.URL, Length: -1}, empty, sha(nil), 0, nil)
	if err != nil || n != 0 {
		t.Fatalf("empty: %d, %v", n, err)
	}
	if st, err := os.Stat(empty); err != nil || st.Size() != 0 {
		t.Fatalf("empty file: %v %v", st, err)
	}
}

func TestDownloadFailuresLeaveNothing(t *testing.T) {
	data := content(100_000)
	good, _ := newOrigin(t, serveRanges(data))
	missing, _ := newOrigin(t, http.NotFound)
	truncated, _ := newHijackOrigin(t, resetting(data, 1000, 5000, false, nil))
	r, _ := New(testConfig())
	cases := []struct {
		name   string
		url    string
		digest string
		kind   error
	}{
		{"digest mismatch", good.URL, sha([]byte("other")), core.ErrDigestMismatch},
		{"not found", missing.URL, "", core.ErrNotFound},
		{"truncated body", truncated.URL, "", nil},
		{"bad digest", good.URL, "md5:abc", core.ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "out")
			// A file already at output must survive a failed download untouched.
			if err := os.WriteFile(out, []byte("previous"), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Download(context.Background(), r, Request{URL: tc.url, Length: -1}, out, tc.digest, 0, nil)
			if err == nil || (tc.kind != nil && !errors.Is(err, tc.kind)) {
				t.Fatalf("err %v, want %v", err, tc.kind)
			}
			if got, _ := os.ReadFile(out); string(got) != "previous" {
				t.Fatalf("output changed to %d bytes", len(got))
			}
			if names := dirEntries(t, dir); len(names) != 1 {
				t.Fatalf("leftovers: %v", names)
			}
		})
	}
}

func TestDownloadCanceledRemovesTemp(t *testing.T) {
	srv, _ := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10000000")
		_, _ = w.Write(make([]byte, 100_000))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	r, _ := New(testConfig())
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{}, 1)
	errc := make(chan error, 1)
	go func() {
		_, err := Download(ctx, r, Request{URL: srv.URL, Length: -1}, filepath.Join(dir, "out"), "", 0, func(done, _ int64) {
			if done > 0 {
				select {
				case started <- struct{}{}:
				default:
				}
			}
		})
		errc <- err
	}()
	<-started
	if names := dirEntries(t, dir); len(names) != 1 {
		t.Fatalf("want one temporary file while downloading, have %v", names)
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("download did not stop on cancel")
	}
	if names := dirEntries(t, dir); len(names) != 0 {
		t.Fatalf("leftovers: %v", names)
	}
}

func TestDownloadMissingDirectory(t *testing.T) {
	srv, _ := newOrigin(t, serveRanges([]byte("x")))
	r, _ := New(testConfig())
	_, err := Download(context.Background(), r, Request{URL: srv.URL, Length: -1}, filepath.Join(t.TempDir(), "no", "such", "out"), "", 0, nil)
	if err == nil {
		t.Fatal("download into a missing directory succeeded")
	}
}

// BenchmarkDownload is dfget's direct path: loopback HTTP → sha256 → file,
// synced and renamed.
func BenchmarkDownload(b *testing.B) {
	const size = 64 << 20
	data := content(size)
	srv := httptest.NewServer(serveRanges(data))
	defer srv.Close()
	r, err := New(DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	out := filepath.Join(b.TempDir(), "out")
	digest := sha(data)
	b.ReportAllocs()
	b.SetBytes(size)
	for b.Loop() {
		if _, err := Download(context.Background(), r, Request{URL: srv.URL, Length: -1}, out, digest, 0, nil); err != nil {
			b.Fatal(err)
		}
	}
}
