package manager

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/config"
	"github.com/damselfly-io/damselfly/internal/identity"
	"github.com/damselfly-io/damselfly/internal/obs"
	"github.com/damselfly-io/damselfly/internal/pki"
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
	Auth       AuthConfig      `yaml:"auth"`
	// Credentials encrypts the registry credentials of jobs at rest.
	Credentials CredentialsConfig `yaml:"credentials"`
	Jobs        JobConfig         `yaml:"jobs"`
	// Obs sets the REST server's timeouts and the profiler.
	Obs obs.Config `yaml:"obs"`
	// TLS is the manager's gRPC transport: by default mutual TLS with a
	// certificate its own CA issues; cert, key and ca name files instead;
	// insecure serves plaintext. bootstrap_token is the token joiners
	// present (default: made on first start, kept in the data dir).
	TLS pki.Config `yaml:"tls"`
	// CA is the manager's certificate authority for components that join
	// with the bootstrap token.
	CA       CAConfig `yaml:"ca"`
	LogLevel string   `yaml:"log_level"`
}

// AuthConfig limits tokens and sign-in attempts.
type AuthConfig struct {
	// MaxTokenTTL caps the lifetime of a personal access token; a request
	// for a longer one is refused.
	MaxTokenTTL config.Duration `yaml:"max_token_ttl"`
	// A user name that failed to sign in MaxFailuresPerUser times within
	// FailureWindow, or a source address that failed MaxFailuresPerSource
	// times, is refused (429) for Lockout. Failures are counted in the
	// database, so all replicas share them.
	MaxFailuresPerUser   int             `yaml:"max_failures_per_user"`
	MaxFailuresPerSource int             `yaml:"max_failures_per_source"`
	FailureWindow        config.Duration `yaml:"failure_window"`
	Lockout              config.Duration `yaml:"lockout"`
}

// CredentialsConfig chooses the key that encrypts jobs' registry
// credentials (AES-256-GCM). The key never enters the database.
type CredentialsConfig struct {
	// KeyFile holds the key (32 random bytes, base64). Empty:
	// data_dir/credentials.key, created 0600 on first start. Replicas that
	// share a PostgreSQL database must share the key: mount the same file,
	// or set DAMSELFLY_CREDENTIALS_KEY (base64), which takes precedence.
	KeyFile string `yaml:"key_file"`
}

// CAConfig configures the manager's CA.
type CAConfig struct {
	// Dir holds ca.crt and ca.key (0600), created on first start; default
	// data_dir/ca. Replicas of one manager must share it.
	Dir string `yaml:"dir"`
	// CertTTL is the lifetime of the certificates it issues; components
	// renew theirs when two thirds of it have passed.
	CertTTL config.Duration `yaml:"cert_ttl"`
	// TokenRoles are the roles the bootstrap token may ask for. The default,
	// peer and seed, keeps the scheduler role (which daemons are sent to)
	// for certificates made from files with `damselfly certs issue`.
	TokenRoles []string `yaml:"token_roles"`
}

// DatabaseConfig chooses the database.
type DatabaseConfig struct {
	// Type is sqlite (a file under data_dir) or postgres.
	Type string `yaml:"type"`
	// DSN is PostgreSQL's connection string or URL; for sqlite, an optional
	// file path (default data_dir/manager.db).
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
		Auth: AuthConfig{
			MaxTokenTTL:          config.Duration(365 * 24 * time.Hour),
			MaxFailuresPerUser:   5,
			MaxFailuresPerSource: 20,
			FailureWindow:        config.Duration(15 * time.Minute),
			Lockout:              config.Duration(15 * time.Minute),
		},
		Obs: obs.DefaultConfig(),
		Jobs: JobConfig{
			Workers:         4,
			Lease:           config.Duration(30 * time.Second),
			PollInterval:    config.Duration(time.Second),
			TaskTimeout:     config.Duration(time.Hour),
			Concurrency:     16,
			RegistryTimeout: config.Duration(30 * time.Second),
		},
		CA:       CAConfig{CertTTL: config.Duration(pki.DefaultCertTTL), TokenRoles: []string{"peer", "seed"}},
		LogLevel: "info",
	}
}

// CADir is where the manager's CA lives.
func (c Config) CADir() string {
	if c.CA.Dir != "" {
		return c.CA.Dir
	}
	return filepath.Join(c.DataDir, "ca")
}

// DSN returns the database's data source: the configured DSN, or the SQLite
// file under DataDir.
func (c Config) DSN() string {
	if c.Database.DSN == "" && c.Database.Type == db.SQLite {
		return filepath.Join(c.DataDir, "manager.db")
	}
	return c.Database.DSN
}

// CredentialsKeyFile returns the key file: the configured one, or
// credentials.key under DataDir.
func (c Config) CredentialsKeyFile() string {
	if c.Credentials.KeyFile != "" {
		return c.Credentials.KeyFile
	}
	return filepath.Join(c.DataDir, "credentials.key")
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
	case db.Postgres:
		if c.Database.DSN == "" {
			errs = append(errs, errors.New("database.dsn is required for postgres"))
		}
	default:
		errs = append(errs, fmt.Errorf("database.type %q: want sqlite or postgres", c.Database.Type))
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
	if err := c.TLS.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.TLS.ManagerCAHash != "" {
		errs = append(errs, errors.New("tls.manager_ca_hash is for components joining a manager, not for the manager"))
	}
	if c.TLS.CA != "" && !c.TLS.HasFiles() {
		errs = append(errs, errors.New("tls.ca needs tls.cert and tls.key on the manager (without them it uses its own CA in ca.dir)"))
	}
	if !c.TLS.Insecure && c.CA.Dir == "" && c.DataDir == "" {
		errs = append(errs, errors.New("ca.dir (or data_dir) is required for the manager's CA"))
	}
	if c.CA.CertTTL < config.Duration(time.Second) {
		errs = append(errs, errors.New("ca.cert_ttl must be ≥ 1s"))
	}
	for _, r := range c.CA.TokenRoles {
		if !identity.Role(r).Valid() || identity.Role(r) == identity.RoleManager {
			errs = append(errs, fmt.Errorf("ca.token_roles: %q is not peer, seed or scheduler", r))
		}
	}
	a := c.Auth
	if a.MaxTokenTTL <= 0 || a.FailureWindow <= 0 || a.Lockout <= 0 {
		errs = append(errs, errors.New("auth.max_token_ttl, failure_window and lockout must be > 0"))
	}
	if a.MaxFailuresPerUser < 1 || a.MaxFailuresPerSource < 1 {
		errs = append(errs, errors.New("auth.max_failures_per_user and max_failures_per_source must be ≥ 1"))
	}
	if c.Credentials.KeyFile == "" && c.DataDir == "" {
		errs = append(errs, errors.New("credentials.key_file (or data_dir) is required"))
	}
	if err := c.Obs.Validate(); err != nil {
		errs = append(errs, err)
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
