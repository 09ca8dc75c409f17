package manager

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/managerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/identity"
	"github.com/damselfly-io/damselfly/internal/pki"
)

// tokenFile holds the bootstrap token the manager made on first start.
const tokenFile = "bootstrap-token"

// setupTLS loads or creates the CA, the manager's own certificate and the
// bootstrap token. Insecure mode has none of them.
func (m *Manager) setupTLS() error {
	c := m.cfg.TLS
	if c.Insecure {
		m.log.Warn("insecure mode: the manager's gRPC is plaintext; any caller may register as a scheduler or seed peer (--insecure)")
		return nil
	}
	ca, created, err := pki.LoadOrCreateCA(m.cfg.CADir(), "damselfly manager CA")
	if err != nil {
		return fmt.Errorf("manager CA: %w", err)
	}
	m.ca = ca
	if created {
		m.log.Info("created the manager's CA", "dir", m.cfg.CADir())
	}
	if c.HasFiles() {
		if m.creds, err = c.LoadFiles(); err != nil {
			return err
		}
		if id := m.creds.Identity(); id.Role != identity.RoleManager {
			return fmt.Errorf("tls: certificate is for %s, the manager needs role manager", id.URI())
		}
	} else if m.creds, err = m.selfCreds(); err != nil {
		return err
	}
	if m.token, err = m.loadToken(); err != nil {
		return err
	}
	m.log.Info("mutual TLS on gRPC", "identity", m.creds.Identity().URI().String(), "ca_hash", ca.Hash(),
		"token_roles", m.cfg.CA.TokenRoles)
	return nil
}

// selfCreds issues the manager's own certificate from its CA.
func (m *Manager) selfCreds() (*pki.Creds, error) {
	key, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	id := identity.Identity{Role: identity.RoleManager, HostID: core.Hostname()}
	cert, err := m.ca.Issue(key.Public(), id, m.cfg.CA.CertTTL.D())
	if err != nil {
		return nil, err
	}
	keyPEM, err := pki.KeyPEM(key)
	if err != nil {
		return nil, err
	}
	return pki.NewCreds(append(cert, m.ca.CertPEM...), keyPEM, m.ca.CertPEM)
}

// renewSelf replaces the manager's own certificate when two thirds of its
// life have passed (only when the CA issued it).
func (m *Manager) renewSelf(ctx context.Context) {
	if m.creds == nil || m.cfg.TLS.HasFiles() {
		if m.creds != nil {
			pki.WatchFiles(ctx, m.creds, m.log)
		}
		return
	}
	for {
		wait := pki.RenewAfter(m.creds.Leaf(), time.Now())
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		fresh, err := m.selfCreds()
		if err != nil {
			m.log.Error("renew the manager's certificate", "err", err)
			continue
		}
		if err := m.creds.Set(fresh.PEM()); err != nil {
			m.log.Error("renew the manager's certificate", "err", err)
		}
	}
}

// loadToken returns the configured bootstrap token, else the one kept in
// the data dir, else a new one saved there (0600).
func (m *Manager) loadToken() (string, error) {
	t, err := m.cfg.TLS.Token()
	if err != nil || t != "" {
		return t, err
	}
	p := filepath.Join(m.cfg.CADir(), tokenFile)
	if b, err := os.ReadFile(p); err == nil {
		return strings.TrimSpace(string(b)), nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read bootstrap token: %w", err)
	}
	t = NewToken()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		// Another replica sharing the CA dir made it first.
		b, err := os.ReadFile(p)
		if err != nil {
			return "", fmt.Errorf("read bootstrap token: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil {
		return "", fmt.Errorf("save bootstrap token: %w", err)
	}
	_, err = f.WriteString(t + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("save bootstrap token: %w", err)
	}
	m.log.Info("created a bootstrap token", "file", p)
	return t, nil
}

// NewToken makes a random bootstrap token <6>.<32> of a-z0-9.
func NewToken() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 39)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	b[6] = '.'
	return string(b)
}

