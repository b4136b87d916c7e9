-- hoardfs schema, migration 004: source-specific fields and SchemaDecider proposals.
-- Until a source's proposal is accepted, its specific fields live as JSONB beside the
-- common metadata; accepting creates a typed table src_<source> (node_id + columns +
-- `extra` JSONB for what did not become a column), backfills it from that JSONB, and from
-- then on every write-intent fills it too.

ALTER TABLE common_metadata ADD COLUMN specific jsonb;  -- flattened `a.b.c` keys; NULL when none

CREATE TABLE schema_proposal (
    proposal_id  serial PRIMARY KEY,
    source_id    smallint NOT NULL REFERENCES source,
    status       text NOT NULL DEFAULT 'provisional' CHECK (status IN ('provisional', 'accepted', 'rejected', 'superseded')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    decided_at   timestamptz,
    sample_count integer NOT NULL CHECK (sample_count BETWEEN 1 AND 128),
    fields       jsonb NOT NULL,   -- [{path, column, sql_type, presence, type_share, as}] as the decider saw them
    ddl          text NOT NULL     -- CREATE TABLE src_<source> … exactly as --accept runs it
);
CREATE UNIQUE INDEX schema_proposal_one_open ON schema_proposal (source_id) WHERE status = 'provisional';

COMMENT ON COLUMN common_metadata.specific IS 'Source-specific fields flattened to a.b.c keys (depth 3); the typed src_<source> table holds them once its proposal is accepted';
COMMENT ON TABLE schema_proposal IS 'SchemaDecider (seed 001): a proposed source-specific table from up to 128 sample documents';
COMMENT ON COLUMN schema_proposal.proposal_id IS 'Number shown by hoard db proposals';
COMMENT ON COLUMN schema_proposal.source_id IS 'The source the table is for';
COMMENT ON COLUMN schema_proposal.status IS 'provisional (waiting), accepted (table exists), rejected, superseded (a newer proposal replaced it)';
COMMENT ON COLUMN schema_proposal.created_at IS 'When the decider proposed it';
COMMENT ON COLUMN schema_proposal.decided_at IS 'When it was accepted or rejected; NULL while provisional';
COMMENT ON COLUMN schema_proposal.sample_count IS 'How many metadata documents the decider looked at (at most 128)';
COMMENT ON COLUMN schema_proposal.fields IS 'Per flattened field: presence share, type stability, and whether it became a column or stays in extra JSONB';
COMMENT ON COLUMN schema_proposal.ddl IS 'The DDL --accept runs (CREATE TABLE src_<source> ...)';

-- A cast that answers NULL instead of failing: a value of the wrong type in one document
-- must not stop a batch (the value stays in common_metadata.specific either way).
CREATE FUNCTION hoard_try_timestamptz(v text) RETURNS timestamptz LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN v::timestamptz;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;
COMMENT ON FUNCTION hoard_try_timestamptz(text) IS 'text → timestamptz, NULL when it does not parse (src_<source> columns)';
