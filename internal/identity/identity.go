// Package identity says who a gRPC caller is. With mTLS the answer comes from
// the caller's client certificate (a URI SAN of the form
// damselfly://<role>/<host-id>); without TLS (the explicit insecure mode) the
// caller is unverified and servers must not grant it anything a role would.
//
// Servers install the interceptors from this package; handlers ask
// FromContext. The package owns no keys and opens no files.
package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Role is what a component is allowed to be.
type Role string

// The roles a certificate can carry.
const (
	RoleManager   Role = "manager"
	RoleScheduler Role = "scheduler"
	RoleSeed      Role = "seed"
	RolePeer      Role = "peer"
)

// Valid reports whether r is one of the known roles.
func (r Role) Valid() bool {
	switch r {
	case RoleManager, RoleScheduler, RoleSeed, RolePeer:
		return true
	}
	return false
}

// Identity is a caller as a server knows it.
type Identity struct {
	Role   Role
	HostID string
	// Verified is true when Role and HostID come from a certificate the
	// server's CA signed; false for plaintext callers.
	Verified bool
	// Insecure is true when the server runs without TLS because its operator
	// chose so explicitly (--insecure): callers are then trusted as they
	// claim, as before mTLS existed. Never set together with Verified.
	Insecure bool
}

const scheme = "damselfly"

// URI is the identity's URI SAN form, damselfly://<role>/<host-id>.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: scheme, Host: string(id.Role), Path: "/" + id.HostID}
}

// Parse reads an identity from its URI SAN form.
func Parse(u *url.URL) (Identity, error) {
	if u == nil || u.Scheme != scheme {
		return Identity{}, errors.New("identity: not a damselfly:// URI")
	}
	r := Role(u.Host)
	if !r.Valid() {
		return Identity{}, fmt.Errorf("identity: unknown role %q", u.Host)
	}
	host := strings.TrimPrefix(u.Path, "/")
	if host == "" || strings.Contains(host, "/") {
		return Identity{}, fmt.Errorf("identity: bad host id %q", u.Path)
	}
	return Identity{Role: r, HostID: host}, nil
}

// FromCert reads the identity a verified certificate carries. Exactly one
// damselfly:// URI SAN is accepted.
func FromCert(c *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range c.URIs {
		if u.Scheme != scheme {
			continue
		}
		id, err := Parse(u)
		if err != nil {
			return Identity{}, err
		}
		found = append(found, id)
	}
	if len(found) != 1 {
		return Identity{}, fmt.Errorf("identity: certificate carries %d damselfly identities, want 1", len(found))
	}
	found[0].Verified = true
	return found[0], nil
}

type ctxKey struct{}

// NewContext returns ctx carrying id.
func NewContext(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the caller's identity as established by the server's
// interceptor. ok is false when no interceptor ran.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(Identity)
	return id, ok
}

// Allows reports whether the caller in ctx may act as one of roles: a
// verified identity of one of them, or any caller of a server in insecure
// mode.
func Allows(ctx context.Context, roles ...Role) bool {
	id, ok := FromContext(ctx)
	if !ok {
		return false
	}
	if id.Insecure {
		return true
	}
	if !id.Verified {
		return false
	}
	for _, r := range roles {
		if id.Role == r {
			return true
		}
	}
	return false
}

// OwnsHost reports whether the caller in ctx may speak for hostID: its
// certificate names that host, or the server is in insecure mode.
func OwnsHost(ctx context.Context, hostID string) bool {
	id, ok := FromContext(ctx)
	if !ok {
		return false
	}
	return id.Insecure || (id.Verified && id.HostID == hostID)
}

// fromPeer derives the identity of a gRPC caller from its TLS state.
func fromPeer(ctx context.Context, insecure bool) Identity {
	if insecure {
		return Identity{Insecure: true}
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return Identity{}
	}
	id, err := FromCert(ti.State.VerifiedChains[0][0])
	if err != nil {
		return Identity{}
	}
	return id
}

// UnaryServerInterceptor puts the caller's identity into the handler's ctx.
// insecure marks a server that runs without TLS by the operator's choice.
func UnaryServerInterceptor(insecure bool) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return h(NewContext(ctx, fromPeer(ctx, insecure)), req)
	}
}

// StreamServerInterceptor puts the caller's identity into the stream's ctx.
func StreamServerInterceptor(insecure bool) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return h(srv, &identityStream{ServerStream: ss, ctx: NewContext(ss.Context(), fromPeer(ss.Context(), insecure))})
	}
}

type identityStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *identityStream) Context() context.Context { return s.ctx }
