-- hoardfs schema, migration 013: how many members each batch gained (or lost) per UTC day, kept
-- by the database itself, so "files ingested per day" (the GUI's chart, sql.browse.ingested_per_day)
-- sums a few rows per batch instead of scanning every batch_member row of the last 30 days
-- (4.5 s at 10 M members: the storage page timed out).
--
-- Append-only: each statement that inserts or deletes members adds one row per (batch, day) it
-- touched, with the count (negative for a delete), from the statement's transition table.
-- Appending, not upserting, means two transactions adding to the same batch never wait on one
-- counter row. `sql.browse.fold_member_tally` folds the rows of past days into one per (batch,
-- day) (hoard health --record does it). The triggers are ENABLE ALWAYS: a trusted bulk apply
-- runs with session_replication_role = replica (sql/apply.py), which skips ordinary triggers.

CREATE TABLE batch_member_tally (
    batch_id text NOT NULL,    -- the batch (no foreign key: a dropped batch's rows are removed by the trigger)
    day      date NOT NULL,    -- the UTC day the members were added (batch_member.added_at)
    items    bigint NOT NULL   -- members added that day by one statement (negative: removed)
);
CREATE INDEX batch_member_tally_day ON batch_member_tally (day);
CREATE INDEX batch_member_tally_batch ON batch_member_tally (batch_id);

CREATE FUNCTION batch_member_tally_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO batch_member_tally (batch_id, day, items)
    SELECT batch_id, (added_at AT TIME ZONE 'UTC')::date, count(*) FROM tally_rows GROUP BY 1, 2;
    RETURN NULL;
END $$;

CREATE FUNCTION batch_member_tally_remove() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- a batch row deleted with its members (ON DELETE CASCADE): its tally goes with it
    DELETE FROM batch_member_tally t USING (SELECT DISTINCT batch_id FROM tally_rows) o
    WHERE t.batch_id = o.batch_id AND NOT EXISTS (SELECT 1 FROM action_batch b WHERE b.batch_id = o.batch_id);
    INSERT INTO batch_member_tally (batch_id, day, items)
    SELECT o.batch_id, (o.added_at AT TIME ZONE 'UTC')::date, -count(*) FROM tally_rows o
    WHERE EXISTS (SELECT 1 FROM action_batch b WHERE b.batch_id = o.batch_id) GROUP BY 1, 2;
    RETURN NULL;
END $$;

CREATE TRIGGER batch_member_tally_add AFTER INSERT ON batch_member
    REFERENCING NEW TABLE AS tally_rows FOR EACH STATEMENT EXECUTE FUNCTION batch_member_tally_add();
CREATE TRIGGER batch_member_tally_remove AFTER DELETE ON batch_member
    REFERENCING OLD TABLE AS tally_rows FOR EACH STATEMENT EXECUTE FUNCTION batch_member_tally_remove();
ALTER TABLE batch_member ENABLE ALWAYS TRIGGER batch_member_tally_add;
ALTER TABLE batch_member ENABLE ALWAYS TRIGGER batch_member_tally_remove;

-- the members already there, once
INSERT INTO batch_member_tally (batch_id, day, items)
SELECT batch_id, (added_at AT TIME ZONE 'UTC')::date, count(*) FROM batch_member GROUP BY 1, 2;

COMMENT ON TABLE batch_member_tally IS 'Members each batch gained (negative: lost) per UTC day, one row per statement (triggers on batch_member); sum the rows of a (batch, day). Past days are folded by hoard health --record.';
COMMENT ON COLUMN batch_member_tally.batch_id IS 'The batch (action_batch.batch_id; no foreign key: the delete trigger removes a dropped batch''s rows)';
COMMENT ON COLUMN batch_member_tally.day IS 'The UTC day the members were added (batch_member.added_at)';
COMMENT ON COLUMN batch_member_tally.items IS 'Members added that day by one statement; negative when removed';
