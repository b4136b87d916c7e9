-- hoardfs schema, migration 020: the black-listed nodes by index, for the lineage every selector
-- leaves out.
--
-- A selector leaves out the black-listed nodes and, unless it says `include_blacklisted_lineage`
-- (or `include_black_listed`), every node derived from one: the physical descendants reached
-- by edges between physical nodes (a crop, a thumbnail, a frame and theirs). It walks down from
-- the black-listed nodes once per query (sql/selectors.py `_black_lineage`), so it starts from
-- them: a handful of rows that, without this partial index, are found by reading every row of
-- physical_content (tens of millions) on every selection.

CREATE INDEX physical_content_black_listed ON physical_content (node_id) WHERE in_black_list;

COMMENT ON INDEX physical_content_black_listed IS 'The black-listed nodes: where a selector''s walk down their derived lineage starts';
COMMENT ON COLUMN physical_content.in_black_list IS 'Excluded from every selector (bad, illegal or unwanted content), and so are the physical nodes derived from it (crops, thumbnails, frames) unless a selector includes the black-listed lineage';
