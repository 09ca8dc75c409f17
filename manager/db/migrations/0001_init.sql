-- {{pk}} is the dialect's auto-increment primary key. Times are Unix
-- milliseconds; booleans are 0/1 integers (one schema for SQLite and PostgreSQL).
CREATE TABLE clusters (
  id {{pk}},
  name TEXT NOT NULL UNIQUE,
  description TEXT NOT NULL DEFAULT '',
  is_default INTEGER NOT NULL DEFAULT 0,
  scope_idc TEXT NOT NULL DEFAULT '',
  scope_location TEXT NOT NULL DEFAULT '',
  scope_cidrs TEXT NOT NULL DEFAULT '',
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);

CREATE TABLE schedulers (
  id {{pk}},
  cluster_id BIGINT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
  hostname TEXT NOT NULL,
  ip TEXT NOT NULL,
  port INTEGER NOT NULL,
  idc TEXT NOT NULL DEFAULT '',
  location TEXT NOT NULL DEFAULT '',
  last_keepalive BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  UNIQUE (ip, port)
);

CREATE TABLE seed_peers (
  id {{pk}},
  cluster_id BIGINT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
  hostname TEXT NOT NULL,
  ip TEXT NOT NULL,
  port INTEGER NOT NULL,
  upload_port INTEGER NOT NULL DEFAULT 0,
  idc TEXT NOT NULL DEFAULT '',
  location TEXT NOT NULL DEFAULT '',
  last_keepalive BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  UNIQUE (ip, port)
);

-- peers are the daemons that asked for their schedulers (targets of
-- all_peers preheats); last_seen is their last ListSchedulers.
CREATE TABLE peers (
  id {{pk}},
  host_id TEXT NOT NULL UNIQUE,
  cluster_id BIGINT NOT NULL,
  hostname TEXT NOT NULL,
  ip TEXT NOT NULL,
  port INTEGER NOT NULL,
  upload_port INTEGER NOT NULL DEFAULT 0,
  idc TEXT NOT NULL DEFAULT '',
  location TEXT NOT NULL DEFAULT '',
  seed INTEGER NOT NULL DEFAULT 0,
  last_seen BIGINT NOT NULL
);

CREATE TABLE users (
  id {{pk}},
  name TEXT NOT NULL UNIQUE,
  email TEXT NOT NULL DEFAULT '',
  password_hash TEXT NOT NULL,
  role TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);

-- tokens holds session tokens (kind 'session') and personal access tokens
-- (kind 'pat'), by the SHA-256 of the token: the token itself is never stored.
CREATE TABLE tokens (
  id {{pk}},
  user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  kind TEXT NOT NULL,
  name TEXT NOT NULL DEFAULT '',
  hash TEXT NOT NULL UNIQUE,
  expires_at BIGINT NOT NULL,
  last_used_at BIGINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL
);

CREATE TABLE applications (
  id {{pk}},
  name TEXT NOT NULL UNIQUE,
  url TEXT NOT NULL DEFAULT '',
  description TEXT NOT NULL DEFAULT '',
  priority INTEGER NOT NULL DEFAULT 0,
  user_id BIGINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);

-- jobs: args is the request with credentials redacted; secret holds the
-- credentials only while the job may still run (cleared when it ends).
-- owner/lease_until claim a job for one manager replica.
CREATE TABLE jobs (
  id {{pk}},
  type TEXT NOT NULL,
  state TEXT NOT NULL,
  args TEXT NOT NULL,
  secret TEXT NOT NULL DEFAULT '',
  result TEXT NOT NULL DEFAULT '',
  error TEXT NOT NULL DEFAULT '',
  user_id BIGINT NOT NULL DEFAULT 0,
  owner TEXT NOT NULL DEFAULT '',
  lease_until BIGINT NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE INDEX jobs_state ON jobs (state, lease_until);

INSERT INTO clusters (name, description, is_default, created_at, updated_at)
VALUES ('default', 'created by the first migration', 1, 0, 0);
