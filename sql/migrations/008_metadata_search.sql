-- hoardfs schema, migration 008: word search over the assets' metadata (the asset browser's
-- title/author/metadata search, sql/browse.py) served by an index instead of a scan.
--
-- PostgreSQL's built-in full-text search, nothing else: no extension (pg_trgm would need
-- CREATE EXTENSION, which a database role of a managed server may not have), so the
-- migration runs with the rights every other one needs (CREATE on the schema), and
-- pg_dump/pg_restore carry it like any function and index.
--
-- The config is 'simple': words are lower-cased, never stemmed and no stop word is dropped —
-- names, handles, ids and tags are searched as written. The searched document of a
-- common_metadata row is its title, author and user name, and every string value of its
-- raw_metadata (keys are not searched). One function says what the document is; the index
-- is on that function and sql/browse.py queries the same function, so the two cannot drift
-- (tests/test_search.py checks with EXPLAIN that the index serves the query).

-- an SQL-standard body (PostgreSQL 14+) is parsed once, here: its references are resolved
-- now and recorded as dependencies, so a restore (which runs with an empty search_path)
-- rebuilds the index with the same function
CREATE FUNCTION metadata_search_doc(title text, author text, user_name text, raw_metadata jsonb)
RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN to_tsvector('simple'::regconfig, coalesce(title, '') || ' ' || coalesce(author, '') || ' '
                                         || coalesce(user_name, ''))
    || jsonb_to_tsvector('simple'::regconfig, coalesce(raw_metadata, '{}'::jsonb), '["string"]'::jsonb);

CREATE INDEX common_metadata_search ON common_metadata
    USING gin (metadata_search_doc(title, author, user_name, raw_metadata));

COMMENT ON FUNCTION metadata_search_doc(text, text, text, jsonb) IS 'The words the asset search finds a common_metadata row by: title, author, user name and the string values of raw_metadata, lower-cased (text search config simple); index common_metadata_search is on it';
COMMENT ON INDEX common_metadata_search IS 'GIN over metadata_search_doc(...): word and word-prefix search (to_tsquery(''simple'', ''word:*'')) without a scan';
