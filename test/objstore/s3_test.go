package objstore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/source"
)

func startS3(t *testing.T) *S3 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := StartS3(ctx, t.TempDir())
	if err != nil {
		SkipIfMissing(t, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("versitygw log:\n%s", s.Log())
		}
		s.Stop()
	})
	return s
}

func (s *S3) headers(secret string) http.Header {
	h := http.Header{}
	h.Set(source.HeaderS3Endpoint, s.Endpoint)
	h.Set(source.HeaderS3Region, s.Region)
	h.Set(source.HeaderS3PathStyle, "true")
	h.Set(source.HeaderS3AccessKeyID, s.AccessKey)
	h.Set(source.HeaderS3SecretAccessKey, secret)
	return h
}

// TestS3SourceAgainstVersitygw reads ranges, stats and lists objects of a
// real S3 server through the s3:// source, and checks that the server
// refuses a wrong secret (SigV4 verified) with core.ErrDenied, a missing key
// with core.ErrNotFound, and a changed object under If-Match.
func TestS3SourceAgainstVersitygw(t *testing.T) {
	s := startS3(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.CreateBucket(ctx, "models"); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	etag, err := s.Put(ctx, "models", "dir/weights.bin", data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "models", "dir/sub/b.txt", []byte("b")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "models", "other.txt", []byte("o")); err != nil {
		t.Fatal(err)
	}
	reg, err := source.New(source.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	src, _ := reg.Lookup("s3")
	s3src := src.(*source.S3)
	url := "s3://models/dir/weights.bin"

	resp, err := reg.Fetch(ctx, source.Request{URL: url, Header: s.headers(s.SecretKey), Offset: 1000, Length: 5000})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data[1000:6000]) || resp.ContentLength != int64(len(data)) || !resp.RangeOK {
		t.Fatalf("range read: %d bytes (equal %v), content length %d, range ok %v", len(got), bytes.Equal(got, data[1000:6000]), resp.ContentLength, resp.RangeOK)
	}

	info, err := s3src.Stat(ctx, source.Request{URL: url, Header: s.headers(s.SecretKey)})
	if err != nil || info.ETag != etag || info.Size != int64(len(data)) {
		t.Fatalf("stat = %+v, %v; want etag %s size %d", info, err, etag, len(data))
	}
	list, err := s3src.List(ctx, source.Request{URL: "s3://models/dir/", Header: s.headers(s.SecretKey)}, 0)
	if err != nil || len(list) != 2 || list[0].Key != "dir/sub/b.txt" || list[1].Key != "dir/weights.bin" {
		t.Fatalf("list = %+v, %v; want dir/sub/b.txt and dir/weights.bin", list, err)
	}

	_, err = reg.Fetch(ctx, source.Request{URL: url, Header: s.headers("wrong-secret"), Length: -1})
	if !errors.Is(err, core.ErrDenied) {
		t.Fatalf("GET with a wrong secret: %v; want ErrDenied", err)
	}
	_, err = s3src.Stat(ctx, source.Request{URL: url, Header: s.headers("wrong-secret")})
	if !errors.Is(err, core.ErrDenied) {
		t.Fatalf("HEAD with a wrong secret: %v; want ErrDenied", err)
	}
	anon := s.headers("")
	anon.Del(source.HeaderS3AccessKeyID)
	anon.Del(source.HeaderS3SecretAccessKey)
	if _, err = reg.Fetch(ctx, source.Request{URL: url, Header: anon, Length: -1}); !errors.Is(err, core.ErrDenied) {
		t.Fatalf("anonymous GET of a private bucket: %v; want ErrDenied", err)
	}
	if _, err = reg.Fetch(ctx, source.Request{URL: "s3://models/missing", Header: s.headers(s.SecretKey), Length: -1}); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("GET of a missing key: %v; want ErrNotFound", err)
	}

	h := s.headers(s.SecretKey)
	h.Set("If-Match", etag)
	if _, err := s.Put(ctx, "models", "dir/weights.bin", data[:100]); err != nil {
		t.Fatal(err)
	}
	if _, err = reg.Fetch(ctx, source.Request{URL: url, Header: h, Length: -1}); err == nil || !errors.Is(err, core.ErrOrigin) {
		t.Fatalf("GET of a changed object with If-Match: %v; want an origin error", err)
	}
}
