-- hoardfs schema, migration 023: a dataset version's loader index.
--
-- A training loader's start needs each sample's sha256 and split and where its manifest line
-- is (hoardfs.datasets.card.loader_index: 58 bytes a sample, scanned once at the build); without it
-- the loader reads and parses the whole manifest (~460 bytes a sample) before any disk reads a
-- sample. The index is an object of the store that no node names: the version's
-- dataset_object rows name it too, so `hoard gc` keeps it while the version is recorded. A
-- version built before this migration has none (NULL): its loader scans the manifest.

ALTER TABLE dataset_version ADD COLUMN loader_index_sha256 bytea
    CHECK (loader_index_sha256 IS NULL OR octet_length(loader_index_sha256) = 32);

COMMENT ON COLUMN dataset_version.loader_index_sha256 IS 'The loader index object (each sample''s sha256, split and manifest line); NULL: built before it was kept, the loader scans the manifest';
