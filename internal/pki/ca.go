// Package pki gives the components their identities on the wire: a small
// certificate authority (the manager's, or one made with `damselfly certs`),
// certificates carrying an identity URI SAN (damselfly://<role>/<host-id>,
// see internal/identity), the TLS configurations of gRPC servers and clients
// (mutual TLS), and joining a cluster with a bootstrap token.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/damselfly-io/damselfly/internal/identity"
)

// File names inside a CA directory and a component's TLS directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
	CertFile   = "tls.crt"
	KeyFile    = "tls.key"
	// TrustFile is the CA bundle a component trusts, beside its key pair.
	TrustFile = "ca.crt"
)

// DefaultCertTTL is the lifetime of certificates the CA issues.
const DefaultCertTTL = 24 * time.Hour

// caTTL is the lifetime of a new CA certificate.
const caTTL = 10 * 365 * 24 * time.Hour

// CA signs component certificates.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     crypto.Signer
}

// NewKey returns a new private key for a component (ECDSA P-256).
func NewKey() (crypto.Signer, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return k, nil
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
}

// LoadOrCreateCA loads the CA in dir, creating it (dir 0700, key 0600) when
// dir holds none. created reports a new CA.
func LoadOrCreateCA(dir, name string) (ca *CA, created bool, err error) {
	if _, err := os.Stat(filepath.Join(dir, CAKeyFile)); err == nil {
		ca, err := LoadCA(dir)
		return ca, false, err
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("look for a CA in %s: %w", dir, err)
	}
	ca, err = NewCA(name)
	if err != nil {
		return nil, false, err
	}
	if err := ca.Save(dir); err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

// NewCA makes a self-signed CA.
func NewCA(name string) (*CA, error) {
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, fmt.Errorf("ca serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(caTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create ca certificate: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse ca certificate: %w", err)
	}
	return &CA{Cert: c, CertPEM: pemCert(der), key: key}, nil
}

// Save writes the CA to dir: ca.crt (0644) and ca.key (0600).
func (ca *CA) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create ca dir: %w", err)
	}
	kp, err := pemKey(ca.key)
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, CAKeyFile), kp, 0o600); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, CACertFile), ca.CertPEM, 0o644)
}

// LoadCA reads the CA in dir.
func LoadCA(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("read ca certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("read ca key: %w", err)
	}
	certs, err := parseCerts(certPEM)
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("ca certificate %s: no certificate (%v)", filepath.Join(dir, CACertFile), err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("ca key %s: %w", filepath.Join(dir, CAKeyFile), err)
	}
	if !certs[0].IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", filepath.Join(dir, CACertFile))
	}
	return &CA{Cert: certs[0], CertPEM: certPEM, key: key}, nil
}

// Hash is the CA's pin, "sha256:<hex>" of its SubjectPublicKeyInfo: joiners
// check the manager's CA against it.
func (ca *CA) Hash() string { return SPKIHash(ca.Cert) }

// SPKIHash is "sha256:<hex>" of c's SubjectPublicKeyInfo.
func SPKIHash(c *x509.Certificate) string {
	h := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(h[:])
}

// Issue signs a certificate for pub carrying id (and, for servers dialled by
// address, the IPs and DNS names in sans) valid for ttl. It returns PEM.
func (ca *CA) Issue(pub crypto.PublicKey, id identity.Identity, ttl time.Duration, sans ...string) ([]byte, error) {
	if !id.Role.Valid() || id.HostID == "" || strings.Contains(id.HostID, "/") {
		return nil, fmt.Errorf("issue certificate: bad identity %q/%q", id.Role, id.HostID)
	}
	if ttl <= 0 {
		ttl = DefaultCertTTL
	}
	sn, err := serial()
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	now := time.Now()
	// Backdated a little for clocks that lag, never by much of a short life.
	backdate := min(time.Minute, ttl/10)
	notAfter := now.Add(ttl)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: string(id.Role) + "/" + id.HostID},
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.URI()},
	}
	for _, s := range sans {
		if ip := net.ParseIP(s); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if s != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, s)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", id.URI(), err)
	}
	return pemCert(der), nil
}

// IssueFiles makes a key and a certificate for id and writes tls.key (0600),
// tls.crt and ca.crt to dir (0700).
func (ca *CA) IssueFiles(dir string, id identity.Identity, ttl time.Duration, sans ...string) error {
	key, err := NewKey()
	if err != nil {
		return err
	}
	cert, err := ca.Issue(key.Public(), id, ttl, sans...)
	if err != nil {
		return err
	}
	return SaveKeyPair(dir, cert, key, ca.CertPEM)
}

// SaveKeyPair writes a component's certificate, key and trusted CA bundle to
// dir (dir 0700, every file 0600).
func SaveKeyPair(dir string, certPEM []byte, key crypto.Signer, caPEM []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create tls dir: %w", err)
	}
	kp, err := pemKey(key)
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, KeyFile), kp, 0o600); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, CertFile), certPEM, 0o600); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, TrustFile), caPEM, 0o600)
}

// writeFile replaces path atomically with b at mode perm.
func writeFile(path string, b []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp, perm); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// KeyPEM encodes a private key as PEM (PKCS#8).
func KeyPEM(k crypto.Signer) ([]byte, error) { return pemKey(k) }

func pemKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func parseKey(b []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM private key")
		}
		var (
			k   any
			err error
		)
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parse private key: %w", err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, errors.New("private key cannot sign")
		}
		return s, nil
	}
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		out = append(out, c)
	}
}
