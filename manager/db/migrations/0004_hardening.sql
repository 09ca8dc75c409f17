-- Sign-in throttling and the audit log (docs/security.md).
-- signin_failures: one row per failed sign-in, once under the name tried
-- (kind 'user') and once under the source address (kind 'source'); rows
-- older than the counting window are swept. Kept in the database so that
-- every replica counts the same failures.
CREATE TABLE signin_failures (
  id {{pk}},
  kind TEXT NOT NULL,
  subject TEXT NOT NULL,
  failed_at BIGINT NOT NULL
);
CREATE INDEX signin_failures_subject ON signin_failures (kind, subject, failed_at);

-- signin_lockouts: a name or source refused until locked_until.
CREATE TABLE signin_lockouts (
  id {{pk}},
  kind TEXT NOT NULL,
  subject TEXT NOT NULL,
  locked_until BIGINT NOT NULL,
  UNIQUE (kind, subject)
);

-- audit_log: sign-ins (success, failure, locked), token and job creation.
CREATE TABLE audit_log (
  id {{pk}},
  created_at BIGINT NOT NULL,
  action TEXT NOT NULL,
  outcome TEXT NOT NULL,
  user_id BIGINT NOT NULL DEFAULT 0,
  user_name TEXT NOT NULL DEFAULT '',
  source TEXT NOT NULL DEFAULT '',
  detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_action ON audit_log (action, id);
CREATE INDEX audit_log_source ON audit_log (source, outcome, created_at);
