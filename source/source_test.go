package source

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/core"
)

func TestConfigDefaultsAndValidate(t *testing.T) {
	d := DefaultConfig()
	if d.Timeout != 30*time.Second || d.Retries != 3 || d.RetryBackoff != 500*time.Millisecond ||
		d.InsecureSkipVerify || d.CAFile != "" || !strings.HasPrefix(d.UserAgent, "damselfly/") {
		t.Fatalf("defaults: %+v", d)
	}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Config){
		"timeout":       func(c *Config) { c.Timeout = -1 },
		"retries":       func(c *Config) { c.Retries = -1 },
		"retry_backoff": func(c *Config) { c.RetryBackoff = -1 },
	} {
		c := DefaultConfig()
		mut(&c)
		if err := c.Validate(); !errors.Is(err, core.ErrInvalid) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v", name, err)
		}
		if _, err := New(c); err == nil {
			t.Errorf("New accepted a bad %s", name)
		}
	}
	c := DefaultConfig()
	c.CAFile = filepath.Join(t.TempDir(), "missing.pem")
	if _, err := New(c); err == nil {
		t.Error("New accepted a missing CA file")
	}
	bad := filepath.Join(t.TempDir(), "bad.pem")
	if err := os.WriteFile(bad, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.CAFile = bad
	if _, err := New(c); !errors.Is(err, core.ErrInvalid) {
		t.Errorf("CA file without certificates: %v", err)
	}
}

type staticSource string

func (s staticSource) Fetch(context.Context, Request) (*Response, error) {
	return &Response{Body: io.NopCloser(strings.NewReader(string(s))), ContentLength: int64(len(s))}, nil
}

func TestRegistryDispatch(t *testing.T) {
	r, err := New(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"gopher://x/y", "x", "://bad", "oss://bucket/key"} {
		if _, err := r.Fetch(context.Background(), Request{URL: u, Length: -1}); !errors.Is(err, core.ErrInvalid) {
			t.Errorf("%q: err %v, want ErrInvalid", u, err)
		}
	}
	r.Register("OSS", staticSource("hello"))
	resp, err := r.Fetch(context.Background(), Request{URL: "oss://bucket/key", Length: -1})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "hello" {
		t.Fatalf("got %q", b)
	}
	// Built-ins answer through the registry.
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("file!"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, got := fetchAll(t, r, Request{URL: "FILE://" + p, Length: -1})
	if string(got) != "file!" {
		t.Fatalf("file via registry: %q", got)
	}
	srv, _ := newOrigin(t, serveRanges([]byte("web!")))
	_, got = fetchAll(t, r, Request{URL: srv.URL, Length: -1})
	if string(got) != "web!" {
		t.Fatalf("http via registry: %q", got)
	}
}

func TestRegistryZeroValue(t *testing.T) {
	var r Registry
	r.Register("x", staticSource("z"))
	if _, err := r.Fetch(context.Background(), Request{URL: "x://y", Length: -1}); err != nil {
		t.Fatal(err)
	}
}
