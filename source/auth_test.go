package source

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/core"
)

func TestParseChallenge(t *testing.T) {
	ch, ok := parseChallenge(`Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"`)
	if !ok || ch.scheme != "bearer" || ch.params["realm"] != "https://auth.example/token" ||
		ch.params["service"] != "registry.example" || ch.params["scope"] != "repository:a/b:pull,push" {
		t.Fatalf("bearer challenge parsed as %+v", ch)
	}
	ch, ok = parseChallenge(`Basic realm="Registry Realm"`)
	if !ok || ch.scheme != "basic" || ch.params["realm"] != "Registry Realm" {
		t.Fatalf("basic challenge parsed as %+v", ch)
	}
	if _, ok := parseChallenge("  "); ok {
		t.Fatal("empty challenge accepted")
	}
}

// tokenRegistry answers blob GETs only with a bearer token that its realm
// sells for the right Basic credentials (or anonymously when user is "").
func tokenRegistry(t *testing.T, user, pass string, body []byte) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var tokensSold atomic.Int64
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		if user != "" {
			u, p, ok := r.BasicAuth()
			if !ok || u != user || p != pass {
				http.Error(w, "bad credentials", http.StatusUnauthorized)
				return
			}
		}
		if r.URL.Query().Get("scope") != "repository:lib/app:pull" || r.URL.Query().Get("service") != "reg" {
			http.Error(w, "bad scope", http.StatusBadRequest)
			return
		}
		tokensSold.Add(1)
		_ = json.NewEncoder(w).Encode(map[string]any{"token": "tok-123", "expires_in": 300})
	})
	mux.HandleFunc("/v2/lib/app/blobs/", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok-123" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+srv.URL+`/token",service="reg",scope="repository:lib/app:pull"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		http.ServeContent(w, r, "", time.Unix(1700000000, 0), bytes.NewReader(body))
	})
	return srv, &tokensSold
}

func TestHTTPBuysBearerTokenWithConfiguredCredentials(t *testing.T) {
	body := content(100_000)
	srv, sold := tokenRegistry(t, "alice", "s3cret", body)
	host := mustURL(t, srv.URL).Host
	cfg := testConfig()
	cfg.Hosts = map[string]HostConfig{host: {Username: "alice", Password: "s3cret"}}
	h := newTestHTTP(t, cfg)
	for i := range 3 {
		resp, err := h.Fetch(context.Background(), Request{URL: srv.URL + "/v2/lib/app/blobs/sha256:x", Offset: int64(i), Length: -1})
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(got, body[i:]) {
			t.Fatalf("fetch %d: %d bytes, err %v", i, len(got), err)
		}
	}
	if n := sold.Load(); n != 1 {
		t.Fatalf("bought %d tokens for three fetches, want 1 (cached)", n)
	}

	// Wrong credentials: the token realm refuses and the error says so.
	cfg.Hosts = map[string]HostConfig{host: {Username: "alice", Password: "wrong"}}
	_, err := newTestHTTP(t, cfg).Fetch(context.Background(), Request{URL: srv.URL + "/v2/lib/app/blobs/sha256:x", Length: -1})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		t.Fatalf("wrong credentials: err = %v, want the realm's 401", err)
	}
}

func TestHTTPAnonymousTokenAndClientCredentialsWin(t *testing.T) {
	body := content(5000)
	srv, sold := tokenRegistry(t, "", "", body)
	h := newTestHTTP(t, testConfig())
	resp, err := h.Fetch(context.Background(), Request{URL: srv.URL + "/v2/lib/app/blobs/sha256:x", Length: -1})
	if err != nil {
		t.Fatalf("anonymous token flow: %v", err)
	}
	resp.Body.Close()
	if sold.Load() != 1 {
		t.Fatalf("tokens sold = %d, want 1", sold.Load())
	}
	// A client that sent its own (bad) credentials gets the 401, not a
	// token bought on its behalf.
	_, err = h.Fetch(context.Background(), Request{URL: srv.URL + "/v2/lib/app/blobs/sha256:x", Length: -1,
		Header: http.Header{"Authorization": {"Bearer expired"}}})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized || !errors.Is(err, core.ErrOrigin) {
		t.Fatalf("client credentials: err = %v, want 401", err)
	}
}

func TestHTTPBasicWithConfiguredCredentials(t *testing.T) {
	body := content(3000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "bob" || p != "pw" {
			w.Header().Set("WWW-Authenticate", `Basic realm="r"`)
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	cfg := testConfig()
	h := newTestHTTP(t, cfg)
	if _, err := h.Fetch(context.Background(), Request{URL: srv.URL + "/f", Length: -1}); err == nil {
		t.Fatal("no credentials configured, yet the fetch succeeded")
	}
	cfg.Hosts = map[string]HostConfig{"127.0.0.1": {Username: "bob", Password: "pw"}}
	resp, err := newTestHTTP(t, cfg).Fetch(context.Background(), Request{URL: srv.URL + "/f", Length: -1})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(got, body) {
		t.Fatalf("got %d bytes", len(got))
	}
}

func TestHTTPPerHostCA(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok"))
	}))
	defer srv.Close()
	host := mustURL(t, srv.URL).Host
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.Retries = 0
	if _, err := newTestHTTP(t, cfg).Fetch(context.Background(), Request{URL: srv.URL, Length: -1}); err == nil {
		t.Fatal("untrusted certificate accepted")
	}
	for name, hc := range map[string]HostConfig{"ca_file": {CAFile: ca}, "insecure": {Insecure: true}} {
		cfg.Hosts = map[string]HostConfig{host: hc}
		h := newTestHTTP(t, cfg)
		resp, err := h.Fetch(context.Background(), Request{URL: srv.URL, Length: -1})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		resp.Body.Close()
		// The pass-through client shares the host's TLS settings.
		r2, err := h.Client(host).Get(srv.URL)
		if err != nil {
			t.Fatalf("%s: pass-through client: %v", name, err)
		}
		r2.Body.Close()
	}
	cfg.Hosts = map[string]HostConfig{host: {CAFile: filepath.Join(t.TempDir(), "missing.pem")}}
	if _, err := NewHTTP(cfg); err == nil {
		t.Fatal("missing ca_file accepted")
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
