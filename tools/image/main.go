// Command image builds Damselfly's container image without Docker: the
// static binaries of each platform over a minimal root file system, one
// OCI image per platform under one index, written as an OCI layout; and
// pushes that layout to a registry. `make images` and `make push` run it.
//
// It is a separate module so go-containerregistry stays out of the
// product's dependency graph.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Binaries every platform directory must hold.
var binaries = []string{"damselfly", "dfget", "dfcache"}

// The image's unprivileged user (the manager, schedulers and seed peers run
// as it; the node daemon runs as root for the host's socket and cache).
const (
	uid  = 65532
	user = "damselfly"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: image build|push [flags] (-h for each)")
		return 2
	}
	var err error
	switch args[0] {
	case "build":
		err = runBuild(args[1:], stdout, stderr)
	case "push":
		err = runPush(ctx, args[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "image: unknown command %q (build, push)\n", args[0])
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "image:", err)
		return 1
	}
	return 0
}

// BuildOptions describe one image build.
type BuildOptions struct {
	BinDir    string   // <BinDir>/<os>_<arch>/{damselfly,dfget,dfcache}
	Out       string   // OCI layout directory (replaced)
	Platforms []string // os/arch
	Version   string
	Revision  string
	Source    string
	Created   time.Time
	CACerts   string // CA bundle copied into the image
	Tag       string // ref name annotation in the layout's index.json
}

func runBuild(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := BuildOptions{}
	fs.StringVar(&o.BinDir, "bin-dir", "bin/dist", "directory with one <os>_<arch> subdirectory of static binaries per platform")
	fs.StringVar(&o.Out, "out", "bin/images/damselfly", "OCI layout to write (replaced)")
	platforms := fs.String("platforms", "linux/amd64,linux/arm64", "comma-separated os/arch list")
	fs.StringVar(&o.Version, "version", "dev", "image version (label org.opencontainers.image.version and the tag)")
	fs.StringVar(&o.Revision, "revision", "unknown", "source revision (label org.opencontainers.image.revision)")
	fs.StringVar(&o.Source, "source", "https://github.com/damselfly-io/damselfly", "source URL (label org.opencontainers.image.source)")
	created := fs.String("created", "", "creation time, RFC 3339 or Unix seconds (default: SOURCE_DATE_EPOCH, else the Unix epoch, so builds are reproducible)")
	fs.StringVar(&o.CACerts, "ca-certs", "/etc/ssl/certs/ca-certificates.crt", "CA bundle put at /etc/ssl/certs/ca-certificates.crt in the image")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, p := range strings.Split(*platforms, ",") {
		if p = strings.TrimSpace(p); p != "" {
			o.Platforms = append(o.Platforms, p)
		}
	}
	if *created == "" {
		*created = os.Getenv("SOURCE_DATE_EPOCH")
	}
	t, err := parseTime(*created)
	if err != nil {
		return err
	}
	o.Created = t
	o.Tag = o.Version
	idx, err := Build(o)
	if err != nil {
		return err
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (index %s, %s)\n", o.Out, d, strings.Join(o.Platforms, ", "))
	return nil
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Unix(n, 0).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("creation time %q: want RFC 3339 or Unix seconds", s)
	}
	return t.UTC(), nil
}

// Build writes the OCI layout and returns the multi-platform index.
func Build(o BuildOptions) (v1.ImageIndex, error) {
	if len(o.Platforms) == 0 {
		return nil, errors.New("no platforms")
	}
	ca, err := os.ReadFile(o.CACerts)
	if err != nil {
		return nil, fmt.Errorf("read CA bundle: %w", err)
	}
	base, err := rootfsLayer(ca, o.Created)
	if err != nil {
		return nil, err
	}
	var adds []mutate.IndexAddendum
	for _, p := range o.Platforms {
		os_, arch, ok := strings.Cut(p, "/")
		if !ok || os_ == "" || arch == "" {
			return nil, fmt.Errorf("platform %q: want os/arch", p)
		}
		img, err := platformImage(o, base, os_, arch)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: os_, Architecture: arch}}})
	}
	idx := mutate.IndexMediaType(mutate.AppendManifests(empty.Index, adds...), types.OCIImageIndex)
	idx = mutate.Annotations(idx, labels(o)).(v1.ImageIndex)
	if err := os.RemoveAll(o.Out); err != nil {
		return nil, fmt.Errorf("replace %s: %w", o.Out, err)
	}
	lp, err := layout.Write(o.Out, empty.Index)
	if err != nil {
		return nil, fmt.Errorf("write layout %s: %w", o.Out, err)
	}
	if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": o.Tag})); err != nil {
		return nil, fmt.Errorf("write layout %s: %w", o.Out, err)
	}
	return idx, nil
}

func labels(o BuildOptions) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       "damselfly",
		"org.opencontainers.image.description": "Damselfly: peer-to-peer distribution of container images and large files (manager, scheduler, daemon, dfget, dfcache)",
		"org.opencontainers.image.version":     o.Version,
		"org.opencontainers.image.revision":    o.Revision,
		"org.opencontainers.image.source":      o.Source,
		"org.opencontainers.image.licenses":    "Apache-2.0",
		"org.opencontainers.image.created":     o.Created.Format(time.RFC3339),
	}
}

