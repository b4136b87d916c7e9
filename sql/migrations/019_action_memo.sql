-- hoardfs schema, migration 019: relationship types per action; what each action has done
-- with each input.
--
-- A relationship type is (name, action): the action that writes edges of it owns that type.
-- Two actions (or an action and the ingest adapters, action 0) may use one name, each its own
-- type, so an edge always names the action that made it. A selector naming a relationship
-- matches every type of that name.
--
-- `action_memo` holds, per (action, version, parameters, input node), the run that ran the
-- action's worker on that input: a run over a selection stages and runs only the inputs with
-- no row here for its key (`hoard action run --rerun` runs them all again). The rows are
-- written by the apply intent of the run that made the results; dropping that run's batch
-- drops them (the input is then "not done" again).

ALTER TABLE relationship_type DROP CONSTRAINT relationship_type_name_key;
ALTER TABLE relationship_type ADD CONSTRAINT relationship_type_name_action_key UNIQUE (name, action_id);
COMMENT ON TABLE relationship_type IS 'Kinds of edges, per action: action_id names the action whose edges they are (0 = ingest); one name may be several actions'' own';

CREATE TABLE action_memo (
    action_id     integer NOT NULL REFERENCES action,
    version       integer NOT NULL CHECK (version >= 1),
    params_digest bytea   NOT NULL CHECK (octet_length(params_digest) = 32),
    node_id       bigint  NOT NULL REFERENCES node ON DELETE CASCADE,
    run_id        text    NOT NULL REFERENCES action_batch ON DELETE CASCADE,
    PRIMARY KEY (action_id, version, params_digest, node_id)
);
CREATE INDEX action_memo_run ON action_memo (run_id);
COMMENT ON TABLE action_memo IS 'Which run of an action (version, sha256 of its canonical parameters) ran its worker on an input node: a later run over that input reuses it';

-- A pipeline bound to a source (or every source) and a selector: each batch ingested from it
-- whose members the selector matches goes through the pipeline's stages without a hand
-- `hoard pipeline advance` (`hoard pipeline watch NAME --source S`).
CREATE TABLE pipeline_watch (
    pipeline_id integer PRIMARY KEY REFERENCES pipeline ON DELETE CASCADE,
    source_id   smallint REFERENCES source,                -- NULL: batches of every source
    selector    jsonb,                                     -- NULL: every batch of the source
    since       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pipeline_watch IS 'Pipelines that start on every newly ingested batch of source_id (NULL: any) with a member matching selector (NULL: any)';
COMMENT ON COLUMN pipeline_watch.pipeline_id IS 'The pipeline that starts; one watch each';
COMMENT ON COLUMN pipeline_watch.source_id IS 'Only batches of this source start it; NULL: batches of every source';
COMMENT ON COLUMN pipeline_watch.selector IS 'Only a batch with a member this selector matches starts it; NULL: every batch';
COMMENT ON COLUMN pipeline_watch.since IS 'When the watch began: batches ingested before it do not start the pipeline';
