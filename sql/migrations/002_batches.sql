-- hoardfs schema, migration 002: action batches, events, pipelines, per-action results.

CREATE TABLE action_batch (
    batch_id   text PRIMARY KEY CHECK (batch_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
    action_id  integer NOT NULL REFERENCES action,
    source_id  smallint REFERENCES source,            -- set for ingest batches
    created_at timestamptz NOT NULL DEFAULT now(),
    sealed_at  timestamptz,                           -- NULL while open
    CHECK (sealed_at IS NULL OR sealed_at >= created_at)
);

CREATE TABLE batch_member (
    batch_id text NOT NULL REFERENCES action_batch ON DELETE CASCADE,
    node_id  bigint NOT NULL REFERENCES node ON DELETE CASCADE,
    added_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, node_id)
);
CREATE INDEX batch_member_node ON batch_member (node_id);

-- A sealed batch refuses new members (checked in the database, whoever writes).
CREATE FUNCTION batch_member_open() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM action_batch WHERE batch_id = NEW.batch_id AND sealed_at IS NOT NULL) THEN
        RAISE EXCEPTION 'batch % is sealed and takes no new members', NEW.batch_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER batch_member_open BEFORE INSERT ON batch_member
    FOR EACH ROW EXECUTE FUNCTION batch_member_open();

CREATE TABLE action_event (
    event_id   bigserial PRIMARY KEY,
    batch_id   text NOT NULL REFERENCES action_batch ON DELETE CASCADE,
    action_id  integer NOT NULL REFERENCES action,
    status     text NOT NULL CHECK (status IN ('started', 'done', 'failed', 'cancelled')),
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at   timestamptz CHECK (ended_at IS NULL OR ended_at >= started_at),
    detail     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX action_event_batch ON action_event (batch_id, started_at);

CREATE TABLE pipeline (
    pipeline_id serial PRIMARY KEY,
    name        text NOT NULL UNIQUE
);

CREATE TABLE pipeline_stage (
    pipeline_id integer NOT NULL REFERENCES pipeline ON DELETE CASCADE,
    position    smallint NOT NULL CHECK (position >= 0),
    action_id   integer NOT NULL REFERENCES action,
    PRIMARY KEY (pipeline_id, position)
);

CREATE TABLE batch_stage (
    batch_id    text NOT NULL REFERENCES action_batch ON DELETE CASCADE,
    pipeline_id integer NOT NULL REFERENCES pipeline,
    done_position smallint NOT NULL DEFAULT -1,       -- last stage done for all members; -1 = none
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, pipeline_id)
);

CREATE TABLE result_ocr_box (
    node_id    bigint NOT NULL REFERENCES node ON DELETE CASCADE,
    batch_id   text NOT NULL REFERENCES action_batch,
    box_no     integer NOT NULL CHECK (box_no >= 0),
    x real NOT NULL, y real NOT NULL, w real NOT NULL CHECK (w >= 0), h real NOT NULL CHECK (h >= 0),
    text       text NOT NULL DEFAULT '',
    confidence real CHECK (confidence BETWEEN 0 AND 1),
    PRIMARY KEY (node_id, batch_id, box_no)
);

CREATE TABLE result_canny (
    node_id  bigint NOT NULL REFERENCES node ON DELETE CASCADE,
    batch_id text NOT NULL REFERENCES action_batch,
    status   text NOT NULL CHECK (status IN ('ok', 'failed', 'skipped')),
    edge_ratio real CHECK (edge_ratio BETWEEN 0 AND 1),
    PRIMARY KEY (node_id, batch_id)
);

COMMENT ON TABLE action_batch IS 'A set of nodes one action works on (an ingest batch, a GPU job); sealed when complete.';
COMMENT ON COLUMN action_batch.sealed_at IS 'NULL while open; a sealed batch refuses new members (trigger batch_member_open)';
COMMENT ON TABLE batch_member IS 'Nodes of a batch. Deletion type B drops a batch''s rows here; content still in another batch stays.';
COMMENT ON TABLE action_event IS 'History of an action on a batch: start, end, status, details.';
COMMENT ON TABLE pipeline IS 'A named sequence of actions (stages) that batches go through.';
COMMENT ON TABLE pipeline_stage IS 'Stage `position` of a pipeline runs `action_id`.';
COMMENT ON TABLE batch_stage IS 'Per batch and pipeline: the last stage done for all members.';
COMMENT ON COLUMN batch_stage.done_position IS 'Position of the last completed stage; -1 when none is done';
COMMENT ON TABLE result_ocr_box IS 'OCR action result: text boxes in absolute pixels.';
COMMENT ON TABLE result_canny IS 'Canny edge action result: status and the share of edge pixels.';
