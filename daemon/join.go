package daemon

import (
	"context"

	"github.com/damselfly-io/damselfly/internal/identity"
	"github.com/damselfly-io/damselfly/internal/pki"
)

// join gets a certificate from the manager's CA with the bootstrap token
// (or reuses the one kept under data_dir/tls) and keeps it renewed while
// ctx lasts.
func (d *Daemon) join(ctx context.Context, role identity.Role, hostID string) (*pki.Creds, error) {
	j, err := d.cfg.TLS.TokenJoin(d.cfg.Manager, role, hostID, d.cfg.DataDir, d.log)
	if err != nil {
		return nil, err
	}
	c, err := j.Creds(ctx)
	if err != nil {
		return nil, err
	}
	go j.Maintain(ctx, c)
	return c, nil
}
