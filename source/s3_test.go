package source

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/damselfly-io/damselfly/core"
)

func TestParseS3URL(t *testing.T) {
	o, err := ParseS3URL("s3://bkt/a/b%20c.bin?versionId=v1")
	if err != nil || o.Bucket != "bkt" || o.Key != "a/b c.bin" || o.VersionID != "v1" {
		t.Fatalf("ParseS3URL = %+v, %v", o, err)
	}
	if got := o.URL(); got != "s3://bkt/a/b%20c.bin?versionId=v1" {
		t.Errorf("URL() = %s", got)
	}
	for _, bad := range []string{"http://bkt/k", "s3:///k", "s3://user@bkt/k", "s3:bkt"} {
		if _, err := ParseS3URL(bad); !errors.Is(err, core.ErrInvalid) {
			t.Errorf("ParseS3URL(%q) = %v; want ErrInvalid", bad, err)
		}
	}
}

// TestS3Params: a request's own keys win; a configured bucket's keys are
// used only towards its configured endpoint; otherwise anonymous.
func TestS3Params(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("configured-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &S3{cfg: S3Config{Buckets: map[string]S3Bucket{
		"conf": {Endpoint: "http://store.internal:9000", Region: "eu-1", AccessKeyID: "AKCONF", SecretAccessKeyFile: secret, PathStyle: true},
	}}}
	ctx := context.Background()
	keys := func(p s3Params) (string, string) {
		c, err := p.creds.Retrieve(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return c.AccessKeyID, c.SecretAccessKey
	}

	h := http.Header{}
	h.Set(HeaderS3AccessKeyID, "AKREQ")
	h.Set(HeaderS3SecretAccessKey, "req-secret")
	p, err := s.params("conf", h, true)
	if ak, sk := keys(p); err != nil || ak != "AKREQ" || sk != "req-secret" {
		t.Errorf("request keys: %s %s %v", ak, sk, err)
	}

	p, err = s.params("conf", http.Header{}, false)
	if _, anon := p.creds.(aws.AnonymousCredentials); err != nil || !anon {
		t.Errorf("a client's request must not borrow the configured keys: %+v %v", p, err)
	}
	p, err = s.params("conf", http.Header{}, true)
	if ak, sk := keys(p); err != nil || ak != "AKCONF" || sk != "configured-secret" || p.endpoint != "http://store.internal:9000" || p.region != "eu-1" || !p.pathStyle {
		t.Errorf("configured bucket: %+v %s %s %v", p, ak, sk, err)
	}

	h = http.Header{}
	h.Set(HeaderS3Endpoint, "http://attacker.example:9000")
	p, err = s.params("conf", h, true)
	if _, anon := p.creds.(aws.AnonymousCredentials); err != nil || !anon || p.endpoint != "http://attacker.example:9000" {
		t.Errorf("configured keys must not go to another endpoint: %+v %v", p, err)
	}

	p, err = s.params("other", http.Header{}, true)
	if _, anon := p.creds.(aws.AnonymousCredentials); err != nil || !anon || p.region != defaultS3Region {
		t.Errorf("unconfigured bucket: %+v %v", p, err)
	}

	h = http.Header{}
	h.Set(HeaderS3AccessKeyID, "AKREQ")
	if _, err := s.params("x", h, true); !errors.Is(err, core.ErrInvalid) {
		t.Errorf("key id without secret: %v", err)
	}
	h = http.Header{}
	h.Set(HeaderS3Endpoint, "ftp://x")
	if _, err := s.params("x", h, true); !errors.Is(err, core.ErrInvalid) {
		t.Errorf("bad endpoint: %v", err)
	}
}

func TestS3ConfigValidate(t *testing.T) {
	for _, c := range []S3Config{
		{Buckets: map[string]S3Bucket{"b": {Endpoint: "minio:9000"}}},
		{Buckets: map[string]S3Bucket{"b": {AccessKeyID: "x"}}},
		{Buckets: map[string]S3Bucket{"a/b": {}}},
	} {
		if err := c.Validate(); !errors.Is(err, core.ErrInvalid) {
			t.Errorf("Validate(%+v) = %v; want ErrInvalid", c, err)
		}
	}
	if err := (S3Config{Buckets: map[string]S3Bucket{"b": {Endpoint: "https://s3.example:9000"}}}).Validate(); err != nil {
		t.Error(err)
	}
}

