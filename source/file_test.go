package source

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/damselfly-io/damselfly/core"
)

func TestFileFetch(t *testing.T) {
	dir := t.TempDir()
	data := content(10_000)
	p := filepath.Join(dir, "data.bin")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f := &File{}
	cases := []struct {
		url         string
		off, length int64
		want        []byte
	}{
		{"file://" + p, 0, -1, data},
		{"file://localhost" + p, 0, -1, data},
		{"file://" + p, 100, 50, data[100:150]},
		{"file://" + p, 9_990, 100, data[9_990:]},
		{"file://" + p, 10_000, -1, nil},
		{"file://" + p, 5, 0, nil},
		{"file://" + empty, 0, -1, nil},
	}
	for _, tc := range cases {
		resp, got := fetchAll(t, f, Request{URL: tc.url, Offset: tc.off, Length: tc.length})
		if !bytes.Equal(got, tc.want) {
			t.Errorf("%s [%d,+%d]: got %d bytes, want %d", tc.url, tc.off, tc.length, len(got), len(tc.want))
		}
		if !resp.RangeOK || resp.Header.Get("Last-Modified") == "" || resp.Remote != nil {
			t.Errorf("%s: RangeOK %v, header %v, Remote %v (want nil: no network peer)", tc.url, resp.RangeOK, resp.Header, resp.Remote)
		}
	}
	if resp, _ := fetchAll(t, f, Request{URL: "file://" + p, Length: -1}); resp.ContentLength != 10_000 {
		t.Errorf("ContentLength %d", resp.ContentLength)
	}
}

func TestFileFetchErrors(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("abc"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := &File{}
	cases := []struct {
		req  Request
		kind error
	}{
		{Request{URL: "file://" + filepath.Join(dir, "missing"), Length: -1}, core.ErrNotFound},
		{Request{URL: "file://" + dir, Length: -1}, core.ErrInvalid},
		{Request{URL: "file:relative/path", Length: -1}, core.ErrInvalid},
		{Request{URL: "file://otherhost/etc/passwd", Length: -1}, core.ErrInvalid},
		{Request{URL: "http://x" + p, Length: -1}, core.ErrInvalid},
		{Request{URL: "file://" + p, Offset: 4, Length: -1}, core.ErrInvalid},
		{Request{URL: "file://" + p, Offset: -1, Length: -1}, core.ErrInvalid},
	}
	for _, tc := range cases {
		if _, err := f.Fetch(context.Background(), tc.req); !errors.Is(err, tc.kind) {
			t.Errorf("%+v: err %v, want %v", tc.req, err, tc.kind)
		}
	}
}

func TestFileFetchHonoursContext(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, content(1000), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := (&File{}).Fetch(ctx, Request{URL: "file://" + p, Length: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	cancel()
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	if _, err := (&File{}).Fetch(ctx, Request{URL: "file://" + p, Length: -1}); !errors.Is(err, context.Canceled) {
		t.Fatalf("fetch on a canceled context: %v", err)
	}
}
