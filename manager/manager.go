// Package manager is Damselfly's control plane: it stores scheduler clusters,
// schedulers, seed peers, known daemons, applications, preheat jobs, users and
// tokens in SQLite or PostgreSQL (manager/db); serves the REST API with
// authentication; answers schedulers, seed peers and daemons over gRPC; and
// runs preheat jobs, claimed through the database so that several replicas on
// one PostgreSQL never run one job twice.
//
// Everything that matters lives in the database: a replica may die at any
// time and another (or the same, restarted) takes its jobs over once their
// lease expires. It must not log or return registry credentials.
package manager

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/damselfly-io/damselfly/api/managerv1"
	"github.com/damselfly-io/damselfly/internal/identity"
	"github.com/damselfly-io/damselfly/internal/obs"
	"github.com/damselfly-io/damselfly/internal/pki"
	"github.com/damselfly-io/damselfly/manager/db"
	"github.com/damselfly-io/damselfly/manager/job"
)

// Manager is one manager replica.
type Manager struct {
	cfg      Config
	log      *slog.Logger
	db       *db.DB
	m        *metrics
	gather   prometheus.Gatherer
	owner    string // this replica's name in job leases
	resolver *job.Resolver
	wake     chan struct{}
	initPass string
	sealer   *sealer

	connMu sync.Mutex
	conns  map[string]*grpc.ClientConn

	// ca issues component certificates; creds is the manager's own
	// certificate (nil in insecure mode); token is the bootstrap token.
	ca    *pki.CA
	creds *pki.Creds
	token string
}

type metrics struct {
	http *prometheus.CounterVec
	grpc *prometheus.CounterVec
	jobs *prometheus.CounterVec
}

// New opens the database (migrating it), creates the first admin if there is
// no user yet, and returns the manager. reg may be nil.
func New(ctx context.Context, cfg Config, log *slog.Logger, reg *prometheus.Registry) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("manager config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Database.Type == db.SQLite && cfg.Database.DSN == "" {
		// The data directory is the manager's alone.
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("data directory: %w", err)
		}
		if err := os.Chmod(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("data directory: tighten to 0700: %w", err)
		}
	}
	seal, createdKey, err := loadSealer(cfg.CredentialsKeyFile())
	if err != nil {
		return nil, err
	}
	if createdKey {
		log.Info("created the credentials key", "path", cfg.CredentialsKeyFile())
	}
	d, err := db.Open(ctx, cfg.Database.Type, cfg.DSN())
	if err != nil {
		return nil, err
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	host, _ := os.Hostname()
	m := &Manager{
		cfg: cfg, log: log, db: d,
		owner:    host + "-" + hex.EncodeToString(b[:]),
		resolver: &job.Resolver{Client: &http.Client{Timeout: cfg.Jobs.RegistryTimeout.D()}},
		wake:     make(chan struct{}, 1),
		sealer:   seal,
		conns:    map[string]*grpc.ClientConn{},
		m: &metrics{
			http: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "damselfly_manager_http_requests_total", Help: "REST requests by method and status code."}, []string{"method", "code"}),
			grpc: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "damselfly_manager_grpc_requests_total", Help: "gRPC requests by method and outcome."}, []string{"method", "outcome"}),
			jobs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "damselfly_manager_jobs_total", Help: "Jobs finished by this replica, by type and state."}, []string{"type", "state"}),
		},
	}
	if reg != nil {
		reg.MustRegister(m.m.http, m.m.grpc, m.m.jobs)
		m.gather = reg
	} else {
		m.gather = prometheus.NewRegistry()
	}
	if err := m.ensureAdmin(ctx); err != nil {
		d.Close()
		return nil, err
	}
	if err := m.setupTLS(); err != nil {
		d.Close()
		return nil, err
	}
	if err := m.sealLegacySecrets(ctx); err != nil {
		d.Close()
		return nil, err
	}
	return m, nil
}

// InitialPassword is the random password given to the first admin when this
// start created it without a configured one ("" otherwise). Print it once.
func (m *Manager) InitialPassword() string { return m.initPass }

// Close closes the database and peer connections.
func (m *Manager) Close() error {
	m.connMu.Lock()
	for _, c := range m.conns {
		c.Close()
	}
	m.conns = map[string]*grpc.ClientConn{}
	m.connMu.Unlock()
	return m.db.Close()
}

// DB exposes the database (for tests).
func (m *Manager) DB() *db.DB { return m.db }

// Handler is the REST API with /healthy and /metrics.
func (m *Manager) Handler() http.Handler { return m.routes() }

// RegisterGRPC registers the Manager service on gs.
func (m *Manager) RegisterGRPC(gs *grpc.Server) {
	managerv1.RegisterManagerServer(gs, &grpcService{m: m})
}

// Serve serves REST on httpLis and gRPC on grpcLis and runs the job workers
// until ctx is done.
func (m *Manager) Serve(ctx context.Context, httpLis, grpcLis net.Listener) error {
	gs := grpc.NewServer(m.GRPCServerOptions()...)
	m.RegisterGRPC(gs)
	pprofLis, err := m.cfg.Obs.ListenPprof(ctx)
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return m.cfg.Obs.Serve(gctx, httpLis, m.Handler()) })
	if pprofLis != nil {
		g.Go(func() error { return m.cfg.Obs.ServePprof(gctx, pprofLis) })
	}
	g.Go(func() error {
		if err := obs.ServeGRPC(gctx, gs, grpcLis, 3*time.Second); err != nil {
			return fmt.Errorf("serve manager gRPC on %s: %w", grpcLis.Addr(), err)
		}
		return nil
	})
	g.Go(func() error { return m.Run(gctx) })
	g.Go(func() error { m.renewSelf(gctx); return nil })
	return g.Wait()
}

// Run runs the job workers until ctx is done.
func (m *Manager) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range m.cfg.Jobs.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.worker(ctx)
		}()
	}
	wg.Wait()
	return nil
}

func (m *Manager) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// peerConn returns a shared client connection to a daemon's peer port.
func (m *Manager) peerConn(addr string) (*grpc.ClientConn, error) {
	m.connMu.Lock()
	defer m.connMu.Unlock()
	if c, ok := m.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, pki.DialOption(m.creds, identity.RolePeer, identity.RoleSeed))
	if err != nil {
		return nil, fmt.Errorf("peer client for %s: %w", addr, err)
	}
	m.conns[addr] = c
	return c, nil
}

func nowMs() int64 { return time.Now().UnixMilli() }

var errNotFound = errors.New("not found")
