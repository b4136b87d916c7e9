-- hoardfs schema, migration 011: datasets (`hoard dataset build`, datasets/api.py). A dataset
-- is a name and its class map (pinned in the spec or frozen at its first build: the index of
-- a class never moves); each build is a version N, sealed in zone 3D as <name>-v<N>. Its
-- manifest.jsonl and dataset.json are objects of the store (class generated), recorded as
-- nodes located `dataset:<name>@<N>/…`, so `hoard dataset materialize NAME@N` re-creates the
-- version byte for byte from them, whatever the labels say today.

CREATE TABLE dataset (
    name       text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$'),
    class_map  jsonb NOT NULL DEFAULT '[]',  -- the class names in index order (frozen at the first build, or the spec's)
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dataset_version (
    name            text NOT NULL REFERENCES dataset ON DELETE CASCADE,
    version         integer NOT NULL CHECK (version >= 1),
    spec            jsonb NOT NULL,               -- the spec it was built from (DatasetSpec.doc)
    spec_sha256     text NOT NULL,                -- sha256 of the canonical spec
    manifest_sha256 bytea CHECK (manifest_sha256 IS NULL OR octet_length(manifest_sha256) = 32),  -- the manifest.jsonl object; NULL while building
    doc_sha256      bytea CHECK (doc_sha256 IS NULL OR octet_length(doc_sha256) = 32),            -- the dataset.json object; NULL while building
    fingerprint     text NOT NULL,                -- sha256 of the manifest's lines and the spec: the data it was built from
    output_id       text NOT NULL,                -- its output in zone 3D: <name>-v<version>
    path            text NOT NULL,                -- the sealed directory
    mode            text NOT NULL CHECK (mode IN ('copy', 'view')),
    files           bigint NOT NULL DEFAULT 0 CHECK (files >= 0),
    bytes           bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    counts          jsonb NOT NULL DEFAULT '{}',  -- samples per split and class
    status          text NOT NULL CHECK (status IN ('building', 'done', 'removed')),  -- removed: its output is gone, the version stays (materialize re-creates it)
    built_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

COMMENT ON TABLE dataset IS 'A dataset (hoard dataset build): its name and its class map; its builds are dataset_version rows.';
COMMENT ON COLUMN dataset.class_map IS 'The class names in index order (frozen at the first build, or the spec''s)';
COMMENT ON TABLE dataset_version IS 'One build of a dataset: its spec, its manifest and dataset.json objects, its output in zone 3D.';
COMMENT ON COLUMN dataset_version.spec IS 'The spec it was built from (DatasetSpec.doc)';
COMMENT ON COLUMN dataset_version.spec_sha256 IS 'sha256 of the canonical spec';
COMMENT ON COLUMN dataset_version.manifest_sha256 IS 'The manifest.jsonl object; NULL while building';
COMMENT ON COLUMN dataset_version.doc_sha256 IS 'The dataset.json object; NULL while building';
COMMENT ON COLUMN dataset_version.fingerprint IS 'sha256 of the manifest''s lines and the spec: the data it was built from';
COMMENT ON COLUMN dataset_version.output_id IS 'Its output in zone 3D: <name>-v<version>';
COMMENT ON COLUMN dataset_version.path IS 'The sealed directory';
COMMENT ON COLUMN dataset_version.counts IS 'Samples per split and class';
COMMENT ON COLUMN dataset_version.status IS 'building | done | removed (its output is gone; the version stays and materialize re-creates it)';
