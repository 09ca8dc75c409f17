package manager

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/damselfly-io/damselfly/manager/db"
)

// Audited actions and their outcomes.
const (
	auditSignIn      = "signin"
	auditTokenCreate = "token_create"
	auditJobCreate   = "job_create"

	outcomeSuccess = "success"
	outcomeFailure = "failure"
	outcomeLocked  = "locked"
)

// AuditEntry is one line of the audit log as GET /api/v1/audit shows it.
type AuditEntry struct {
	ID        int64  `json:"id"`
	CreatedAt int64  `json:"created_at"`
	Action    string `json:"action"`
	Outcome   string `json:"outcome"`
	UserID    int64  `json:"user_id"`
	UserName  string `json:"user_name"`
	Source    string `json:"source"`
	Detail    string `json:"detail"`
}

type auditEntry = AuditEntry

// audit records e in the audit table and as a log line marked audit=true.
// A failure to store it is logged, not returned: the action happened.
func (m *Manager) audit(ctx context.Context, e auditEntry) {
	if e.CreatedAt == 0 {
		e.CreatedAt = nowMs()
	}
	m.log.Info("audit", "audit", true, "action", e.Action, "outcome", e.Outcome, "user", e.UserName, "user_id", e.UserID, "source", e.Source, "detail", e.Detail)
	if _, err := m.db.Exec(context.WithoutCancel(ctx), "INSERT INTO audit_log (created_at, action, outcome, user_id, user_name, source, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
		e.CreatedAt, e.Action, e.Outcome, e.UserID, e.UserName, e.Source, e.Detail); err != nil {
		m.log.Error("store audit entry", "action", e.Action, "err", err)
	}
}

// auditLocked records a refused (locked-out) sign-in: always in the log,
// in the table at most once a minute per source, so that an attacker
// hammering a lockout cannot grow the table at its request rate.
func (m *Manager) auditLocked(ctx context.Context, e auditEntry) {
	var n int
	err := m.db.QueryRow(ctx, "SELECT COUNT(*) FROM audit_log WHERE source = ? AND outcome = ? AND created_at > ?",
		e.Source, outcomeLocked, nowMs()-time.Minute.Milliseconds()).Scan(&n)
	if err == nil && n > 0 {
		m.log.Info("audit", "audit", true, "action", e.Action, "outcome", e.Outcome, "user", e.UserName, "user_id", e.UserID, "source", e.Source, "detail", "not stored: one locked sign-in per source and minute is")
		return
	}
	m.audit(ctx, e)
}

// sourceOf is the request's source address: the TCP peer's IP. Headers such
// as X-Forwarded-For are not trusted (any client can send them).
func sourceOf(r *http.Request) string {
	h, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return h
}

const auditCols = "id, created_at, action, outcome, user_id, user_name, source, detail"

func scanAudit(s interface{ Scan(...any) error }) (AuditEntry, error) {
	var e AuditEntry
	err := s.Scan(&e.ID, &e.CreatedAt, &e.Action, &e.Outcome, &e.UserID, &e.UserName, &e.Source, &e.Detail)
	return e, err
}

// handleListAudit pages through the audit log, newest first, optionally
// filtered by ?action= and ?user=.
func (m *Manager) handleListAudit(w http.ResponseWriter, r *http.Request) {
	limit, offset, err := paging(r)
	if err != nil {
		fail(w, err)
		return
	}
	where, args := " WHERE 1 = 1", []any{}
	if a := r.URL.Query().Get("action"); a != "" {
		switch a {
		case auditSignIn, auditTokenCreate, auditJobCreate:
		default:
			fail(w, badRequest("action %q: want %s, %s or %s", a, auditSignIn, auditTokenCreate, auditJobCreate))
			return
		}
		where, args = where+" AND action = ?", append(args, a)
	}
	if u := r.URL.Query().Get("user"); u != "" {
		where, args = where+" AND user_name = ?", append(args, u)
	}
	ctx := r.Context()
	var total int
	if err := m.db.QueryRow(ctx, "SELECT COUNT(*) FROM audit_log"+where, args...).Scan(&total); err != nil {
		fail(w, fmt.Errorf("count audit log: %w", err))
		return
	}
	rows, err := m.db.Query(ctx, "SELECT "+auditCols+" FROM audit_log"+where+" ORDER BY id DESC LIMIT ? OFFSET ?", append(args, limit, offset)...)
	if err != nil {
		fail(w, fmt.Errorf("list audit log: %w", err))
		return
	}
	defer rows.Close()
	var items []AuditEntry
	for rows.Next() {
		e, err := scanAudit(rows)
		if err != nil {
			fail(w, fmt.Errorf("list audit log: %w", err))
			return
		}
		items = append(items, e)
	}
	if err := rows.Err(); err != nil {
		fail(w, fmt.Errorf("list audit log: %w", err))
		return
	}
	writeList(w, items, total)
}

