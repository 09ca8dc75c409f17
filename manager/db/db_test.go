package db

import (
	"context"
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
	for range 2 {
		d, err := Open(ctx, SQLite, path)
		if err != nil {
			t.Fatal(err)
		}
		v, err := d.Version(ctx)
		if err != nil || v != 1 {
			t.Fatalf("version %d %v", v, err)
		}
		var n int
		if err := d.QueryRow(ctx, "SELECT COUNT(*) FROM clusters WHERE is_default = ?", 1).Scan(&n); err != nil || n != 1 {
			t.Fatalf("default clusters: %d %v", n, err)
		}
		d.Close()
	}
	if _, err := Open(ctx, "oracle", path); err == nil {
		t.Fatal("unknown database type accepted")
	}
}