// TestS3FetchSignsAndAddresses: path style puts the bucket in the path,
// the GET carries a SigV4 query signature, If-Match goes along, and the
// credential headers never reach the server.
func TestS3FetchSignsAndAddresses(t *testing.T) {
	var got *http.Request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Clone(context.Background())
		w.Header().Set("Content-Range", "bytes 2-4/10")
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write([]byte("abc"))
	}))
	defer srv.Close()
	reg, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set(HeaderS3Endpoint, srv.URL)
	h.Set(HeaderS3PathStyle, "true")
	h.Set(HeaderS3AccessKeyID, "AKID")
	h.Set(HeaderS3SecretAccessKey, "SECRET")
	h.Set("If-Match", `"e1"`)
	resp, err := reg.Fetch(context.Background(), Request{URL: "s3://bkt/dir/obj", Header: h, Offset: 2, Length: 3})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got.URL.Path != "/bkt/dir/obj" || !strings.HasPrefix(got.URL.Query().Get("X-Amz-Credential"), "AKID/") || got.URL.Query().Get("X-Amz-Signature") == "" {
		t.Errorf("request %s: want path-style and a SigV4 query signature", got.URL)
	}
	if got.Header.Get("If-Match") != `"e1"` || got.Header.Get("Range") != "bytes=2-4" {
		t.Errorf("headers %v", got.Header)
	}
	for k := range got.Header {
		if strings.HasPrefix(k, "X-Damselfly-") {
			t.Errorf("header %s reached the server", k)
		}
	}
	if strings.Contains(got.URL.RawQuery, "SECRET") {
		t.Error("secret in the URL")
	}

	h.Del(HeaderS3AccessKeyID)
	h.Del(HeaderS3SecretAccessKey)
	resp, err = reg.Fetch(context.Background(), Request{URL: "s3://bkt/dir/obj", Header: h, Offset: 2, Length: 3})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if strings.Contains(strings.ToLower(got.URL.RawQuery), "x-amz-") {
		t.Errorf("anonymous GET carries a signature: %q", got.URL.RawQuery)
	}
}

// TestS3VirtualHostAddressing: without path style the bucket is the host's
// first label (bucket.endpoint/key), as AWS wants. Every dial goes to the
// local test server whatever the name.
func TestS3VirtualHostAddressing(t *testing.T) {
	var host, path string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, path = r.Host, r.URL.Path
		_, _ = w.Write([]byte("abc"))
	}))
	defer srv.Close()
	h, err := NewHTTP(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	tr := h.client.Transport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, srv.Listener.Addr().String())
	}
	h.client.Transport = tr
	reg := NewRegistry(h)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	hdr := http.Header{}
	hdr.Set(HeaderS3Endpoint, "http://s3.test:"+port)
	hdr.Set(HeaderS3AccessKeyID, "AKID")
	hdr.Set(HeaderS3SecretAccessKey, "SECRET")
	resp, err := reg.Fetch(context.Background(), Request{URL: "s3://bkt/dir/obj", Header: hdr, Length: -1})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if host != "bkt.s3.test:"+port || path != "/dir/obj" {
		t.Fatalf("virtual-host request went to %s%s", host, path)
	}
	if resp.Remote == nil || resp.Remote.String() != srv.Listener.Addr().String() {
		t.Fatalf("Remote %v, want the address the object came from, %s", resp.Remote, srv.Listener.Addr())
	}
}

func TestS3CheckSecrets(t *testing.T) {
	dir := t.TempDir()
	good, empty := filepath.Join(dir, "good"), filepath.Join(dir, "empty")
	_ = os.WriteFile(good, []byte("s3cr3t\n"), 0o600)
	_ = os.WriteFile(empty, []byte("\n"), 0o600)
	if err := (S3Config{Buckets: map[string]S3Bucket{"b": {AccessKeyID: "a", SecretAccessKeyFile: good}}}).CheckSecrets(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{empty, filepath.Join(dir, "missing")} {
		if err := (S3Config{Buckets: map[string]S3Bucket{"b": {AccessKeyID: "a", SecretAccessKeyFile: f}}}).CheckSecrets(); err == nil || !strings.Contains(err.Error(), "bucket b") {
			t.Errorf("%s: %v", f, err)
		}
	}
}
