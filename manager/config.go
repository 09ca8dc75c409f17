package manager

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/config"
	"github.com/damselfly-io/damselfly/internal/obs"
	"github.com/damselfly-io/damselfly/manager/db"
)

// Config configures a Manager. Load order: DefaultConfig, then the YAML file,
// then flags, then Validate.
type Config struct {
	// Listen is the REST API address (also /metrics and /healthy).
	Listen string `yaml:"listen"`
	// GRPCListen is where schedulers, seed peers and daemons reach the manager.
	GRPCListen string `yaml:"grpc_listen"`
	// DataDir holds the SQLite database (when database.type is sqlite).
	DataDir  string         `yaml:"data_dir"`
	Database DatabaseConfig `yaml:"database"`
	// AdminPassword sets the password of the first admin, "admin", when it is
	// created (first start). Empty: a random password is printed once.
	// The environment variable DAMSELFLY_ADMIN_PASSWORD overrides it.
	AdminPassword string `yaml:"admin_password"`
	// KeepAliveInterval is how often schedulers and seed peers must call
	// KeepAlive; one silent for KeepAliveTimeout is inactive.
	KeepAliveInterval config.Duration `yaml:"keepalive_interval"`
	KeepAliveTimeout  config.Duration `yaml:"keepalive_timeout"`
	// SchedulerRefreshInterval is how often daemons ask for their schedulers
	// again; a daemon not heard from for PeerTTL is no longer a preheat
	// target.
	SchedulerRefreshInterval config.Duration `yaml:"scheduler_refresh_interval"`
	PeerTTL                  config.Duration `yaml:"peer_ttl"`
	// SessionTTL is how long a sign-in token is valid.
	SessionTTL config.Duration `yaml:"session_ttl"`
	Jobs       JobConfig       `yaml:"jobs"`
	// Metrics: dragonfly_compat also exposes Dragonfly's metric names.
	Metrics  obs.MetricsConfig `yaml:"metrics"`
	LogLevel string            `yaml:"log_level"`
}

// DatabaseConfig chooses the database.
type DatabaseConfig struct {
	// Type is sqlite (a file under data_dir), postgres or mysql (MySQL 8
	// or MariaDB 10.6+).
	Type string `yaml:"type"`
	// DSN is PostgreSQL's connection string or URL, or MySQL's
	// user:password@tcp(host:port)/db; for sqlite, an optional file path
	// (default data_dir/manager.db).
	DSN string `yaml:"dsn"`
}

// JobConfig tunes preheat job execution.
type JobConfig struct {
	// Workers is how many jobs one manager replica runs at once.
	Workers int `yaml:"workers"`
	// Lease is how long a claimed job stays with a replica without renewal;
	// a job whose replica died is taken over after it expires.
	Lease config.Duration `yaml:"lease"`
	// PollInterval is how often idle workers look for pending jobs.
	PollInterval config.Duration `yaml:"poll_interval"`
	// TaskTimeout bounds one peer fetching one layer or file.
	TaskTimeout config.Duration `yaml:"task_timeout"`
	// Concurrency bounds the peer fetches one job runs at once.
	Concurrency int `yaml:"concurrency"`
	// RegistryTimeout bounds each request to the registry while resolving an image.
	RegistryTimeout config.Duration `yaml:"registry_timeout"`
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Listen:                   ":8080",
		GRPCListen:               ":65003",
		DataDir:                  "/var/lib/damselfly/manager",
		Database:                 DatabaseConfig{Type: db.SQLite},
		KeepAliveInterval:        config.Duration(5 * time.Second),
		KeepAliveTimeout:         config.Duration(30 * time.Second),
		SchedulerRefreshInterval: config.Duration(30 * time.Second),
		PeerTTL:                  config.Duration(5 * time.Minute),
		SessionTTL:               config.Duration(24 * time.Hour),
		Jobs: JobConfig{
			Workers:         4,
			Lease:           config.Duration(30 * time.Second),
			PollInterval:    config.Duration(time.Second),
			TaskTimeout:     config.Duration(time.Hour),
			Concurrency:     16,
			RegistryTimeout: config.Duration(30 * time.Second),
		},
		LogLevel: "info",
	}
}

// DSN returns the database's data source: the configured DSN, or the SQLite
// file under DataDir.
func (c Config) DSN() string {
	if c.Database.DSN == "" && c.Database.Type == db.SQLite {
		return filepath.Join(c.DataDir, "manager.db")
	}
	return c.Database.DSN
}

// Validate checks the configuration; errors wrap core.ErrInvalid.
func (c Config) Validate() error {
	var errs []error
	for name, a := range map[string]string{"listen": c.Listen, "grpc_listen": c.GRPCListen} {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want host:port", name, a))
		}
	}
	switch c.Database.Type {
	case db.SQLite:
		if c.DataDir == "" && c.Database.DSN == "" {
			errs = append(errs, errors.New("data_dir (or database.dsn) is required for sqlite"))
		}
	case db.Postgres, db.MySQL:
		if c.Database.DSN == "" {
			errs = append(errs, fmt.Errorf("database.dsn is required for %s", c.Database.Type))
		}
	default:
		errs = append(errs, fmt.Errorf("database.type %q: want sqlite, postgres or mysql", c.Database.Type))
	}
	if c.KeepAliveInterval <= 0 || c.KeepAliveTimeout <= c.KeepAliveInterval {
		errs = append(errs, errors.New("need 0 < keepalive_interval < keepalive_timeout"))
	}
	if c.SchedulerRefreshInterval <= 0 || c.PeerTTL <= c.SchedulerRefreshInterval {
		errs = append(errs, errors.New("need 0 < scheduler_refresh_interval < peer_ttl"))
	}
	if c.SessionTTL <= 0 {
		errs = append(errs, errors.New("session_ttl must be > 0"))
	}
	j := c.Jobs
	if j.Workers < 1 || j.Concurrency < 1 {
		errs = append(errs, errors.New("jobs.workers and jobs.concurrency must be ≥ 1"))
	}
	if j.Lease <= 0 || j.PollInterval <= 0 || j.TaskTimeout <= 0 || j.RegistryTimeout <= 0 {
		errs = append(errs, errors.New("jobs.lease, poll_interval, task_timeout and registry_timeout must be > 0"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", core.ErrInvalid, errors.Join(errs...))
	}
	return nil
}
