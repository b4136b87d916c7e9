-- hoardfs schema, migration 006: the column comments the earlier migrations described in SQL
-- comments but did not mirror with COMMENT ON (tests/test_migrate.py now checks the mirror).

COMMENT ON COLUMN action.action_id IS '0 = ingest (UA_1); others are AC1..AC5 and later';
COMMENT ON COLUMN file_type.ext IS 'File extension, lower case, without the dot';
COMMENT ON COLUMN file_type.kind IS 'image | video | audio | text: media and text only';
COMMENT ON COLUMN physical_path.locator IS 'Where the content was found, e.g. ''batch:<batch_id>/<relative path>''';
COMMENT ON COLUMN action_batch.source_id IS 'The source of an ingest batch; NULL for batches of other actions';
COMMENT ON COLUMN backup_log.location IS 'Where the cold-storage copy is (zone 3B) or the pgBackRest repository';
