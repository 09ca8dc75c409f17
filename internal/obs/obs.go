// Package obs serves the operational endpoints every component exposes on its
// metrics port: Prometheus /metrics and a /healthy probe; the Go profiler on
// a port of its own, off unless enabled; and the HTTP servers' timeouts. It
// also builds the slog logger from a level name.
package obs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/damselfly-io/damselfly/internal/config"
)

// Config is the part of every component's configuration (YAML key "obs")
// that governs its HTTP servers and the profiler.
type Config struct {
	// Pprof serves the Go profiler (/debug/pprof/) on PprofListen. Off by
	// default: profiles reveal memory contents and cost CPU.
	Pprof bool `yaml:"pprof"`
	// PprofListen is the profiler's address; loopback by default.
	PprofListen string `yaml:"pprof_listen"`
	// ReadHeaderTimeout bounds how long a client may take to send a
	// request's headers (a slowloris is cut after it).
	ReadHeaderTimeout config.Duration `yaml:"read_header_timeout"`
	// IdleTimeout closes a keep-alive connection that carries no request
	// this long. Longer than the usual client idle timeout (Go's and
	// containerd's 90s), so that clients normally close first and never
	// reuse a connection the server is closing.
	IdleTimeout config.Duration `yaml:"idle_timeout"`
	// WriteStallTimeout cuts a response whose bytes make no progress this
	// long (a reader that stopped reading). It is renewed with every chunk
	// written, so a long but moving download is never cut.
	WriteStallTimeout config.Duration `yaml:"write_stall_timeout"`
}

// DefaultPprofListen is where the profiler listens when enabled without an address.
const DefaultPprofListen = "127.0.0.1:6060"

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		PprofListen:       DefaultPprofListen,
		ReadHeaderTimeout: config.Duration(10 * time.Second),
		IdleTimeout:       config.Duration(2 * time.Minute),
		WriteStallTimeout: config.Duration(60 * time.Second),
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.Pprof {
		if _, _, err := net.SplitHostPort(c.PprofListen); err != nil {
			errs = append(errs, fmt.Errorf("obs.pprof_listen %q: want host:port", c.PprofListen))
		}
	}
	if c.ReadHeaderTimeout <= 0 || c.IdleTimeout <= 0 || c.WriteStallTimeout <= 0 {
		errs = append(errs, errors.New("obs.read_header_timeout, idle_timeout and write_stall_timeout must be > 0"))
	}
	return errors.Join(errs...)
}

// NewRegistry returns a registry with the Go and process collectors.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Handler returns /metrics and /healthy. The profiler is not here: see
// PprofHandler and Config.Pprof.
func Handler(g prometheus.Gatherer, healthy func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthy", func(w http.ResponseWriter, r *http.Request) {
		if healthy != nil {
			if err := healthy(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux
}

// PprofHandler serves the Go profiler under /debug/pprof/.
func PprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

// ListenPprof opens the profiler's listener when c enables it (nil, nil
// otherwise). Serve it with ServePprof.
func (c Config) ListenPprof(ctx context.Context) (net.Listener, error) {
	if !c.Pprof {
		return nil, nil
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", c.PprofListen)
	if err != nil {
		return nil, fmt.Errorf("listen pprof on %s: %w", c.PprofListen, err)
	}
	return l, nil
}

// ServePprof serves the profiler on lis until ctx is done. Profiles run up
// to their requested duration, so no write-stall cut applies.
func (c Config) ServePprof(ctx context.Context, lis net.Listener) error {
	srv := &http.Server{Handler: PprofHandler(), ReadHeaderTimeout: c.ReadHeaderTimeout.D(), IdleTimeout: c.IdleTimeout.D()}
	return serve(ctx, srv, lis)
}

// ServeHTTP serves h on lis with the default timeouts (DefaultConfig) until
// ctx is done, then shuts down gracefully.
func ServeHTTP(ctx context.Context, lis net.Listener, h http.Handler) error {
	return DefaultConfig().Serve(ctx, lis, h)
}

// Serve serves h on lis until ctx is done, then shuts down gracefully. The
// server cuts clients that are slow to send headers (ReadHeaderTimeout),
// closes idle keep-alive connections (IdleTimeout) and cuts responses that
// stop moving (WriteStallTimeout). There is no fixed total write timeout:
// a piece or a blob may take long to stream and that is fine while its bytes
// flow.
func (c Config) Serve(ctx context.Context, lis net.Listener, h http.Handler) error {
	srv := c.Server(h)
	return serve(ctx, srv, lis)
}

// Server returns an http.Server for h with c's timeouts.
func (c Config) Server(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           StallGuard(h, c.WriteStallTimeout.D()),
		ReadHeaderTimeout: c.ReadHeaderTimeout.D(),
		IdleTimeout:       c.IdleTimeout.D(),
	}
}

// ServeServer is Serve for a server made by Server with more of its fields
// set (a ConnContext).
func ServeServer(ctx context.Context, srv *http.Server, lis net.Listener) error {
	return serve(ctx, srv, lis)
}

func serve(ctx context.Context, srv *http.Server, lis net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	}
}

// ServeGRPC serves s on lis until ctx is done, then stops it gracefully,
// cutting streams still open after grace. It returns Serve's error when
// serving fails, and nil after a stop caused by ctx.
func ServeGRPC(ctx context.Context, s *grpc.Server, lis net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		stopped := make(chan struct{})
		go func() { s.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(grace):
			s.Stop()
			<-stopped
		}
		return nil
	}
}

// NewLogger returns a text slog logger at the named level (debug, info, warn, error).
func NewLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	switch strings.ToLower(level) {
	case "", "info":
		l = slog.LevelInfo
	case "debug":
		l = slog.LevelDebug
	case "warn", "warning":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		return nil, fmt.Errorf("unknown log level %q (want debug, info, warn or error)", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
