-- hoardfs schema, migration 001: nodes, content, sources, metadata, edges, labels.
-- Every table and column is described here and mirrored with COMMENT ON below.
-- Identity: a node is named by a sha256 (32 bytes). For physical content it is the sha256
-- of the bytes (what S01 stores); for a virtual asset (author, post, thread, playlist …)
-- it is the sha256 of its canonical description string `virtual:<kind>:<source>:<id>`.

CREATE TABLE action (
    action_id   integer PRIMARY KEY,            -- 0 = ingest (UA_1); others are AC1..AC5 and later
    name        text NOT NULL UNIQUE,
    kind        text NOT NULL CHECK (kind IN ('ingest', 'cpu', 'gpu', 'human')),
    description text NOT NULL DEFAULT ''
);
INSERT INTO action VALUES (0, 'ingest', 'ingest', 'UA_1: scraped batches entering the store');

CREATE TABLE file_type (
    ext  text PRIMARY KEY CHECK (ext = lower(ext) AND ext !~ '[^a-z0-9]'),  -- without the dot
    kind text NOT NULL CHECK (kind IN ('image', 'video', 'audio', 'text'))   -- media and text only
);
INSERT INTO file_type VALUES
    ('jpg', 'image'), ('jpeg', 'image'), ('png', 'image'), ('gif', 'image'), ('webp', 'image'),
    ('bmp', 'image'), ('tif', 'image'), ('tiff', 'image'), ('avif', 'image'), ('heic', 'image'),
    ('mp4', 'video'), ('webm', 'video'), ('mkv', 'video'), ('mov', 'video'), ('avi', 'video'),
    ('m4v', 'video'), ('mp3', 'audio'), ('wav', 'audio'), ('ogg', 'audio'), ('flac', 'audio'),
    ('m4a', 'audio'), ('opus', 'audio'), ('txt', 'text'), ('json', 'text'), ('csv', 'text'),
    ('html', 'text'), ('md', 'text'), ('xml', 'text'), ('srt', 'text'), ('vtt', 'text');

CREATE TABLE source (
    source_id      smallserial PRIMARY KEY,
    name           text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    specific_table text CHECK (specific_table ~ '^src_[a-z][a-z0-9_]{0,58}$'),  -- NULL until a proposal is accepted
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE node (
    node_id     bigserial PRIMARY KEY,
    sha256      bytea NOT NULL UNIQUE CHECK (octet_length(sha256) = 32),
    is_virtual  boolean NOT NULL,
    is_physical boolean NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (is_virtual <> is_physical)
);

CREATE TABLE physical_content (
    node_id       bigint PRIMARY KEY REFERENCES node ON DELETE CASCADE,
    size          bigint NOT NULL CHECK (size >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    in_black_list boolean NOT NULL DEFAULT false,
    is_deleted    boolean NOT NULL DEFAULT false,     -- deletion type A: hidden, bytes stay
    file_type     text REFERENCES file_type (ext)     -- NULL: not media or text we know
);

CREATE TABLE physical_path (
    node_id bigint NOT NULL REFERENCES node ON DELETE CASCADE,
    locator text NOT NULL CHECK (locator <> ''),     -- e.g. 'batch:<batch_id>/<relative path>'
    PRIMARY KEY (node_id, locator)
);

CREATE TABLE virtual_asset (
    node_id     bigint PRIMARY KEY REFERENCES node ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_]{0,31}$'),
    source_id   smallint NOT NULL REFERENCES source,
    stable_id   text NOT NULL,
    description text NOT NULL UNIQUE                  -- sha256(description) = node.sha256
);

CREATE TABLE common_metadata (
    node_id       bigint NOT NULL REFERENCES node ON DELETE CASCADE,
    source_id     smallint NOT NULL REFERENCES source,
    is_raw        boolean NOT NULL DEFAULT true,
    is_root       boolean NOT NULL DEFAULT false,
    title         text,
    view_count    bigint CHECK (view_count >= 0),
    update_time   timestamptz,
    download_time timestamptz,
    author        text,
    user_name     text,
    raw_metadata  jsonb CHECK (raw_metadata IS NULL OR octet_length(raw_metadata::text) <= 1024),
    raw_object    bytea CHECK (raw_object IS NULL OR octet_length(raw_object) = 32),
    PRIMARY KEY (node_id, source_id)
);

CREATE TABLE relationship_type (
    rel_id    smallserial PRIMARY KEY,
    name      text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    action_id integer NOT NULL DEFAULT 0 REFERENCES action
);
INSERT INTO relationship_type (name) VALUES
    ('author_of'), ('channel_of'), ('post_of'), ('reply_to'), ('thread_of'), ('playlist_of'), ('media_of');

CREATE TABLE edge (
    parent_id bigint NOT NULL REFERENCES node ON DELETE CASCADE,
    child_id  bigint NOT NULL REFERENCES node ON DELETE CASCADE,
    rel_id    smallint NOT NULL REFERENCES relationship_type,
    PRIMARY KEY (parent_id, child_id, rel_id),
    CHECK (parent_id <> child_id)
);
CREATE INDEX edge_child ON edge (child_id, rel_id);

CREATE TABLE label (
    node_id    bigint NOT NULL REFERENCES node ON DELETE CASCADE,
    key        text NOT NULL CHECK (key <> ''),
    value      text NOT NULL DEFAULT '',
    origin     text NOT NULL DEFAULT 'human',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, key, value)
);
CREATE INDEX label_key_value ON label (key, value);

