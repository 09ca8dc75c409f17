package mysqltest

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"testing"
)

func TestStartCreateStop(t *testing.T) {
	s, err := Start()
	if errors.Is(err, ErrMissing) && os.Getenv("CI") == "" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	dir := s.dir
	dsn, err := s.NewDatabase(context.Background())
	if err != nil {
		s.Stop()
		t.Fatal(err)
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		s.Stop()
		t.Fatal(err)
	}
	var v string
	if err := db.QueryRow("SELECT VERSION()").Scan(&v); err != nil {
		t.Error(err)
	}
	db.Close()
	t.Logf("MariaDB %s", v)
	s.Stop()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("data directory %s left behind: %v", dir, err)
	}
}