// CAHash is the pin joiners pass as --manager-ca-hash ("" in insecure mode).
func (m *Manager) CAHash() string {
	if m.ca == nil {
		return ""
	}
	return m.ca.Hash()
}

// BootstrapToken is the token joiners present ("" in insecure mode).
func (m *Manager) BootstrapToken() string { return m.token }

// GRPCServerOptions are the manager's gRPC transport: TLS that asks for a
// client certificate but also lets callers without one reach
// IssueCertificate (and nothing else), plus the identity interceptors.
func (m *Manager) GRPCServerOptions() []grpc.ServerOption {
	return append(pki.ServerOptionsOptionalClientCert(m.creds),
		grpc.ChainUnaryInterceptor(requireCert),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := authenticated(ss.Context(), info.FullMethod); err != nil {
				return err
			}
			return h(srv, ss)
		}))
}

func requireCert(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := authenticated(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

// authenticated refuses a caller without a verified certificate, except on
// IssueCertificate, and in insecure mode.
func authenticated(ctx context.Context, method string) error {
	id, _ := identity.FromContext(ctx)
	if id.Insecure || id.Verified || method == managerv1.Manager_IssueCertificate_FullMethodName {
		return nil
	}
	return status.Error(codes.Unauthenticated, "a client certificate from the manager's CA is required (join with a bootstrap token, or configure --tls-cert/--tls-key/--tls-ca)")
}

// IssueCertificate signs a component's certificate request.
func (s *grpcService) IssueCertificate(ctx context.Context, req *managerv1.IssueCertificateRequest) (*managerv1.IssueCertificateResponse, error) {
	resp, err := s.issue(ctx, req)
	return resp, s.count("IssueCertificate", err)
}

func (s *grpcService) issue(ctx context.Context, req *managerv1.IssueCertificateRequest) (*managerv1.IssueCertificateResponse, error) {
	m := s.m
	if m.ca == nil {
		return nil, status.Error(codes.FailedPrecondition, "the manager runs in insecure mode and issues no certificates")
	}
	want := identity.Identity{Role: identity.Role(req.GetRole()), HostID: req.GetHostId()}
	if !want.Role.Valid() || want.Role == identity.RoleManager || want.HostID == "" || strings.Contains(want.HostID, "/") {
		return nil, status.Errorf(codes.InvalidArgument, "issue certificate: bad role %q or host id %q", req.GetRole(), req.GetHostId())
	}
	csr, err := x509.ParseCertificateRequest(req.GetCsr())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "issue certificate: certificate request: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "issue certificate: certificate request signature: %v", err)
	}
	caller, _ := identity.FromContext(ctx)
	switch {
	case caller.Verified:
		// Renewal: a certificate may only be renewed as itself.
		if caller.Role != want.Role || caller.HostID != want.HostID {
			return nil, status.Errorf(codes.PermissionDenied, "issue certificate: %s may renew only its own certificate, not %s", caller.URI(), want.URI())
		}
	case req.GetToken() == "":
		return nil, status.Error(codes.Unauthenticated, "issue certificate: no bootstrap token and no client certificate")
	case subtle.ConstantTimeCompare([]byte(req.GetToken()), []byte(m.token)) != 1:
		m.log.Warn("bootstrap token refused", "role", want.Role, "host_id", want.HostID)
		return nil, status.Error(codes.Unauthenticated, "issue certificate: bootstrap token refused")
	case !slices.Contains(m.cfg.CA.TokenRoles, string(want.Role)):
		return nil, status.Errorf(codes.PermissionDenied, "issue certificate: the bootstrap token may not ask for role %s (allowed: %v; see ca.token_roles)", want.Role, m.cfg.CA.TokenRoles)
	}
	cert, err := m.ca.Issue(csr.PublicKey, want, m.cfg.CA.CertTTL.D())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "issue certificate: %v", err)
	}
	m.log.Info("certificate issued", "identity", want.URI().String(), "renewal", caller.Verified)
	return &managerv1.IssueCertificateResponse{Certificate: cert, Ca: m.ca.CertPEM}, nil
}
