package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/damselfly-io/damselfly/manager/job"
	"github.com/damselfly-io/damselfly/source"
)

// titleAnnotation names a layer's file in an ORAS-style artifact.
const titleAnnotation = "org.opencontainers.image.title"

// isOCI reports whether raw is an oci:// reference.
func isOCI(raw string) bool { return strings.HasPrefix(strings.ToLower(raw), "oci://") }

// validateOCI checks an oci://registry/repo:tag (or @digest) command line.
func (o *options) validateOCI() error {
	if _, err := job.ParseImage(o.url[len("oci://"):]); err != nil {
		return fmt.Errorf("URL %q: want oci://registry/repository:tag or @sha256:…: %w", o.url, err)
	}
	switch {
	case o.output == "":
		return errors.New("no output given (-O DIR, or -O FILE for a one-layer artifact)")
	case o.output == "-":
		return errors.New("oci:// writes files: -O - is not possible")
	case o.digest != "":
		return errors.New("--digest names one content; an artifact's layers carry their own digests")
	case o.parallel < 1 || o.parallel > 64:
		return fmt.Errorf("--parallel %d: want 1..64", o.parallel)
	case o.direct && o.disableBackSource:
		return errors.New("--direct and --disable-back-source exclude each other")
	}
	out, err := filepath.Abs(o.output)
	if err != nil {
		return fmt.Errorf("output %s: %w", o.output, err)
	}
	if strings.HasSuffix(o.output, string(filepath.Separator)) {
		out += string(filepath.Separator)
	}
	if _, err := os.Stat(filepath.Dir(filepath.Clean(out))); err != nil {
		return fmt.Errorf("output %s: its parent directory does not exist", out)
	}
	o.output = out
	return nil
}

// runOCI fetches an OCI artifact's layers: the manifest (the --platform
// one from an index) is resolved here, with the registry's Basic or Bearer
// challenge answered with -H headers or DAMSELFLY_REGISTRY_USERNAME and
// DAMSELFLY_REGISTRY_PASSWORD; each layer is then a content task (named by
// its digest, shared with the registry mirror) fetched through the daemon
// and verified against its digest, written under its
// org.opencontainers.image.title into the -O directory, or to -O itself
// when the artifact has one layer and -O is not a directory.
func runOCI(ctx context.Context, o *options, stderr io.Writer) int {
	start := time.Now()
	img, _ := job.ParseImage(o.url[len("oci://"):])
	cred := job.Credentials{Username: os.Getenv("DAMSELFLY_REGISTRY_USERNAME"), Password: os.Getenv("DAMSELFLY_REGISTRY_PASSWORD")}
	if len(o.header) > 0 {
		cred.Headers = flatHeaders(o)
	}
	res, err := (&job.Resolver{}).Resolve(ctx, img, o.platform, cred)
	if err != nil {
		fmt.Fprintf(stderr, "dfget: resolve %s: %v\n", o.url, err)
		switch {
		case errors.Is(err, job.ErrNotFound), errors.Is(err, job.ErrNoPlatform):
			return exitNotFound
		case errors.Is(err, job.ErrUnauthorized):
			return exitDenied
		case errors.Is(err, job.ErrBadReference):
			return exitUsage
		}
		return exitCode(ctx, err, o.disableBackSource)
	}
	var layers []job.Blob
	for _, b := range res.Blobs {
		if !b.Config {
			layers = append(layers, b)
		}
	}
	if len(layers) == 0 {
		fmt.Fprintf(stderr, "dfget: %s: the manifest lists no layers\n", o.url)
		return exitNotFound
	}
	// The blob fetches carry what authorised the manifest (a bearer
	// token): credentials, kept on this node by the daemon.
	for k, v := range res.Header {
		if o.header.Get(k) == "" {
			o.header.Set(k, v)
		}
	}
	st, statErr := os.Stat(o.output)
	single := len(layers) == 1 && !strings.HasSuffix(o.output, string(filepath.Separator)) && (statErr != nil || !st.IsDir())
	entries := make([]source.Entry, 0, len(layers))
	names := map[string]bool{}
	for _, l := range layers {
		name := l.Annotations[titleAnnotation]
		if name == "" {
			name = strings.ReplaceAll(l.Digest, ":", "-")
		}
		if !source.SafeRelPath(name) {
			fmt.Fprintf(stderr, "dfget: %s: layer %s has the title %q, which would leave the output directory\n", o.url, l.Digest, name)
			return exitFailed
		}
		if names[name] {
			fmt.Fprintf(stderr, "dfget: %s: two layers are titled %q\n", o.url, name)
			return exitFailed
		}
		names[name] = true
		entries = append(entries, source.Entry{URL: l.URL, Path: name, Size: l.Size, Digest: l.Digest})
	}
	if single {
		out := filepath.Clean(o.output)
		o.output = filepath.Dir(out)
		entries[0].Path = filepath.Base(out)
	}
	if !o.quiet {
		kind := res.ArtifactType
		if kind == "" {
			kind = "image"
		}
		fmt.Fprintf(stderr, "dfget: %s (%s, manifest %s): %d layers\n", o.url, kind, res.Manifest, len(layers))
	}
	o.url = (&url.URL{Scheme: img.Scheme, Host: img.Registry, Path: "/v2/" + img.Repo + "/manifests/" + img.Reference}).String()
	return o.runSet(ctx, entries, start, stderr)
}
