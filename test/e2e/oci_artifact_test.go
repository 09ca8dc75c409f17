package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// pushBlob uploads b to repo with the registry API's monolithic upload
// (POST to start, PUT with ?digest=) and returns its descriptor.
func pushBlob(t *testing.T, reg *registry, repo, mediaType string, b []byte, annotations map[string]string) map[string]any {
	t.Helper()
	sum := sha256.Sum256(b)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	start, _ := http.NewRequest(http.MethodPost, "http://"+reg.direct+"/v2/"+repo+"/blobs/uploads/", nil)
	reg.auth(start)
	resp, err := http.DefaultClient.Do(start)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start upload: %s", resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	loc = (&url.URL{Scheme: "http", Host: reg.direct}).ResolveReference(loc)
	q := loc.Query()
	q.Set("digest", digest)
	loc.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/octet-stream")
	reg.auth(req)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("finish upload: %s", resp.Status)
	}
	d := map[string]any{"mediaType": mediaType, "digest": digest, "size": len(b)}
	if annotations != nil {
		d["annotations"] = annotations
	}
	return d
}

// pushManifest puts an OCI manifest (or index) under ref.
func pushManifest(t *testing.T, reg *registry, repo, ref, mediaType string, m map[string]any) string {
	t.Helper()
	m["schemaVersion"] = 2
	m["mediaType"] = mediaType
	b, _ := json.Marshal(m)
	req, _ := http.NewRequest(http.MethodPut, "http://"+reg.direct+"/v2/"+repo+"/manifests/"+ref, bytes.NewReader(b))
	req.Header.Set("Content-Type", mediaType)
	reg.auth(req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("put manifest %s: %s", ref, resp.Status)
	}
	return resp.Header.Get("Docker-Content-Digest")
}

// orasArtifact pushes an ORAS-style artifact: an OCI manifest with an
// artifactType, the empty config, and layers titled as files.
func orasArtifact(t *testing.T, reg *registry, repo, tag string, files map[string][]byte) string {
	t.Helper()
	empty := pushBlob(t, reg, repo, "application/vnd.oci.empty.v1+json", []byte("{}"), nil)
	var layers []any
	for _, name := range sortedKeys(files) {
		layers = append(layers, pushBlob(t, reg, repo, "application/vnd.example.file.v1", files[name], map[string]string{"org.opencontainers.image.title": name}))
	}
	return pushManifest(t, reg, repo, tag, "application/vnd.oci.image.manifest.v1+json", map[string]any{
		"artifactType": "application/vnd.example.model.v1", "config": empty, "layers": layers,
	})
}

