-- hoardfs schema, migration 003: the record of every database backup and its verification.

CREATE TABLE backup_log (
    backup_id   bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('dump', 'full', 'diff')),
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    size_bytes  bigint NOT NULL CHECK (size_bytes >= 0),
    sha256      bytea CHECK (sha256 IS NULL OR octet_length(sha256) = 32),  -- the dump as a stored object
    location    text NOT NULL,                  -- where the cold-storage copy is (zone 3B) or the repository
    row_counts  jsonb NOT NULL DEFAULT '{}',    -- table -> rows, in the dump's own snapshot
    verified_at timestamptz,
    verify_ok   boolean,
    verify_detail text
);
CREATE INDEX backup_log_kind_time ON backup_log (kind, finished_at DESC);

COMMENT ON TABLE backup_log IS 'Every database backup (pg_dump stored in S01, pgBackRest full/diff) and its restore-verify result.';
COMMENT ON COLUMN backup_log.sha256 IS 'For dumps: the sha256 of the dump file, stored in S01 (replicated on the HDDs)';
COMMENT ON COLUMN backup_log.row_counts IS 'Rows per table counted in the snapshot the dump was taken from; restore-verify compares';
COMMENT ON COLUMN backup_log.verify_ok IS 'NULL until verified; result of the last restore into a scratch database';
