-- hoardfs schema, migration 016: the 16-bit quarters of `phash_flip` indexed as `phash`'s are
-- (migration 015), so that sql.neardup.near_of — the GUI's "near-duplicates of this image" —
-- finds the images whose mirror is near this one's pHash by index too: pHash is not exactly
-- symmetric under mirroring, and `hoard dups` (sql.neardup.groups) compares that way as well;
-- without it, the node page missed an image `hoard dups` grouped with it.

CREATE INDEX result_image_hash_f0 ON result_image_hash (((phash_flip >> 48) & 65535));
CREATE INDEX result_image_hash_f1 ON result_image_hash (((phash_flip >> 32) & 65535));
CREATE INDEX result_image_hash_f2 ON result_image_hash (((phash_flip >> 16) & 65535));
CREATE INDEX result_image_hash_f3 ON result_image_hash ((phash_flip & 65535));
