package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/damselfly-io/damselfly/internal/identity"
)

// Creds is a component's certificate, its key and the CA bundle it trusts.
// The certificate can be replaced while connections use it (renewal); new
// handshakes take the new one.
type Creds struct {
	mu      sync.RWMutex
	cert    *tls.Certificate
	leaf    *x509.Certificate
	id      identity.Identity
	roots   *x509.CertPool
	caPEM   []byte
	certPEM []byte
	keyPEM  []byte
	files   [3]string // cert, key, ca when loaded from files
	mtime   [3]time.Time
}

// NewCreds builds credentials from PEM: the certificate (chain), its key and
// the CA bundle that signs peers. The certificate must carry a damselfly
// identity.
func NewCreds(certPEM, keyPEM, caPEM []byte) (*Creds, error) {
	c := &Creds{}
	if err := c.Set(certPEM, keyPEM, caPEM); err != nil {
		return nil, err
	}
	return c, nil
}

// LoadFiles reads credentials from PEM files.
func LoadFiles(certFile, keyFile, caFile string) (*Creds, error) {
	c := &Creds{files: [3]string{certFile, keyFile, caFile}}
	if err := c.reloadFiles(); err != nil {
		return nil, err
	}
	return c, nil
}

// LoadDir reads the credentials a TLS directory holds (tls.crt, tls.key,
// ca.crt), as written by SaveKeyPair or `damselfly certs issue`.
func LoadDir(dir string) (*Creds, error) {
	return LoadFiles(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile), filepath.Join(dir, TrustFile))
}

func (c *Creds) reloadFiles() error {
	var b [3][]byte
	var mt [3]time.Time
	for i, f := range c.files {
		st, err := os.Stat(f)
		if err != nil {
			return fmt.Errorf("tls file: %w", err)
		}
		mt[i] = st.ModTime()
		if b[i], err = os.ReadFile(f); err != nil {
			return fmt.Errorf("tls file: %w", err)
		}
	}
	if err := c.Set(b[0], b[1], b[2]); err != nil {
		return fmt.Errorf("tls files %s, %s, %s: %w", c.files[0], c.files[1], c.files[2], err)
	}
	c.mu.Lock()
	c.mtime = mt
	c.mu.Unlock()
	return nil
}

// ReloadIfChanged re-reads credentials loaded from files when a file's
// modification time changed (a certificate rotated by an operator or by
// cert-manager). It reports whether it reloaded.
func (c *Creds) ReloadIfChanged() (bool, error) {
	c.mu.RLock()
	files, mt := c.files, c.mtime
	c.mu.RUnlock()
	if files[0] == "" {
		return false, nil
	}
	for i, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return false, fmt.Errorf("tls file: %w", err)
		}
		if !st.ModTime().Equal(mt[i]) {
			return true, c.reloadFiles()
		}
	}
	return false, nil
}

// Set replaces the certificate, key and CA bundle.
func (c *Creds) Set(certPEM, keyPEM, caPEM []byte) error {
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("certificate and key: %w", err)
	}
	leaf, err := x509.ParseCertificate(kp.Certificate[0])
	if err != nil {
		return fmt.Errorf("parse certificate: %w", err)
	}
	kp.Leaf = leaf
	id, err := identity.FromCert(leaf)
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	cas, err := parseCerts(caPEM)
	if err != nil {
		return fmt.Errorf("ca bundle: %w", err)
	}
	if len(cas) == 0 {
		return errors.New("ca bundle holds no certificate")
	}
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: intermediates(kp.Certificate), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("certificate %s is not signed by the configured CA: %w", id.URI(), err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cert, c.leaf, c.id, c.roots = &kp, leaf, id, pool
	c.caPEM, c.certPEM, c.keyPEM = slices.Clone(caPEM), slices.Clone(certPEM), slices.Clone(keyPEM)
	return nil
}

