// Package objstore starts real origins for the tests of S3 and directory
// downloads, each on a loopback port, and counts what they serve:
//
//   - an S3 server: versitygw (installed by scripts/install-deps.sh with go
//     install) over a directory with its posix backend, verifying SigV4
//     signatures, behind an in-process reverse proxy that counts the bytes
//     of every object GET;
//   - nginx (Debian's) with autoindex on over a directory, with its own
//     configuration and prefix in a temporary directory and an access log
//     that records the bytes sent for every request.
//
// Every process runs in its own process group, dies with the test
// (PDEATHSIG) and is stopped by its PID.
package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/damselfly-io/damselfly/test/oci"
)

// S3 is a running versitygw and the counting proxy in front of it.
type S3 struct {
	// Endpoint is the proxy's base URL, e.g. http://127.0.0.1:41234: what
	// clients use (path-style addressing).
	Endpoint  string
	Region    string
	AccessKey string
	SecretKey string

	proc  *oci.Proc
	front *httptest.Server

	mu     sync.Mutex
	served map[string]int64 // "/bucket/key" → object bytes sent by GET
	gets   map[string]int   // "/bucket/key" → GETs answered 2xx
}

// Binary finds a program in PATH or in $(go env GOPATH)/bin (where go
// install puts versitygw).
func Binary(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = strings.TrimSpace(string(out))
		}
	}
	for _, dir := range filepath.SplitList(gopath) {
		p := filepath.Join(dir, "bin", name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH or GOPATH/bin: run scripts/install-deps.sh: %w", name, ErrMissing)
}

// ErrMissing: a program the harness needs is not installed.
var ErrMissing = errors.New("not installed")

// SkipIfMissing is what a test does with a StartS3 or StartNginx error:
// outside CI a missing program skips the test (scripts/install-deps.sh
// installs it); in CI (CI set) every error fails it.
func SkipIfMissing(t interface {
	Helper()
	Skip(...any)
	Fatal(...any)
}, err error) {
	t.Helper()
	if errors.Is(err, ErrMissing) && os.Getenv("CI") == "" {
		t.Skip(err)
	}
	t.Fatal(err)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartS3 runs versitygw over dir/data (buckets are its subdirectories)
// with fixed root credentials and waits until it answers.
func StartS3(ctx context.Context, dir string) (*S3, error) {
	bin, err := Binary("versitygw")
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return nil, fmt.Errorf("s3 data dir: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &S3{Region: "us-east-1", AccessKey: "damselflytest", SecretKey: "damselfly-test-secret-key-1234", served: map[string]int64{}, gets: map[string]int{}}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	s.proc, err = oci.Start("", "versitygw", filepath.Join(dir, "versitygw.log"), bin,
		"--port", addr, "--access", s.AccessKey, "--secret", s.SecretKey, "--region", s.Region, "--quiet",
		"posix", data)
	if err != nil {
		return nil, err
	}
	backend, _ := url.Parse("http://" + addr)
	rp := httputil.NewSingleHostReverseProxy(backend)
	rp.Transport = &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}
	rp.ErrorLog = log.New(io.Discard, "", 0)
	s.front = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &countingWriter{ResponseWriter: w}
		rp.ServeHTTP(cw, r) // the Host header stays the proxy's: signatures hold
		if r.Method == http.MethodGet && r.URL.Query().Get("list-type") == "" && strings.Count(strings.Trim(r.URL.Path, "/"), "/") >= 1 {
			s.mu.Lock()
			s.served[r.URL.Path] += cw.n
			if cw.code/100 == 2 {
				s.gets[r.URL.Path]++
			}
			s.mu.Unlock()
		}
	}))
	s.Endpoint = s.front.URL
	c := s.Client()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := c.ListBuckets(ctx, &s3.ListBucketsInput{})
		if err == nil {
			return s, nil
		}
		if done, perr := s.proc.Exited(); done {
			s.Stop()
			return nil, fmt.Errorf("versitygw exited (%v): %s", perr, s.proc.LogTail(2000))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.Stop()
			return nil, fmt.Errorf("versitygw on %s does not answer: %w", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type countingWriter struct {
	http.ResponseWriter
	n    int64
	code int
}

func (w *countingWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Client is an S3 client with the root credentials, path-style, through
// the counting proxy.
func (s *S3) Client() *s3.Client {
	cfg := aws.Config{
		Region:      s.Region,
		Credentials: credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
		HTTPClient:  &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 30 * time.Second},
	}
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(s.Endpoint)
		o.UsePathStyle = true
	})
}

// CreateBucket makes a bucket.
func (s *S3) CreateBucket(ctx context.Context, name string) error {
	_, err := s.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)})
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", name, err)
	}
	return nil
}

// Put stores an object and returns its ETag.
func (s *S3) Put(ctx context.Context, bucket, key string, data []byte) (string, error) {
	out, err := s.Client().PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(data)})
	if err != nil {
		return "", fmt.Errorf("put s3://%s/%s: %w", bucket, key, err)
	}
	return aws.ToString(out.ETag), nil
}

// Served is how many object bytes GETs of s3://bucket/key were sent.
func (s *S3) Served(bucket, key string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.served["/"+bucket+"/"+key]
}

// ServedTotal is how many object bytes all GETs were sent.
func (s *S3) ServedTotal() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, v := range s.served {
		n += v
	}
	return n
}

// Log is the tail of versitygw's output.
func (s *S3) Log() string { return s.proc.LogTail(4000) }

// Stop ends the proxy and versitygw (by its PID).
func (s *S3) Stop() {
	if s.front != nil {
		s.front.Close()
	}
	s.proc.Stop(3 * time.Second)
}

// ErrNoNginx: nginx is not installed.
var ErrNoNginx = fmt.Errorf("nginx: run scripts/install-deps.sh: %w", ErrMissing)