CREATE TABLE applied_intent (
    key        text PRIMARY KEY,
    digest     bytea NOT NULL CHECK (octet_length(digest) = 32),
    applied_at timestamptz NOT NULL DEFAULT now(),
    counts     jsonb NOT NULL
);

CREATE INDEX common_metadata_source ON common_metadata (source_id);
CREATE INDEX physical_content_type ON physical_content (file_type) WHERE NOT is_deleted AND NOT in_black_list;

COMMENT ON TABLE action IS 'Kinds of work done on nodes; 0 = ingest. Relationship types and batches name the action that made them.';
COMMENT ON COLUMN action.kind IS 'ingest | cpu | gpu | human: which worker pool runs it';
COMMENT ON TABLE file_type IS 'File extension to media kind (media and text only); physical_content.file_type refers here.';
COMMENT ON TABLE source IS 'A web source scraped by the team (10-20 of them); each may have a source-specific metadata table.';
COMMENT ON COLUMN source.specific_table IS 'Name of its source-specific table (src_<name>), NULL until one is created by migration or an accepted proposal';
COMMENT ON TABLE node IS 'Everything the platform knows about is a node, named by a sha256: physical content or a virtual asset.';
COMMENT ON COLUMN node.sha256 IS 'Physical: sha256 of the bytes (the S01 store key). Virtual: sha256 of virtual_asset.description.';
COMMENT ON COLUMN node.is_virtual IS 'True for virtual assets (author, post, thread, playlist ...); exactly one of is_virtual/is_physical';
COMMENT ON COLUMN node.is_physical IS 'True for content stored in S01';
COMMENT ON TABLE physical_content IS 'Facts about stored bytes; one row per physical node.';
COMMENT ON COLUMN physical_content.size IS 'Bytes; S07 sums it to reserve zone quota before staging';
COMMENT ON COLUMN physical_content.in_black_list IS 'Excluded from every selector (bad, illegal or unwanted content)';
COMMENT ON COLUMN physical_content.is_deleted IS 'Deletion type A: hidden from views and selectors; the bytes stay in the store';
COMMENT ON COLUMN physical_content.file_type IS 'Extension as in file_type.ext, NULL if unknown';
COMMENT ON TABLE physical_path IS 'Where the content was seen, as locator strings (batch:<id>/<path>) for disaster recovery.';
COMMENT ON TABLE virtual_asset IS 'Description of a virtual node; the same author seen in two batches is one row.';
COMMENT ON COLUMN virtual_asset.description IS 'Canonical string virtual:<kind>:<source>:<stable id>; its sha256 is node.sha256';
COMMENT ON TABLE common_metadata IS 'Metadata every source has, one row per node and source.';
COMMENT ON COLUMN common_metadata.is_raw IS 'True for scraped input, false for generated data';
COMMENT ON COLUMN common_metadata.is_root IS 'True for a node without a parent in its source (a channel, a thread start)';
COMMENT ON COLUMN common_metadata.raw_metadata IS 'At most 1 KB of the original metadata; the full document is the stored object raw_object';
COMMENT ON COLUMN common_metadata.raw_object IS 'sha256 of the full original metadata document stored in S01';
COMMENT ON COLUMN common_metadata.download_time IS 'When the scraper fetched it; the newest download wins on conflicting metadata';
COMMENT ON TABLE relationship_type IS 'Kinds of edges; action_id names the action that creates them (0 = ingest).';
COMMENT ON TABLE edge IS 'Directed parent -> child links between nodes (channel -> video, post -> media, image -> crop).';
COMMENT ON TABLE label IS 'Tags and labels with values, from people (Label Studio) or actions (GPU labels).';
COMMENT ON COLUMN label.origin IS 'Who set it: human, or the action name';
COMMENT ON TABLE applied_intent IS 'Write-intents already applied, by idempotency key; re-applying the same key is a no-op.';
COMMENT ON COLUMN applied_intent.digest IS 'sha256 of the canonical intent body; the same key with another digest is refused';
