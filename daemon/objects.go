package daemon

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/source"
)

// statter is a source that can say which version of an object a URL names
// (the S3 source: HEAD gives the ETag).
type statter interface {
	Stat(ctx context.Context, req source.Request) (source.ObjectInfo, error)
}

// originSchemes are the URL schemes a client may ask this daemon to fetch.
var originSchemes = []string{"http", "https", "file", "s3"}

// checkOriginURL reports whether raw is an absolute URL of a scheme the
// daemon fetches, with what that scheme needs (a host, a bucket, a path).
func checkOriginURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("url %q: %w: %w", raw, core.ErrInvalid, err)
	}
	scheme := strings.ToLower(u.Scheme)
	switch {
	case !core.ContainsString(originSchemes, scheme):
		return nil, fmt.Errorf("url %q: want an absolute %s URL: %w", raw, strings.Join(originSchemes, ", "), core.ErrInvalid)
	case scheme == "file":
		return u, nil
	case u.Host == "":
		return nil, fmt.Errorf("url %q: no host: %w", raw, core.ErrInvalid)
	case scheme == "s3" && strings.TrimPrefix(u.Path, "/") == "":
		return nil, fmt.Errorf("url %q: want s3://bucket/key: %w", raw, core.ErrInvalid)
	}
	return u, nil
}

// objectVersion asks the origin which version of the object u names (an S3
// object's ETag) with the request's headers, public and private: a changed
// object then makes a new task, and fetches of the task send it as If-Match.
// It returns "" for URLs whose origin names no versions. A HEAD refused for
// the caller's credentials fails here, before any task exists.
// trusted is set for the daemon's own fetches (preheat), never for a local
// client's request (see source.Request.Trusted).
func (d *Daemon) objectVersion(ctx context.Context, u *url.URL, public map[string]string, private http.Header, trusted bool) (string, error) {
	if !strings.EqualFold(u.Scheme, "s3") {
		return "", nil
	}
	reg, ok := d.src.(*source.Registry)
	if !ok {
		return "", nil
	}
	s, ok := reg.Lookup("s3")
	if !ok {
		return "", nil
	}
	st, ok := s.(statter)
	if !ok {
		return "", nil
	}
	h := http.Header{}
	for k, v := range public {
		h.Set(k, v)
	}
	for k, vs := range private {
		h[k] = vs
	}
	info, err := st.Stat(ctx, source.Request{URL: u.String(), Header: h, Trusted: trusted})
	if err != nil {
		return "", fmt.Errorf("look up %s: %w", u.Redacted(), err)
	}
	return info.ETag, nil
}

// seedGranted reports whether the origin grants this daemon, with the
// credentials of its own configuration (source.Request.Trusted), the object
// a private task names in the version the task's ID stands for.
func (d *Daemon) seedGranted(ctx context.Context, spec *schedulerv1.TaskSpec) bool {
	u, err := url.Parse(spec.GetUrl())
	if err != nil || !strings.EqualFold(u.Scheme, "s3") {
		return false
	}
	v, err := d.objectVersion(ctx, u, spec.GetHeaders(), nil, true)
	return err == nil && v != "" && v == core.SpecVersion(spec.GetUrl(), spec.GetHeaders())
}