func sortedKeys(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	for i := range ks {
		for j := i + 1; j < len(ks); j++ {
			if ks[j] < ks[i] {
				ks[i], ks[j] = ks[j], ks[i]
			}
		}
	}
	return ks
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 5))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestOCIArtifact pushes an ORAS-style artifact (two titled layers) to a
// real docker-registry and fetches it with dfget oci:// on two daemons at
// once: every file matches, the registry sends each blob about once. A
// one-layer artifact goes to -O FILE; an index picks the --platform's
// manifest; a missing tag exits 3.
func TestOCIArtifact(t *testing.T) {
	reg := startRegistry(t, "", "")
	files := map[string][]byte{"model.safetensors": randomBytes(3<<20+17, 1), "config.json": []byte(`{"layers": 12}`)}
	digest := orasArtifact(t, reg, "models/tiny", "v1", files)
	c := startCluster(t, 2)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	before := reg.blobOut.Load()
	outs := make([]string, 2)
	errs := make([]string, 2)
	var wg sync.WaitGroup
	for i, d := range c.daemons {
		outs[i] = filepath.Join(t.TempDir(), "model")
		wg.Add(1)
		go func(i int, d *daemonProc) {
			defer wg.Done()
			if code, out := dfget(ctx, "oci://"+reg.addr+"/models/tiny:v1", "-O", outs[i], "--sock", d.sock, "--disable-back-source"); code != 0 {
				errs[i] = fmt.Sprintf("dfget oci:// on %s exited %d: %s", d.name, code, out)
			}
		}(i, d)
	}
	wg.Wait()
	var total int64
	for i := range outs {
		if errs[i] != "" {
			t.Fatal(errs[i])
		}
		for name, b := range files {
			got, err := os.ReadFile(filepath.Join(outs[i], name))
			if err != nil || !bytes.Equal(got, b) {
				t.Fatalf("copy %d of %s: %d bytes, %v", i, name, len(got), err)
			}
		}
	}
	for _, b := range files {
		total += int64(len(b))
	}
	sent := reg.blobOut.Load() - before
	t.Logf("registry sent %d blob bytes for a %d-byte artifact fetched by 2 daemons", sent, total)
	if sent < total || sent > total*5/4 {
		t.Errorf("registry sent %d blob bytes, want about one copy (%d)", sent, total)
	}

	// By digest, one layer, to a file.
	one := map[string][]byte{"weights.bin": randomBytes(100<<10, 2)}
	d1 := orasArtifact(t, reg, "models/one", "v1", one)
	out := filepath.Join(t.TempDir(), "w.bin")
	if code, msg := dfget(ctx, "oci://"+reg.addr+"/models/one@"+d1, "-O", out, "--sock", c.daemons[0].sock); code != 0 {
		t.Fatalf("one-layer artifact: exit %d: %s", code, msg)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, one["weights.bin"]) {
		t.Fatalf("one-layer artifact: %d bytes", len(got))
	}

	// An index: --platform picks the manifest.
	arm := map[string][]byte{"arm.bin": randomBytes(10<<10, 3)}
	armDigest := orasArtifact(t, reg, "models/multi", "arm", arm)
	amdDigest := orasArtifact(t, reg, "models/multi", "amd", map[string][]byte{"amd.bin": randomBytes(10<<10, 4)})
	idx := func(d, arch string) map[string]any {
		return map[string]any{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": manifestSize(t, reg, "models/multi", d),
			"platform": map[string]string{"os": "linux", "architecture": arch}}
	}
	pushManifest(t, reg, "models/multi", "v1", "application/vnd.oci.image.index.v1+json", map[string]any{"manifests": []any{idx(amdDigest, "amd64"), idx(armDigest, "arm64")}})
	outDir := filepath.Join(t.TempDir(), "multi") + "/"
	if code, msg := dfget(ctx, "oci://"+reg.addr+"/models/multi:v1", "--platform", "linux/arm64", "-O", outDir, "--sock", c.daemons[1].sock); code != 0 {
		t.Fatalf("index: exit %d: %s", code, msg)
	}
	if got, _ := os.ReadFile(filepath.Join(outDir, "arm.bin")); !bytes.Equal(got, arm["arm.bin"]) {
		t.Fatalf("index with --platform linux/arm64: got %d bytes", len(got))
	}
	if _, err := os.Stat(filepath.Join(outDir, "amd.bin")); err == nil {
		t.Fatal("the amd64 layer was fetched too")
	}

	if code, msg := dfget(ctx, "oci://"+reg.addr+"/models/tiny:nope", "-O", t.TempDir(), "--sock", c.daemons[0].sock); code != 3 || !strings.Contains(msg, "not found") {
		t.Fatalf("missing tag: exit %d: %s", code, msg)
	}
	_ = digest
}

func manifestSize(t *testing.T, reg *registry, repo, digest string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+reg.direct+"/v2/"+repo+"/manifests/"+digest, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	reg.auth(req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return buf.Len()
}

// auth adds the registry's basic credentials, if it has any.
func (r *registry) auth(req *http.Request) {
	if u, p, ok := strings.Cut(r.creds, ":"); ok {
		req.SetBasicAuth(u, p)
	}
}

// TestOCIArtifactWithCredentials: an artifact in a registry behind basic
// auth is fetched with DAMSELFLY_REGISTRY_USERNAME/PASSWORD; without them
// dfget exits 7 naming the refusal.
func TestOCIArtifactWithCredentials(t *testing.T) {
	reg := startRegistry(t, "puller", "pull-secret")
	files := map[string][]byte{"weights.bin": randomBytes(300<<10, 7)}
	orasArtifact(t, reg, "private/model", "v1", files)
	c := startCluster(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ref := "oci://" + reg.addr + "/private/model:v1"
	out := filepath.Join(t.TempDir(), "w.bin")
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "DAMSELFLY_REGISTRY_USERNAME=puller", "DAMSELFLY_REGISTRY_PASSWORD=pull-secret"}
	if code, msg := dfgetEnv(ctx, env, ref, "-O", out, "--sock", c.daemons[0].sock); code != 0 {
		t.Fatalf("with credentials: exit %d: %s", code, msg)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, files["weights.bin"]) {
		t.Fatalf("with credentials: got %d bytes", len(got))
	}
	code, msg := dfgetEnv(ctx, env[:2], ref, "-O", filepath.Join(t.TempDir(), "x"), "--sock", c.daemons[0].sock)
	if code != 7 || !strings.Contains(msg, "requires credentials") {
		t.Fatalf("without credentials: exit %d: %s", code, msg)
	}
}
