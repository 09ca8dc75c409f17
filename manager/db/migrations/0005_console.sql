-- The console shows each component's effective configuration (secrets
-- redacted), as reported at registration, and each daemon's cache use, as
-- reported when it asks for its schedulers.
ALTER TABLE schedulers ADD COLUMN config TEXT NOT NULL DEFAULT '';
ALTER TABLE seed_peers ADD COLUMN config TEXT NOT NULL DEFAULT '';
ALTER TABLE peers ADD COLUMN cache_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE peers ADD COLUMN cache_tasks INTEGER NOT NULL DEFAULT 0;
