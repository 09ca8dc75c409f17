package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A second daemon on the same data dir fails with an error naming the
// holder's PID; once the first lets go, the directory can be taken again.
func TestDataDirLock(t *testing.T) {
	dir := t.TempDir()
	release, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = lockDataDir(dir)
	if !errors.Is(err, ErrDataDirInUse) || !strings.Contains(err.Error(), fmt.Sprintf("process %d", os.Getpid())) {
		t.Fatalf("second lock: %v", err)
	}
	release()
	release2, err := lockDataDir(dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	release2()
	// A path that cannot be a directory fails clearly.
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	if _, err := lockDataDir(file); err == nil {
		t.Fatal("locking a data dir that is a file succeeded")
	}
}

// The whole daemon refuses to start on a data dir another daemon holds.
func TestDaemonRefusesSharedDataDir(t *testing.T) {
	dir := t.TempDir()
	release, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	cfg := DefaultConfig()
	cfg.DataDir = dir
	cfg.Sock = filepath.Join(t.TempDir(), "d.sock")
	cfg.Scheduler = ""
	cfg.ListenIP = "127.0.0.1"
	cfg.PeerPort, cfg.UploadPort, cfg.ProxyPort, cfg.MetricsPort = 0, 0, -1, -1
	d, err := New(cfg, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Bounded: a daemon that wrongly starts serves until this context ends.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := d.Run(ctx); !errors.Is(err, ErrDataDirInUse) {
		t.Fatalf("Run on a locked data dir: %v", err)
	}
}