func intermediates(chain [][]byte) *x509.CertPool {
	p := x509.NewCertPool()
	for _, der := range chain[1:] {
		if ic, err := x509.ParseCertificate(der); err == nil {
			p.AddCert(ic)
		}
	}
	return p
}

// Identity is the identity this component's certificate carries.
func (c *Creds) Identity() identity.Identity {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.id
}

// Leaf is the current certificate.
func (c *Creds) Leaf() *x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.leaf
}

// CAPEM is the trusted CA bundle.
func (c *Creds) CAPEM() []byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.caPEM
}

func (c *Creds) current() (*tls.Certificate, *x509.CertPool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cert, c.roots
}

// ServerConfig is a TLS server configuration presenting this certificate and
// verifying clients' certificates against the CA (clientAuth says whether a
// client certificate is required).
func (c *Creds) ServerConfig(clientAuth tls.ClientAuthType) *tls.Config {
	_, roots := c.current()
	base := &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: clientAuth,
		ClientCAs:  roots,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			cert, _ := c.current()
			return cert, nil
		},
	}
	// A renewed CA bundle must reach new handshakes too.
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cfg := base.Clone()
		cfg.GetConfigForClient = nil
		_, cfg.ClientCAs = c.current()
		return cfg, nil
	}
	return base
}

// ClientConfig is a TLS client configuration presenting this certificate and
// accepting a server whose certificate the CA signed and whose identity has
// one of the roles in expect (any role when expect is empty). Servers are
// dialled by address, so their identity, not a host name, is what is checked.
func (c *Creds) ClientConfig(expect ...identity.Role) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, _ := c.current()
			return cert, nil
		},
		// The chain and the identity are verified below, against the CA
		// rather than a host name.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyPeerCertificate
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, roots := c.current()
			_, err := verifyServer(raw, roots, expect)
			return err
		},
	}
}

// verifyServer checks a server's chain against roots and its identity's role.
func verifyServer(raw [][]byte, roots *x509.CertPool, expect []identity.Role) (identity.Identity, error) {
	if len(raw) == 0 {
		return identity.Identity{}, errors.New("server sent no certificate")
	}
	leaf, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return identity.Identity{}, fmt.Errorf("server certificate: %w", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates(raw), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return identity.Identity{}, fmt.Errorf("server certificate: %w", err)
	}
	id, err := identity.FromCert(leaf)
	if err != nil {
		return identity.Identity{}, fmt.Errorf("server certificate: %w", err)
	}
	if len(expect) > 0 && !slices.Contains(expect, id.Role) {
		return identity.Identity{}, fmt.Errorf("server is %s, want role %v", id.URI(), expect)
	}
	return id, nil
}

// ServerOptions are the gRPC server options of a component's TCP server:
// mutual TLS requiring a client certificate from the CA plus the identity
// interceptors, or, with c nil (the explicit insecure mode), plaintext with
// interceptors that trust callers as they claim.
func ServerOptions(c *Creds) []grpc.ServerOption {
	return serverOptions(c, tls.RequireAndVerifyClientCert)
}

// ServerOptionsOptionalClientCert is ServerOptions for a server that also
// answers callers without a certificate (the manager, whose certificate RPC
// serves components that have none yet); handlers must then check
// identity.Allows.
func ServerOptionsOptionalClientCert(c *Creds) []grpc.ServerOption {
	return serverOptions(c, tls.VerifyClientCertIfGiven)
}

func serverOptions(c *Creds, auth tls.ClientAuthType) []grpc.ServerOption {
	insec := c == nil
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(identity.UnaryServerInterceptor(insec)),
		grpc.ChainStreamInterceptor(identity.StreamServerInterceptor(insec)),
	}
	if c != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(c.ServerConfig(auth))))
	}
	return opts
}

// DialOption is the transport of a component's gRPC client: mutual TLS
// expecting a server of one of the roles, or plaintext when c is nil.
func DialOption(c *Creds, expect ...identity.Role) grpc.DialOption {
	if c == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(c.ClientConfig(expect...)))
}
