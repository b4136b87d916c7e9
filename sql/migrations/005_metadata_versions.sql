-- hoardfs schema, migration 005: every batch's description of a node, so that deleting a batch
-- can put back what the other batches say (common_metadata keeps only the newest download).

CREATE TABLE metadata_version (
    node_id       bigint NOT NULL REFERENCES node ON DELETE CASCADE,
    source_id     smallint NOT NULL REFERENCES source,
    raw_object    bytea NOT NULL CHECK (octet_length(raw_object) = 32),  -- the document it was read from
    is_raw        boolean NOT NULL DEFAULT true,
    is_root       boolean NOT NULL DEFAULT false,
    title         text,
    view_count    bigint CHECK (view_count >= 0),
    update_time   timestamptz,
    download_time timestamptz,
    author        text,
    user_name     text,
    raw_metadata  jsonb CHECK (raw_metadata IS NULL OR octet_length(raw_metadata::text) <= 1024),
    specific      jsonb,
    PRIMARY KEY (node_id, source_id, raw_object)
);
CREATE INDEX metadata_version_raw_object ON metadata_version (raw_object);

-- what is known so far: the rows that won (the versions they overwrote are gone)
INSERT INTO metadata_version (node_id, source_id, raw_object, is_raw, is_root, title, view_count, update_time,
                              download_time, author, user_name, raw_metadata, specific)
SELECT node_id, source_id, raw_object, is_raw, is_root, title, view_count, update_time, download_time, author,
       user_name, raw_metadata, specific
FROM common_metadata WHERE raw_object IS NOT NULL;

COMMENT ON TABLE metadata_version IS 'Each document''s description of a node (one row per node, source and raw_object); common_metadata is the newest of them by download_time. Deleting a batch removes the versions read from its documents and recomputes common_metadata from the rest.';
COMMENT ON COLUMN metadata_version.raw_object IS 'sha256 of the stored metadata document (a member of the batch that brought it)';
