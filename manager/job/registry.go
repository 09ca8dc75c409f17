// Package job resolves what a preheat job fetches: an image reference or
// manifest URL becomes the blobs of one platform's manifest (following OCI
// indexes and Docker manifest lists, and registry bearer-token challenges);
// a file URL is one task. It talks only to registries and never stores or
// logs the credentials it is given.
package job

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/damselfly-io/damselfly/core"
)

// Errors a resolution can end with (wrapped with detail).
var (
	ErrBadReference = errors.New("bad image reference")
	ErrNotFound     = errors.New("image not found")
	ErrUnauthorized = errors.New("registry refused the credentials")
	ErrUnreachable  = errors.New("registry unreachable")
	ErrNoPlatform   = errors.New("no manifest for the platform")
)

// Image names one image in a registry.
type Image struct {
	Scheme    string // http or https
	Registry  string // host[:port]
	Repo      string
	Reference string // tag or digest
}

func (i Image) manifestURL(ref string) string {
	return fmt.Sprintf("%s://%s/v2/%s/manifests/%s", i.Scheme, i.Registry, i.Repo, ref)
}

// BlobURL is the URL of one blob, as the daemon's registry mirror names it.
func (i Image) BlobURL(digest string) string {
	return fmt.Sprintf("%s://%s/v2/%s/blobs/%s", i.Scheme, i.Registry, i.Repo, digest)
}

var (
	manifestPath = regexp.MustCompile(`^/v2/(.+)/manifests/([^/]+)$`)
	repoRE       = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	tagRE        = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// ParseImage accepts a manifest URL (https://registry/v2/<repo>/manifests/<ref>)
// or a plain reference (registry/repo:tag, registry/repo@sha256:…). A plain
// reference to localhost or a loopback address uses http, others https.
func ParseImage(s string) (Image, error) {
	var img Image
	if strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://") {
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			return img, fmt.Errorf("%w: %q is not a URL", ErrBadReference, s)
		}
		m := manifestPath.FindStringSubmatch(u.Path)
		if m == nil {
			return img, fmt.Errorf("%w: %q: want <scheme>://<registry>/v2/<repo>/manifests/<tag or digest>", ErrBadReference, s)
		}
		img = Image{Scheme: u.Scheme, Registry: u.Host, Repo: m[1], Reference: m[2]}
	} else {
		reg, rest, ok := strings.Cut(s, "/")
		if !ok || !strings.ContainsAny(reg, ".:") && reg != "localhost" {
			return img, fmt.Errorf("%w: %q: want registry/repo:tag (the registry host first)", ErrBadReference, s)
		}
		repo, ref := rest, "latest"
		if r, d, ok := strings.Cut(rest, "@"); ok {
			repo, ref = r, d
		} else if i := strings.LastIndex(rest, ":"); i >= 0 {
			repo, ref = rest[:i], rest[i+1:]
		}
		img = Image{Scheme: "https", Registry: reg, Repo: repo, Reference: ref}
		if core.LoopbackHost(reg) {
			img.Scheme = "http"
		}
	}
	// The registry becomes a URL's host: nothing in it may turn into a
	// userinfo, a path or a fragment that sends the request elsewhere.
	if !core.ValidHostPort(img.Registry) {
		return Image{}, fmt.Errorf("%w: registry %q: want host[:port]", ErrBadReference, img.Registry)
	}
	if !repoRE.MatchString(img.Repo) {
		return Image{}, fmt.Errorf("%w: repository %q", ErrBadReference, img.Repo)
	}
	if strings.Contains(img.Reference, ":") {
		if _, _, err := core.ParseDigest(img.Reference); err != nil {
			return Image{}, fmt.Errorf("%w: digest %q", ErrBadReference, img.Reference)
		}
	} else if !tagRE.MatchString(img.Reference) {
		return Image{}, fmt.Errorf("%w: tag %q", ErrBadReference, img.Reference)
	}
	return img, nil
}

// Credentials for the registry: Headers are sent as given; Username and
// Password answer a basic or bearer-token challenge.
type Credentials struct {
	Headers  map[string]string
	Username string
	Password string
}

// Blob is one blob of the resolved image.
type Blob struct {
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	MediaType string `json:"media_type"`
	URL       string `json:"url"`
	// Config marks the manifest's config blob (the others are layers).
	Config bool `json:"config,omitempty"`
	// Annotations are the layer descriptor's (ORAS names a file with
	// org.opencontainers.image.title).
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Resolved is an image reduced to what peers fetch.
type Resolved struct {
	Manifest string `json:"manifest_digest"`
	// ArtifactType is the manifest's artifactType, or else its config's
	// media type when that is not an image config (OCI artifacts).
	ArtifactType string `json:"artifact_type,omitempty"`
	// Blobs are the config blob and the layers (a pull fetches both).
	Blobs []Blob `json:"blobs"`
	// Header is what peers must send to fetch the blobs (e.g. a bearer
	// token). It is a secret: never stored in plain text.
	Header map[string]string `json:"-"`
}

// Resolver resolves images through the registry API.
type Resolver struct {
	Client *http.Client
}

const (
	mtOCIIndex      = "application/vnd.oci.image.index.v1+json"
	mtDockerList    = "application/vnd.docker.distribution.manifest.list.v2+json"
	mtOCIManifest   = "application/vnd.oci.image.manifest.v1+json"
	mtDockerV2      = "application/vnd.docker.distribution.manifest.v2+json"
	acceptManifests = mtOCIIndex + ", " + mtDockerList + ", " + mtOCIManifest + ", " + mtDockerV2
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
	Platform    *struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Variant      string `json:"variant"`
	} `json:"platform"`
}

