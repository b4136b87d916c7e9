-- hoardfs schema, migration 018: which deleted nodes are hidden (deletion type A).
--
-- `physical_content.is_deleted` says a node is out of every selector. Two deletions set it:
-- type A (`hoard delete --node`: the store hides the object, its bytes stay, its batches keep
-- it) and type B (`hoard delete --batch`: the nodes no other batch holds). Only type B is
-- undone by the store: an object stored again loses its tombstone, so a write-intent naming
-- it as a physical node marks it live again (sql/apply.py) — but a hidden object stays hidden
-- when it is stored again, and so must its node. `is_hidden` tells the two apart.
--
-- Nodes deleted before this column existed that a batch still holds were hidden by type A
-- (type B marks only nodes no batch holds); `hoard check` compares the column with the
-- store's hidden marks and `hoard check --repair` sets it from them where they disagree.

ALTER TABLE physical_content ADD COLUMN is_hidden boolean NOT NULL DEFAULT false;  -- deletion type A: the store hides it

UPDATE physical_content pc SET is_hidden = true
WHERE pc.is_deleted AND EXISTS (SELECT 1 FROM batch_member bm WHERE bm.node_id = pc.node_id);

ALTER TABLE physical_content ADD CONSTRAINT physical_content_hidden_is_deleted CHECK (is_deleted OR NOT is_hidden);

COMMENT ON COLUMN physical_content.is_hidden IS 'Deletion type A (hoard delete --node): the store hides the object; implies is_deleted, and storing the object again does not undo it';
COMMENT ON COLUMN physical_content.is_deleted IS 'Out of every selector: hidden (type A, is_hidden) or held by no batch after hoard delete --batch (type B; a write-intent naming the node as physical marks it live again)';
