// Package dbtest holds what the throwaway database servers for tests
// (internal/pgtest, internal/mysqltest) share: the unprivileged service user
// a server runs as when the test runs as root, a free loopback port, and
// fresh, uniquely named databases. For tests only.
package dbtest

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/user"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ServiceUser returns the credential of the OS user name (postgres, mysql)
// and gives it dir, when the test runs as root (the servers refuse to run as
// root); otherwise nil: the server runs as the test's user.
func ServiceUser(dir, name string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("running as root needs the %s user (its server package creates it): %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		return nil, fmt.Errorf("give %s to %s: %w", dir, name, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

var (
	seq atomic.Int64
	mu  sync.Mutex // CREATE DATABASE one at a time: both servers dislike many at once
)

// CreateDatabase creates a fresh, empty database through adminDSN (a
// database/sql driver name and DSN) and returns its name, unique within
// this test process and across processes sharing the server.
func CreateDatabase(ctx context.Context, driver, adminDSN string) (string, error) {
	name := fmt.Sprintf("t%d_%d", os.Getpid(), seq.Add(1))
	mu.Lock()
	defer mu.Unlock()
	db, err := sql.Open(driver, adminDSN)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", driver, err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return name, nil
}
