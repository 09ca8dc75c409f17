package db

import (
	"context"
	"database/sql"
	"fmt"
	"regexp"
	"strings"

	"github.com/go-sql-driver/mysql"
)

// Migrations are written once, in the SQL SQLite and PostgreSQL share, with
// {{pk}} for the auto-increment primary key. ddl translates a statement for
// the dialect, so a new migration needs no per-database copy. For MySQL and
// MariaDB it rewrites, in CREATE TABLE and ALTER TABLE … ADD COLUMN:
//
//   - {{pk}} to BIGINT AUTO_INCREMENT PRIMARY KEY;
//   - a TEXT column that is UNIQUE (inline or in a table-level UNIQUE or
//     PRIMARY KEY) to VARCHAR(255), which can be indexed whole; any other
//     TEXT column to LONGTEXT, with a literal DEFAULT written as an
//     expression DEFAULT ('…') as MySQL 8 requires;
//   - an inline REFERENCES into a table-level FOREIGN KEY (MySQL ignores the
//     inline form);
//   - and every table gets ENGINE=InnoDB with utf8mb4 and a binary
//     collation, so that comparisons and uniqueness are case-sensitive as on
//     the other databases.
//
// In CREATE INDEX a LONGTEXT column (as the database reports it) is indexed
// by a 255-character prefix. MySQL commits DDL at once, so a migration that
// fails halfway is not rolled back there: fix it and run it again by hand.
func (d *DB) ddl(ctx context.Context, tx *sql.Tx, stmt string) (string, error) {
	switch d.Type {
	case SQLite:
		return strings.ReplaceAll(stmt, "{{pk}}", "INTEGER PRIMARY KEY AUTOINCREMENT"), nil
	case Postgres:
		return strings.ReplaceAll(stmt, "{{pk}}", "BIGSERIAL PRIMARY KEY"), nil
	}
	s := strings.TrimSpace(stmt)
	up := strings.ToUpper(s)
	switch {
	case strings.HasPrefix(up, "CREATE TABLE"): // IF NOT EXISTS included
		return mysqlCreateTable(s)
	case strings.HasPrefix(up, "ALTER TABLE"):
		return mysqlAlterTable(s), nil
	case strings.HasPrefix(up, "CREATE INDEX"), strings.HasPrefix(up, "CREATE UNIQUE INDEX"):
		return mysqlCreateIndex(ctx, tx, s)
	}
	return s, nil
}

const (
	mysqlPK        = "BIGINT AUTO_INCREMENT PRIMARY KEY"
	mysqlTableOpts = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
	mysqlKeyText   = "VARCHAR(255)"
	mysqlPrefix    = 255
)

var (
	reTextType   = regexp.MustCompile(`(?i)^(\w+)\s+TEXT\b`)
	reUnique     = regexp.MustCompile(`(?i)\bUNIQUE\b|\bPRIMARY\s+KEY\b`)
	reDefaultLit = regexp.MustCompile(`(?i)\bDEFAULT\s+('(?:[^']|'')*')`)
	reReferences = regexp.MustCompile(`(?i)\s+REFERENCES\s+(\w+\s*\([^)]*\)(?:\s+ON\s+(?:DELETE|UPDATE)\s+(?:CASCADE|SET\s+NULL|RESTRICT|NO\s+ACTION))*)`)
	reKeyList    = regexp.MustCompile(`(?i)^(?:CONSTRAINT\s+\w+\s+)?(?:UNIQUE|PRIMARY\s+KEY)\s*\(([^)]*)\)`)
	reTableItem  = regexp.MustCompile(`(?i)^(?:CONSTRAINT|UNIQUE|PRIMARY|FOREIGN|CHECK|KEY|INDEX)\b`)
)

