-- hoardfs schema, migration 007: usage history for the storage page's charts. `hoard health
-- --record` (systemd/hoard-usage.timer) turns the health document it printed into one sample:
-- a row per disk, per SSD zone and one for the store, all with the same taken_at. At most one
-- sample per 10 minutes is kept and rows older than 90 days are pruned when one is recorded
-- (sql/usage.py). What was not known is NULL, never 0: a disk the store could not read is
-- recorded with its state and no bytes, so a chart shows a gap, not an empty disk.

CREATE TABLE usage_sample (
    taken_at       timestamptz NOT NULL,        -- the sample's instant (the database's clock); shared by its rows
    kind           text NOT NULL CHECK (kind IN ('disk', 'zone', 'store')),
    name           text NOT NULL CHECK (name <> ''),  -- disk label, zone name (3A..3D), or 'store'
    state          text NOT NULL CHECK (state <> ''), -- disk: active|draining|failed|missing|unknown; zone: ok|warn|deny|emergency|absent; store: ok|unreadable
    used_bytes     bigint CHECK (used_bytes >= 0),     -- disk: hoard's bytes on it; zone: bytes on disk; store: bytes in shards (one copy each); NULL = not known
    total_bytes    bigint CHECK (total_bytes >= 0),    -- disk: capacity (capacity_gb or the file system); zone: quota; store: NULL
    reserved_bytes bigint CHECK (reserved_bytes >= 0), -- zone: still to be written by running jobs (counts against the quota); else NULL
    objects        bigint CHECK (objects >= 0),        -- store: objects in the index; else NULL
    PRIMARY KEY (taken_at, kind, name),
    -- a disk the store could not read, a zone that is not there, a store that did not open:
    -- their bytes are unknown, and recorded so
    CHECK (state NOT IN ('failed', 'missing', 'unknown', 'absent', 'unreadable')
           OR (used_bytes IS NULL AND total_bytes IS NULL AND reserved_bytes IS NULL AND objects IS NULL)),
    CHECK (kind <> 'disk' OR state IN ('active', 'draining', 'failed', 'missing', 'unknown')),
    CHECK (kind <> 'zone' OR state IN ('ok', 'warn', 'deny', 'emergency', 'absent')),
    CHECK (kind <> 'store' OR (name = 'store' AND state IN ('ok', 'unreadable')))
);

COMMENT ON TABLE usage_sample IS 'Usage history (hoard health --record, at most one sample per 10 minutes, kept 90 days): one row per disk, SSD zone and the store per sample, all with the sample''s taken_at.';
COMMENT ON COLUMN usage_sample.taken_at IS 'The sample''s instant (the database''s clock); every row of one sample has the same';
COMMENT ON COLUMN usage_sample.kind IS 'disk | zone | store';
COMMENT ON COLUMN usage_sample.name IS 'Disk label, zone name (3A..3D), or ''store''';
COMMENT ON COLUMN usage_sample.state IS 'disk: active|draining|failed|missing|unknown (the store did not open); zone: ok|warn|deny|emergency (its level) or absent; store: ok|unreadable. failed/missing/unknown/absent/unreadable rows carry no bytes';
COMMENT ON COLUMN usage_sample.used_bytes IS 'disk: hoard''s bytes on it (the index''s count); zone: bytes on disk; store: bytes in shards, one copy each. NULL = not known, never a guessed 0';
COMMENT ON COLUMN usage_sample.total_bytes IS 'disk: capacity (capacity_gb, or the file system''s size if smaller); zone: its quota; NULL for the store and when not known';
COMMENT ON COLUMN usage_sample.reserved_bytes IS 'zone: bytes running jobs reserved and have not written yet (the warn/deny/emergency marks count them); NULL for disks and the store';
COMMENT ON COLUMN usage_sample.objects IS 'store: objects in the index; NULL for disks and zones';
