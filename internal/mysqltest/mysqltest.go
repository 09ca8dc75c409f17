// Package mysqltest runs a throwaway MariaDB server for tests:
// mariadb-install-db into a temporary data directory, mariadbd on a free
// loopback port (as the unprivileged mysql user when the test runs as root),
// one fresh database per test, everything removed at Stop. For tests only.
package mysqltest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/damselfly-io/damselfly/internal/dbtest"
	_ "github.com/go-sql-driver/mysql" // registers "mysql"
)

// ErrMissing means the MariaDB server is not installed.
var ErrMissing = errors.New("mariadb binaries missing (apt-get install mariadb-server, see scripts/install-deps.sh)")

// Server is a running MariaDB.
type Server struct {
	dir  string
	port int
	cred *syscall.Credential
	cmd  *exec.Cmd
	done chan struct{}
}

func find(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/usr/bin"} {
		if p := filepath.Join(d, name); fileExists(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s", ErrMissing, name)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// Start initialises a data directory and starts the server. Stop it with Stop.
func Start() (*Server, error) {
	installDB, err := find("mariadb-install-db")
	if err != nil {
		return nil, err
	}
	mariadbd, err := find("mariadbd")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "damselfly-mariadb-")
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, done: make(chan struct{})}
	var userArgs []string
	if s.cred, err = dbtest.ServiceUser(dir, "mysql"); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if s.cred != nil {
		userArgs = []string{"--user=mysql"}
	}
	data := filepath.Join(dir, "data")
	// Its own temp dir: the bootstrap's temporary tables in the shared /tmp
	// are where parallel test processes have tripped over each other.
	tmp := filepath.Join(dir, "tmp")
	err = os.Mkdir(tmp, 0o700)
	if err == nil && s.cred != nil {
		err = os.Chown(tmp, int(s.cred.Uid), int(s.cred.Gid))
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("mariadb temp dir: %w", err)
	}
	install := exec.Command(installDB, append([]string{"--no-defaults", "--datadir=" + data, "--auth-root-authentication-method=normal",
		"--skip-test-db", "--skip-name-resolve", "--tmpdir=" + tmp}, userArgs...)...)
	install.Dir = dir
	install.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	if out, err := install.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("mariadb-install-db: %w: %s", err, out)
	}
	if s.port, err = dbtest.FreePort(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	logPath := filepath.Join(dir, "error.log")
	s.cmd = exec.Command(mariadbd, append([]string{"--no-defaults", "--datadir=" + data,
		"--socket=" + filepath.Join(dir, "mysqld.sock"), "--pid-file=" + filepath.Join(dir, "mysqld.pid"),
		"--port=" + strconv.Itoa(s.port), "--bind-address=127.0.0.1", "--skip-name-resolve",
		"--log-error=" + logPath, "--skip-log-bin", "--innodb-buffer-pool-size=64M", "--tmpdir=" + tmp,
		"--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0", "--max-connections=400"}, userArgs...)...)
	s.cmd.Dir = dir
	// Pdeathsig: a test binary killed on timeout takes the server with it.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start mariadbd: %w", err)
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		db, err := sql.Open("mysql", s.DSN(""))
		if err == nil {
			err = db.Ping()
			db.Close()
		}
		if err == nil {
			return s, nil
		}
		select {
		case <-s.done:
			log, _ := os.ReadFile(logPath)
			os.RemoveAll(dir)
			return nil, fmt.Errorf("mariadbd exited during start: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			s.Stop()
			return nil, fmt.Errorf("mariadbd not answering after 60s: %w: %s", err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// DSN of a database on the server, in the driver's user:pw@tcp(host:port)/db form.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("root@tcp(127.0.0.1:%d)/%s", s.port, db)
}

// NewDatabase creates a fresh, empty database and returns its DSN.
func (s *Server) NewDatabase(ctx context.Context) (string, error) {
	name, err := dbtest.CreateDatabase(ctx, "mysql", s.DSN(""))
	if err != nil {
		return "", err
	}
	return s.DSN(name), nil
}

// Stop stops the server (SIGTERM, then SIGKILL after 20 s) and removes its files.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(20 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
		}
	}
	os.RemoveAll(s.dir)
}