// splitTop splits s at commas outside parentheses and quotes.
func splitTop(s string) []string {
	var out []string
	depth, start, quoted := 0, 0, false
	for i, r := range s {
		switch {
		case r == '\'':
			quoted = !quoted
		case quoted:
		case r == '(':
			depth++
		case r == ')':
			depth--
		case r == ',' && depth == 0:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// mysqlColumn rewrites one column definition; keyed says the column is part
// of a table-level unique key. It returns the definition and a table-level
// foreign key to add ("" for none).
func mysqlColumn(def string, keyed bool) (string, string) {
	def = strings.ReplaceAll(strings.TrimSpace(def), "{{pk}}", mysqlPK)
	m := reTextType.FindStringSubmatch(def)
	var fk string
	if r := reReferences.FindStringSubmatchIndex(def); r != nil {
		name := strings.Fields(def)[0]
		fk = "FOREIGN KEY (" + name + ") REFERENCES " + def[r[2]:r[3]]
		def = def[:r[0]] + def[r[1]:]
	}
	if m == nil {
		return def, fk
	}
	rest := def[len(m[0]):]
	if keyed || reUnique.MatchString(rest) {
		return m[1] + " " + mysqlKeyText + rest, fk
	}
	rest = reDefaultLit.ReplaceAllString(rest, "DEFAULT ($1)")
	return m[1] + " LONGTEXT" + rest, fk
}

func mysqlCreateTable(s string) (string, error) {
	open, end := strings.Index(s, "("), strings.LastIndex(s, ")")
	if open < 0 || end < open {
		return "", fmt.Errorf("translate for mysql: cannot read %q", s)
	}
	items := splitTop(s[open+1 : end])
	keyed := map[string]bool{}
	for _, it := range items {
		if m := reKeyList.FindStringSubmatch(strings.TrimSpace(it)); m != nil {
			for _, c := range strings.Split(m[1], ",") {
				keyed[strings.ToLower(strings.TrimSpace(c))] = true
			}
		}
	}
	var out, fks []string
	for _, it := range items {
		it = strings.TrimSpace(it)
		if it == "" {
			continue
		}
		if reTableItem.MatchString(it) {
			out = append(out, it)
			continue
		}
		name := strings.ToLower(strings.Fields(it)[0])
		def, fk := mysqlColumn(it, keyed[name])
		out = append(out, def)
		if fk != "" {
			fks = append(fks, fk)
		}
	}
	out = append(out, fks...)
	return s[:open+1] + "\n  " + strings.Join(out, ",\n  ") + "\n)" + mysqlTableOpts + s[end+1:], nil
}

var reAddColumn = regexp.MustCompile(`(?is)^(ALTER\s+TABLE\s+\w+\s+ADD\s+(?:COLUMN\s+)?)(.*)$`)

func mysqlAlterTable(s string) string {
	m := reAddColumn.FindStringSubmatch(s)
	if m == nil {
		return s
	}
	def, fk := mysqlColumn(m[2], false)
	s = m[1] + def
	if fk != "" {
		s += ", ADD " + fk
	}
	return s
}

var reCreateIndex = regexp.MustCompile(`(?is)^(CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?\w+\s+ON\s+(\w+)\s*\()([^)]*)(\).*)$`)

// mysqlCreateIndex gives LONGTEXT columns of an index a prefix length.
func mysqlCreateIndex(ctx context.Context, tx *sql.Tx, s string) (string, error) {
	m := reCreateIndex.FindStringSubmatch(s)
	if m == nil {
		return s, nil
	}
	cols := strings.Split(m[3], ",")
	for i, c := range cols {
		c = strings.TrimSpace(c)
		if strings.Contains(c, "(") {
			continue // a prefix given already
		}
		var typ string
		err := tx.QueryRowContext(ctx, "SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?",
			m[2], strings.Fields(c)[0]).Scan(&typ)
		if err != nil {
			return "", fmt.Errorf("translate for mysql: column %s.%s: %w", m[2], c, err)
		}
		if strings.HasSuffix(strings.ToLower(typ), "text") {
			f := strings.Fields(c)
			f[0] = fmt.Sprintf("%s(%d)", f[0], mysqlPrefix)
			c = strings.Join(f, " ")
		}
		cols[i] = c
	}
	return m[1] + strings.Join(cols, ", ") + m[4], nil
}

var (
	reOnConflictUpdate  = regexp.MustCompile(`(?is)\bON\s+CONFLICT\s*(?:\([^)]*\))?\s*DO\s+UPDATE\s+SET\b`)
	reOnConflictNothing = regexp.MustCompile(`(?is)\s*\bON\s+CONFLICT\s*(?:\([^)]*\))?\s*DO\s+NOTHING\b`)
	reExcluded          = regexp.MustCompile(`(?i)\bexcluded\.(\w+)`)
	reInsertInto        = regexp.MustCompile(`(?i)^\s*INSERT\s+INTO\b`)
)

// mysqlQuery rewrites a query for MySQL: PostgreSQL/SQLite upserts become
// ON DUPLICATE KEY UPDATE (excluded.c becomes VALUES(c)); ON CONFLICT DO
// NOTHING becomes INSERT IGNORE. Placeholders are ? already.
func mysqlQuery(q string) string {
	if reOnConflictNothing.MatchString(q) {
		q = reOnConflictNothing.ReplaceAllString(q, "")
		q = reInsertInto.ReplaceAllString(q, "INSERT IGNORE INTO")
	}
	if reOnConflictUpdate.MatchString(q) {
		q = reOnConflictUpdate.ReplaceAllString(q, "ON DUPLICATE KEY UPDATE")
		q = reExcluded.ReplaceAllString(q, "VALUES($1)")
	}
	return q
}

// mysqlInsert runs an INSERT and returns the row's id: the inserted one, or
// for an upsert that updated a row, that row's (LAST_INSERT_ID(id) makes
// MySQL report it).
func (d *DB) mysqlInsert(ctx context.Context, q string, args ...any) (int64, error) {
	q = mysqlQuery(q)
	if reOnConflictUpdate.MatchString(q) || strings.Contains(strings.ToUpper(q), "ON DUPLICATE KEY UPDATE") {
		q += ", id = LAST_INSERT_ID(id)"
	}
	res, err := d.ExecContext(ctx, q, args...)
	if err != nil {
		return 0, err
	}
	return res.LastInsertId()
}

// mysqlDSN checks a MySQL DSN (user:password@tcp(host:port)/db?params).
func mysqlDSN(dsn string) (string, error) {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return "", fmt.Errorf("mysql dsn: want user:password@tcp(host:port)/db: %w", err)
	}
	if cfg.DBName == "" {
		return "", fmt.Errorf("mysql dsn: name the database (…/db)")
	}
	return cfg.FormatDSN(), nil
}
