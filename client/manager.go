package client

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/damselfly-io/damselfly/api/managerv1"
)

// DialManager returns a client of the manager's gRPC API at addr (the
// connection is made lazily).
// transport is the connection's credentials (pki.DialOption).
func DialManager(addr string, transport grpc.DialOption) (managerv1.ManagerClient, *grpc.ClientConn, error) {
	conn, err := grpc.NewClient(addr, transport)
	if err != nil {
		return nil, nil, fmt.Errorf("manager client for %s: %w", addr, err)
	}
	return managerv1.NewManagerClient(conn), conn, nil
}

// KeepRegistered registers a scheduler or seed peer with the manager and
// keeps it alive until ctx ends, registering again whenever a keepalive
// fails (the manager restarted, lost the record, or was unreachable).
func KeepRegistered(ctx context.Context, m managerv1.ManagerClient, req *managerv1.RegisterRequest, log *slog.Logger) {
	const retry = 2 * time.Second
	var (
		id       int64
		interval = retry
	)
	for ctx.Err() == nil {
		if id == 0 {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			resp, err := m.Register(rctx, req)
			cancel()
			if err != nil {
				log.Warn("register with the manager failed; retrying", "err", err)
			} else {
				id = resp.GetId()
				if ms := resp.GetKeepaliveIntervalMs(); ms > 0 {
					interval = time.Duration(ms) * time.Millisecond
				}
				log.Info("registered with the manager", "id", id, "cluster_id", resp.GetClusterId())
			}
		} else {
			kctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := m.KeepAlive(kctx, &managerv1.KeepAliveRequest{Type: req.GetType(), Id: id})
			cancel()
			if err != nil {
				log.Warn("keepalive to the manager failed; registering again", "err", err)
				id = 0
			}
		}
		wait := interval
		if id == 0 {
			wait = retry
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}
