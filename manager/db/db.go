// Package db opens the manager's database — embedded SQLite (pure Go) or
// PostgreSQL — and applies the one set of versioned migrations both share.
// It owns the dialect differences (placeholders, primary keys, locking) and
// nothing else: queries live with the code that uses them.
package db

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	_ "modernc.org/sqlite"             // registers "sqlite"
)

// Types of database.
const (
	SQLite   = "sqlite"
	Postgres = "postgres"
)

//go:embed migrations/*.sql
var migrations embed.FS

// DB is an open database with its dialect.
type DB struct {
	*sql.DB
	Type string
}

// Open opens the database and migrates it to the latest schema. For SQLite,
// dsn is a file path (its directory is created); for PostgreSQL a DSN or URL.
func Open(ctx context.Context, typ, dsn string) (*DB, error) {
	var (
		sdb *sql.DB
		err error
	)
	switch typ {
	case SQLite:
		if err := os.MkdirAll(filepath.Dir(dsn), 0o700); err != nil {
			return nil, fmt.Errorf("database directory: %w", err)
		}
		// Created 0600 before SQLite opens it (SQLite would make it 0644;
		// its -wal and -shm files take the database file's mode).
		f, err := os.OpenFile(dsn, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("database file: %w", err)
		}
		f.Close()
		if err := tightenFiles(dsn); err != nil {
			return nil, err
		}
		// secure_delete overwrites deleted content with zeros, so a value
		// cleared from a row does not linger in free pages of the file.
		sdb, err = sql.Open("sqlite", "file:"+dsn+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=secure_delete(1)&_txlock=immediate")
		if err == nil {
			sdb.SetMaxOpenConns(4)
		}
	case Postgres:
		sdb, err = sql.Open("pgx", dsn)
		if err == nil {
			sdb.SetMaxOpenConns(16)
		}
	default:
		return nil, fmt.Errorf("database type %q: want sqlite or postgres", typ)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s database: %w", typ, err)
	}
	d := &DB{DB: sdb, Type: typ}
	if err := d.PingContext(ctx); err != nil {
		sdb.Close()
		return nil, fmt.Errorf("connect to %s database: %w", typ, err)
	}
	if err := d.migrate(ctx); err != nil {
		sdb.Close()
		return nil, err
	}
	if typ == SQLite {
		if err := tightenFiles(dsn); err != nil {
			sdb.Close()
			return nil, err
		}
	}
	return d, nil
}

// tightenFiles makes the SQLite file and its -wal and -shm companions (those
// that exist) readable by the owner only: they hold password hashes and
// sealed credentials.
func tightenFiles(dsn string) error {
	for _, p := range []string{dsn, dsn + "-wal", dsn + "-shm"} {
		fi, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("database file: %w", err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(p, 0o600); err != nil {
				return fmt.Errorf("database file %s: tighten to 0600: %w", p, err)
			}
		}
	}
	return nil
}

// Q rewrites a query written with ? placeholders for the dialect.
func (d *DB) Q(q string) string {
	if d.Type != Postgres {
		return q
	}
	var b strings.Builder
	n := 0
	for _, r := range q {
		if r == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Exec, Query and QueryRow take ? placeholders.
func (d *DB) Exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return d.ExecContext(ctx, d.Q(q), args...)
}

func (d *DB) Query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return d.QueryContext(ctx, d.Q(q), args...)
}

func (d *DB) QueryRow(ctx context.Context, q string, args ...any) *sql.Row {
	return d.QueryRowContext(ctx, d.Q(q), args...)
}

// Insert runs an INSERT and returns the new row's id.
func (d *DB) Insert(ctx context.Context, q string, args ...any) (int64, error) {
	var id int64
	err := d.QueryRow(ctx, q+" RETURNING id", args...).Scan(&id)
	return id, err
}

// IsUnique reports whether err is a unique-constraint violation.
func IsUnique(err error) bool {
	if err == nil {
		return false
	}
	s := err.Error()
	return strings.Contains(s, "UNIQUE constraint") || strings.Contains(s, "SQLSTATE 23505")
}

type migration struct {
	version int
	name    string
	sql     string
}

func loadMigrations() ([]migration, error) {
	ents, err := fs.ReadDir(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range ents {
		v, _, ok := strings.Cut(e.Name(), "_")
		n, err := strconv.Atoi(v)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %s: name must start with NNNN_", e.Name())
		}
		b, err := fs.ReadFile(migrations, "migrations/"+e.Name())
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{n, e.Name(), string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	return ms, nil
}

// Version returns the schema version applied.
func (d *DB) Version(ctx context.Context) (int, error) {
	var v sql.NullInt64
	err := d.QueryRow(ctx, "SELECT MAX(version) FROM schema_migrations").Scan(&v)
	return int(v.Int64), err
}

// migrate applies the migrations not applied yet, each in its own
// transaction. On PostgreSQL an advisory lock keeps replicas starting
// together from racing; SQLite's immediate transactions serialise writers.
func (d *DB) migrate(ctx context.Context) error {
	ms, err := loadMigrations()
	if err != nil {
		return fmt.Errorf("load migrations: %w", err)
	}
	conn, err := d.Conn(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer conn.Close()
	if d.Type == Postgres {
		if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock(4242001)"); err != nil {
			return fmt.Errorf("migrate: lock: %w", err)
		}
		defer func() { _, _ = conn.ExecContext(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(4242001)") }()
	}
	if _, err := conn.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	pk := "INTEGER PRIMARY KEY AUTOINCREMENT"
	if d.Type == Postgres {
		pk = "BIGSERIAL PRIMARY KEY"
	}
	for _, m := range ms {
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("migrate %s: %w", m.name, err)
		}
		var n int
		if err := tx.QueryRowContext(ctx, d.Q("SELECT COUNT(*) FROM schema_migrations WHERE version = ?"), m.version).Scan(&n); err != nil {
			_ = tx.Rollback()
			return fmt.Errorf("migrate %s: %w", m.name, err)
		}
		if n > 0 {
			_ = tx.Rollback()
			continue
		}
		for _, stmt := range strings.Split(stripComments(strings.ReplaceAll(m.sql, "{{pk}}", pk)), ";") {
			if strings.TrimSpace(stmt) == "" {
				continue
			}
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				_ = tx.Rollback()
				return fmt.Errorf("migrate %s: %w", m.name, err)
			}
		}
		if _, err := tx.ExecContext(ctx, d.Q("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, 0)"), m.version, m.name); err != nil {
			_ = tx.Rollback()
			return fmt.Errorf("migrate %s: %w", m.name, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migrate %s: %w", m.name, err)
		}
	}
	return nil
}

func stripComments(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "--") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// ErrNoRows is sql.ErrNoRows, re-exported for callers' errors.Is.
var ErrNoRows = sql.ErrNoRows
