package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/test/oci"
)

// This file builds small multi-platform OCI images by hand, pushes them with
// skopeo to a real docker-registry on loopback, and counts what the
// registry serves through a reverse proxy in front of it.

const (
	mtOCIIndex    = "application/vnd.oci.image.index.v1+json"
	mtOCIManifest = "application/vnd.oci.image.manifest.v1+json"
	mtOCIConfig   = "application/vnd.oci.image.config.v1+json"
	mtOCILayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

type ociDesc struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    map[string]string `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// testImage is what was pushed: per platform ("linux/amd64"), the config
// blob and the layers, in manifest order.
type testImage struct {
	blobs map[string][]ociDesc
}

// ociLayout writes blobs into an OCI image layout.
type ociLayout struct {
	t   testing.TB
	dir string
}

func (l *ociLayout) put(b []byte, mt string) ociDesc {
	sum := sha256.Sum256(b)
	h := hex.EncodeToString(sum[:])
	if err := os.WriteFile(filepath.Join(l.dir, "blobs", "sha256", h), b, 0o644); err != nil {
		l.t.Fatal(err)
	}
	return ociDesc{MediaType: mt, Digest: "sha256:" + h, Size: int64(len(b))}
}

// layer is a gzip'd tar holding one file of size random bytes.
func layer(size int, seed uint64) (gz []byte, diffID string) {
	data := make([]byte, size)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 7})
	_, _ = r.Read(data)
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	_ = tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("data-%d.bin", seed), Mode: 0o644, Size: int64(size), ModTime: time.Unix(0, 0)})
	_, _ = tw.Write(data)
	_ = tw.Close()
	sum := sha256.Sum256(tb.Bytes())
	var zb bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&zb, gzip.NoCompression)
	_, _ = zw.Write(tb.Bytes())
	_ = zw.Close()
	return zb.Bytes(), "sha256:" + hex.EncodeToString(sum[:])
}

// makeImage writes an OCI layout with an index for linux/amd64 and
// linux/arm64 (different layers each) under tag, and returns it.
func makeImage(t testing.TB, dir, tag string, sizes []int, seed uint64) testImage {
	t.Helper()
	l := &ociLayout{t: t, dir: dir}
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		t.Fatal(err)
	}
	img := testImage{blobs: map[string][]ociDesc{}}
	var manifests []ociDesc
	for pi, arch := range []string{"amd64", "arm64"} {
		var layers []ociDesc
		var diffIDs []string
		for i, sz := range sizes {
			gz, diff := layer(sz, seed*1000+uint64(pi*100+i))
			layers = append(layers, l.put(gz, mtOCILayer))
			diffIDs = append(diffIDs, diff)
		}
		cfg, _ := json.Marshal(map[string]any{"architecture": arch, "os": "linux", "rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
			"config": map[string]any{"Cmd": []string{"/data"}}})
		cd := l.put(cfg, mtOCIConfig)
		mb, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mtOCIManifest, "config": cd, "layers": layers})
		md := l.put(mb, mtOCIManifest)
		md.Platform = map[string]string{"os": "linux", "architecture": arch}
		manifests = append(manifests, md)
		img.blobs["linux/"+arch] = append([]ociDesc{cd}, layers...)
	}
	ib, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mtOCIIndex, "manifests": manifests})
	id := l.put(ib, mtOCIIndex)
	id.Annotations = map[string]string{"org.opencontainers.image.ref.name": tag}
	top, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []ociDesc{id}})
	if err := os.WriteFile(filepath.Join(dir, "index.json"), top, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return img
}

// registry is a real docker-registry behind a counting reverse proxy.
type registry struct {
	direct   string // the registry itself (for pushes)
	addr     string // the counting proxy (what preheats use)
	blobGets atomic.Int64
	blobOut  atomic.Int64
	creds    string // user:password when the registry wants basic auth
}

// startRegistry starts docker-registry (test/oci) on a free loopback port
// with filesystem storage in a temp dir; with user set, behind htpasswd
// auth. A counting reverse proxy stands in front of it.
func startRegistry(t testing.TB, user, pass string) *registry {
	t.Helper()
	if _, err := exec.LookPath("docker-registry"); err != nil {
		t.Skip("docker-registry not installed (scripts/install-deps.sh installs it)")
	}
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Skip("skopeo not installed (scripts/install-deps.sh installs it)")
	}
	r := &registry{direct: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	cfg := oci.RegistryConfig{Addr: r.direct, Dir: t.TempDir()}
	if user != "" {
		if _, err := exec.LookPath("htpasswd"); err != nil {
			t.Skip("htpasswd not installed (scripts/install-deps.sh installs apache2-utils)")
		}
		cfg.Auth, cfg.User, cfg.Password = oci.AuthBasic, user, pass
		r.creds = user + ":" + pass
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reg, err := oci.StartRegistry(ctx, "", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		reg.Stop()
		if t.Failed() {
			b, _ := os.ReadFile(reg.Log())
			t.Logf("---- registry log ----\n%s", b)
		}
	})
	u, _ := url.Parse("http://" + r.direct)
	rp := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if strings.Contains(req.URL.Path, "/blobs/") && req.Method == http.MethodGet {
			r.blobGets.Add(1)
			w = &countingResponse{ResponseWriter: w, n: &r.blobOut}
		}
		rp.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	r.addr = strings.TrimPrefix(srv.URL, "http://")
	return r
}

type countingResponse struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingResponse) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// push copies the OCI layout to repo:tag in the registry with skopeo.
func (r *registry) push(t testing.TB, layoutDir, repo, tag string) {
	t.Helper()
	args := []string{"copy", "--all", "--dest-tls-verify=false", "--insecure-policy"}
	if r.creds != "" {
		args = append(args, "--dest-creds", r.creds)
	}
	args = append(args, "oci:"+layoutDir+":"+tag, "docker://"+r.direct+"/"+repo+":"+tag)
	out, err := exec.Command("skopeo", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}
