package daemon

import (
	"context"
	"fmt"

	"github.com/damselfly-io/damselfly/internal/identity"
	"github.com/damselfly-io/damselfly/internal/pki"
)

// setupTLS sets the daemon's credentials from its TLS config and returns
// the host ID it goes by. With a certificate the host ID is the one the
// certificate names (the scheduler holds the daemon to it); in insecure mode
// it is derived, hostname and address.
func (d *Daemon) setupTLS(ctx context.Context, derivedID string) (string, error) {
	role := identity.RolePeer
	if d.cfg.Seed {
		role = identity.RoleSeed
	}
	c := d.cfg.TLS
	switch {
	case c.Insecure:
		d.log.Warn("insecure mode: gRPC in plaintext without certificates; any caller is trusted as it claims (--insecure)")
		return derivedID, nil
	case c.HasFiles():
		creds, err := c.LoadFiles()
		if err != nil {
			return "", err
		}
		d.creds = creds
		go pki.WatchFiles(ctx, creds, d.log)
	case c.HasToken():
		creds, err := d.join(ctx, role, derivedID)
		if err != nil {
			return "", err
		}
		d.creds = creds
	default:
		return "", pki.ErrNoTLS
	}
	id := d.creds.Identity()
	if id.Role != role {
		return "", fmt.Errorf("tls: certificate is for %s but this daemon runs as %s (seed: %v)", id.URI(), role, d.cfg.Seed)
	}
	d.log.Info("mutual TLS on gRPC", "identity", id.URI().String(), "not_after", d.creds.Leaf().NotAfter)
	return id.HostID, nil
}
