package pki

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/managerv1"
	"github.com/damselfly-io/damselfly/internal/identity"
)

// PEM returns the certificate, key and CA bundle as PEM.
func (c *Creds) PEM() (cert, key, ca []byte) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.certPEM, c.keyPEM, c.caPEM
}

// RenewAfter is how long until leaf should be renewed: when two thirds of
// its life have passed (0 when that time is past).
func RenewAfter(leaf *x509.Certificate, now time.Time) time.Duration {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	at := leaf.NotAfter.Add(-life / 3)
	return max(0, at.Sub(now))
}

// WatchFiles re-reads file-based credentials when the files change (an
// operator or cert-manager rotated them) until ctx ends.
func WatchFiles(ctx context.Context, c *Creds, log *slog.Logger) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if ok, err := c.ReloadIfChanged(); err != nil {
			log.Error("reload TLS files; keeping the current certificate", "err", err)
		} else if ok {
			log.Info("TLS files reloaded", "identity", c.Identity().URI().String(), "not_after", c.Leaf().NotAfter)
		}
	}
}

// Join gets a component's certificate from the manager's CA with the
// bootstrap token and keeps it renewed. The key is made here and never
// leaves the component; the certificate is kept in Dir (0600).
type Join struct {
	// Manager is the manager's gRPC address.
	Manager string
	// Token is the bootstrap token.
	Token string
	// CAHash pins the manager's CA (sha256 of its public key); CAPEM, a CA
	// bundle, may pin it instead. One of them is required: the first
	// contact never trusts whatever CA the network presents.
	CAHash string
	CAPEM  []byte
	// Role and HostID are the identity asked for.
	Role   identity.Role
	HostID string
	// Dir keeps tls.crt, tls.key and ca.crt between starts.
	Dir string
	Log *slog.Logger
}

// Creds returns the certificate kept in Dir if it is for the same identity
// and not yet due for renewal, else a new one from the manager.
func (j Join) Creds(ctx context.Context) (*Creds, error) {
	if j.CAHash == "" && len(j.CAPEM) == 0 {
		return nil, errors.New("tls: joining with a bootstrap token needs the manager's CA pinned: give --manager-ca-hash sha256:... (printed by the manager) or --tls-ca with its CA certificate")
	}
	if c, err := LoadDir(j.Dir); err == nil {
		id := c.Identity()
		if id.Role == j.Role && id.HostID == j.HostID && RenewAfter(c.Leaf(), time.Now()) > 0 && j.pinned(c) {
			j.Log.Info("using the certificate kept from an earlier join", "identity", id.URI().String(), "not_after", c.Leaf().NotAfter)
			return c, nil
		}
	}
	// The manager may be starting too: retry while it is unreachable, but
	// not when it answered and refused, or presented the wrong CA.
	deadline := time.Now().Add(joinPatience)
	for {
		c, err := j.request(ctx, nil)
		var u unreachable
		if err == nil || !errors.As(err, &u) || time.Now().After(deadline) {
			return c, err
		}
		j.Log.Warn("manager unreachable; retrying the join", "manager", j.Manager, "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// joinPatience is how long a start waits for an unreachable manager.
const joinPatience = 30 * time.Second

// unreachable marks a request that reached no manager.
type unreachable struct{ error }

func (u unreachable) Unwrap() error { return u.error }

// pinned reports whether the CA a stored certificate trusts is the pinned one.
func (j Join) pinned(c *Creds) bool {
	cas, _ := parseCerts(c.CAPEM())
	for _, ca := range cas {
		if j.CAHash != "" && SPKIHash(ca) == j.CAHash {
			return true
		}
		if len(j.CAPEM) > 0 {
			pins, _ := parseCerts(j.CAPEM)
			for _, p := range pins {
				if p.Equal(ca) {
					return true
				}
			}
		}
	}
	return false
}

// request asks the manager for a certificate: with the token over
// server-authenticated TLS pinned to the CA (cur nil), or renewing over
// mutual TLS with the current certificate.
func (j Join) request(ctx context.Context, cur *Creds) (*Creds, error) {
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: string(j.Role) + "/" + j.HostID}}, key)
	if err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	var tc *tls.Config
	req := &managerv1.IssueCertificateRequest{Role: string(j.Role), HostId: j.HostID, Csr: csr}
	if cur != nil {
		tc = cur.ClientConfig(identity.RoleManager)
	} else {
		tc = j.PinnedConfig()
		req.Token = j.Token
	}
	// A server that fails verification is a wrong manager, not a slow one.
	var verifyErr atomic.Pointer[error]
	verify := tc.VerifyPeerCertificate
	tc.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		err := verify(raw, chains)
		if err != nil {
			verifyErr.Store(&err)
		}
		return err
	}
	conn, err := grpc.NewClient(j.Manager, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		return nil, fmt.Errorf("manager client for %s: %w", j.Manager, err)
	}
	defer conn.Close()
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	resp, err := managerv1.NewManagerClient(conn).IssueCertificate(rctx, req)
	if err != nil {
		if ve := verifyErr.Load(); ve != nil {
			return nil, fmt.Errorf("tls: the manager at %s is not the one expected: %w", j.Manager, *ve)
		}
		if status.Code(err) == codes.Unavailable {
			return nil, unreachable{fmt.Errorf("tls: get a certificate from the manager at %s: %w", j.Manager, err)}
		}
		if s, ok := status.FromError(err); ok && (s.Code() == codes.Unauthenticated || s.Code() == codes.PermissionDenied) {
			return nil, fmt.Errorf("tls: the manager at %s refused to issue a certificate for %s: %s", j.Manager, (identity.Identity{Role: j.Role, HostID: j.HostID}).URI(), s.Message())
		}
		return nil, fmt.Errorf("tls: get a certificate from the manager at %s: %w", j.Manager, err)
	}
	keyPEM, err := KeyPEM(key)
	if err != nil {
		return nil, err
	}
	c, err := NewCreds(resp.GetCertificate(), keyPEM, resp.GetCa())
	if err != nil {
		return nil, fmt.Errorf("tls: certificate from the manager: %w", err)
	}
	if id := c.Identity(); id.Role != j.Role || id.HostID != j.HostID {
		return nil, fmt.Errorf("tls: the manager issued %s, asked for %s/%s", id.URI(), j.Role, j.HostID)
	}
	if !j.pinned(c) {
		return nil, errors.New("tls: the manager's CA bundle does not hold the pinned CA")
	}
	if err := SaveKeyPair(j.Dir, resp.GetCertificate(), key, resp.GetCa()); err != nil {
		return nil, err
	}
	j.Log.Info("certificate issued by the manager", "identity", c.Identity().URI().String(), "not_after", c.Leaf().NotAfter)
	return c, nil
}