type manifest struct {
	MediaType    string       `json:"mediaType"`
	ArtifactType string       `json:"artifactType"`
	Manifests    []descriptor `json:"manifests"`
	Config       *descriptor  `json:"config"`
	Layers       []descriptor `json:"layers"`
}

// Resolve fetches the manifest of img (the platform's, from an index; the
// default platform is linux/amd64) and returns its blobs and the header
// that authorises fetching them.
func (r *Resolver) Resolve(ctx context.Context, img Image, platform string, cred Credentials) (*Resolved, error) {
	a := &auth{r: r, img: img, cred: cred, header: map[string]string{}}
	for k, v := range cred.Headers {
		a.header[k] = v
	}
	ref := img.Reference
	for range 3 { // index → manifest; a nested index is not followed further
		body, mt, digest, err := a.get(ctx, img.manifestURL(ref), acceptManifests)
		if err != nil {
			return nil, err
		}
		var m manifest
		if err := json.Unmarshal(body, &m); err != nil {
			return nil, fmt.Errorf("%w: manifest %s is not JSON: %w", ErrNotFound, ref, err)
		}
		if mt == "" || mt == "application/json" || strings.HasPrefix(mt, "text/plain") {
			mt = m.MediaType
		}
		switch {
		case mt == mtOCIIndex || mt == mtDockerList || (mt == "" && len(m.Manifests) > 0):
			d, err := pickPlatform(m.Manifests, platform)
			if err != nil {
				return nil, err
			}
			ref = d.Digest
		case mt == mtOCIManifest || mt == mtDockerV2 || (mt == "" && m.Config != nil):
			res := &Resolved{Manifest: digest, Header: a.header, ArtifactType: m.ArtifactType}
			if m.Config != nil {
				res.Blobs = append(res.Blobs, Blob{Digest: m.Config.Digest, Size: m.Config.Size, MediaType: m.Config.MediaType, URL: img.BlobURL(m.Config.Digest), Config: true})
				if res.ArtifactType == "" && m.Config.MediaType != "application/vnd.oci.image.config.v1+json" &&
					m.Config.MediaType != "application/vnd.docker.container.image.v1+json" {
					res.ArtifactType = m.Config.MediaType
				}
			}
			for _, l := range m.Layers {
				res.Blobs = append(res.Blobs, Blob{Digest: l.Digest, Size: l.Size, MediaType: l.MediaType, URL: img.BlobURL(l.Digest), Annotations: l.Annotations})
			}
			for _, b := range res.Blobs {
				if _, _, err := core.ParseDigest(b.Digest); err != nil {
					return nil, fmt.Errorf("%w: manifest %s lists blob digest %q", ErrNotFound, ref, b.Digest)
				}
			}
			return res, nil
		default:
			return nil, fmt.Errorf("%w: unsupported manifest media type %q", ErrNotFound, mt)
		}
	}
	return nil, fmt.Errorf("%w: index nesting too deep", ErrNotFound)
}

func pickPlatform(ds []descriptor, platform string) (descriptor, error) {
	if platform == "" {
		platform = "linux/amd64"
	}
	parts := strings.Split(platform, "/")
	for _, d := range ds {
		p := d.Platform
		if p == nil || p.OS != parts[0] || len(parts) > 1 && p.Architecture != parts[1] || len(parts) > 2 && p.Variant != parts[2] {
			continue
		}
		return d, nil
	}
	return descriptor{}, fmt.Errorf("%w %s", ErrNoPlatform, platform)
}

// auth carries the header that works for this repository, answering a
// challenge once.
type auth struct {
	r      *Resolver
	img    Image
	cred   Credentials
	header map[string]string
}

func (a *auth) client() *http.Client {
	if a.r.Client != nil {
		return a.r.Client
	}
	return http.DefaultClient
}

