-- hoardfs schema, migration 022: the deleted nodes by index, for the samples a dataset reader
-- leaves out.
--
-- A training loader, at the start of every epoch, and a published locator ask which of a
-- version's samples (100,000 and more) are deleted or black-listed now. When few nodes are
-- marked, the marked ones are walked and matched (sql/selectors.py `marked_nodes`): with this
-- partial index beside `physical_content_black_listed` (migration 020) that walk reads the
-- marked rows alone, not every row of physical_content.

CREATE INDEX physical_content_deleted ON physical_content (node_id) WHERE is_deleted;

COMMENT ON INDEX physical_content_deleted IS 'The deleted nodes: walked, with the black-listed ones, for the samples a dataset reader leaves out';
