package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errOriginDenied: the origin refused the caller's request (401, 403, 404).
var errOriginDenied = errors.New("origin refused access")

// checkOrigin asks the origin whether it grants rawURL to a request with
// header h (the caller's own credentials): a HEAD, or a one-byte ranged GET
// where HEAD is not allowed. It returns nil when the origin grants it,
// errOriginDenied (wrapped, with the status) when it refuses, and another
// error when it could not tell (unreachable, 5xx).
func (d *Daemon) checkOrigin(ctx context.Context, rawURL string, h http.Header) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("check access to %s: %w", rawURL, err)
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.OriginTimeout.D())
	defer cancel()
	hc := d.httpSrc.Client(u.Host)
	hc.CheckRedirect = nil // follow, as a fetch would
	try := func(method string) (int, error) {
		req, err := http.NewRequestWithContext(ctx, method, rawURL, nil)
		if err != nil {
			return 0, err
		}
		req.Header = h.Clone()
		req.Header.Del("Range")
		if method == http.MethodGet {
			req.Header.Set("Range", "bytes=0-0")
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	code, err := try(http.MethodHead)
	if err == nil && (code == http.StatusMethodNotAllowed || code == http.StatusNotImplemented) {
		code, err = try(http.MethodGet)
	}
	switch {
	case err != nil:
		return fmt.Errorf("check access to %s: %w", redactURL(u), err)
	case code >= 200 && code < 300:
		return nil
	case code == http.StatusUnauthorized, code == http.StatusForbidden, code == http.StatusNotFound:
		return fmt.Errorf("check access to %s: status %d: %w", redactURL(u), code, errOriginDenied)
	case code == http.StatusRequestedRangeNotSatisfiable:
		return nil // an empty content, granted
	}
	return fmt.Errorf("check access to %s: status %d", redactURL(u), code)
}

// localAccess decides, for a local request of a task, whether the caller may
// get it and whether this daemon may take part in the task's swarm as one
// the origin granted it (verified). A request with credentials, or for a
// task held as private, is checked against the origin with the caller's own
// headers: a refusal is PermissionDenied; an origin that cannot be asked
// refuses a private task held in the cache (Unavailable) and otherwise
// leaves the task unverified (the swarm then gives no parents for a private
// task, and the origin decides).
func (d *Daemon) localAccess(ctx context.Context, id, rawURL string, h http.Header, withCredentials bool) (verified bool, err error) {
	heldPrivate := false
	if t, ok := d.store.Get(id); ok && t.Private() {
		heldPrivate = true
	}
	if !withCredentials && !heldPrivate {
		return false, nil
	}
	switch cerr := d.checkOrigin(ctx, rawURL, h); {
	case cerr == nil:
		return true, nil
	case errors.Is(cerr, errOriginDenied):
		return false, status.Errorf(codes.PermissionDenied, "private content: the origin refused this request's credentials (pass them with -H, e.g. Authorization): %v", cerr)
	case heldPrivate:
		return false, status.Errorf(codes.Unavailable, "private content: cannot ask the origin whether this request may read it: %v", cerr)
	default:
		d.log.Info("origin access check failed; not taking part in the swarm as verified", "task_id", id, "err", cerr)
		return false, nil
	}
}
