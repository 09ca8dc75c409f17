package oci

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/damselfly-io/damselfly/test/netns"
)

// Auth is how a registry authenticates clients.
type Auth int

// Registry auth modes.
const (
	AuthNone  Auth = iota
	AuthBasic      // htpasswd (bcrypt)
	AuthToken      // bearer tokens from a TokenServer
)

func (a Auth) String() string {
	return [...]string{"none", "basic", "token"}[a]
}

// RegistryConfig says how to run docker-registry.
type RegistryConfig struct {
	Addr string // host:port to listen on
	Dir  string // storage, config and logs
	Auth Auth
	// User and Password: the one account (basic and token modes).
	User, Password string
	// Token is the realm for AuthToken; it must be running already.
	Token *TokenServer
}

// Registry is a docker-registry process.
type Registry struct {
	RegistryConfig
	Storage string // filesystem storage root
	proc    *Proc
}

// RegistryCommand writes docker-registry's configuration (and htpasswd
// file) under cfg.Dir and returns the command line that serves it, for
// callers that start processes their own way (the swarm harness).
func RegistryCommand(ctx context.Context, cfg RegistryConfig) ([]string, string, error) {
	storage := filepath.Join(cfg.Dir, "storage")
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return nil, "", fmt.Errorf("registry config: %w", err)
	}
	var auth string
	switch cfg.Auth {
	case AuthNone:
	case AuthBasic:
		out, err := Output(ctx, "", "htpasswd", "-Bbn", cfg.User, cfg.Password)
		if err != nil {
			return nil, "", fmt.Errorf("registry config: %w", err)
		}
		pw := filepath.Join(cfg.Dir, "htpasswd")
		if err := os.WriteFile(pw, out, 0o644); err != nil {
			return nil, "", fmt.Errorf("registry config: %w", err)
		}
		auth = fmt.Sprintf("auth:\n  htpasswd:\n    realm: damselfly-test\n    path: %s\n", pw)
	case AuthToken:
		if cfg.Token == nil {
			return nil, "", fmt.Errorf("registry config: token auth without a token server")
		}
		bundle := filepath.Join(cfg.Dir, "token-ca.pem")
		if err := os.WriteFile(bundle, cfg.Token.CertPEM(), 0o644); err != nil {
			return nil, "", fmt.Errorf("registry config: %w", err)
		}
		auth = fmt.Sprintf("auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n",
			cfg.Token.Realm(), cfg.Token.Service, cfg.Token.Issuer, bundle)
	}
	// The access log (combined format, with response body sizes) goes to
	// stdout with the rest: ReadAccessLog picks its lines out.
	conf := fmt.Sprintf(`version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  headers:
    X-Content-Type-Options: [nosniff]
%s`, storage, cfg.Addr, auth)
	path := filepath.Join(cfg.Dir, "config.yml")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, "", fmt.Errorf("registry config: %w", err)
	}
	return []string{"docker-registry", "serve", path}, storage, nil
}

// StartRegistry runs docker-registry in ns and waits until /v2/ answers.
func StartRegistry(ctx context.Context, ns string, cfg RegistryConfig) (*Registry, error) {
	argv, storage, err := RegistryCommand(ctx, cfg)
	if err != nil {
		return nil, err
	}
	p, err := Start(ns, "registry", filepath.Join(cfg.Dir, "registry.log"), argv...)
	if err != nil {
		return nil, err
	}
	r := &Registry{RegistryConfig: cfg, Storage: storage, proc: p}
	if err := WaitRegistry(ctx, p, netns.Dialer(ns), cfg.Addr); err != nil {
		p.Stop(0)
		return nil, err
	}
	return r, nil
}

// WaitRegistry polls http://addr/v2/, dialled with dial, until it answers
// 200 or 401 (p, if set, failing fast when it exits).
func WaitRegistry(ctx context.Context, p *Proc, dial func(ctx context.Context, network, addr string) (net.Conn, error), addr string) error {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, DialContext: dial, DisableKeepAlives: true}}
	return WaitFor(ctx, p, 30*time.Second, "registry on "+addr, func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/", nil)
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
			return fmt.Errorf("/v2/: %s", resp.Status)
		}
		return nil
	})
}

// Stop ends the registry (by its PID).
func (r *Registry) Stop() { r.proc.Stop(3 * time.Second) }

// Log is the registry's log file (its access log is in it).
func (r *Registry) Log() string { return r.proc.Log }

// BlobData is where the registry stores blob d's bytes.
func (r *Registry) BlobData(d Descriptor) string {
	return BlobDataPath(r.Storage, d.Digest)
}

// BlobDataPath is where docker-registry's filesystem driver under storage
// keeps the bytes of digest ("sha256:<hex>").
func BlobDataPath(storage, digest string) string {
	hexsum := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(storage, "docker", "registry", "v2", "blobs", "sha256", hexsum[:2], hexsum, "data")
}

// Ref is repo:tag on this registry.
func (r *Registry) Ref(repo, tag string) string { return r.Addr + "/" + repo + ":" + tag }

// Creds is "user:password" for clients ("" without auth).
func (r *Registry) Creds() string {
	if r.Auth == AuthNone {
		return ""
	}
	return r.User + ":" + r.Password
}

// Access is one line of the registry's access log.
type Access struct {
	Remote    string
	Method    string
	Path      string // with the query
	Status    int
	Bytes     int64 // response body bytes sent
	UserAgent string
}

// IsBlob says whether the request was for a blob by digest.
func (a Access) IsBlob() bool { return strings.Contains(a.Path, "/blobs/sha256:") }

// IsManifest says whether the request was for a manifest.
func (a Access) IsManifest() bool { return strings.Contains(a.Path, "/manifests/") }

// combined log format: remote - user [time] "METHOD path proto" status bytes "referer" "agent"
var accessLine = regexp.MustCompile(`^(\S+) \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-)(?: "[^"]*" "([^"]*)")?`)

// ReadAccessLog parses the access-log lines of a registry log file; other
// lines (the registry's own logging) are skipped.
func ReadAccessLog(path string) ([]Access, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read access log: %w", err)
	}
	defer f.Close()
	var out []Access
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := accessLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		a := Access{Remote: m[1], Method: m[2], Path: m[3], UserAgent: m[6]}
		a.Status, _ = strconv.Atoi(m[4])
		a.Bytes, _ = strconv.ParseInt(m[5], 10, 64) // "-" is 0
		out = append(out, a)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read access log: %w", err)
	}
	return out, nil
}

// AccessLog is what the registry has logged so far.
func (r *Registry) AccessLog() ([]Access, error) { return ReadAccessLog(r.proc.Log) }

// Served sums an access log: body bytes of blob responses, of manifest
// responses, and of everything else, with request counts.
type Served struct {
	BlobBytes, ManifestBytes, OtherBytes int64
	BlobGets, ManifestGets, Requests     int
}

// Total is every body byte sent.
func (s Served) Total() int64 { return s.BlobBytes + s.ManifestBytes + s.OtherBytes }

// Sum adds up an access log.
func Sum(log []Access) Served {
	var s Served
	for _, a := range log {
		s.Requests++
		switch {
		case a.IsBlob():
			s.BlobBytes += a.Bytes
			if a.Method == http.MethodGet {
				s.BlobGets++
			}
		case a.IsManifest():
			s.ManifestBytes += a.Bytes
			if a.Method == http.MethodGet {
				s.ManifestGets++
			}
		default:
			s.OtherBytes += a.Bytes
		}
	}
	return s
}
