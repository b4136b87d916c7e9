-- hoardfs schema, migration 021: the objects a dataset version made that no node names.
--
-- A build of a JPEG-only layout (voc) converts each sample that is not a JPEG and stores the
-- JPEG as an object of the store, named by the version's manifest (`converted`), not by a node:
-- it is no asset, and no selector returns it. `hoard gc` keeps what a database row needs
-- (sql/deletion.py `referenced`), so the version's rows name these objects here — and gc keeps
-- them, with the version's manifest.jsonl and dataset.json, for as long as the version is
-- recorded: `hoard dataset materialize` makes the same bytes again whatever was deleted since.

CREATE TABLE dataset_object (
    name      text NOT NULL,
    version   integer NOT NULL,
    sha256    bytea NOT NULL CHECK (octet_length(sha256) = 32),  -- the object (a converted JPEG)
    PRIMARY KEY (sha256, name, version),
    FOREIGN KEY (name, version) REFERENCES dataset_version ON DELETE CASCADE
);

CREATE INDEX dataset_object_version ON dataset_object (name, version);

COMMENT ON TABLE dataset_object IS 'The objects a dataset version wrote that no node names (the JPEGs a voc build converted): hoard gc keeps them while the version is recorded';
COMMENT ON COLUMN dataset_object.sha256 IS 'The object (a converted JPEG)';