// Subjects of sign-in throttling.
const (
	subjectUser   = "user"
	subjectSource = "source"
)

// lockedFor returns how long the name or the source is still locked out
// (0 when neither is).
func (m *Manager) lockedFor(ctx context.Context, name, source string) (time.Duration, error) {
	var until int64
	err := m.db.QueryRow(ctx, `SELECT COALESCE(MAX(locked_until), 0) FROM signin_lockouts
		WHERE ((kind = ? AND subject = ?) OR (kind = ? AND subject = ?)) AND locked_until > ?`,
		subjectUser, name, subjectSource, source, nowMs()).Scan(&until)
	if err != nil {
		return 0, fmt.Errorf("check sign-in lockout: %w", err)
	}
	if until == 0 {
		return 0, nil
	}
	return time.Duration(until-nowMs()) * time.Millisecond, nil
}

// signInFailed counts a failure against the name and the source and locks
// out whichever reached its limit within the window. It returns the lockout
// it started (0 if none). Replicas share the counts through the database;
// concurrent failures may overshoot a limit by the number of requests in
// flight, never undercount.
func (m *Manager) signInFailed(ctx context.Context, name, source string) (time.Duration, error) {
	ctx = context.WithoutCancel(ctx)
	a := m.cfg.Auth
	now := nowMs()
	since := now - a.FailureWindow.D().Milliseconds()
	// Old failures count no more.
	if _, err := m.db.Exec(ctx, "DELETE FROM signin_failures WHERE failed_at < ?", since); err != nil {
		return 0, fmt.Errorf("sweep sign-in failures: %w", err)
	}
	if _, err := m.db.Exec(ctx, "DELETE FROM signin_lockouts WHERE locked_until < ?", now); err != nil {
		return 0, fmt.Errorf("sweep sign-in lockouts: %w", err)
	}
	var locked time.Duration
	for _, s := range []struct {
		kind, subject string
		limit         int
	}{{subjectUser, name, a.MaxFailuresPerUser}, {subjectSource, source, a.MaxFailuresPerSource}} {
		if _, err := m.db.Exec(ctx, "INSERT INTO signin_failures (kind, subject, failed_at) VALUES (?, ?, ?)", s.kind, s.subject, now); err != nil {
			return 0, fmt.Errorf("count sign-in failure: %w", err)
		}
		var n int
		if err := m.db.QueryRow(ctx, "SELECT COUNT(*) FROM signin_failures WHERE kind = ? AND subject = ? AND failed_at >= ?", s.kind, s.subject, since).Scan(&n); err != nil {
			return 0, fmt.Errorf("count sign-in failures: %w", err)
		}
		if n < s.limit {
			continue
		}
		until := now + a.Lockout.D().Milliseconds()
		if _, err := m.db.Exec(ctx, "DELETE FROM signin_lockouts WHERE kind = ? AND subject = ?", s.kind, s.subject); err != nil {
			return 0, fmt.Errorf("lock out %s: %w", s.kind, err)
		}
		// The failures that led here are spent: after the lockout, the
		// subject starts afresh.
		if _, err := m.db.Exec(ctx, "DELETE FROM signin_failures WHERE kind = ? AND subject = ?", s.kind, s.subject); err != nil {
			return 0, fmt.Errorf("lock out %s: %w", s.kind, err)
		}
		if _, err := m.db.Insert(ctx, "INSERT INTO signin_lockouts (kind, subject, locked_until) VALUES (?, ?, ?)", s.kind, s.subject, until); err != nil && !db.IsUnique(err) {
			return 0, fmt.Errorf("lock out %s: %w", s.kind, err)
		}
		m.log.Warn("sign-in locked out", "audit", true, "kind", s.kind, "subject", s.subject, "failures", n, "until", time.UnixMilli(until).UTC().Format(time.RFC3339))
		locked = a.Lockout.D()
	}
	return locked, nil
}

// signInSucceeded forgets the name's failures (the source's stay: one good
// account must not reset a source guessing others).
func (m *Manager) signInSucceeded(ctx context.Context, name string) {
	if _, err := m.db.Exec(context.WithoutCancel(ctx), "DELETE FROM signin_failures WHERE kind = ? AND subject = ?", subjectUser, name); err != nil {
		m.log.Warn("reset sign-in failures", "user", name, "err", err)
	}
}

// retryAfter is a Retry-After value in whole seconds, at least 1.
func retryAfter(d time.Duration) string {
	s := int64((d + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(s, 1), 10)
}
