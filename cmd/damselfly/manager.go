package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/damselfly-io/damselfly/internal/obs"
	"github.com/damselfly-io/damselfly/manager"
)

func managerFlags(fs *flag.FlagSet, cfg *manager.Config) {
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "REST API address (also /metrics and /healthy)")
	fs.StringVar(&cfg.GRPCListen, "grpc-listen", cfg.GRPCListen, "gRPC address for schedulers, seed peers and daemons")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory of the SQLite database")
	fs.StringVar(&cfg.Database.Type, "database-type", cfg.Database.Type, "sqlite or postgres")
	fs.StringVar(&cfg.Database.DSN, "database-dsn", cfg.Database.DSN, "PostgreSQL DSN or URL (sqlite: optional file path)")
	fs.StringVar(&cfg.AdminPassword, "admin-password", cfg.AdminPassword, "password of the first admin user, set when it is created (env DAMSELFLY_ADMIN_PASSWORD overrides; empty: random, printed once)")
	fs.Var(&cfg.KeepAliveInterval, "keepalive-interval", "how often schedulers and seed peers keep alive")
	fs.Var(&cfg.KeepAliveTimeout, "keepalive-timeout", "a scheduler or seed peer silent this long is inactive")
	fs.Var(&cfg.SchedulerRefreshInterval, "scheduler-refresh-interval", "how often daemons refresh their scheduler list")
	fs.Var(&cfg.PeerTTL, "peer-ttl", "a daemon not heard from this long is no longer a preheat target")
	fs.Var(&cfg.SessionTTL, "session-ttl", "lifetime of a sign-in token")
	fs.IntVar(&cfg.Jobs.Workers, "job-workers", cfg.Jobs.Workers, "jobs this replica runs at once")
	fs.Var(&cfg.Jobs.Lease, "job-lease", "a running job whose replica is silent this long is taken over")
	fs.Var(&cfg.Jobs.PollInterval, "job-poll-interval", "how often idle workers look for jobs")
	fs.Var(&cfg.Jobs.TaskTimeout, "job-task-timeout", "bound on one peer fetching one layer or file")
	fs.IntVar(&cfg.Jobs.Concurrency, "job-concurrency", cfg.Jobs.Concurrency, "peer fetches one job runs at once")
	fs.Var(&cfg.Jobs.RegistryTimeout, "registry-timeout", "bound on each registry request while resolving an image")
	fs.Var(&cfg.Auth.MaxTokenTTL, "max-token-ttl", "longest lifetime a personal access token may be given")
	fs.IntVar(&cfg.Auth.MaxFailuresPerUser, "signin-max-failures-per-user", cfg.Auth.MaxFailuresPerUser, "failed sign-ins of one user name within --signin-failure-window that lock it out")
	fs.IntVar(&cfg.Auth.MaxFailuresPerSource, "signin-max-failures-per-source", cfg.Auth.MaxFailuresPerSource, "failed sign-ins from one source address within --signin-failure-window that lock it out")
	fs.Var(&cfg.Auth.FailureWindow, "signin-failure-window", "how long a failed sign-in counts")
	fs.Var(&cfg.Auth.Lockout, "signin-lockout", "how long a locked-out user name or source is refused (429)")
	fs.StringVar(&cfg.Credentials.KeyFile, "credentials-key-file", cfg.Credentials.KeyFile, "key that encrypts jobs' registry credentials (default data_dir/credentials.key, created 0600; env DAMSELFLY_CREDENTIALS_KEY overrides)")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	fs.StringVar(&cfg.CA.Dir, "ca-dir", cfg.CA.Dir, "directory of the manager's CA (ca.crt, ca.key; created on first start; default DATA_DIR/ca)")
	fs.Var(&cfg.CA.CertTTL, "cert-ttl", "lifetime of the certificates the manager's CA issues")
	fs.Func("token-roles", "comma-separated roles the bootstrap token may ask for (default peer,seed; add scheduler to let schedulers join with it)", func(v string) error {
		cfg.CA.TokenRoles = strings.Split(v, ",")
		return nil
	})
	cfg.TLS.Flags(fs, false)
	obsFlags(fs, &cfg.Obs)
}

func runManager(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg := manager.DefaultConfig()
	if err := loadConfig(args, &cfg); err != nil {
		fmt.Fprintln(stderr, "damselfly manager:", err)
		return 2
	}
	fs := newFlagSet("manager", "Run the manager: clusters, scheduler and seed peer registry, preheat jobs, users and tokens, REST API.", stderr)
	managerFlags(fs, &cfg)
	pc := fs.Bool("print-config", false, "print the effective configuration as YAML and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "damselfly manager: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *pc {
		return printConfig(stdout, cfg)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, "damselfly manager: invalid config:", err)
		return 2
	}
	log, err := obs.NewLogger(os.Stderr, cfg.LogLevel)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly manager:", err)
		return 2
	}
	reg := obs.NewRegistry()
	m, err := manager.New(ctx, cfg, log, reg)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly manager:", err)
		return 1
	}
	defer m.Close()
	if h := m.CAHash(); h != "" {
		fmt.Fprintf(stdout, "components join with: --manager HOST:PORT --manager-ca-hash %s --bootstrap-token-file FILE (the token is in %s unless configured)\n",
			h, filepath.Join(cfg.CADir(), "bootstrap-token"))
	}
	if p := m.InitialPassword(); p != "" {
		fmt.Fprintf(stdout, "created user admin with password %s (shown once; change it with PUT /api/v1/users/{id}/password)\n", p)
	}
	httpLis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		fmt.Fprintln(stderr, "damselfly manager: listen:", err)
		return 1
	}
	grpcLis, err := net.Listen("tcp", cfg.GRPCListen)
	if err != nil {
		httpLis.Close()
		fmt.Fprintln(stderr, "damselfly manager: listen gRPC:", err)
		return 1
	}
	log.Info("manager listening", "rest", httpLis.Addr().String(), "grpc", grpcLis.Addr().String(), "database", cfg.Database.Type)
	if err := m.Serve(ctx, httpLis, grpcLis); err != nil {
		fmt.Fprintln(stderr, "damselfly manager:", err)
		return 1
	}
	return 0
}
