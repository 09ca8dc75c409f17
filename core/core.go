// Package core holds the vocabulary every Damselfly component shares: task and
// peer identities, the piece layout of a content, digests and error kinds.
// It depends on the standard library (and BLAKE3) only; its only look at the
// machine is the host name and addresses a component advertises.
package core

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
)

// Error kinds. Components wrap them with %w; the edges (gRPC, HTTP, CLI exit
// codes) map them once.
var (
	ErrNotFound       = errors.New("not found")
	ErrInvalid        = errors.New("invalid argument")
	ErrDigestMismatch = errors.New("digest mismatch")
	ErrUnavailable    = errors.New("unavailable")
	ErrOrigin         = errors.New("origin error")
	// ErrDenied: the origin refused the request's credentials (HTTP 401
	// or 403, S3 AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch).
	ErrDenied = errors.New("access denied by the origin")
)

// TaskOptions are the parts of a request that, with the URL, name a task.
type TaskOptions struct {
	Tag         string
	Application string
	// FilteredQuery lists query parameters left out of the task ID (e.g.
	// signatures that change on every request for the same object).
	FilteredQuery []string
	// Version is the origin's name for this version of the content (an S3
	// object's ETag), when the origin gives one: a changed object is a new
	// task. Empty leaves the ID as the URL, tag and application make it.
	Version string
}

// TaskID derives the task ID of a URL: a hex sha256 over the URL with the
// filtered query parameters removed, the tag and the application. Two requests
// for the same content under different signatures thus share one task.
func TaskID(rawURL string, o TaskOptions) string {
	h := sha256.New()
	h.Write([]byte(FilterURL(rawURL, o.FilteredQuery)))
	h.Write([]byte{0})
	h.Write([]byte(o.Tag))
	h.Write([]byte{0})
	h.Write([]byte(o.Application))
	if o.Version != "" {
		h.Write([]byte("\x00version\x00"))
		h.Write([]byte(o.Version))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ContentTaskID is the task ID of content known by its digest ("sha256:<hex>"),
// such as a registry blob: the digest's hex itself. The same layer reached
// through two mirrors or two repositories is thus one task. URL task IDs are
// sha256 outputs too, so the two cannot collide short of a sha256 preimage.
func ContentTaskID(digest string) (string, error) {
	_, hexsum, err := ParseDigest(digest)
	if err != nil {
		return "", err
	}
	return hexsum, nil
}

// FilterURL removes the named query parameters and sorts the rest, so that the
// order of parameters does not change the task.
func FilterURL(rawURL string, filtered []string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.RawQuery == "" {
		return rawURL
	}
	q := u.Query()
	for _, f := range filtered {
		q.Del(f)
	}
	u.RawQuery = q.Encode() // Encode sorts by key
	return u.String()
}

// NewPeerID returns a fresh peer ID: the host name and a random suffix.
func NewPeerID(host string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

// HostID returns a stable host identifier for ip and hostname.
func HostID(hostname, ip string) string {
	return hostname + "-" + ip
}

// LocalIPv4 returns the first non-loopback IPv4 address of an up interface,
// or 127.0.0.1: the address a component advertises when none is configured.
func LocalIPv4() string {
	ifs, err := net.Interfaces()
	if err == nil {
		for _, i := range ifs {
			if i.Flags&net.FlagUp == 0 || i.Flags&net.FlagLoopback != 0 {
				continue
			}
			addrs, _ := i.Addrs()
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
					return n.IP.String()
				}
			}
		}
	}
	return "127.0.0.1"
}

// Hostname returns the machine's host name, or "localhost".
func Hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}

// ParseDigest splits "algo:hex" and checks the hex length for sha256.
func ParseDigest(d string) (algo, hexsum string, err error) {
	algo, hexsum, ok := strings.Cut(d, ":")
	if !ok {
		return "", "", fmt.Errorf("digest %q: want algo:hex: %w", d, ErrInvalid)
	}
	algo = strings.ToLower(algo)
	hexsum = strings.ToLower(hexsum)
	switch algo {
	case "sha256":
		if len(hexsum) != 64 {
			return "", "", fmt.Errorf("digest %q: sha256 needs 64 hex digits: %w", d, ErrInvalid)
		}
	default:
		return "", "", fmt.Errorf("digest %q: unsupported algorithm %q (want sha256): %w", d, algo, ErrInvalid)
	}
	if _, err := hex.DecodeString(hexsum); err != nil {
		return "", "", fmt.Errorf("digest %q: %w", d, ErrInvalid)
	}
	return algo, hexsum, nil
}

// ContainsString reports whether s is in list.
func ContainsString(list []string, s string) bool { return slices.Contains(list, s) }

// ErrNoSpace: the cache's file system is full. The daemon keeps running; the
// download fails cleanly (or goes straight to the origin) and works again
// once space is freed.
var ErrNoSpace = errors.New("no space left in the cache")

// CacheScheme is the URL scheme of dfcache entries: content a user imported
// into the swarm under an ID; it has no origin.
const CacheScheme = "dfcache"

// CacheURL names the dfcache entry id.
func CacheURL(id string) string { return CacheScheme + "://" + id }

// CacheTaskID is the task ID of the dfcache entry id under tag, derived like
// a URL's task ID from CacheURL(id), so it cannot collide with a download.
func CacheTaskID(id, tag string) string {
	return TaskID(CacheURL(id), TaskOptions{Tag: tag})
}

// ParseCacheURL returns the ID of a dfcache URL, and false for any other URL.
func ParseCacheURL(u string) (string, bool) {
	id, ok := strings.CutPrefix(u, CacheScheme+"://")
	if !ok || ValidateCacheID(id) != nil {
		return "", false
	}
	return id, true
}

// ValidateCacheID checks a dfcache ID: 1 to 255 bytes of letters, digits and
// . _ - : / @ +, starting with a letter or digit.
func ValidateCacheID(id string) error {
	if id == "" || len(id) > 255 {
		return fmt.Errorf("cache id %q: want 1 to 255 characters: %w", id, ErrInvalid)
	}
	for i, r := range id {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		if !ok && i > 0 {
			ok = strings.ContainsRune("._-:/@+", r)
		}
		if !ok {
			return fmt.Errorf("cache id %q: character %q not allowed (letters, digits and . _ - : / @ +, starting with a letter or digit): %w", id, r, ErrInvalid)
		}
	}
	return nil
}
