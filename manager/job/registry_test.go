package job

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestParseImage(t *testing.T) {
	cases := []struct {
		in   string
		want Image
		bad  bool
	}{
		{in: "https://reg.example/v2/library/app/manifests/v1", want: Image{"https", "reg.example", "library/app", "v1"}},
		{in: "http://127.0.0.1:5000/v2/a/b/c/manifests/sha256:" + strings.Repeat("a", 64), want: Image{"http", "127.0.0.1:5000", "a/b/c", "sha256:" + strings.Repeat("a", 64)}},
		{in: "reg.example:5000/team/app:1.2", want: Image{"https", "reg.example:5000", "team/app", "1.2"}},
		{in: "localhost:5000/app", want: Image{"http", "localhost:5000", "app", "latest"}},
		{in: "127.0.0.1:5000/app@sha256:" + strings.Repeat("b", 64), want: Image{"http", "127.0.0.1:5000", "app", "sha256:" + strings.Repeat("b", 64)}},
		{in: "app:1.0", bad: true},
		{in: "https://reg.example/v2/app/blobs/sha256:" + strings.Repeat("a", 64), bad: true},
		{in: "reg.example/App:1", bad: true},
		{in: "reg.example/app:bad tag", bad: true},
		{in: "reg.example/app@sha256:short", bad: true},
		{in: "https://", bad: true},
	}
	for _, c := range cases {
		got, err := ParseImage(c.in)
		if c.bad {
			if !errors.Is(err, ErrBadReference) {
				t.Errorf("%q: %+v %v, want ErrBadReference", c.in, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q: %+v %v, want %+v", c.in, got, err, c.want)
		}
	}
	img, _ := ParseImage("reg.example/team/app:1")
	if u := img.BlobURL("sha256:abc"); u != "https://reg.example/v2/team/app/blobs/sha256:abc" {
		t.Fatalf("blob URL %s", u)
	}
}

func TestParseChallenge(t *testing.T) {
	s, p := parseChallenge(`Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"`)
	if s != "Bearer" || p["realm"] != "https://auth.example/token" || p["service"] != "registry.example" || p["scope"] != "repository:a/b:pull,push" {
		t.Fatalf("%s %v", s, p)
	}
}

// TestResolveBearer resolves through a registry that demands a bearer token
// from its token service (the Debian registry here only does basic auth,
// which the e2e test covers; this covers the token flow).
func TestResolveBearer(t *testing.T) {
	const dg = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	var tokenAsks int
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/token":
			u, p, ok := r.BasicAuth()
			if !ok || u != "alice" || p != "pw" || r.URL.Query().Get("scope") != "repository:team/app:pull" || r.URL.Query().Get("service") != "reg" {
				http.Error(w, "no", http.StatusUnauthorized)
				return
			}
			tokenAsks++
			_ = json.NewEncoder(w).Encode(map[string]string{"token": "tok-1"})
		case r.Header.Get("Authorization") != "Bearer tok-1":
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+srv.URL+`/token",service="reg",scope="repository:team/app:pull"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
		case r.URL.Path == "/v2/team/app/manifests/v1":
			w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
			_, _ = w.Write([]byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":1,"platform":{"os":"linux","architecture":"arm64"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}`))
		case r.URL.Path == "/v2/team/app/manifests/sha256:3333333333333333333333333333333333333333333333333333333333333333":
			w.Header().Set("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
			w.Header().Set("Docker-Content-Digest", "sha256:3333333333333333333333333333333333333333333333333333333333333333")
			_, _ = w.Write([]byte(`{"schemaVersion":2,"config":{"digest":"` + dg + `","size":7},"layers":[{"digest":"` + dg + `","size":7}]}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	img, err := ParseImage(srv.URL + "/v2/team/app/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	r := &Resolver{Client: srv.Client()}
	res, err := r.Resolve(context.Background(), img, "", Credentials{Username: "alice", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Blobs) != 2 || res.Header["Authorization"] != "Bearer tok-1" || tokenAsks != 1 || !strings.HasSuffix(res.Blobs[1].URL, "/v2/team/app/blobs/"+dg) {
		t.Fatalf("resolved %+v header %v after %d token requests", res, res.Header, tokenAsks)
	}
	if _, err := r.Resolve(context.Background(), img, "", Credentials{Username: "alice", Password: "bad"}); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong password: %v", err)
	}
	if _, err := r.Resolve(context.Background(), img, "linux/ppc64le", Credentials{Username: "alice", Password: "pw"}); !errors.Is(err, ErrNoPlatform) {
		t.Fatalf("missing platform: %v", err)
	}
}
