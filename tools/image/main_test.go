package main

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// fakeBins writes stand-in static ELF files for each platform.
func fakeBins(t *testing.T, platforms ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, p := range platforms {
		d := filepath.Join(dir, strings.ReplaceAll(p, "/", "_"))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, b := range binaries {
			if err := os.WriteFile(filepath.Join(d, b), []byte("\x7fELF "+p+" "+b), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func opts(t *testing.T, bin string, platforms ...string) BuildOptions {
	ca := filepath.Join(t.TempDir(), "ca.crt")
	os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n"), 0o644)
	return BuildOptions{BinDir: bin, Out: filepath.Join(t.TempDir(), "layout"), Platforms: platforms,
		Version: "1.2.3", Revision: "abc123", Source: "https://example.org/src", Created: time.Unix(1700000000, 0).UTC(), CACerts: ca, Tag: "1.2.3"}
}

// files lists an image's files (path -> content) over all layers.
func files(t *testing.T, img v1.Image) map[string]*tar.Header {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*tar.Header{}
	for _, l := range ls {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			out[h.Name] = h
		}
		rc.Close()
	}
	return out
}

func TestBuildTwoPlatforms(t *testing.T) {
	o := opts(t, fakeBins(t, "linux/amd64", "linux/arm64"), "linux/amd64", "linux/arm64")
	if _, err := Build(o); err != nil {
		t.Fatal(err)
	}
	root, err := layout.ImageIndexFromPath(o.Out)
	if err != nil {
		t.Fatal(err)
	}
	rm, _ := root.IndexManifest()
	if len(rm.Manifests) != 1 || rm.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "1.2.3" {
		t.Fatalf("layout index.json: %+v", rm.Manifests)
	}
	idx, err := root.ImageIndex(rm.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 2 {
		t.Fatalf("want 2 platform manifests, got %d", len(im.Manifests))
	}
	for i, arch := range []string{"amd64", "arm64"} {
		d := im.Manifests[i]
		if d.Platform == nil || d.Platform.OS != "linux" || d.Platform.Architecture != arch {
			t.Fatalf("manifest %d platform %+v", i, d.Platform)
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, _ := img.ConfigFile()
		if cf.Architecture != arch || cf.OS != "linux" {
			t.Errorf("%s config says %s/%s", arch, cf.OS, cf.Architecture)
		}
		if cf.Config.User != "65532:65532" || cf.Config.Entrypoint[0] != "/usr/local/bin/damselfly" {
			t.Errorf("%s: user %q entrypoint %v", arch, cf.Config.User, cf.Config.Entrypoint)
		}
		for k, want := range map[string]string{"org.opencontainers.image.version": "1.2.3", "org.opencontainers.image.revision": "abc123", "org.opencontainers.image.source": "https://example.org/src"} {
			if cf.Config.Labels[k] != want {
				t.Errorf("%s label %s = %q", arch, k, cf.Config.Labels[k])
			}
		}
		fs := files(t, img)
		for _, p := range []string{"etc/passwd", "etc/group", "etc/ssl/certs/ca-certificates.crt", "usr/local/bin/damselfly", "usr/local/bin/dfget", "usr/local/bin/dfcache", "tmp/", "var/lib/damselfly/"} {
			if fs[p] == nil {
				t.Errorf("%s: no %s in the image", arch, p)
			}
		}
		if h := fs["var/lib/damselfly/"]; h != nil && h.Uid != 65532 {
			t.Errorf("data dir owned by %d", h.Uid)
		}
		if h := fs["usr/local/bin/damselfly"]; h != nil && h.Size != int64(len("\x7fELF linux/"+arch+" damselfly")) {
			t.Errorf("%s carries another platform's binary (size %d)", arch, h.Size)
		}
	}
	// Reproducible: the same inputs give the same index digest.
	d1, _ := idx.Digest()
	o.Out = filepath.Join(t.TempDir(), "again")
	idx2, err := Build(o)
	if err != nil {
		t.Fatal(err)
	}
	if d2, _ := idx2.Digest(); d1 != d2 {
		t.Errorf("rebuild changed the digest: %s then %s", d1, d2)
	}
}

func TestBuildFailures(t *testing.T) {
	bin := fakeBins(t, "linux/amd64")
	if _, err := Build(opts(t, bin, "linux/arm64")); err == nil || !strings.Contains(err.Error(), "make dist") {
		t.Errorf("missing platform binaries: %v", err)
	}
	if _, err := Build(opts(t, bin, "amd64")); err == nil {
		t.Error("platform without os accepted")
	}
	dyn := filepath.Join(bin, "linux_amd64", "dfget")
	os.WriteFile(dyn, []byte("\x7fELF\x02\x01\x01/lib64/ld-linux-x86-64.so.2"), 0o755)
	if _, err := Build(opts(t, bin, "linux/amd64")); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("dynamic binary: %v", err)
	}
	os.WriteFile(dyn, []byte("#!/bin/sh\n"), 0o755)
	if _, err := Build(opts(t, bin, "linux/amd64")); err == nil {
		t.Error("a script accepted as a binary")
	}
	if code := run(t.Context(), []string{"push", "--layout", t.TempDir()}, io.Discard, io.Discard); code == 0 {
		t.Error("push without --ref succeeded")
	}
}