// PinnedConfig is the client TLS of the first contact: no client
// certificate; the manager's chain must reach the pinned CA and name a
// manager.
func (j Join) PinnedConfig() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, //nolint:gosec // verified against the pin below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			roots := x509.NewCertPool()
			if len(j.CAPEM) > 0 {
				pins, _ := parseCerts(j.CAPEM)
				for _, p := range pins {
					roots.AddCert(p)
				}
			}
			if j.CAHash != "" {
				found := false
				for _, der := range raw {
					if c, err := x509.ParseCertificate(der); err == nil && c.IsCA && SPKIHash(c) == j.CAHash {
						roots.AddCert(c)
						found = true
					}
				}
				if !found && len(j.CAPEM) == 0 {
					return fmt.Errorf("the manager's CA does not match --manager-ca-hash %s", j.CAHash)
				}
			}
			_, err := verifyServer(raw, roots, []identity.Role{identity.RoleManager})
			return err
		},
	}
}

// Maintain renews c before it expires until ctx ends (retrying every few
// seconds on failure), saving each new certificate in Dir.
func (j Join) Maintain(ctx context.Context, c *Creds) {
	const retry = 5 * time.Second
	for {
		wait := RenewAfter(c.Leaf(), time.Now())
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		fresh, err := j.request(ctx, c)
		if err != nil && ctx.Err() == nil {
			// An expired certificate cannot renew itself: join again.
			if time.Now().After(c.Leaf().NotAfter) {
				fresh, err = j.request(ctx, nil)
			}
		}
		if err != nil {
			if ctx.Err() == nil {
				j.Log.Error("renew the certificate; retrying", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(retry):
			}
			continue
		}
		if err := c.Set(fresh.PEM()); err != nil {
			j.Log.Error("renew the certificate", "err", err)
			continue
		}
		j.Log.Info("certificate renewed", "identity", c.Identity().URI().String(), "not_after", c.Leaf().NotAfter)
	}
}

// TokenJoin is the Join a component's TLS config describes.
func (c Config) TokenJoin(manager string, role identity.Role, hostID, dataDir string, log *slog.Logger) (Join, error) {
	tok, err := c.Token()
	if err != nil {
		return Join{}, err
	}
	if manager == "" {
		return Join{}, errors.New("tls: a bootstrap token needs --manager (the manager's CA issues the certificate)")
	}
	j := Join{Manager: manager, Token: tok, CAHash: c.ManagerCAHash, Role: role, HostID: hostID, Dir: filepath.Join(dataDir, "tls"), Log: log}
	if c.CA != "" {
		if j.CAPEM, err = os.ReadFile(c.CA); err != nil {
			return Join{}, fmt.Errorf("tls ca: %w", err)
		}
	}
	return j, nil
}
