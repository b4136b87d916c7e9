-- hoardfs schema, migration 015: perceptual hashes of images, for near-duplicate groups.
--
-- One row per image node: the hashes the built-in action `near-dup-hash` computed from its
-- content (jobs/actions/builtin/near_dup_hash.py; docs/near-dups.md), written by the run's
-- write-intent like any result row (`results`, table `result_image_hash`). A hash is a
-- function of the content and of imagehash's algorithm (pinned in pyproject.toml): a node is
-- hashed once, and a later run's row for it is kept out (ON CONFLICT DO NOTHING, as for every
-- result table).
--
-- Each hash is 64 bits (8×8), stored as bigint: the bit pattern of the 16 hex digits imagehash
-- prints, read as a two's-complement signed number (`ff…` is negative). The Hamming distance of
-- two is bit_count((a # b)::bit(64)).
--
-- Indexing: near-duplicates are hashes within a small Hamming distance, which no B-tree
-- orders. The four 16-bit quarters of `phash` are indexed as expressions (multi-index hashing,
-- Norouzi et al. 2012): two hashes within distance t agree within floor(t/4) bits on at least
-- one quarter, so the near-duplicates of one image are found by looking up each quarter's
-- value and its neighbours within floor(t/4) bits (1 + 16 lookups a quarter for t < 8) —
-- sql.neardup.near_of, the GUI's "near-duplicates of this image". Grouping a whole store
-- (`hoard dups`) reads the hashes once (COPY) and does the same with substrings sized to the
-- store in memory (sql.neardup.groups): docs/near-dups.md gives the figures.

CREATE TABLE result_image_hash (
    node_id    bigint PRIMARY KEY REFERENCES node ON DELETE CASCADE,
    batch_id   text NOT NULL REFERENCES action_batch,  -- the run that hashed it
    phash      bigint NOT NULL,   -- pHash (DCT of the 32×32 grey image, EXIF orientation applied)
    dhash      bigint NOT NULL,   -- dHash (signs of horizontal gradients of the 9×8 grey image)
    phash_flip bigint NOT NULL    -- pHash of the image mirrored left-right: a mirrored copy's phash is near it
);
CREATE INDEX result_image_hash_q0 ON result_image_hash (((phash >> 48) & 65535));
CREATE INDEX result_image_hash_q1 ON result_image_hash (((phash >> 32) & 65535));
CREATE INDEX result_image_hash_q2 ON result_image_hash (((phash >> 16) & 65535));
CREATE INDEX result_image_hash_q3 ON result_image_hash ((phash & 65535));
CREATE INDEX result_image_hash_batch ON result_image_hash (batch_id);

COMMENT ON TABLE result_image_hash IS 'Perceptual hashes of an image node (the near-dup-hash action): near-duplicate groups (hoard dups).';
COMMENT ON COLUMN result_image_hash.batch_id IS 'The action run (its action_batch) that hashed the node';
COMMENT ON COLUMN result_image_hash.phash IS 'pHash, 64 bits as a signed bigint; Hamming distance = bit_count((a # b)::bit(64)); its 16-bit quarters are indexed';
COMMENT ON COLUMN result_image_hash.dhash IS 'dHash, 64 bits as a signed bigint';
COMMENT ON COLUMN result_image_hash.phash_flip IS 'pHash of the left-right mirrored image: an image whose phash is near another''s phash_flip is its mirror image';
