package swarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

// helperEnv names the role a re-executed harness binary plays. The harness
// starts the origin HTTP server by running its own executable (the swarm
// command or the test binary) inside the origin namespace, so nothing extra
// has to be built.
const helperEnv = "DFSW_HELPER"

// OriginPath is where the origin serves the test file.
const OriginPath = "/blob"

// OriginStats is what the origin's /_stats endpoint reports.
type OriginStats struct {
	Requests  int64 `json:"requests"`
	BodyBytes int64 `json:"body_bytes"`
}

// HelperMain runs the helper role named in the environment, if any, and
// exits. Call it first in main and in TestMain.
func HelperMain() {
	switch os.Getenv(helperEnv) {
	case "":
		return
	case "origin":
		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		if err := ServeOrigin(ctx, log, os.Getenv("DFSW_ORIGIN_LISTEN"), os.Getenv("DFSW_ORIGIN_FILE")); err != nil {
			log.Error("origin", "err", err)
			os.Exit(1)
		}
		os.Exit(0)
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, os.Getenv(helperEnv))
		os.Exit(2)
	}
}

// countingWriter counts response body bytes.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n))
	return n, err
}

// ServeOrigin serves file at OriginPath on addr, with Range support (as
// http.ServeContent does), and its byte count at /_stats, until ctx ends.
func ServeOrigin(ctx context.Context, log *slog.Logger, addr, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("origin: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("origin: %w", err)
	}
	var requests, body atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(OriginStats{Requests: requests.Load(), BodyBytes: body.Load()})
	})
	mux.HandleFunc(OriginPath, func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		log.Info("request", "method", r.Method, "remote", r.RemoteAddr, "range", r.Header.Get("Range"))
		// A SectionReader per request: ServeContent seeks, and requests run
		// concurrently.
		http.ServeContent(countingWriter{w, &body}, r, "blob", st.ModTime(), io.NewSectionReader(f, 0, st.Size()))
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("origin: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("origin serving", "addr", addr, "file", file, "size", st.Size())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("origin: %w", err)
	}
	log.Info("origin done", "requests", requests.Load(), "body_bytes", body.Load())
	return nil
}
