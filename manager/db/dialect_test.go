package db

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/damselfly-io/damselfly/internal/mysqltest"
)

func TestMySQLCreateTable(t *testing.T) {
	got, err := mysqlCreateTable(`CREATE TABLE audit (
  id {{pk}},
  user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  action TEXT NOT NULL,
  detail TEXT NOT NULL DEFAULT '',
  token TEXT NOT NULL UNIQUE,
  ip TEXT NOT NULL,
  port INTEGER NOT NULL,
  note TEXT NOT NULL DEFAULT 'it''s, (odd)',
  UNIQUE (ip, port)
)`)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"id BIGINT AUTO_INCREMENT PRIMARY KEY",
		"user_id BIGINT NOT NULL,",
		"action LONGTEXT NOT NULL,",
		"detail LONGTEXT NOT NULL DEFAULT ('')",
		"token VARCHAR(255) NOT NULL UNIQUE",
		"ip VARCHAR(255) NOT NULL",
		"note LONGTEXT NOT NULL DEFAULT ('it''s, (odd)')",
		"UNIQUE (ip, port)",
		"FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE",
		") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("translation lacks %q:\n%s", want, got)
		}
	}
	if a := mysqlAlterTable("ALTER TABLE jobs ADD COLUMN reason TEXT NOT NULL DEFAULT ''"); a != "ALTER TABLE jobs ADD COLUMN reason LONGTEXT NOT NULL DEFAULT ('')" {
		t.Errorf("alter: %s", a)
	}
	if q := mysqlQuery("INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT (a) DO UPDATE SET b = excluded.b"); q != "INSERT INTO t (a, b) VALUES (?, ?) ON DUPLICATE KEY UPDATE b = VALUES(b)" {
		t.Errorf("upsert: %s", q)
	}
	if q := mysqlQuery("INSERT INTO t (a) VALUES (?) ON CONFLICT DO NOTHING"); q != "INSERT IGNORE INTO t (a) VALUES (?)" {
		t.Errorf("insert or nothing: %s", q)
	}
	if _, err := mysqlDSN("postgres://x/y"); err == nil {
		t.Error("a PostgreSQL URL passed as a MySQL DSN")
	}
}

// The shared migrations run on a real MariaDB, and the dialect keeps the
// semantics the other databases have: case-sensitive uniqueness, upserts
// that return the row's id, cascading deletes, a prefix index on a text
// column, migrations applied once.
func TestMariaDB(t *testing.T) {
	srv, err := mysqltest.Start()
	if errors.Is(err, mysqltest.ErrMissing) && os.Getenv("CI") == "" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	ctx := context.Background()
	dsn, err := srv.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var d *DB
	for range 2 {
		if d != nil {
			d.Close()
		}
		if d, err = Open(ctx, MySQL, dsn); err != nil {
			t.Fatal(err)
		}
	}
	defer d.Close()
	if v, err := d.Version(ctx); err != nil || v < 1 {
		t.Fatalf("version %d %v", v, err)
	}
	var n int
	if err := d.QueryRow(ctx, "SELECT COUNT(*) FROM schema_migrations WHERE version = ?", 1).Scan(&n); err != nil || n != 1 {
		t.Fatalf("migration 1 recorded %d times (%v)", n, err)
	}

	user := func(name string) (int64, error) {
		return d.Insert(ctx, "INSERT INTO users (name, password_hash, role, created_at, updated_at) VALUES (?, 'x', 'guest', 0, 0)", name)
	}
	a, err := user("alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := user("Alice"); err != nil {
		t.Errorf("names differing in case collide: %v", err)
	}
	if _, err := user("alice"); !IsUnique(err) {
		t.Errorf("duplicate name: %v, want a unique violation", err)
	}
	if a < 1 {
		t.Errorf("inserted id %d", a)
	}

	reg := func(host string) (int64, error) {
		return d.Insert(ctx, `INSERT INTO schedulers (cluster_id, hostname, ip, port, last_keepalive, created_at) VALUES (1, ?, '10.77.0.1', 8002, 0, 0)
			ON CONFLICT (ip, port) DO UPDATE SET hostname = excluded.hostname`, host)
	}
	first, err := reg("s1")
	if err != nil {
		t.Fatal(err)
	}
	again, err := reg("s1-renamed")
	if err != nil || again != first {
		t.Fatalf("upsert returned id %d (%v), want the row's %d", again, err, first)
	}
	var host string
	if err := d.QueryRow(ctx, "SELECT hostname FROM schedulers WHERE id = ?", first).Scan(&host); err != nil || host != "s1-renamed" {
		t.Fatalf("upsert left hostname %q (%v)", host, err)
	}
	c, err := d.Insert(ctx, "INSERT INTO clusters (name, created_at, updated_at) VALUES ('doomed', 0, 0)")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Exec(ctx, "INSERT INTO seed_peers (cluster_id, hostname, ip, port, last_keepalive, created_at) VALUES (?, 'sp', '10.77.0.2', 65000, 0, 0)", c); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Exec(ctx, "DELETE FROM clusters WHERE id = ?", c); err != nil {
		t.Fatal(err)
	}
	if err := d.QueryRow(ctx, "SELECT COUNT(*) FROM seed_peers WHERE cluster_id = ?", c).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d seed peers outlived their cluster (%v): ON DELETE CASCADE lost", n, err)
	}
	// A later migration's index on a text column, as a future one may write it.
	tx, err := d.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	stmt, err := d.ddl(ctx, tx, "CREATE INDEX IF NOT EXISTS jobs_type ON jobs (type, created_at)")
	_ = tx.Rollback()
	if err != nil || stmt != "CREATE INDEX IF NOT EXISTS jobs_type ON jobs (type(255), created_at)" {
		t.Errorf("index translation: %q %v", stmt, err)
	}
	var sub string
	if err := d.QueryRow(ctx, "SELECT SUB_PART FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND INDEX_NAME = 'jobs_state' AND COLUMN_NAME = 'state'").Scan(&sub); err != nil || sub != "255" {
		t.Errorf("jobs_state index on state: prefix %q (%v), want 255", sub, err)
	}
}
