-- hoardfs schema, migration 017: image embeddings for text → image search.
--
-- One row per (image node, model): the CLIP image embedding the built-in AC3 action
-- `clip-embed` computed (jobs/actions/builtin/clip_embed.py; docs/search.md), written by the
-- run's write-intent like any result row (`results`, table `result_image_embedding`). An
-- embedding is a function of the content and of the model's weights, so `model` names both
-- (`<model name>@<first 16 hex of the weights file's sha256>`): embeddings of two models are
-- never compared, and a node embedded again by the same model keeps its first row
-- (ON CONFLICT DO NOTHING, as for every result table).
--
-- This table is the truth. The nearest-neighbour index `hoard search` queries (an HNSW graph,
-- usearch, under <ssd>/state/search/) is a cache rebuilt from it when missing, unreadable or
-- behind (sql.embeddings; docs/search.md "The index"): PostgreSQL here has no pgvector.

CREATE TABLE result_image_embedding (
    node_id   bigint NOT NULL REFERENCES node ON DELETE CASCADE,
    model     text NOT NULL,              -- '<model name>@<sha256 of the weights, 16 hex>'
    batch_id  text NOT NULL REFERENCES action_batch,  -- the run that embedded it
    embedding bytea NOT NULL,             -- float32 little-endian, L2-normalised; 4 × dim bytes
    PRIMARY KEY (node_id, model)
);
CREATE INDEX result_image_embedding_model ON result_image_embedding (model, node_id);
CREATE INDEX result_image_embedding_batch ON result_image_embedding (batch_id);

COMMENT ON TABLE result_image_embedding IS 'CLIP image embeddings of an image node (the clip-embed action): text → image search (hoard search). The truth the on-disk HNSW index is rebuilt from.';
COMMENT ON COLUMN result_image_embedding.model IS 'Which model made it: <open_clip model name>@<first 16 hex of the weights file''s sha256>; only one model''s rows are compared';
COMMENT ON COLUMN result_image_embedding.batch_id IS 'The action run (its action_batch) that embedded the node';
COMMENT ON COLUMN result_image_embedding.embedding IS 'float32 little-endian, L2-normalised (cosine similarity = dot product); 4 x dim bytes';
