// Package pgtest runs a throwaway PostgreSQL cluster for tests: initdb in a
// temporary directory, the server on a free loopback port, one fresh
// database per test. As root it runs the server as the postgres OS user
// (initdb refuses root). For tests only.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/damselfly-io/damselfly/internal/dbtest"
	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
)

// BinDir is where Debian installs PostgreSQL (scripts/install-deps.sh
// installs Debian's default, 15 on bookworm); the newest version present wins.
var BinDir = func() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	best, bestV := "/usr/lib/postgresql/15/bin", 0
	for _, d := range dirs {
		if v, err := strconv.Atoi(filepath.Base(filepath.Dir(d))); err == nil && v > bestV {
			best, bestV = d, v
		}
	}
	return best
}()

// Server is a running cluster.
type Server struct {
	dir  string
	port int
	cred *syscall.Credential
}

// ErrMissing means the PostgreSQL binaries are not installed.
var ErrMissing = errors.New("postgresql binaries missing (apt-get install postgresql, see scripts/install-deps.sh)")

// Start initialises and starts a cluster. Stop it with Stop.
func Start() (*Server, error) {
	if _, err := os.Stat(filepath.Join(BinDir, "initdb")); err != nil {
		return nil, fmt.Errorf("%w: %s/initdb", ErrMissing, BinDir)
	}
	dir, err := os.MkdirTemp("", "damselfly-pg-")
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir}
	if s.cred, err = dbtest.ServiceUser(dir, "postgres"); err == nil {
		s.port, err = dbtest.FreePort()
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	data := filepath.Join(dir, "data")
	if out, err := s.run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %w: %s", err, out)
	}
	opts := fmt.Sprintf("-p %d -k %s -h 127.0.0.1 -F -c fsync=off -c full_page_writes=off -c max_connections=200", s.port, dir)
	if out, err := s.run("pg_ctl", "-D", data, "-o", opts, "-l", filepath.Join(dir, "log"), "-w", "-t", "60", "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "log"))
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pg_ctl start: %w: %s %s", err, out, log)
	}
	return s, nil
}

func (s *Server) run(bin string, args ...string) ([]byte, error) {
	cmd := exec.Command(filepath.Join(BinDir, bin), args...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	return cmd.CombinedOutput()
}

// DSN of a database on the server.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// NewDatabase creates a fresh, empty database and returns its DSN.
func (s *Server) NewDatabase(ctx context.Context) (string, error) {
	name, err := dbtest.CreateDatabase(ctx, "pgx", s.DSN("postgres"))
	if err != nil {
		return "", err
	}
	return s.DSN(name), nil
}

// Stop stops the server at once and removes its files.
func (s *Server) Stop() {
	_, _ = s.run("pg_ctl", "-D", filepath.Join(s.dir, "data"), "-m", "immediate", "-w", "-t", "30", "stop")
	os.RemoveAll(s.dir)
}