func (a *auth) get(ctx context.Context, u, accept string) (body []byte, mediaType, digest string, err error) {
	for attempt := 0; attempt < 2; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, "", "", fmt.Errorf("%w: %w", ErrBadReference, err)
		}
		req.Header.Set("Accept", accept)
		for k, v := range a.header {
			req.Header.Set(k, v)
		}
		resp, err := a.client().Do(req)
		if err != nil {
			return nil, "", "", fmt.Errorf("%w: %s: %w", ErrUnreachable, a.img.Registry, err)
		}
		b, rerr := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusOK:
			if rerr != nil {
				return nil, "", "", fmt.Errorf("%w: read manifest: %w", ErrUnreachable, rerr)
			}
			mt, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
			return b, strings.TrimSpace(mt), resp.Header.Get("Docker-Content-Digest"), nil
		case resp.StatusCode == http.StatusUnauthorized && attempt == 0:
			if err := a.answer(ctx, resp.Header.Get("WWW-Authenticate")); err != nil {
				return nil, "", "", err
			}
		case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
			return nil, "", "", fmt.Errorf("%w: %s answered %s for %s", ErrUnauthorized, a.img.Registry, resp.Status, a.img.Repo)
		case resp.StatusCode == http.StatusNotFound:
			return nil, "", "", fmt.Errorf("%w: %s/%s:%s: %s", ErrNotFound, a.img.Registry, a.img.Repo, a.img.Reference, registryError(b, resp.Status))
		default:
			return nil, "", "", fmt.Errorf("%w: %s answered %s", ErrUnreachable, a.img.Registry, resp.Status)
		}
	}
	return nil, "", "", fmt.Errorf("%w: %s still refuses after authenticating", ErrUnauthorized, a.img.Registry)
}

// registryError extracts the registry's error message from a JSON body.
func registryError(b []byte, status string) string {
	var e struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if json.Unmarshal(b, &e) == nil && len(e.Errors) > 0 {
		return e.Errors[0].Code + " (" + e.Errors[0].Message + ")"
	}
	return status
}

// answer handles a WWW-Authenticate challenge: Basic with the credentials,
// or Bearer by asking the token service (with the credentials, if any).
func (a *auth) answer(ctx context.Context, challenge string) error {
	scheme, params := parseChallenge(challenge)
	switch strings.ToLower(scheme) {
	case "basic":
		if a.cred.Username == "" {
			return fmt.Errorf("%w: %s requires credentials", ErrUnauthorized, a.img.Registry)
		}
		a.header["Authorization"] = "Basic " + base64.StdEncoding.EncodeToString([]byte(a.cred.Username+":"+a.cred.Password))
		return nil
	case "bearer":
		realm := params["realm"]
		if realm == "" {
			return fmt.Errorf("%w: bearer challenge without realm", ErrUnauthorized)
		}
		u, err := url.Parse(realm)
		if err != nil {
			return fmt.Errorf("%w: bearer realm %q: %w", ErrUnauthorized, realm, err)
		}
		q := u.Query()
		if s := params["service"]; s != "" {
			q.Set("service", s)
		}
		scope := params["scope"]
		if scope == "" {
			scope = "repository:" + a.img.Repo + ":pull"
		}
		q.Set("scope", scope)
		u.RawQuery = q.Encode()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrUnauthorized, err)
		}
		if a.cred.Username != "" {
			req.SetBasicAuth(a.cred.Username, a.cred.Password)
		}
		resp, err := a.client().Do(req)
		if err != nil {
			return fmt.Errorf("%w: token service %s: %w", ErrUnreachable, u.Host, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%w: token service %s answered %s", ErrUnauthorized, u.Host, resp.Status)
		}
		var tok struct {
			Token       string `json:"token"`
			AccessToken string `json:"access_token"`
		}
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&tok); err != nil {
			return fmt.Errorf("%w: token service answer: %w", ErrUnauthorized, err)
		}
		t := tok.Token
		if t == "" {
			t = tok.AccessToken
		}
		if t == "" {
			return fmt.Errorf("%w: token service gave no token", ErrUnauthorized)
		}
		a.header["Authorization"] = "Bearer " + t
		return nil
	default:
		return fmt.Errorf("%w: %s answered 401 with challenge %q", ErrUnauthorized, a.img.Registry, scheme)
	}
}

// parseChallenge splits `Bearer realm="…",service="…"` into scheme and params.
func parseChallenge(h string) (string, map[string]string) {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	params := map[string]string{}
	for rest != "" {
		rest = strings.TrimLeft(rest, " ,")
		k, v, ok := strings.Cut(rest, "=")
		if !ok {
			break
		}
		k = strings.ToLower(strings.TrimSpace(k))
		if strings.HasPrefix(v, `"`) {
			// quoted-string: a backslash quotes the next byte (RFC 9110 5.6.4)
			var b strings.Builder
			i := 1
			for i < len(v) && v[i] != '"' {
				if v[i] == '\\' && i+1 < len(v) {
					i++
				}
				b.WriteByte(v[i])
				i++
			}
			params[k], rest = b.String(), v[min(i+1, len(v)):]
		} else {
			val, r, _ := strings.Cut(v, ",")
			params[k], rest = strings.TrimSpace(val), r
		}
	}
	return scheme, params
}
