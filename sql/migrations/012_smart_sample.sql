-- hoardfs schema, migration 012: each HDD's SMART readings beside the usage history. `hoard
-- health --record` (systemd/hoard-usage.timer) records, with each usage sample, the SMART
-- figures of every disk whose drive has SMART (fsd.core.smart: a loop device or a virtual
-- disk has none and gets no row). Same taken_at as the usage sample's rows; pruned with them
-- after 90 days (sql/usage.py). NULL is "the drive does not report it", never 0.

CREATE TABLE smart_sample (
    taken_at        timestamptz NOT NULL,       -- the usage sample's instant (the database's clock)
    disk            text NOT NULL CHECK (disk <> ''),  -- the disk's label in hoard.toml
    device          text NOT NULL CHECK (device <> ''), -- the whole disk read, e.g. /dev/sda
    serial          text,                       -- the drive's serial number (a swapped drive shows as another)
    passed          boolean,                    -- SMART overall health; NULL = not given
    reallocated     bigint CHECK (reallocated >= 0),    -- ATA 5 (SCSI: grown defect list)
    pending         bigint CHECK (pending >= 0),        -- ATA 197: sectors unreadable now, waiting to be reallocated
    uncorrectable   bigint CHECK (uncorrectable >= 0),  -- ATA 198: offline-uncorrectable sectors
    media_errors    bigint CHECK (media_errors >= 0),   -- NVMe: media and data integrity errors
    temperature_c   integer,                    -- the drive's temperature (°C)
    power_on_hours  bigint CHECK (power_on_hours >= 0),
    read_age_s      double precision NOT NULL CHECK (read_age_s >= 0), -- how old the reading was (the cache's) when recorded
    PRIMARY KEY (taken_at, disk)
);

COMMENT ON TABLE smart_sample IS 'SMART readings of the disks whose drives have SMART, one row per disk per usage sample (hoard health --record; same taken_at as usage_sample; kept 90 days).';
COMMENT ON COLUMN smart_sample.taken_at IS 'The usage sample''s instant (the database''s clock)';
COMMENT ON COLUMN smart_sample.disk IS 'The disk''s label in hoard.toml';
COMMENT ON COLUMN smart_sample.device IS 'The whole disk smartctl read (e.g. /dev/sda)';
COMMENT ON COLUMN smart_sample.serial IS 'The drive''s serial number as smartctl gave it; NULL when not given';
COMMENT ON COLUMN smart_sample.passed IS 'SMART overall health self-assessment; NULL when the drive does not give one';
COMMENT ON COLUMN smart_sample.reallocated IS 'Reallocated sectors (ATA attribute 5; SCSI grown defect list); NULL = not reported';
COMMENT ON COLUMN smart_sample.pending IS 'Sectors pending reallocation (ATA attribute 197): unreadable now; NULL = not reported';
COMMENT ON COLUMN smart_sample.uncorrectable IS 'Offline-uncorrectable sectors (ATA attribute 198); NULL = not reported';
COMMENT ON COLUMN smart_sample.media_errors IS 'NVMe media and data integrity errors; NULL for other drives';
COMMENT ON COLUMN smart_sample.temperature_c IS 'Drive temperature in °C; NULL = not reported';
COMMENT ON COLUMN smart_sample.power_on_hours IS 'Power-on hours; NULL = not reported';
COMMENT ON COLUMN smart_sample.read_age_s IS 'Seconds between smartctl''s reading (the cache''s) and taken_at: a sleeping drive is not woken, its last reading is recorded again';