func platformImage(o BuildOptions, base v1.Layer, os_, arch string) (v1.Image, error) {
	dir := filepath.Join(o.BinDir, os_+"_"+arch)
	var files []tarEntry
	for _, b := range binaries {
		data, err := os.ReadFile(filepath.Join(dir, b))
		if err != nil {
			return nil, fmt.Errorf("binary: %w (build with `make dist`)", err)
		}
		if err := checkStatic(data, b); err != nil {
			return nil, err
		}
		files = append(files, tarEntry{name: "usr/local/bin/" + b, mode: 0o755, data: data})
	}
	bin, err := layerOf(files, o.Created)
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), base, bin)
	if err != nil {
		return nil, err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = os_, arch
	cf.Created = v1.Time{Time: o.Created}
	cf.Author = "Damselfly"
	cf.Config.Entrypoint = []string{"/usr/local/bin/damselfly"}
	cf.Config.Cmd = []string{"all-in-one"}
	cf.Config.User = strconv.Itoa(uid) + ":" + strconv.Itoa(uid)
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}
	cf.Config.Labels = labels(o)
	cf.Config.ExposedPorts = map[string]struct{}{"65000/tcp": {}, "65001/tcp": {}, "65002/tcp": {}, "8000/tcp": {}, "8002/tcp": {}, "8080/tcp": {}, "65003/tcp": {}}
	cf.History = []v1.History{
		{Created: cf.Created, CreatedBy: "damselfly image: root file system (passwd, group, CA certificates, directories)"},
		{Created: cf.Created, CreatedBy: "damselfly image: static binaries damselfly, dfget, dfcache"},
	}
	return mutate.ConfigFile(img, cf)
}

// checkStatic refuses a dynamically linked ELF binary: the image has no
// libc. (An ELF with a PT_INTERP program header names a dynamic loader.)
func checkStatic(data []byte, name string) error {
	if len(data) < 4 || string(data[:4]) != "\x7fELF" {
		return fmt.Errorf("%s is not an ELF binary", name)
	}
	if bytes.Contains(data[:min(len(data), 4096)], []byte("/lib64/ld-linux")) || bytes.Contains(data[:min(len(data), 4096)], []byte("/lib/ld-linux")) {
		return fmt.Errorf("%s is dynamically linked: build with CGO_ENABLED=0", name)
	}
	return nil
}

type tarEntry struct {
	name string
	mode int64
	data []byte
	dir  bool
	uid  int
	link string
}

func rootfsLayer(ca []byte, created time.Time) (v1.Layer, error) {
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\n%s:x:%d:%d:Damselfly:/var/lib/damselfly:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n", user, uid, uid)
	group := fmt.Sprintf("root:x:0:\n%s:x:%d:\nnogroup:x:65534:\n", user, uid)
	return layerOf([]tarEntry{
		{name: "etc/", dir: true, mode: 0o755},
		{name: "etc/passwd", mode: 0o644, data: []byte(passwd)},
		{name: "etc/group", mode: 0o644, data: []byte(group)},
		{name: "etc/nsswitch.conf", mode: 0o644, data: []byte("hosts: files dns\n")},
		{name: "etc/ssl/", dir: true, mode: 0o755},
		{name: "etc/ssl/certs/", dir: true, mode: 0o755},
		{name: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: ca},
		{name: "root/", dir: true, mode: 0o700},
		{name: "tmp/", dir: true, mode: 0o1777},
		{name: "usr/", dir: true, mode: 0o755},
		{name: "usr/local/", dir: true, mode: 0o755},
		{name: "usr/local/bin/", dir: true, mode: 0o755},
		{name: "var/", dir: true, mode: 0o755},
		{name: "var/lib/", dir: true, mode: 0o755},
		{name: "var/lib/damselfly/", dir: true, mode: 0o755, uid: uid},
		{name: "var/run", link: "../run"},
		{name: "run/", dir: true, mode: 0o755},
		{name: "run/damselfly/", dir: true, mode: 0o755, uid: uid},
	}, created)
}

// layerOf makes a reproducible gzip layer of the entries (sorted, fixed
// times and owners).
func layerOf(entries []tarEntry, created time.Time) (v1.Layer, error) {
	sort.SliceStable(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, ModTime: created, Uid: e.uid, Gid: e.uid, Format: tar.FormatPAX}
		switch {
		case e.link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, e.link, 0o777
		case e.dir:
			h.Typeflag = tar.TypeDir
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer %s: %w", e.name, err)
		}
		if !e.dir && e.link == "" {
			if _, err := tw.Write(e.data); err != nil {
				return nil, fmt.Errorf("layer %s: %w", e.name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer))
}

func runPush(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("push", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("layout", "bin/images/damselfly", "OCI layout written by build")
	ref := fs.String("ref", "", "destination, e.g. registry.example:5000/damselfly:1.0 (required)")
	insecure := fs.Bool("insecure", false, "allow a plain-HTTP registry")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *ref == "" {
		return errors.New("push: --ref is required (e.g. make push REGISTRY=host:port/repo)")
	}
	d, err := Push(ctx, *dir, *ref, *insecure)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "pushed %s@%s\n", *ref, d)
	return nil
}

// Push copies the layout's image index to ref (credentials from the
// Docker config, as docker login writes them).
func Push(ctx context.Context, dir, ref string, insecure bool) (v1.Hash, error) {
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("reference %q: %w", ref, err)
	}
	root, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("read layout %s: %w", dir, err)
	}
	m, err := root.IndexManifest()
	if err != nil {
		return v1.Hash{}, err
	}
	if len(m.Manifests) != 1 || !m.Manifests[0].MediaType.IsIndex() {
		return v1.Hash{}, fmt.Errorf("layout %s: want one image index in index.json, found %d entries", dir, len(m.Manifests))
	}
	idx, err := root.ImageIndex(m.Manifests[0].Digest)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := remote.WriteIndex(r, idx, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
	}
	return idx.Digest()
}
