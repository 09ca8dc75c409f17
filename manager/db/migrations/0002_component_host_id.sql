-- The host ID a scheduler or seed peer registered under: with mutual TLS it
-- is the one its certificate names, and only that certificate may keep the
-- record alive or re-register its address.
ALTER TABLE schedulers ADD COLUMN host_id TEXT NOT NULL DEFAULT '';
ALTER TABLE seed_peers ADD COLUMN host_id TEXT NOT NULL DEFAULT '';
