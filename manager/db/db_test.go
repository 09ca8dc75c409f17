package db

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestRebind(t *testing.T) {
	pg, lite := &DB{Type: Postgres}, &DB{Type: SQLite}
	q := "SELECT a FROM t WHERE b = ? AND c IN (?, ?)"
	if got := pg.Q(q); got != "SELECT a FROM t WHERE b = $1 AND c IN ($2, $3)" {
		t.Fatalf("postgres: %s", got)
	}
	if got := lite.Q(q); got != q {
		t.Fatalf("sqlite: %s", got)
	}
}

// Opening twice applies the migrations once (PostgreSQL is covered by the
// manager's test suite, which runs on both).
func TestMigrateOnce(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub", "m.db")
	ms, err := loadMigrations()
	if err != nil || len(ms) == 0 {
		t.Fatalf("migrations: %v", err)
	}
	latest := ms[len(ms)-1].version
	for range 2 {
		d, err := Open(ctx, SQLite, path)
		if err != nil {
			t.Fatal(err)
		}
		v, err := d.Version(ctx)
		if err != nil || v != latest {
			t.Fatalf("version %d %v", v, err)
		}
		var n int
		if err := d.QueryRow(ctx, "SELECT COUNT(*) FROM clusters WHERE is_default = ?", 1).Scan(&n); err != nil || n != 1 {
			t.Fatalf("default clusters: %d %v", n, err)
		}
		d.Close()
	}
	if _, err := Open(ctx, "mysql", path); err == nil {
		t.Fatal("unknown database type accepted")
	}
}

// The SQLite file and its -wal and -shm companions are the owner's alone,
// when created and when an older version left them 0644.
func TestSQLiteFileModes(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "m.db")
	check := func(when string) {
		t.Helper()
		for _, p := range []string{path, path + "-wal", path + "-shm"} {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			if m := fi.Mode().Perm(); m != 0o600 {
				t.Errorf("%s: %s has mode %o, want 600", when, filepath.Base(p), m)
			}
		}
	}
	d, err := Open(ctx, SQLite, path)
	if err != nil {
		t.Fatal(err)
	}
	check("new database")
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d.Close()
	if d, err = Open(ctx, SQLite, path); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	check("database left 0644")
}
