package oci

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"
)

// Media types of the images written here.
const (
	MediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// Descriptor is an OCI content descriptor.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Hex is the digest without its "sha256:" prefix.
func (d Descriptor) Hex() string { return d.Digest[len("sha256:"):] }

// Image is a generated single-platform image in an OCI layout directory.
type Image struct {
	Dir      string // the OCI layout
	Tag      string // its ref.name in index.json
	Manifest Descriptor
	Config   Descriptor
	Layers   []Descriptor
	// ManifestBytes is the manifest exactly as the registry will serve it.
	ManifestBytes []byte
}

// Blobs are the config and the layers: what a pull fetches by digest.
func (im *Image) Blobs() []Descriptor { return append([]Descriptor{im.Config}, im.Layers...) }

// BlobBytes is the total size of the config and the layers.
func (im *Image) BlobBytes() int64 {
	var n int64
	for _, b := range im.Blobs() {
		n += b.Size
	}
	return n
}

// WriteImage writes an image of layers layers holding total random bytes
// (split evenly; each layer a gzip'd tar of one file) into dir as an OCI
// layout tagged tag. Gzip at level 0 keeps it cheap for GiB images, and
// since the layers are already compressed, skopeo pushes them unchanged, so
// the digests here are the registry's. Every call writes new content.
func WriteImage(dir, tag string, layers int, total int64) (*Image, error) {
	if layers < 1 || total < int64(layers) {
		return nil, fmt.Errorf("write image: %d layers of %d bytes in total", layers, total)
	}
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return nil, fmt.Errorf("write image: %w", err)
	}
	var seed [32]byte
	for i, v := range []uint64{uint64(time.Now().UnixNano()), rand.Uint64(), rand.Uint64(), rand.Uint64()} {
		for k := range 8 {
			seed[8*i+k] = byte(v >> (8 * k))
		}
	}
	src := rand.NewChaCha8(seed)
	im := &Image{Dir: dir, Tag: tag}
	var diffIDs []string
	for i := range layers {
		size := total / int64(layers)
		if i == layers-1 {
			size = total - size*int64(layers-1)
		}
		desc, diffID, err := writeLayer(dir, fmt.Sprintf("layer%d.bin", i), size, src)
		if err != nil {
			return nil, err
		}
		im.Layers = append(im.Layers, desc)
		diffIDs = append(diffIDs, diffID)
	}
	cfg, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config":       map[string]any{"Cmd": []string{"/layer0.bin"}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	if err != nil {
		return nil, fmt.Errorf("write image: %w", err)
	}
	if im.Config, err = writeBlob(dir, MediaTypeConfig, cfg); err != nil {
		return nil, err
	}
	im.ManifestBytes, err = json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     MediaTypeManifest,
		"config":        im.Config,
		"layers":        im.Layers,
	})
	if err != nil {
		return nil, fmt.Errorf("write image: %w", err)
	}
	if im.Manifest, err = writeBlob(dir, MediaTypeManifest, im.ManifestBytes); err != nil {
		return nil, err
	}
	ref := im.Manifest
	ref.Annotations = map[string]string{"org.opencontainers.image.ref.name": tag}
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []Descriptor{ref}})
	for name, data := range map[string][]byte{
		"index.json": index,
		"oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return nil, fmt.Errorf("write image: %w", err)
		}
	}
	return im, nil
}

func writeBlob(dir, mediaType string, data []byte) (Descriptor, error) {
	sum := sha256.Sum256(data)
	d := Descriptor{MediaType: mediaType, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(data))}
	if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", d.Hex()), data, 0o644); err != nil {
		return d, fmt.Errorf("write blob: %w", err)
	}
	return d, nil
}

type countHash struct {
	h hash.Hash
	n int64
}

func (c *countHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}

// writeLayer writes one gzip'd tar holding one file of size random bytes
// and returns its descriptor and diff ID (the uncompressed tar's digest).
func writeLayer(dir, name string, size int64, src io.Reader) (Descriptor, string, error) {
	tmp, err := os.CreateTemp(filepath.Join(dir, "blobs", "sha256"), "layer-*")
	if err != nil {
		return Descriptor{}, "", fmt.Errorf("write layer: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	defer tmp.Close()
	compressed := &countHash{h: sha256.New()}
	bw := bufio.NewWriterSize(io.MultiWriter(tmp, compressed), 1<<20)
	gz, err := gzip.NewWriterLevel(bw, gzip.NoCompression)
	if err != nil {
		return Descriptor{}, "", fmt.Errorf("write layer: %w", err)
	}
	diff := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(gz, diff))
	hdr := &tar.Header{Name: name, Mode: 0o755, Size: size, ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return Descriptor{}, "", fmt.Errorf("write layer: %w", err)
	}
	if _, err := io.CopyN(tw, src, size); err != nil {
		return Descriptor{}, "", fmt.Errorf("write layer: %w", err)
	}
	for _, c := range []io.Closer{tw, gz} {
		if err := c.Close(); err != nil {
			return Descriptor{}, "", fmt.Errorf("write layer: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return Descriptor{}, "", fmt.Errorf("write layer: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return Descriptor{}, "", fmt.Errorf("write layer: %w", err)
	}
	d := Descriptor{MediaType: MediaTypeLayer, Digest: "sha256:" + hex.EncodeToString(compressed.h.Sum(nil)), Size: compressed.n}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, "blobs", "sha256", d.Hex())); err != nil {
		return d, "", fmt.Errorf("write layer: %w", err)
	}
	return d, "sha256:" + hex.EncodeToString(diff.Sum(nil)), nil
}

// VerifyLayout checks that the OCI layout in dir holds im: index.json names
// im's manifest, and every blob of im is present with the right size and
// sha256. Extra blobs are ignored.
func VerifyLayout(dir string, im *Image) error {
	data, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return fmt.Errorf("verify layout %s: %w", dir, err)
	}
	var index struct {
		Manifests []Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(data, &index); err != nil {
		return fmt.Errorf("verify layout %s: index.json: %w", dir, err)
	}
	found := false
	for _, m := range index.Manifests {
		found = found || m.Digest == im.Manifest.Digest
	}
	if !found {
		return fmt.Errorf("verify layout %s: index.json has %v, want manifest %s", dir, index.Manifests, im.Manifest.Digest)
	}
	for _, b := range append([]Descriptor{im.Manifest}, im.Blobs()...) {
		if err := verifyFile(filepath.Join(dir, "blobs", "sha256", b.Hex()), b); err != nil {
			return fmt.Errorf("verify layout %s: %w", dir, err)
		}
	}
	return nil
}

func verifyFile(path string, d Descriptor) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d.Digest || n != d.Size {
		return fmt.Errorf("blob %s: %d bytes with digest %s, want %d bytes", d.Digest, n, got, d.Size)
	}
	return nil
}
